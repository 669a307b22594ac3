"""The gate's checks that need a class: judged on the imported class at load, or on its source in ``scan``.

Does a snapshot class define its own ``__reduce__`` (then a call may rebuild
it) or ``__getnewargs__`` (then NEWOBJ may pass arguments)?  Is a reference
named as a class really one?  Would a state key replace a method?  ``load``
asks the imported classes; ``gitpack scan``, which runs nothing, asks the
snapshot's source (:mod:`.classfacts`) and the library classes it imports.
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable

from .standins import Deferred
from .verdicts import short


# ----------------------------------------------------------------------------- checks against the real classes
def check_deferred(item: Deferred, obj: Any) -> str | None:
    """Judge a :class:`Deferred` check against *obj*, the real class (or function) its reference resolves to."""
    name = short(item.ref.dotted)
    if item.what.startswith("legacy-"):
        if not isinstance(obj, type):
            return f"calls the snapshot function {name} (snapshot functions may be values, never called by the pickle)"
        how = item.what.removeprefix("legacy-")
        if how == "call":
            return _snapshot_call(obj, name, item.detail)
        return _snapshot_new(obj, name) if item.detail else None
    if not isinstance(obj, type):
        return f"{name} is not a class"
    if item.what == "call":
        return _snapshot_call(obj, name, item.detail)
    if item.what == "new":
        return _snapshot_new(obj, name)
    if item.what == "tensor-type":
        import torch

        return None if issubclass(obj, torch.Tensor) else f"{name} is not a tensor type"
    if item.what == "custom-state":
        return None if _declares(obj, "__setstate__") else f"state of {name} that is not plain attribute data"
    if item.what == "state":
        for key in item.detail or ():
            if shadows_method(obj, key):
                return f"state key {short(key)!r} of {name} would replace its method or property {short(key)!r}"
        return None
    return f"unknown check {item.what} on {name}"


def check_deferred_source(item: Deferred, found: Any, library: Callable[[str], Any] | None = None) -> str | None:
    """The same judgement as :func:`check_deferred`, from a snapshot class's source (``gitpack scan``, which never
    imports): *found* is its :class:`gitpack.classfacts.Facts`.  Returns None when the source answers "fine"; the
    string ``"pending"`` when only the imported class can tell.  *library* resolves a base class imported from a
    library (``torch.nn.Module``) to the class, or None when it will not import it."""
    name = short(item.ref.dotted)
    if found is None:
        return "pending"
    if item.what.startswith("legacy-"):
        if found.kind == "function":
            return f"calls the snapshot function {name} (snapshot functions may be values, never called by the pickle)"
        what = item.what.removeprefix("legacy-")
        if what == "new" and not item.detail:
            return None
        item = Deferred(what, item.ref, item.detail)
    if found.kind != "class":
        return f"{name} is not a class"
    if item.what == "call":
        if found.is_enum:
            return None if item.detail == 1 else f"calls the enum {name} with {item.detail} arguments"
        if found.declares("__reduce__", "__reduce_ex__"):
            return None
        return (f"calls the snapshot class {name} (runs its __init__; only classes that define their own __reduce__ "
                "are rebuilt by a call)")
    if item.what == "new":
        if found.declares("__getnewargs__", "__getnewargs_ex__", "__new__") or found.is_tuple:
            return None
        return f"constructs the snapshot class {name} with arguments (only classes that define __getnewargs__ take them)"
    if item.what == "custom-state":
        return None if found.declares("__setstate__") else f"state of {name} that is not plain attribute data"
    if item.what == "state":
        for key in item.detail or ():
            if found.declares(key):
                return f"state key {short(key)!r} of {name} would replace its method or property {short(key)!r}"
        bases = [library(b) for b in found.all_imported_bases()] if library is not None else [None]
        if any(not isinstance(b, type) for b in bases):
            return "pending"  # a base only the imported class can show: load checks it
        for key in item.detail or ():
            if any(shadows_method(b, key) for b in bases):
                return f"state key {short(key)!r} of {name} would replace its method or property {short(key)!r}"
        return None
    return "pending"


def _declares(cls: type, *names: str) -> bool:
    """Whether a *snapshot* class in *cls*'s MRO defines one of *names* itself (library classes do not count)."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("__gitpack_") and any(n in vars(klass) for n in names):
            return True
    return False


def _snapshot_call(cls: type, name: str, count: Any) -> str | None:
    import enum

    if issubclass(cls, enum.Enum):
        return None if count == 1 else f"calls the enum {name} with {count} arguments"
    if _declares(cls, "__reduce__", "__reduce_ex__"):
        return None
    return (f"calls the snapshot class {name} (runs its __init__; only classes that define their own __reduce__ "
            "are rebuilt by a call)")


def _snapshot_new(cls: type, name: str) -> str | None:
    if _declares(cls, "__getnewargs__", "__getnewargs_ex__", "__new__") or issubclass(cls, tuple):
        return None
    return f"constructs the snapshot class {name} with arguments (only classes that define __getnewargs__ take them)"


def shadows_method(cls: type, key: str) -> bool:
    """Whether an instance attribute *key* would replace behaviour *cls* defines: a method written in a class
    body (or a function of the class's own module assigned there), a property or other descriptor, a static or
    class method, a builtin method.  Slots, plain class-level data and other modules' callables assigned to a
    class attribute (``act = F.relu``) are not behaviour."""
    for klass in cls.__mro__:
        if key not in vars(klass):
            continue
        attr = vars(klass)[key]
        if isinstance(attr, types.MemberDescriptorType):
            return False  # a slot: state is exactly what it is for
        if isinstance(attr, (staticmethod, classmethod, property, types.MethodDescriptorType,
                             types.WrapperDescriptorType, types.GetSetDescriptorType)):
            return True
        if inspect.isfunction(attr):  # written in the class body, or a function of the class's own module
            return getattr(attr, "__qualname__", "") == f"{klass.__qualname__}.{key}" or \
                getattr(attr, "__module__", None) == klass.__module__
        return hasattr(type(attr), "__set__")  # another data descriptor
    return False

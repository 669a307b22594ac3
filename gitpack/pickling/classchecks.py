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
from collections.abc import Callable
from typing import Any

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
    if item.what == "allowed-global":  # resolving it through the policy checked it (Policy.find_class)
        return None
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
        return state_problem(obj, name, item.detail or ())
    return f"unknown check {item.what} on {name}"


def state_problem(cls: type, name: str, items: tuple[tuple[str, str], ...]) -> str | None:
    """What is wrong with giving an instance of *cls* these ``(key, value kind)`` attributes, if anything."""
    for key, kind in items:
        slot = kind.startswith("slot-")
        kind = kind.removeprefix("slot-")
        if shadows_method(cls, key):
            return f"state key {short(key)!r} of {name} would replace its method or property {short(key)!r}"
        if slot and not _is_python_slot(cls, key):
            return f"slot state on {name} names {short(key)!r}, which is not one of its slots"
        if kind == "callable" and _library_declares_data(cls, key):
            return (f"state key {short(key)!r} of {name} would put a callable where the library declares a value "
                    "(the library may call it)")
    if _is_rnn(cls) and ("_all_weights", "str-lists") not in items:
        return (f"state of {name} without its weight names (_all_weights as lists of str): "
                "torch would rebuild them in a loop")
    return None


def _is_python_slot(cls: type, key: str) -> bool:
    """A slot declared by a class written in Python (``__slots__``), not a C type's member (a defaultdict's
    ``default_factory``, which runs on every missing key)."""
    for klass in cls.__mro__:
        attr = vars(klass).get(key)
        if attr is not None:
            return isinstance(attr, types.MemberDescriptorType) and bool(klass.__flags__ & _HEAPTYPE)
    return False


def _library_declares_data(cls: type, key: str) -> bool:
    """Whether a library class (not snapshot code) of *cls* declares *key* at class level as a plain value:
    ``nn.Module._compiled_call_impl = None`` is data that ``Module.__call__`` calls once it is set."""
    for klass in cls.__mro__:
        if key in vars(klass):
            return not klass.__module__.startswith("__gitpack_") and not callable(vars(klass)[key])
    return False


def _is_rnn(cls: type) -> bool:
    return any(k.__module__ == "torch.nn.modules.rnn" and k.__qualname__ == "RNNBase" for k in cls.__mro__)


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: the class was written in Python


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
        return (f"constructs the snapshot class {name} with arguments "
                "(only classes that define __getnewargs__ take them)")
    if item.what == "custom-state":
        return None if found.declares("__setstate__") else f"state of {name} that is not plain attribute data"
    if item.what == "state":
        for key, _ in item.detail or ():
            if found.declares(key):
                return f"state key {short(key)!r} of {name} would replace its method or property {short(key)!r}"
        bases = [library(b) for b in found.all_imported_bases()] if library is not None else [None]
        classes = [b for b in bases if isinstance(b, type)]
        if len(classes) != len(bases):
            return "pending"  # a base only the imported class can show: load checks it
        for base in classes:
            problem = state_problem(base, name, item.detail or ())
            if problem:
                return problem
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
            return False  # a slot: state is what it is for (slot state on a C type's member is refused apart)
        if isinstance(attr, (staticmethod, classmethod, property, types.MethodDescriptorType,
                             types.WrapperDescriptorType, types.GetSetDescriptorType)):
            return True
        if inspect.isfunction(attr):  # written in the class body, or a function of the class's own module
            return getattr(attr, "__qualname__", "") == f"{klass.__qualname__}.{key}" or \
                getattr(attr, "__module__", None) == klass.__module__
        return hasattr(type(attr), "__set__")  # another data descriptor
    return False

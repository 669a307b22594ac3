"""Capture's records: one per repo object, its constructor's arguments as they were at call time.

Records are keyed by object identity and dropped when the object dies.  Only
objects whose class comes from a file outside the standard library and
site-packages get one; whether a class really is repo code is decided at save,
against the snapshot.
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import Any

CAPTURED = "captured"
MISSING = object()  # an argument or attribute that is not there
INFERRED = "inferred"


# --------------------------------------------------------------------------- which classes to record
def _library_dirs() -> tuple[str, ...]:
    import site
    import sysconfig

    dirs = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            dirs.add(paths[key])
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # some virtualenv builds lack it
        pass
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user_site:
        dirs.add(user_site)
    dirs.add(os.path.dirname(os.path.abspath(__file__)))  # gitpack's own classes are never the user's
    return tuple(os.path.realpath(d).rstrip(os.sep) + os.sep for d in dirs)


_library_dirs_cache: tuple[str, ...] | None = None  # computed on first use: sysconfig is slow to import
_verdicts: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def library_dirs() -> tuple[str, ...]:
    """The standard library's and site-packages' directories (each ending in a separator), computed once."""
    global _library_dirs_cache
    if _library_dirs_cache is None:
        _library_dirs_cache = _library_dirs()
    return _library_dirs_cache


def is_candidate(cls: type) -> bool:
    """Whether instances of *cls* may be repo objects: its module comes from a file outside the libraries."""
    try:
        return _verdicts[cls]
    except KeyError:
        pass
    except TypeError:
        return False
    verdict = False
    name = getattr(cls, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    file = getattr(module, "__file__", None)
    if isinstance(file, str) and file:
        verdict = not os.path.realpath(file).startswith(library_dirs())
    try:
        _verdicts[cls] = verdict
    except TypeError:
        pass
    return verdict


# --------------------------------------------------------------------------- records
class ArgRef:
    """An argument that is itself a (possible) repo object: a weak reference plus that object's own record."""

    __slots__ = ("cls", "key", "ref", "record")

    def __init__(self, obj: Any):
        self.cls = type(obj)
        self.key = id(obj)  # for objects that cannot be weakly referenced (__slots__ without __weakref__)
        self.ref: weakref.ref[Any] | None
        try:
            self.ref = weakref.ref(obj)
        except TypeError:
            self.ref = None
        self.record = record_for(obj)

    def target(self) -> Any:
        return self.ref() if self.ref is not None else None


class Record:
    """One object's constructor call: its class, described arguments and which of them were defaults."""

    __slots__ = ("cls", "ref", "args", "defaults", "frame")

    def __init__(self, obj: Any, frame: Any):
        self.cls = type(obj)
        self.frame = frame  # the outermost __init__ frame while it runs, then None
        self.args: dict[str, Any] = {}
        self.defaults: list[str] = []
        key = id(obj)

        def forget(ref: Any, key: int = key) -> None:
            current = records.get(key)
            if current is not None and current.ref is ref:
                records.pop(key, None)

        self.ref: weakref.ref[Any] | None
        try:
            self.ref = weakref.ref(obj, forget)
        except TypeError:
            self.ref = None

    def is_for(self, obj: Any) -> bool:
        if self.ref is not None:
            return self.ref() is obj
        return self.cls is type(obj)


records: dict[int, Record] = {}


def record_for(obj: Any) -> Record | None:
    """The capture record of *obj*, if its construction was seen."""
    rec = records.get(id(obj))
    return rec if rec is not None and rec.is_for(obj) else None



"""Pickling against a snapshot: repo code by reference, data by value, tensors out of band.

At save, every class, function and module that lives in the repository is
written as a *persistent id* naming its canonical module (``__main__`` becomes
the file's real module name) and qualname; lambdas and nested functions become
a reference to their code in the snapshot (module, qualname, line) plus their
closure and defaults as data.  The pickle therefore carries no bytecode for
repo code at all, and at load every such reference is resolved inside the
snapshot's private namespace, never through ``sys.modules``.

Only code defined outside any file (an interactive session) falls back to
dill's by-value pickling; the manifest says so, and loading it needs trust.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import sys
import types
from collections import OrderedDict
from typing import Any

import dill

from ..errors import GitpackError, PicklingError
from . import columns
from .gcpause import gc_paused
from .modulemap import ModuleMap
from .tensors import StorageCollector, is_storage, is_tensor

PROTOCOL = 5
_RECONSTRUCTOR = copyreg._reconstructor  # type: ignore[attr-defined]  # typeshed leaves it out
_FUNCTION_TYPES = (types.FunctionType,)
_ATOMS = frozenset({int, float, str, bytes, bool, type(None), bytearray, complex})
_CONTAINERS = frozenset({tuple, set, frozenset})


def _is_interactive(module_name: str | None) -> bool:
    module = sys.modules.get(module_name or "")
    return module is not None and module_name == "__main__" and not getattr(module, "__file__", None)


def _reachable(obj: Any) -> bool:
    """Whether *obj* is what its module exposes under its qualname."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    target: Any = module
    for part in getattr(obj, "__qualname__", "").split("."):
        if part == "<locals>":
            return False
        target = getattr(target, part, None)
        if target is None:
            return False
    return target is obj


class _NeedsDill(Exception):
    """The C pickler met code only dill can carry (defined in an interactive session): pickle with dill."""


class _References:
    """What both picklers share: which objects become persistent ids, and what the save learns on the way."""

    module_map: ModuleMap
    storages: StorageCollector
    by_value: bool  # this pickler may carry code by value (dill), else it hands such objects over

    def _setup(self, module_map: ModuleMap, storages: StorageCollector) -> None:
        self.module_map = module_map
        self.storages = storages
        self._pids: dict[int, tuple | int] = {}  # id -> persistent id (a tensor's: its row in the table)
        self._keep: list[Any] = []
        self.repo_objects: dict[str, Any] = {}  # "module:qualname" -> class or function used
        self.repo_instances: dict[int, Any] = {}  # id -> instance of a repo class met in the graph
        self.compiled: list[dict[str, Any]] = []  # torch.compile'd modules, saved as their original modules

    def persistent_id(self, obj: Any):  # called for every object: the common cases leave at once
        t = type(obj)
        if t in _ATOMS:
            return None
        if t is list or t is dict:
            if len(obj) < columns.MIN_ITEMS:
                return None
            cached = self._pids.get(id(obj))
            if cached is None:
                cached = columns.encode(obj)
                if cached is not None:
                    self._remember(obj, cached)
            return cached
        if t in _CONTAINERS:
            return None
        cached = self._pids.get(id(obj))
        if cached is not None:
            return cached
        pid: tuple | int | None = None  # persistent ids differ in length by kind; a tensor's is its table row
        if obj is _REBUILDER:
            return REBUILD_ID
        if isinstance(obj, type) or t in _FUNCTION_TYPES:
            module = self.module_map.canonical(getattr(obj, "__module__", None))
            if module is not None and not self.module_map.has_source(obj, module):
                module = None  # made by exec in a notebook: no source to pin
            if module is not None and _reachable(obj):
                pid = ("class" if isinstance(obj, type) else "function", module, obj.__qualname__)
                self.repo_objects[f"{module}:{obj.__qualname__}"] = obj
            elif module is not None and t in _FUNCTION_TYPES:
                pass  # a lambda or nested function of repo (or notebook) code: by its line, in reducer_override
            elif _is_interactive(getattr(obj, "__module__", None)):
                if not self.by_value:
                    raise _NeedsDill(obj.__qualname__)
                self.module_map.by_value.append(obj.__qualname__)
        elif t is types.ModuleType:
            module = self.module_map.canonical(obj.__name__)
            if module is not None:
                pid = ("module", module)
        elif t.__module__ == "torch" and t.__name__ == "Tensor" or t.__name__ == "Parameter" and is_tensor(obj):
            pid = self.storages.tensor_id(obj)
        elif is_storage(obj):
            return self.storages.persistent_id(obj)
        elif self.module_map.canonical(getattr(t, "__module__", None)) is not None:
            self.repo_instances[id(obj)] = obj
        if pid is not None:
            self._remember(obj, pid)
        return pid

    def _remember(self, obj: Any, pid: tuple | int) -> None:
        # The same pid each time, so a shared object stays shared after load: pickle memoizes a tuple pid, and a
        # tensor's row number names one row, whose tensor load makes once.
        self._pids[id(obj)] = pid
        self._keep.append(obj)

    def reducer_override(self, obj: Any):
        t = type(obj)
        if _plain_module(t):
            return _module_reduce(obj)
        if t in _FUNCTION_TYPES:
            module = self.module_map.canonical(getattr(obj, "__module__", None))
            if module is not None and self.module_map.has_source(obj, module):
                self.repo_objects[f"{module}:{obj.__qualname__}"] = obj
                return _function_reduce(obj, sys.modules[obj.__module__], self.module_map.line(obj.__code__))
        elif is_compiled(obj):
            # torch.compile's wrapper holds compiled code and compiler state no pickle can carry: the model is its
            # original module, and re-compiling after a load is the caller's choice.
            self.compiled.append(compile_options(obj, self.module_map.canonical))
            return _as_original(obj._orig_mod)
        elif self.by_value and t.__module__ == "numpy" and t.__name__ == "ndarray" and not obj.dtype.hasobject:
            return obj.__reduce_ex__(PROTOCOL)  # dill overrides numpy's own: contiguous data out of band again
        return NotImplemented


class GitpackPickler(_References, pickle.Pickler):
    """CPython's C pickler with repo code by reference, tensors, storages and numpy buffers out of band."""

    by_value = False

    def __init__(self, file, module_map: ModuleMap, storages: StorageCollector, buffers: list):
        pickle.Pickler.__init__(self, file, protocol=PROTOCOL, buffer_callback=buffers.append)
        self._setup(module_map, storages)


class DillPickler(_References, dill.Pickler):
    """dill's pickler, only for objects holding code defined outside any file (an interactive session)."""

    by_value = True

    def __init__(self, file, module_map: ModuleMap, storages: StorageCollector, buffers: list):
        dill.Pickler.__init__(self, file, protocol=PROTOCOL, byref=False, recurse=False, buffer_callback=buffers.append)
        self._setup(module_map, storages)


# What ``torch.nn.Module.__setstate__`` recreates when missing (every torch gitpack supports, 2.2 on, does):
# attribute -> the empty value it recreates.  A module of the default pickling writes these only when not
# empty, so a model of 10,000 small layers is 90,000 fewer objects to pickle, gate and unpickle.
_RECREATED = {"_forward_pre_hooks": dict, "_forward_pre_hooks_with_kwargs": dict, "_forward_hooks_with_kwargs": dict,
              "_forward_hooks_always_called": dict, "_state_dict_hooks": dict, "_state_dict_pre_hooks": dict,
              "_load_state_dict_pre_hooks": dict, "_load_state_dict_post_hooks": dict,
              "_non_persistent_buffers_set": set, "_is_full_backward_hook": None, "_backward_pre_hooks": dict}
_TRIMMED_MODULES: dict[type, bool] = {}
_NEWOBJ = copyreg.__newobj__  # type: ignore[attr-defined]  # pickle writes a call of it as NEWOBJ


def _plain_module(t: type) -> bool:
    """:func:`_pickles_like_a_plain_module`, remembered per class (asked for every object pickled); never for
    ``torch.compile``'s wrapper, which is saved as the module it wraps."""
    found = _TRIMMED_MODULES.get(t)
    if found is None:
        found = _TRIMMED_MODULES[t] = _pickles_like_a_plain_module(t) and not _compiled_type(t)
    return found


def _pickles_like_a_plain_module(t: type) -> bool:
    """Whether instances of *t* are an ``nn.Module`` that pickles and unpickles exactly as ``Module`` does."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(t, type) or not issubclass(t, torch.nn.Module):
        return False
    module = torch.nn.Module
    return (t.__reduce_ex__ is object.__reduce_ex__ and t.__reduce__ is object.__reduce__
            and getattr(t, "__getstate__", None) is module.__getstate__
            and getattr(t, "__setstate__", None) is module.__setstate__
            and not hasattr(t, "__getnewargs_ex__") and not hasattr(t, "__getnewargs__")
            and t not in copyreg.dispatch_table)


def _module_reduce(obj: Any) -> tuple:
    """What ``object.__reduce_ex__(5)`` gives for a plain module, less the empty hook registries its
    ``__setstate__`` recreates."""
    state = obj.__getstate__()
    for name, empty in _RECREATED.items():
        value = state.get(name, state)
        if value is None if empty is None else (type(value) is (OrderedDict if empty is dict else set) and not value):
            del state[name]
    return _NEWOBJ, (type(obj),), state


_EMPTY_CELL = ("gitpack-empty-cell",)
REBUILD_ID = ("rebuild",)


class _RebuildToken:
    """Pickled as the persistent id ``('rebuild',)``: at load, gitpack's rebuilder bound to that load's snapshot.

    The rebuilder is never a global, so no pickle can name it by GLOBAL and call it
    outside a load; the trust gate checks every argument it is given.
    """

    def __call__(self, *args):  # pickle's save_reduce requires a callable; this one only ever gets pickled
        raise TypeError("gitpack's rebuild token is not called at save time")


_REBUILDER = _RebuildToken()


def is_compiled(obj: Any) -> bool:
    """Whether *obj* is ``torch.compile``'s wrapper of a module (saved as the module itself)."""
    return _compiled_type(type(obj))


def _compiled_type(t: type) -> bool:
    return t.__name__ == "OptimizedModule" and t.__module__ == "torch._dynamo.eval_frame"


def original_of(obj: Any) -> Any:
    """The module a ``torch.compile``'d wrapper wraps, else *obj* itself: what a load returns."""
    return obj._orig_mod if is_compiled(obj) else obj


def _as_original(original: Any) -> tuple:
    """The reduce value that rebuilds *original* in place of the compiled wrapper being pickled.

    pickle refuses ``copyreg.__newobj__`` for an object of another class, so a plain ``object.__new__`` reduce
    becomes ``copyreg._reconstructor(cls, object, None)`` (the same new instance, then its state).  The copy is
    the wrapper's own: where the original module is also pickled elsewhere in the object, it is pickled twice
    (its tensors stay shared, being memoised by their storage).
    """
    reduced = _module_reduce(original) if _plain_module(type(original)) else original.__reduce_ex__(PROTOCOL)
    func, args, *rest = reduced
    if getattr(func, "__name__", "") == "__newobj__" and len(args) == 1 and args[0] is type(original):
        return (_RECONSTRUCTOR, (args[0], object, None), *rest)
    return reduced


def compile_options(compiled: Any, canonical: Any = None) -> dict[str, Any]:
    """What a manifest records of a ``torch.compile``'d module: its original class, the backend, ``fullgraph``,
    ``dynamic``, and the compiler options that differ from torch's configuration (``mode=`` and ``options=``)."""
    original = type(compiled._orig_mod)
    module = (canonical(original.__module__) if canonical else None) or original.__module__
    out: dict[str, Any] = {"class": f"{module}:{original.__qualname__}"}
    context = getattr(compiled, "dynamo_ctx", None)
    for key, attribute in (("fullgraph", "fullgraph"), ("dynamic", "_dynamic")):
        value = getattr(context, attribute, None)
        out[key] = value if value is None or isinstance(value, (bool, int, str)) else repr(value)
    backend: Any = getattr(context, "callback", None)
    name = None
    for _ in range(4):  # torch wraps the backend (catch-errors, convert-frame, debug wrappers) a few levels deep
        backend = getattr(backend, "_torchdynamo_orig_backend", None)
        name = getattr(backend, "__name__", None) or name
        if backend is None or isinstance(name, str):
            break
    out["backend"] = name if isinstance(name, str) else None
    config = getattr(context, "compiler_config", None)
    if isinstance(config, dict):
        out["options"] = _changed_options(config)
    return out


def _changed_options(config: dict[str, Any]) -> dict[str, Any]:
    """The entries of an inductor configuration that differ from the process's current one (what ``mode=`` or
    ``options=`` set), as JSON-safe values."""
    try:
        from torch._inductor import config as inductor_config

        current = inductor_config.get_config_copy()
    except Exception:  # no inductor in this torch
        return {}
    changed = {}
    for key, value in config.items():
        if key in current and current[key] != value:
            changed[str(key)] = value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)
    return changed


def _function_reduce(fn: types.FunctionType, module: types.ModuleType, line: int):
    """A repo function that is not reachable by name: a reference to its code (its line in the snapshot module)
    plus its data."""
    closure: tuple[Any, ...] | None = None
    if fn.__closure__ is not None:
        contents = []
        for cell in fn.__closure__:
            try:
                contents.append(cell.cell_contents)
            except ValueError:
                contents.append(_EMPTY_CELL)
        closure = tuple(contents)
    attributes = fn.__dict__ or None
    return (
        _REBUILDER,
        (module, fn.__qualname__, line, fn.__defaults__, fn.__kwdefaults__, closure, attributes),
    )


def dump(obj: Any, module_map: ModuleMap) -> tuple[bytes, StorageCollector, list, Any]:
    """Pickle *obj* with the C pickler (dill only when it holds interactive code); return the pickle bytes,
    the storages and buffers to write out of band, and the pickler (what it learned about repo objects)."""
    try:
        return _dump(obj, module_map, GitpackPickler)
    except _NeedsDill:
        module_map.by_value.clear()
        return _dump(obj, module_map, DillPickler)
    except PicklingError as exc:
        # What the C pickler cannot do by reference (a function of a module outside the repository, say), dill
        # may carry by value, as gitpack 0.1 did; such an archive then needs --trust, and the save says so.
        module_map.by_value.clear()
        try:
            return _dump(obj, module_map, DillPickler)
        except PicklingError:
            raise exc from None


def _dump(obj: Any, module_map: ModuleMap, pickler_class: type) -> tuple[bytes, StorageCollector, list, Any]:
    storages = StorageCollector()
    buffers: list = []
    out = io.BytesIO()
    pickler = pickler_class(out, module_map, storages, buffers)
    try:
        with gc_paused():
            pickler.dump(obj)
    except (GitpackError, _NeedsDill):
        raise
    except RecursionError:
        raise PicklingError("the object graph is too deep to pickle; raise sys.setrecursionlimit and retry") from None
    except Exception as exc:  # pickle raises many types here
        raise PicklingError(_explain(obj, exc)) from None
    return out.getvalue(), storages, buffers, pickler


def _explain(obj: Any, exc: Exception) -> str:
    what = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"cannot pickle {type(obj).__name__}: {what}; make that attribute picklable (or drop it) before saving"



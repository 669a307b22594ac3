"""Run-time guards: the reconstructors a pickle may call, checking their arguments again as they run.

The trust gate (:mod:`gitpack.pickling.gate`) has already proven, from the dry run, what
every call receives.  These wrappers check the same things on the real objects
(a storage is a storage, backward hooks are empty, a numpy dtype holds no
objects), so that a gap between the dry run and the real run could not turn
into a call the gate never saw.  They also hold gitpack's function rebuilder,
which takes source only from the snapshot's git tree.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

from ..errors import PolicyError, UnpicklingError
from ..isolation import canonical_module_name
from .classchecks import shadows_method
from .tensortable import view_fits


def _refuse(what: str) -> PolicyError:
    return PolicyError(f"the archive's pickle calls {what}; refusing it")


def _shape(value: Any) -> bool:
    return (isinstance(value, tuple) or type(value) is list) and all(type(d) is int and d >= 0 for d in value)


def _no_hooks(hooks: Any) -> bool:
    import collections

    return hooks is None or (type(hooks) is collections.OrderedDict and not hooks)


def _tensor(real: Callable, name: str) -> Callable:
    import torch

    def guarded(storage, offset, size, stride, *rest):
        if not isinstance(storage, torch.storage.TypedStorage) or type(offset) is not int or offset < 0 \
                or not _shape(size) or not _shape(stride) or len(size) != len(stride):
            raise _refuse(f"torch._utils.{name} with malformed arguments")
        dtype = rest[2] if name == "_rebuild_tensor_v3" and len(rest) > 2 else storage.dtype
        # (TypedStorage.nbytes() warns that TypedStorage is deprecated, on every load of a buffer torch pickled)
        nbytes = storage._nbytes() if hasattr(storage, "_nbytes") else storage.nbytes()
        if not view_fits(nbytes, offset, size, stride, dtype.itemsize):
            raise _refuse(f"torch._utils.{name} with a view beyond its storage")
        if rest and (type(rest[0]) is not bool or (len(rest) > 1 and not _no_hooks(rest[1]))):
            raise _refuse(f"torch._utils.{name} with backward hooks")
        return real(storage, offset, size, stride, *rest)

    return guarded


def _parameter(real: Callable, name: str) -> Callable:
    import torch

    def guarded(data, requires_grad, backward_hooks, *state):
        if not isinstance(data, torch.Tensor) or type(requires_grad) is not bool or not _no_hooks(backward_hooks):
            raise _refuse(f"torch._utils.{name} with malformed arguments or backward hooks")
        if state:
            _check_state_keys(torch.nn.Parameter, state[0], name)
        return real(data, requires_grad, backward_hooks, *state)

    return guarded


def _check_state_keys(cls: type, state: Any, where: str) -> None:
    parts = state if type(state) is tuple else (state,)
    for part in parts:
        if part is None:
            continue
        if type(part) is not dict:
            raise _refuse(f"{where} with state that is not attribute data")
        for key in part:
            if not isinstance(key, str) or key.startswith("__") or shadows_method(cls, key):
                raise _refuse(
                    f"{where} with state key {str(key)[:60]!r}, which would replace behaviour of {cls.__name__}"
                )


def _numpy_dtype_ok(dtype: Any, depth: int = 0) -> bool:
    """No objects, and sizes that add up: sub-arrays and fields inside the item (numpy trusts them)."""
    import numpy

    if not isinstance(dtype, numpy.dtype) or dtype.hasobject or dtype.kind == "O" or depth > 32:
        return False
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        count = 1
        for d in shape:
            count *= d
        if base.itemsize * count != dtype.itemsize or not _numpy_dtype_ok(base, depth + 1):
            return False
    for field in (dtype.fields or {}).values():
        if field[1] < 0 or field[1] + field[0].itemsize > dtype.itemsize or not _numpy_dtype_ok(field[0], depth + 1):
            return False
    return True


def _np(real: Callable, name: str) -> Callable:
    def guarded(*args):
        if name == "_reconstruct":
            if len(args) != 3 or args[1] != (0,):
                raise _refuse("numpy's _reconstruct with a shape")
        elif not args or not _numpy_dtype_ok(args[1] if name == "_frombuffer" else args[0]):
            raise _refuse(f"numpy's {name} with a dtype that is not plain data")
        return real(*args)

    return guarded


def _from_type(real: Callable, name: str) -> Callable:
    import torch

    def guarded(func, new_type, args, state):
        if getattr(func, "__gitpack_guarded__", None) not in _TENSOR_NAMES or not (
                isinstance(new_type, type) and issubclass(new_type, torch.Tensor)):
            raise _refuse(
                "torch._tensor._rebuild_from_type_v2 with something other than a tensor reconstructor and type"
            )
        if state is not None:
            _check_state_keys(new_type, state, name)
        return real(func, new_type, args, state)

    return guarded


def _from_numpy(real: Callable, name: str) -> Callable:
    def guarded(data, *rest):
        if not _numpy_dtype_ok(getattr(data, "dtype", None)):
            raise _refuse(f"torch._utils.{name} of an array whose dtype is not plain data")
        return real(data, *rest)

    return guarded


def _reconstructor(real: Callable, name: str) -> Callable:
    def guarded(cls, base, state):
        if not isinstance(cls, type) or base not in (object, list, dict, set, tuple) or not issubclass(cls, base):
            raise _refuse("copyreg._reconstructor with malformed arguments")
        return real(cls, base, state)

    return guarded


_TENSOR_NAMES = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter"}
_GUARDS: dict[tuple[str, str], Callable[[Callable, str], Callable]] = {
    **{("torch._utils", n): _tensor for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3")},
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _from_type,
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): _from_numpy,
    **{(m + ".multiarray", "_reconstruct"): _np for m in ("numpy.core", "numpy._core")},
    **{(m + ".multiarray", "scalar"): _np for m in ("numpy.core", "numpy._core")},
    **{(m + ".numeric", "_frombuffer"): _np for m in ("numpy.core", "numpy._core")},
    ("copyreg", "_reconstructor"): _reconstructor,
}


def wrap(module: str, name: str, obj: Any) -> Any:
    """*obj* (what the policy resolved for ``module.name``), wrapped in its guard when it is a reconstructor."""
    make = _GUARDS.get((module, name))
    if make is None:
        return obj
    guarded = functools.wraps(obj)(make(obj, name))
    # A marker in the function's attribute dict (typeshed's functools._Wrapped declares no attributes).
    guarded.__dict__["__gitpack_guarded__"] = name
    return guarded


# ----------------------------------------------------------------------------- the function rebuilder
_EMPTY_CELL = ("gitpack-empty-cell",)


def _iter_code(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _iter_code(const)


class Rebuilder:
    """Rebuilds a repo lambda or nested function from its snapshot's own source, for one load's namespace.

    The source comes only from the git tree object, by the module's path in
    the tree (:meth:`SnapshotNamespace.source_of`): never through
    ``module.__file__``, ``pathlib``, ``linecache`` or anything else a pickle
    could reach and change.  The module must be one of this snapshot's.
    """

    def __init__(self, namespace):
        self.namespace = namespace
        self._codes: dict[str, list[types.CodeType]] = {}

    def __call__(self, module, qualname, lineno, defaults=None, kwdefaults=None, closure=None, fn_dict=None):
        if not isinstance(module, types.ModuleType) or not isinstance(qualname, str) or type(lineno) is not int:
            raise UnpicklingError("malformed function reference in archive; the archive is corrupt")
        if self.namespace is None or not self.namespace.holds(module):
            raise PolicyError(f"function {qualname[:80]} refers to module {str(module.__name__)[:80]}, which is not "
                              "this archive's snapshot code; refusing it")
        if not (defaults is None or type(defaults) is tuple) or not (kwdefaults is None or type(kwdefaults) is dict) \
                or not (closure is None or type(closure) is tuple) or not (fn_dict is None or type(fn_dict) is dict):
            raise UnpicklingError(f"malformed function reference {qualname[:80]} in archive; the archive is corrupt")
        blob, source, filename = self.namespace.source_of(module.__name__)
        codes = self._codes.get(blob)
        if codes is None:
            codes = list(_iter_code(compile(source, filename, "exec", dont_inherit=True)))
            self._codes[blob] = codes
        name = qualname.rpartition(".")[2]
        matches = [c for c in codes
                   if getattr(c, "co_qualname", c.co_name) in (qualname, name) and c.co_firstlineno == lineno]
        if not matches:
            raise UnpicklingError(
                f"function {qualname} (line {lineno}) is not in {canonical_module_name(module.__name__)} "
                "of the snapshot"
            )
        code = matches[0]
        cells = None
        if code.co_freevars:
            values = closure or ()
            if len(values) != len(code.co_freevars):
                raise UnpicklingError(f"closure of {qualname} does not match its code in the snapshot")
            cells = tuple(types.CellType() if type(v) is tuple and v == _EMPTY_CELL else types.CellType(v)
                          for v in values)
        elif closure:
            raise UnpicklingError(f"closure of {qualname} does not match its code in the snapshot")
        fn = types.FunctionType(code, module.__dict__, name, defaults, cells)
        fn.__qualname__ = qualname
        if kwdefaults:
            fn.__kwdefaults__ = kwdefaults
        for key, value in (fn_dict or {}).items():
            if not isinstance(key, str) or key.startswith("__"):
                raise PolicyError(f"function {qualname[:80]} with attribute {str(key)[:40]!r}; refusing it")
            setattr(fn, key, value)
        return fn

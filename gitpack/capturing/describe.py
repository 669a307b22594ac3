"""Describing a constructor argument as JSON: values as they were, tensors and arrays by type and shape."""

from __future__ import annotations

import json
import math
import reprlib
import sys
import types
from collections.abc import Callable
from typing import Any

from .records import ArgRef, is_candidate

MAX_ITEMS = 1000  # containers longer than this are described, not copied
MAX_STR = 10_000
REPR_LIMIT = 120
SMALL_TENSOR = 8  # tensors and arrays with at most this many elements also get their values
_SCALARS = (type(None), bool, int, str)
_SHORT = reprlib.Repr()
_SHORT.maxstring = REPR_LIMIT
_SHORT.maxother = REPR_LIMIT


# --------------------------------------------------------------------------- describing values
def qualified_name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
    return f"{module}:{qualname}"


def _short(value: Any) -> str:
    try:
        return _SHORT.repr(value)
    except Exception:  # a broken __repr__ must not break a save
        return "<unrepresentable>"


def _safe_repr_type(t: type) -> bool:
    """Types whose repr is cheap, side-effect free and informative: stdlib/builtin values."""
    module = (getattr(t, "__module__", "") or "").partition(".")[0]
    return module == "builtins" or module in getattr(sys, "stdlib_module_names", ()) or module in ("torch", "numpy")


def describe(value: Any, as_ref: Callable[[Any], Any], depth: int = 0) -> Any:
    """*value* as JSON where it is JSON, a typed description where it is not.

    *as_ref* turns a possible repo object into a reference (or returns None).
    """
    t = type(value)
    if t in _SCALARS:
        if t is str and len(value) > MAX_STR:
            return {"type": "str", "len": len(value), "repr": _short(value)}
        return value
    if t is float:
        return value if math.isfinite(value) else {"type": "float", "repr": repr(value)}
    if depth > 32:
        return {"type": qualified_name(t), "repr": "<nested too deeply>"}
    if t is list or t is tuple:
        if len(value) > MAX_ITEMS:
            return {"type": t.__name__, "len": len(value), "repr": _short(value)}
        return [describe(v, as_ref, depth + 1) for v in value]
    if t is dict:
        if len(value) > MAX_ITEMS or not all(type(k) is str for k in value):
            return {"type": "dict", "len": len(value), "repr": _short(value)}
        return {k: describe(v, as_ref, depth + 1) for k, v in value.items()}
    if isinstance(value, type):
        return {"type": "class", "name": qualified_name(value)}
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return {"type": "function", "name": qualified_name(value)}
    ref = as_ref(value)
    if ref is not None:
        return ref
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _describe_tensor(value, torch)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        out = {"type": qualified_name(t), "shape": list(value.shape), "dtype": str(value.dtype)}
        if value.size <= SMALL_TENSOR and not value.dtype.hasobject:
            out["repr"] = _short(value.tolist())
        return out
    out = {"type": qualified_name(t)}
    if t in (set, frozenset) and len(value) <= MAX_ITEMS:
        items = [describe(v, as_ref, depth + 1) for v in value]
        try:
            items.sort(key=lambda x: json.dumps(x, sort_keys=True, default=str))
        except TypeError:
            pass
        out["items"] = items
    elif _safe_repr_type(t) and (not hasattr(value, "__len__") or _len(value) <= MAX_ITEMS):
        out["repr"] = _short(value)
    return out


def _len(value: Any) -> int:
    try:
        return len(value)
    except Exception:
        return MAX_ITEMS + 1


def _describe_tensor(value: Any, torch: Any) -> dict:
    out = {
        "type": qualified_name(type(value)),
        "shape": list(value.shape),
        "dtype": str(value.dtype).removeprefix("torch."),
        "device": str(value.device),
        "requires_grad": bool(value.requires_grad),
    }
    try:
        if value.device.type == "cpu" and value.layout == torch.strided and value.numel() <= SMALL_TENSOR:
            out["repr"] = _short(value.detach().tolist())
    except Exception:  # fake, lazy or uninitialised tensors have no values to show
        pass
    return out


def capture_ref(value: Any) -> ArgRef | None:
    return ArgRef(value) if is_candidate(type(value)) else None



"""The saved object's shape: where each object sits in the graph, and a summary of every torch module.

:func:`object_paths` walks the graph breadth-first from the saved root and names
each object by its shortest path (``$``, ``$.layer``, ``$.blocks[0]``,
``$.cfg["lr"]``); the capture tree and the structure summary both use these
names, so they line up.  :func:`summarize` records, for every
``torch.nn.Module``, its class, ``extra_repr()``, parameter and buffer counts and
its own tensors' shapes, dtypes and devices.  Only tensor metadata is read
(``numel``, ``element_size``, ``shape``): no tensor data is copied or moved, so
it is as cheap for a model on a GPU or on the meta device as on the CPU.
Nothing here imports torch; it is only used when the object already did.
"""

from __future__ import annotations

import json
import sys
import types
from collections import deque
from collections.abc import Callable
from typing import Any

ROOT = "$"
MAX_VISITS = 2_000_000
_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray, memoryview, range)
_LEAF_TYPES = frozenset(_LEAVES)  # exact types skipped before a path is even formatted (big lists of numbers)
_OPAQUE = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType,
           types.CodeType, types.FrameType)
_module_internals: frozenset[str] | None = None


def _torch() -> Any:
    return sys.modules.get("torch")


def is_module(obj: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(obj, torch.nn.Module)


def _internals(torch: Any) -> frozenset[str]:
    """The attribute names every ``nn.Module`` has (hooks, registries): not part of the user's graph."""
    global _module_internals
    if _module_internals is None:
        _module_internals = frozenset(vars(torch.nn.Module())) | {"_modules", "_parameters", "_buffers"}
    return _module_internals


def _attr_path(path: str, name: str) -> str:
    return f"{path}.{name}" if name.isidentifier() or name.isdigit() else f"{path}[{json.dumps(name)}]"


def _children(obj: Any, path: str, torch: Any) -> list[tuple[Any, str]]:
    t = type(obj)
    if t is dict or isinstance(obj, dict):
        out = []
        for key, value in list(obj.items()):
            if type(value) in _LEAF_TYPES:
                continue
            if type(key) is str:
                out.append((value, f"{path}[{json.dumps(key)}]"))
            elif type(key) in (int, bool, float) or key is None:
                out.append((value, f"{path}[{key!r}]"))
        return out
    if t is list or t is tuple or isinstance(obj, (list, tuple)):
        return [(value, f"{path}[{i}]") for i, value in enumerate(obj) if type(value) not in _LEAF_TYPES]
    if isinstance(obj, (set, frozenset)):
        return []
    out = []
    attrs = getattr(obj, "__dict__", None)
    skip: frozenset[str] = frozenset()
    if torch is not None and isinstance(obj, torch.nn.Module):
        skip = _internals(torch)
        modules = attrs.get("_modules") if isinstance(attrs, dict) else None
        for name, child in (modules or {}).items():
            if child is not None:
                out.append((child, f"{path}.{name}"))
    if isinstance(attrs, dict):
        out += [(value, _attr_path(path, name)) for name, value in list(attrs.items())
                if isinstance(name, str) and name not in skip]
    for klass in t.__mro__:
        slots = klass.__dict__.get("__slots__")
        if slots is None:
            continue
        for name in [slots] if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                value = object.__getattribute__(obj, name)
            except Exception:
                continue
            out.append((value, _attr_path(path, name)))
    return out


def object_paths(root: Any, want: Callable[[Any], bool], max_visits: int = MAX_VISITS) -> dict[int, tuple[str, Any]]:
    """``id -> (path, object)`` for every object in *root*'s graph that *want* accepts, in breadth-first order.

    Tensors, arrays, strings, numbers, classes and functions are leaves.  Each
    object is named by the first (shortest) path that reaches it.
    """
    torch = _torch()
    numpy = sys.modules.get("numpy")
    leaves: tuple = _LEAVES + _OPAQUE
    if torch is not None:
        leaves += (torch.Tensor, torch.dtype, torch.device)
    if numpy is not None:
        leaves += (numpy.ndarray, numpy.generic)
    found: dict[int, tuple[str, Any]] = {}
    seen: set[int] = set()
    queue: deque[tuple[Any, str]] = deque([(root, ROOT)])
    visits = 0
    while queue and visits < max_visits:
        obj, path = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        visits += 1
        try:
            if want(obj):
                found[id(obj)] = (path, obj)
        except Exception:
            pass
        if isinstance(obj, leaves):
            continue
        try:
            children = _children(obj, path, torch)
        except Exception:  # exotic objects (proxies, C extensions) are leaves
            continue
        for child, child_path in children:
            if id(child) in seen or type(child) in _LEAF_TYPES:
                continue
            queue.append((child, child_path))
    return found


def _dtype(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def _numel(t: Any) -> int:
    try:
        return int(t.numel())
    except Exception:  # uninitialised (lazy) parameters have no size yet
        return 0


def _nbytes(t: Any) -> int:
    try:
        return _numel(t) * int(t.element_size())
    except Exception:
        return 0


def _tensor_info(t: Any, kind: str) -> dict[str, Any]:
    try:
        shape: Any = list(t.shape)
    except Exception:
        shape = None
    return {"kind": kind, "shape": shape, "dtype": _dtype(t), "device": str(t.device),
            "requires_grad": bool(t.requires_grad)}


def _totals(params: list, buffers: list) -> dict[str, Any]:
    seen: set[int] = set()
    nbytes = 0
    for t in params + buffers:
        if id(t) not in seen:
            seen.add(id(t))
            nbytes += _nbytes(t)
    return {
        "parameters": {"total": sum(_numel(p) for p in params),
                       "trainable": sum(_numel(p) for p in params if p.requires_grad),
                       "tensors": len(params)},
        "buffers": {"total": sum(_numel(b) for b in buffers), "tensors": len(buffers)},
        "bytes": nbytes,
    }


def _class_name(cls: type, module_map: Any) -> str:
    module = module_map.canonical(cls.__module__) if module_map is not None else None
    return f"{module or cls.__module__}:{cls.__qualname__}"


def summarize(paths: dict[int, tuple[str, Any]], module_map: Any = None) -> dict[str, Any]:
    """Every ``nn.Module`` among *paths*: class, extra_repr, counts (with its submodules) and its own tensors."""
    modules = [(path, obj) for path, obj in paths.values() if is_module(obj)]
    entries = []
    all_params: dict[int, Any] = {}
    all_buffers: dict[int, Any] = {}
    for path, module in modules:
        try:
            extra = module.extra_repr()
        except Exception:
            extra = ""
        params = list(module.parameters())
        buffers = list(module.buffers())
        for p in params:
            all_params[id(p)] = p
        for b in buffers:
            all_buffers[id(b)] = b
        tensors = {name: _tensor_info(p, "parameter") for name, p in module.named_parameters(recurse=False)}
        tensors.update({name: _tensor_info(b, "buffer") for name, b in module.named_buffers(recurse=False)})
        entry = {"path": path, "class": _class_name(type(module), module_map), "extra_repr": extra}
        entry.update(_totals(params, buffers))
        entry["tensors"] = tensors
        entries.append(entry)
    return {"modules": entries, "total": _totals(list(all_params.values()), list(all_buffers.values()))}

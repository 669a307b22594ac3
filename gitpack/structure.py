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

from .pickling.tensors import dtype_name

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
    try:
        device = "cpu" if t.is_cpu else str(t.device)
    except Exception:
        device = str(t.device)
    return {"kind": kind, "shape": shape, "dtype": dtype_name(t.dtype), "device": device,
            "requires_grad": bool(t.requires_grad)}


class _Counts:
    """A tensor's numel, bytes and trainability, read once however many modules hold it."""

    __slots__ = ("numel", "nbytes", "trainable")

    def __init__(self, t: Any):
        self.numel = _numel(t)
        self.nbytes = _nbytes(t) if self.numel else 0
        self.trainable = bool(getattr(t, "requires_grad", False))


def _totals(params: dict[int, _Counts], buffers: dict[int, _Counts]) -> dict[str, Any]:
    nbytes = sum(c.nbytes for c in params.values()) + sum(c.nbytes for i, c in buffers.items() if i not in params)
    return {
        "parameters": {"total": sum(c.numel for c in params.values()),
                       "trainable": sum(c.numel for c in params.values() if c.trainable),
                       "tensors": len(params)},
        "buffers": {"total": sum(c.numel for c in buffers.values()), "tensors": len(buffers)},
        "bytes": nbytes,
    }


def _class_name(cls: type, module_map: Any) -> str:
    module = module_map.canonical(cls.__module__) if module_map is not None else None
    return f"{module or cls.__module__}:{cls.__qualname__}"


def _subtrees(roots: list[Any]) -> dict[int, tuple[dict[int, _Counts], dict[int, _Counts]]]:
    """``id(module) -> (parameters, buffers)`` of every module under *roots*, each module's own tensors and its
    submodules' (by identity, as ``module.parameters()`` counts them), in one post-order pass: each tensor's
    counts are read once, and no module walks its subtree again."""
    out: dict[int, tuple[dict[int, _Counts], dict[int, _Counts]]] = {}
    counts: dict[int, _Counts] = {}

    def own(tensors: dict) -> dict[int, _Counts]:
        found = {}
        for t in tensors.values():
            if t is not None:
                c = counts.get(id(t))
                if c is None:
                    c = counts[id(t)] = _Counts(t)
                found[id(t)] = c
        return found

    for root in roots:
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            module, children_done = stack.pop()
            if id(module) in out:
                continue
            children = [c for c in (module.__dict__.get("_modules") or {}).values() if c is not None]
            if not children_done:
                stack.append((module, True))
                stack.extend((c, False) for c in children if id(c) not in out)
                continue
            params = own(module.__dict__.get("_parameters") or {})
            buffers = own(module.__dict__.get("_buffers") or {})
            for child in children:
                child_params, child_buffers = out.get(id(child), ({}, {}))  # a cycle: counted once, where met
                params.update(child_params)
                buffers.update(child_buffers)
            out[id(module)] = (params, buffers)
    return out


def _own_tensors(module: Any, registry: str, kind: str) -> dict[str, dict[str, Any]]:
    """What ``named_parameters(recurse=False)`` / ``named_buffers(recurse=False)`` list (each tensor once),
    read from the registry without torch's generator machinery."""
    out: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    for name, t in (module.__dict__.get(registry) or {}).items():
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            out[name] = _tensor_info(t, kind)
    return out


MAX_LISTED = 64  # a ParameterList or ParameterDict longer than this is summarised, not listed line by line


def _extra_repr(module: Any) -> str:
    """``module.extra_repr()``; for a long ParameterList or ParameterDict, whose extra_repr is one line per
    parameter (20,000 lines that the structure's ``tensors`` already list), just how many it holds."""
    torch = _torch()
    if type(module) in (torch.nn.ParameterList, torch.nn.ParameterDict) and len(module) > MAX_LISTED:
        return f"{len(module)} parameters"
    try:
        return module.extra_repr()
    except Exception:
        return ""


def summarize(paths: dict[int, tuple[str, Any]], module_map: Any = None) -> dict[str, Any]:
    """Every ``nn.Module`` among *paths*: class, extra_repr, counts (with its submodules) and its own tensors."""
    modules = [(path, obj) for path, obj in paths.values() if is_module(obj)]
    subtree = _subtrees([module for _, module in modules])
    entries = []
    all_params: dict[int, _Counts] = {}
    all_buffers: dict[int, _Counts] = {}
    for path, module in modules:
        extra = _extra_repr(module)
        params, buffers = subtree[id(module)]
        all_params.update(params)
        all_buffers.update(buffers)
        tensors = _own_tensors(module, "_parameters", "parameter")
        tensors.update(_own_tensors(module, "_buffers", "buffer"))
        entry: dict[str, Any] = {"path": path, "class": _class_name(type(module), module_map), "extra_repr": extra}
        entry.update(_totals(params, buffers))
        entry["tensors"] = tensors
        entries.append(entry)
    return {"modules": entries, "total": _totals(all_params, all_buffers)}

"""The capture tree, at save: every repo object's arguments keyed by its path from the root; and reading it.

:func:`build_tree` turns the records of the objects the pickler met into a
JSON tree keyed by each object's path from the saved root (``$``,
``$.layer``, ``$.blocks[0]``); other repo objects become ``{"$ref": path}``.
Objects without a record (built before capture was on, or loaded) get their
arguments inferred from the ``__init__`` signature matched against instance
attributes, and are marked ``"origin": "inferred"``.
"""

from __future__ import annotations

import inspect
import json
from collections import deque
from typing import Any

from .describe import capture_ref, describe
from .records import CAPTURED, INFERRED, MISSING, ArgRef, Record, record_for


# --------------------------------------------------------------------------- the tree, at save
def _class_name(cls: type, module_map: Any) -> str:
    module = module_map.canonical(getattr(cls, "__module__", None)) if module_map is not None else None
    return f"{module or cls.__module__}:{cls.__qualname__}"


def _attribute(obj: Any, name: str) -> Any:
    """The instance attribute that most likely holds constructor argument *name*, or MISSING."""
    attrs = getattr(obj, "__dict__", None)
    containers = [attrs] if isinstance(attrs, dict) else []
    if isinstance(attrs, dict):
        for internal in ("_modules", "_parameters", "_buffers"):  # torch.nn.Module keeps these apart
            if isinstance(attrs.get(internal), dict):
                containers.append(attrs[internal])
    for candidate in (name, "_" + name):
        for container in containers:
            if candidate in container:
                return container[candidate]
    return MISSING


def _inferred(obj: Any) -> tuple[dict[str, Any], list[str]]:
    try:
        params = list(inspect.signature(type(obj)).parameters.values())
    except (TypeError, ValueError):
        params = []
    args: dict[str, Any] = {}
    unknown: list[str] = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = _attribute(obj, p.name)
        if value is MISSING:
            unknown.append(p.name)
        else:
            args[p.name] = describe(value, capture_ref)
    return args, unknown


def build_tree(instances: dict[int, Any], paths: dict[int, tuple[str, Any]], module_map: Any) -> dict[str, Any]:
    """The capture tree of the repo objects the pickler met (*instances*, id -> object).

    *paths* maps object ids to their path from the saved root (see
    :func:`gitpack.structure.object_paths`); objects it lacks are named after
    their class.  A referenced repo object that is not part of the saved graph
    (an argument that was only read) gets its own entry, named after the
    argument that carried it.
    """
    keys: dict[int, str] = {}
    queue: deque[tuple[str, Any, Record | None]] = deque()
    for obj_id, (path, obj) in paths.items():
        if obj_id in instances:
            keys[obj_id] = path
            queue.append((path, obj, record_for(obj)))
    unnamed: dict[str, int] = {}
    for obj_id, obj in instances.items():
        if obj_id not in keys:
            name = type(obj).__qualname__
            unnamed[name] = unnamed.get(name, 0) + 1
            keys[obj_id] = f"<{name} #{unnamed[name]}>"
            queue.append((keys[obj_id], obj, record_for(obj)))

    def is_repo(cls: type) -> bool:
        return module_map.canonical(getattr(cls, "__module__", None)) is not None

    def resolve(value: Any, owner: str, where: str) -> Any:
        if isinstance(value, ArgRef):
            target = value.target()
            if value.ref is None and type(instances.get(value.key)) is value.cls:
                target = instances[value.key]
            if target is not None and id(target) in keys:
                return {"$ref": keys[id(target)]}
            if is_repo(value.cls) and (value.record is not None or target is not None):
                key = f"{owner}({where})"
                if target is not None:
                    keys[id(target)] = key
                record = value.record if value.record is not None and value.record.cls is value.cls else None
                queue.append((key, target, record))
                return {"$ref": key}
            return {"type": _class_name(value.cls, module_map)}
        if isinstance(value, list):
            return [resolve(v, owner, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: resolve(v, owner, f"{where}[{json.dumps(k)}]") for k, v in value.items()}
        return value

    objects: dict[str, Any] = {}
    while queue:
        key, obj, rec = queue.popleft()
        if key in objects:
            continue
        cls = rec.cls if rec is not None else type(obj)
        if rec is not None:
            entry = {"class": _class_name(cls, module_map), "origin": CAPTURED,
                     "args": {}, "defaults": list(rec.defaults)}
            raw = rec.args
            unknown = None
        else:
            raw, unknown = _inferred(obj)
            entry = {"class": _class_name(cls, module_map), "origin": INFERRED, "args": {}, "defaults": []}
        objects[key] = entry
        entry["args"] = {name: resolve(value, key, name) for name, value in raw.items()}
        if unknown:
            entry["unknown"] = unknown
    return {"objects": objects}


# --------------------------------------------------------------------------- reading it back
def format_value(value: Any, limit: int = 200) -> str:
    if isinstance(value, dict) and set(value) == {"$ref"}:
        return str(value["$ref"])
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_call(entry: dict[str, Any], limit: int = 300) -> str:
    """``package:MyLayer(n_symbols=100, n_embed=64 (default))``; inferred entries say so."""
    defaults = set(entry.get("defaults") or ())
    parts = []
    for name, value in (entry.get("args") or {}).items():
        parts.append(f"{name}={format_value(value, 80)}" + (" (default)" if name in defaults else ""))
    parts += [f"{name}=?" for name in entry.get("unknown") or ()]
    text = f"{entry.get('class', '?')}({', '.join(parts)})"
    if entry.get("origin") == INFERRED:
        text += " (inferred)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summary_lines(tree: dict[str, Any] | None, max_lines: int = 40) -> list[str]:
    """One line per captured object, for the snapshot commit message."""
    objects = (tree or {}).get("objects") or {}
    lines = [f"{key} = {format_call(entry)}" for key, entry in objects.items()]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... {len(lines) - max_lines} more in the archive manifest"]
    return lines

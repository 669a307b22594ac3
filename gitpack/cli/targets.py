"""Resolving a CLI TARGET (``module:attr`` or ``path/to/file.py:attr``) to the object to save."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import TargetError

_USAGE = "TARGET must be module:attr or path/to/file.py:attr"


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings to a dict; each value is JSON where it parses, else a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise TargetError(f"-p {pair!r} must look like key=value (value parsed as JSON, else a string)")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        params[key.strip()] = value
    return params


def parse_size_option(flag: str, value: str | None) -> int | None:
    """``--size-cap 10m`` and the like: bytes, or a number with k, m, g (1024s) or kB, MB, GB (1000s)."""
    if value is None:
        return None
    from ..sizes import parse_size

    try:
        return parse_size(value)
    except ValueError:
        raise TargetError(f"{flag} {value!r} is not a size; give bytes (20000000) or a number with a unit (20MB, 20m)")


def _import_target_module(spec: str) -> Any:
    cwd = os.getcwd()
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        file = Path(spec).absolute()
        if not file.is_file():
            raise TargetError(f"{spec}: no such file; {_USAGE}")
        root, dotted = source_root(file)
        if dotted is not None:
            return _import_from_root(spec, file, root, dotted)
        directory = str(file.parent)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        name = file.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(file):
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, file)
        if module_spec is None or module_spec.loader is None:  # a file Python has no loader for (not .py)
            raise TargetError(f"{spec}: not a Python file; {_USAGE}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    return importlib.import_module(spec)


def source_root(file: Path) -> tuple[Path, str | None]:
    """The source root above *file* and its dotted module name there, when *file* lies in a package
    (``src/pkg/mod.py`` with ``src/pkg/__init__.py``: ``(src, "pkg.mod")``); else ``(its directory, None)``."""
    parts = [file.stem] if file.name != "__init__.py" else []
    directory = file.parent
    while (directory / "__init__.py").is_file() and directory.name.isidentifier() and directory.parent != directory:
        parts.insert(0, directory.name)
        directory = directory.parent
    if directory == file.parent or not all(p.isidentifier() for p in parts):
        return file.parent, None
    return directory, ".".join(parts)


def _import_from_root(spec: str, file: Path, root: Path, dotted: str) -> Any:
    """``src/pkg/mod.py`` imported as ``pkg.mod`` with ``src`` on the path, so its relative imports work and its
    classes are saved under the name every other import uses; refused, saying which form to use, when ``pkg``
    resolves to another copy (an installed one, another directory on the path)."""
    form = f"{dotted}:ATTR from {root}" if root != Path.cwd() else f"{dotted}:ATTR"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(dotted)
    except ImportError as exc:
        raise TargetError(f"{spec} is module {dotted} of source root {root}, which cannot be imported ({exc}); "
                          f"run `gitpack save {form}` where {dotted.split('.')[0]} is importable") from None
    found = getattr(module, "__file__", None)
    if not (isinstance(found, str) and os.path.realpath(found) == os.path.realpath(file)):
        raise TargetError(f"{spec} is module {dotted} of source root {root}, but `import {dotted}` finds "
                          f"{found or 'another module'}; save it as `gitpack save {form}` in an environment "
                          f"where that is the package {dotted.split('.')[0]} that is imported")
    return module


def resolve(target: str, params: dict[str, Any]) -> Any:
    """Import TARGET; call it with *params* if it is a function or class, else return it as it is."""
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise TargetError(f"{target!r}: {_USAGE}")
    try:
        os.getcwd()
    except FileNotFoundError:
        raise TargetError("the current directory no longer exists (was it deleted?); cd into your project") from None
    try:
        module = _import_target_module(module_part)
    except TargetError:
        raise
    except ModuleNotFoundError as exc:
        raise TargetError(
            f"cannot import {module_part!r} ({exc}); {_USAGE}, run from the directory it is importable from"
        ) from None
    except Exception as exc:
        raise TargetError(f"importing {module_part!r} failed: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"{module_part!r} has no attribute {attr!r}; check TARGET") from None
    if callable(obj) and (isinstance(obj, type) or hasattr(obj, "__code__")):
        try:
            return obj(**params)
        except Exception as exc:
            raise TargetError(f"calling {target} with {params} failed: {type(exc).__name__}: {exc}") from None
    if params:
        raise TargetError(f"{target} is not a function or class, so -p parameters cannot be passed to it")
    return obj

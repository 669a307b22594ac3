"""Provenance check at save: is the code the object was built with the code being snapshotted?

A module can be imported and then edited before the save (a long training run
while someone works on the file).  The snapshot would then hold code the object
was never built with, and loading it would silently run something else.  So at
save, every repo class and function the object uses is compared with its
source in the snapshot:

* *what is used*: the classes and functions the pickler met, their repo base
  classes and methods, and the repo functions and classes their code names
  (followed transitively), so a helper called from ``forward`` counts too;
* *how it is compared*: the snapshot file is compiled and each function's code
  object is compared with the one in memory (bytecode, constants, names,
  nested code), ignoring line numbers, so an edit elsewhere in the file that
  only shifts lines is not a mismatch.  Functions pickled by their line
  (lambdas, nested functions) must also sit on the same line.  Literal default
  values are compared through the file's AST; methods defined on disk but
  missing in memory are reported too.

A docstring edit counts as a change (it is part of the code object); module
and class level *data* (constants, registries) is not compared, because
programs legitimately change it at run time.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
import types
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import StaleCodeError

_CO_OPTIMIZED = inspect.CO_OPTIMIZED


@dataclass(frozen=True)
class StaleCode:
    """One function or class whose code in memory differs from the snapshot's."""

    module: str
    qualname: str
    reason: str

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname} ({self.reason})"

    def as_json(self) -> dict[str, str]:
        return {"module": self.module, "qualname": self.qualname, "reason": self.reason}


# --------------------------------------------------------------------------- what the object uses
class _Used:
    """The repo classes and functions an object depends on, grouped by canonical module."""

    def __init__(self, module_map: Any):
        self.module_map = module_map
        self.classes: dict[int, tuple[str, type]] = {}
        self.functions: dict[int, tuple[str, types.FunctionType, bool]] = {}  # id -> (module, fn, by_line)

    def module_of(self, obj: Any) -> str | None:
        name = getattr(obj, "__module__", None)
        return self.module_map.canonical(name) if isinstance(name, str) else None

    def add(self, obj: Any) -> None:
        if isinstance(obj, type):
            self.add_class(obj)
        elif isinstance(obj, types.FunctionType):
            self.add_function(obj)

    def add_class(self, cls: type) -> None:
        if id(cls) in self.classes:
            return
        module = self.module_of(cls)
        if module is None:
            return
        self.classes[id(cls)] = (module, cls)
        for base in cls.__mro__[1:]:
            self.add_class(base)
        for member in list(vars(cls).values()):
            for fn in _functions_of(member):
                self.add_function(fn)
            if isinstance(member, type) and member.__module__ == cls.__module__:
                self.add_class(member)

    def add_function(self, fn: Any) -> None:
        try:
            fn = inspect.unwrap(fn)
        except ValueError:
            return
        if not isinstance(fn, types.FunctionType) or id(fn) in self.functions:
            return
        module = self.module_of(fn)
        if module is None or not _code_is_from_module(fn, self.module_map):
            return
        self.functions[id(fn)] = (module, fn, "<" in fn.__qualname__)
        names = _all_names(fn.__code__)
        for name in names:
            target = fn.__globals__.get(name)
            if isinstance(target, (type, types.FunctionType)):
                self.add(target)
            elif isinstance(target, types.ModuleType) and self.module_map.canonical(target.__name__):
                for attr in names:
                    value = getattr(target, attr, None)
                    if (isinstance(value, (type, types.FunctionType))
                            and getattr(value, "__module__", None) == target.__name__):
                        self.add(value)


def _functions_of(member: Any) -> list[Any]:
    if isinstance(member, (staticmethod, classmethod)):
        return [member.__func__]
    if isinstance(member, property):
        return [f for f in (member.fget, member.fset, member.fdel) if f is not None]
    if isinstance(member, types.FunctionType):
        return [member]
    func = getattr(member, "__func__", None)  # functools.cached_property and similar
    if isinstance(func, types.FunctionType):
        return [func]
    func = getattr(member, "func", None)
    return [func] if isinstance(func, types.FunctionType) else []


def _code_is_from_module(fn: types.FunctionType, module_map: Any) -> bool:
    """A decorator's wrapper (code from another file) is not the module's own code; a notebook's own code is
    what its cells compiled."""
    module = sys.modules.get(fn.__module__)
    file = getattr(module, "__file__", None)
    if not file:
        notebook = getattr(module_map, "notebook", None)
        return notebook is not None and fn.__code__.co_filename in notebook.offsets
    return os.path.realpath(fn.__code__.co_filename) == os.path.realpath(file)


def _all_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _all_names(const)
    return names


def _qualname(code: types.CodeType, fallback: str) -> str:
    return getattr(code, "co_qualname", None) or fallback


# --------------------------------------------------------------------------- comparing code
def _const_equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, types.CodeType):
        return _same_code(a, b)
    if isinstance(a, (tuple, frozenset)):
        if len(a) != len(b):
            return False
        if isinstance(a, frozenset):
            return a == b
        return all(_const_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (float, complex)):
        return repr(a) == repr(b)
    try:
        return bool(a == b)
    except Exception:
        return False


def _same_code(a: types.CodeType, b: types.CodeType) -> bool:
    """Same bytecode, constants, names and nested code; line numbers are ignored."""
    for attr in ("co_code", "co_names", "co_varnames", "co_freevars", "co_cellvars", "co_argcount",
                 "co_posonlyargcount", "co_kwonlyargcount", "co_flags", "co_name", "co_exceptiontable"):
        if getattr(a, attr, None) != getattr(b, attr, None):
            return False
    if len(a.co_consts) != len(b.co_consts):
        return False
    return all(_const_equal(x, y) for x, y in zip(a.co_consts, b.co_consts, strict=True))


def _index_code(module_code: types.CodeType) -> dict[str, list[types.CodeType]]:
    index: dict[str, list[types.CodeType]] = defaultdict(list)

    def walk(code: types.CodeType, prefix: str) -> None:
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                qualname = _qualname(const, prefix + const.co_name)
                index[qualname].append(const)
                walk(const, qualname + (".<locals>." if const.co_flags & _CO_OPTIMIZED else "."))

    walk(module_code, "")
    return index


def _index_defs(tree: ast.AST) -> dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]]:
    index: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = defaultdict(list)

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = prefix + child.name
                index[qualname].append(child)
                walk(child, qualname + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)

    walk(tree, "")
    return index


_NOT_LITERAL = object()


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except Exception:
        return _NOT_LITERAL


def _value_equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    try:
        return bool(a == b)
    except Exception:
        return False


def _defaults_match(fn: types.FunctionType, node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Literal defaults in the file's ``def`` equal the function's defaults in memory (others are not compared)."""
    args = node.args
    in_memory = fn.__defaults__ or ()
    if len(args.defaults) != len(in_memory):
        return False
    for expr, value in zip(args.defaults, in_memory, strict=True):
        literal = _literal(expr)
        if literal is not _NOT_LITERAL and not _value_equal(literal, value):
            return False
    kwdefaults = fn.__kwdefaults__ or {}
    on_disk = {a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None}
    if set(on_disk) != set(kwdefaults):
        return False
    for name, expr in on_disk.items():
        literal = _literal(expr)
        if literal is not _NOT_LITERAL and not _value_equal(literal, kwdefaults[name]):
            return False
    return True


class _Snapshot:
    """One module's source in the snapshot, compiled and indexed by qualname."""

    def __init__(self, source: bytes | str, filename: str):
        code = compile(source, filename, "exec", dont_inherit=True)
        self.code = _index_code(code)
        self.defs = _index_defs(ast.parse(source, filename))

    @classmethod
    def of_cells(cls, cells: list[tuple[int, str]], filename: str) -> _Snapshot:
        """A notebook module, each cell compiled on its own as the kernel compiled it (the bytecode of
        ``nn.Linear(...)`` depends on whether ``nn`` was imported in the same compilation unit), at its
        lines in the module."""
        snap = cls("", filename)
        for offset, text in cells:
            cell = cls("\n" * offset + text, filename)
            for qualname, codes in cell.code.items():
                snap.code[qualname] += codes
            for qualname, defs in cell.defs.items():
                snap.defs[qualname] += defs
        return snap


def _check_function(module: str, fn: types.FunctionType, by_line: bool, snap: _Snapshot, line: int,
                    last_only: bool) -> StaleCode | None:
    """*line*: the function's first line in the snapshot module (a notebook cell's lines move when cells are
    joined).  *last_only*: only the last definition of a name counts (a notebook, where re-running a cell
    defines a name again and a load gets the last one)."""
    code = fn.__code__
    qualname = _qualname(code, fn.__qualname__)
    candidates = snap.code.get(qualname, [])
    if not candidates:
        return StaleCode(module, qualname, "not in the file on disk")
    defs = snap.defs.get(qualname, [])
    paired = len(defs) == len(candidates)
    if last_only and not by_line:
        candidates, defs = candidates[-1:], defs[-1:]
    moved_to = None
    for i, candidate in enumerate(candidates):
        if not _same_code(code, candidate):
            continue
        if paired and not _defaults_match(fn, defs[i]):
            continue
        if by_line and candidate.co_firstlineno != line:
            moved_to = candidate.co_firstlineno
            continue
        return None
    if moved_to is not None:
        return StaleCode(module, qualname, f"moved from line {line} to line {moved_to} on disk")
    if any(_same_code(code, c) for c in candidates):
        return StaleCode(module, qualname, "default values differ")
    return StaleCode(module, qualname, "code differs")


def _check_class(module: str, cls: type, snap: _Snapshot) -> list[StaleCode]:
    bodies = [c for c in snap.code.get(cls.__qualname__, []) if not c.co_flags & _CO_OPTIMIZED]
    if not bodies:
        return [StaleCode(module, cls.__qualname__, "class not in the file on disk")]
    in_memory = set(vars(cls))
    private = "_" + cls.__name__.lstrip("_")
    out = []
    for body in bodies[-1:]:  # the last definition is the one a module import leaves behind
        for const in body.co_consts:
            if (not isinstance(const, types.CodeType) or not const.co_flags & _CO_OPTIMIZED
                    or const.co_name.startswith("<")):
                continue
            name = const.co_name
            if name.startswith("__") and not name.endswith("__"):
                name = private + name
            if name not in in_memory:
                out.append(StaleCode(module, _qualname(const, f"{cls.__qualname__}.{const.co_name}"), "added on disk"))
    return out


def find_stale(used: dict[str, Any] | list[Any], module_map: Any,
               read_source: Callable[[str], bytes | None]) -> list[StaleCode]:
    """Every repo function or class in *used* (and what it uses) whose code differs from the snapshot's.

    *read_source* gives a file's bytes in the snapshot by repo-relative path
    (None when the snapshot lacks it).
    """
    collected = _Used(module_map)
    for obj in (used.values() if isinstance(used, dict) else used):
        collected.add(obj)
    by_module: dict[str, dict[str, list]] = defaultdict(lambda: {"classes": [], "functions": []})
    for module, cls in collected.classes.values():
        by_module[module]["classes"].append(cls)
    for module, fn, by_line in collected.functions.values():
        by_module[module]["functions"].append((fn, by_line))
    stale: list[StaleCode] = []
    for module, items in sorted(by_module.items()):
        rel = (module_map.used.get(module) or {}).get("path")
        source = read_source(rel) if rel else None
        if not rel or source is None:
            for cls in items["classes"]:
                stale.append(StaleCode(module, cls.__qualname__, "its file is not in the snapshot"))
            continue
        notebook = getattr(module_map, "notebook", None)
        try:
            if notebook is not None and module == notebook.name:
                snap = _Snapshot.of_cells(notebook.cells, _filename(items) or rel)
            else:
                snap = _Snapshot(source, _filename(items) or rel)
        except (SyntaxError, ValueError) as exc:
            stale.append(StaleCode(module, "<module>", f"the file on disk does not compile: {exc.__class__.__name__}"))
            continue
        for cls in items["classes"]:
            stale += _check_class(module, cls, snap)
        last_only = notebook is not None and module == notebook.name
        for fn, by_line in items["functions"]:
            line = module_map.line(fn.__code__) if hasattr(module_map, "line") else fn.__code__.co_firstlineno
            found = _check_function(module, fn, by_line, snap, line, last_only)
            if found is not None:
                stale.append(found)
    unique = {(s.module, s.qualname): s for s in stale}
    return sorted(unique.values(), key=lambda s: (s.module, s.qualname))


def _filename(items: dict[str, list]) -> str | None:
    for fn, _ in items["functions"]:
        return fn.__code__.co_filename
    return None


def stale_error(stale: list[StaleCode], *, unrecorded: bool) -> StaleCodeError:
    """The refusal of a save whose code in memory is not the snapshot's.

    *unrecorded*: some of those modules were imported before gitpack was, so their source as imported is
    unknown (:mod:`gitpack.capturing.sources`); the message then says how to have it recorded next time.
    """
    shown = ", ".join(str(s) for s in stale[:4])
    more = f" and {len(stale) - 4} more" if len(stale) > 4 else ""
    if unrecorded:
        cause = ("code changed on disk after it was imported, and gitpack was imported after it, so its source as "
                 f"imported is unknown: {shown}{more}. Import gitpack before your model's modules (or call "
                 "gitpack.capture() first) and gitpack pins the code as imported")
    else:
        cause = (f"the code in memory is not the code being snapshotted: {shown}{more}; the snapshot would not hold "
                 "the code this object was built with. Rebuild the object from the code as it is now (in a notebook: "
                 "re-run the cells that build it)")
    return StaleCodeError(f"{cause}, or save anyway with allow_stale=True (--allow-stale)")

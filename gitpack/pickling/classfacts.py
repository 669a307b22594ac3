"""What a snapshot's source says about one of its classes, read with ``ast``: never imported, never executed.

``gitpack scan`` promises to run nothing, yet some of the gate's checks are
about classes (does ``Logger`` define its own ``__reduce__``?  is
``save_text`` a function?  does a state key name one of ``Box``'s methods?).
For snapshot code the answers are in the source, which the snapshot's git tree
holds; this module reads them from there.  ``load`` makes the same checks on
the imported classes (:func:`gitpack.pickling.classchecks.check_deferred`), which also see
what only running code could tell (methods added by decorators or metaclasses).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

_ENUM_BASES = {"Enum", "IntEnum", "StrEnum", "Flag", "IntFlag"}
_TUPLE_BASES = {"NamedTuple", "tuple", "namedtuple"}


@dataclass(frozen=True)
class Facts:
    """One top-level or nested definition: a class (with what its body defines) or a function."""

    kind: str  # "class", "function", or "assigned" (a module-level name bound by an assignment: a namedtuple...)
    methods: frozenset[str] = frozenset()  # functions, properties and other decorated defs in the class body
    bases: tuple[str, ...] = ()  # base classes as written (dotted names; calls such as namedtuple(...) by name)
    local_bases: tuple[Facts, ...] = field(default=())  # bases defined in the same module
    imported_bases: tuple[str, ...] = ()  # bases imported from elsewhere, as full dotted names (torch.nn.Module)

    def all_imported_bases(self) -> tuple[str, ...]:
        return self.imported_bases + tuple(n for b in self.local_bases for n in b.all_imported_bases())

    def declares(self, *names: str) -> bool:
        return any(n in self.methods for n in names) or any(b.declares(*names) for b in self.local_bases)

    @property
    def is_enum(self) -> bool:
        return any(b.rpartition(".")[2] in _ENUM_BASES for b in self.bases) or any(b.is_enum for b in self.local_bases)

    @property
    def is_tuple(self) -> bool:
        tuple_base = any(b.rpartition(".")[2] in _TUPLE_BASES for b in self.bases)
        return tuple_base or any(b.is_tuple for b in self.local_bases)


def facts(source: bytes, qualname: str) -> Facts | None:
    """The :class:`Facts` of *qualname* in *source*, or None when the source does not define it plainly."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return None
    return _find(tree.body, qualname.split("."), tree.body, _aliases(tree.body))


def _aliases(body: list[ast.stmt]) -> dict[str, str]:
    """Names the module's top-level imports bind: ``import torch.nn as nn`` -> ``{"nn": "torch.nn"}``."""
    out: dict[str, str] = {}
    for node in body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    out[alias.asname] = alias.name
                else:
                    out[alias.name.partition(".")[0]] = alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                out[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return out


def _find(body: list[ast.stmt], parts: list[str], module_body: list[ast.stmt], aliases: dict[str, str],
          depth: int = 0) -> Facts | None:
    if not parts or depth > 20:
        return None
    name, rest = parts[0], parts[1:]
    for node in reversed(_statements(body)):  # the last definition of a name wins, as at run time
        if isinstance(node, ast.ClassDef) and node.name == name:
            if rest:
                return _find(node.body, rest, module_body, aliases, depth + 1)
            return _class_facts(node, module_body, aliases, depth)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            if rest and rest[0] == "<locals>":
                return None  # defined inside a function: only running it could say
            return Facts("function") if not rest else None
        if not rest and isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return Facts("assigned")
    return None


def _statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """*body*'s statements, with those inside ``if``/``try``/``with`` blocks (``try: ... except ImportError:``
    fallbacks, ``if TYPE_CHECKING:``) in order; never inside functions or classes."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If):
            out += _statements(node.body) + _statements(node.orelse)
        elif isinstance(node, ast.Try):
            out += _statements(node.body) + [s for h in node.handlers for s in _statements(h.body)]
            out += _statements(node.orelse) + _statements(node.finalbody)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            out += _statements(node.body)
        else:
            out.append(node)
    return out


def _class_facts(node: ast.ClassDef, module_body: list[ast.stmt], aliases: dict[str, str], depth: int) -> Facts:
    methods = set()
    for item in _statements(node.body):
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            methods.add(item.name)
        elif isinstance(item, ast.Assign):
            for target in item.targets:
                if isinstance(target, ast.Name) and isinstance(item.value, (ast.Call, ast.Lambda)):
                    methods.add(target.id)  # name = property(...), staticmethod(...), lambda
    bases = tuple(_dotted(b) for b in node.bases)
    local, imported = [], []
    for base in bases:
        head, dot, tail = base.partition(".")
        if not dot and depth < 20:
            found = _find(module_body, [base], module_body, aliases, depth + 1)
            if found is not None and found.kind == "class":
                local.append(found)
                continue
        if head in aliases:
            imported.append(aliases[head] + (dot + tail if dot else ""))
    return Facts("class", frozenset(methods), bases, tuple(local), tuple(imported))


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    if isinstance(node, ast.Subscript):
        return _dotted(node.value)
    return "?"

"""What an archive's pickle would do, found without running it.

:func:`scan_pickle` walks the pickle's opcodes with :func:`pickletools.genops`
and simulates just enough of the pickle machine (the stack, the marks and the
memo) to know the *values* that reach ``GLOBAL``, ``STACK_GLOBAL``, ``INST``,
``BINPERSID`` and ``REDUCE``.  A scanner that only looks at the strings just
before ``STACK_GLOBAL`` is fooled by the memo (``PUT`` a harmless name, ``PUT``
the real one over it, ``GET`` it back); this one is not, because it follows the
memo the way the unpickler does.  Nothing is imported, resolved or called.

It lists every global the pickle names and whether the default policy (plus
any explicit ``allow`` entries) accepts it, every persistent id (repo code,
snapshot modules, tensor storages), every repo function rebuilt from the
snapshot's source, every by-value code object (dill's ``_create_code``) with
the names its bytecode uses, and pickles nested in bytes constants (the
payload of a ``pickle.loads`` gadget), scanned the same way.

:func:`scan_pickle` is also how ``load`` finds the tensor storages it reads
(and verifies) before unpickling starts.
"""

from __future__ import annotations

import os
import pickletools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .archive import ArchiveReader
from .errors import ArchiveError, PolicyError
from .policy import Policy

PICKLE_MEMBER = "pickle"  # the archive member holding the pickle (api.PICKLE_MEMBER)
_MAX_NESTING = 3
_CONSTANTS = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING", "SHORT_BINSTRING",
    "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "FLOAT", "BINFLOAT",
}
_UPDATES_IN_PLACE = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
_BY_VALUE_CODE = ("dill._dill", "_create_code")
_REBUILD_FUNCTION = ("gitpack.pickling", "rebuild_function")


@dataclass(frozen=True)
class GlobalRef:
    """A global the unpickler would be asked to resolve."""

    module: str | None
    name: str | None
    opcode: str
    position: int
    refused: str | None  # why the policy refuses it; None when allowed
    depth: int = 0  # 0: the archive's pickle; 1+: a pickle nested in a bytes constant

    @property
    def allowed(self) -> bool:
        return self.refused is None

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}" if self.module is not None else f"<{self.name}>"


@dataclass(frozen=True)
class PersistentRef:
    """A persistent id: repo code ('global', module, qualname), a snapshot module, or a tensor storage."""

    kind: str | None
    parts: tuple
    position: int
    depth: int = 0

    @property
    def known(self) -> bool:
        shapes = {"global": 3, "module": 2, "storage": 5}
        return self.kind in shapes and len(self.parts) == shapes[self.kind] and all(p is not _UNKNOWN for p in self.parts)


@dataclass(frozen=True)
class FunctionRef:
    """A repo function or lambda rebuilt from the snapshot's source (not bytecode)."""

    module: str | None
    qualname: str | None
    line: int | None
    position: int


@dataclass(frozen=True)
class CodeRef:
    """A code object carried by value (dill ``_create_code``): bytecode that would run."""

    name: str | None
    qualname: str | None
    filename: str | None
    line: int | None
    names: tuple[str, ...]  # globals and attributes its bytecode uses, e.g. ('os', 'system')
    position: int
    depth: int = 0


@dataclass
class PickleScan:
    """Everything one pickle (and the pickles nested in it) would resolve."""

    globals: list[GlobalRef] = field(default_factory=list)
    persistent_ids: list[PersistentRef] = field(default_factory=list)
    functions: list[FunctionRef] = field(default_factory=list)
    code: list[CodeRef] = field(default_factory=list)
    nested: int = 0
    opcodes: int = 0
    error: str | None = None  # set when the pickle is malformed; what was found before stays listed

    @property
    def refused(self) -> list[GlobalRef]:
        return [g for g in self.globals if not g.allowed]

    def storages(self) -> list[tuple]:
        """The storage persistent ids of the top-level pickle whose every part is a constant."""
        return [p.parts for p in self.persistent_ids if p.kind == "storage" and p.known and p.depth == 0]


@dataclass
class ScanReport(PickleScan):
    """:class:`PickleScan` of an archive's pickle, plus what its manifest declares."""

    path: Path | None = None
    commit: str | None = None
    declared_by_value: list[str] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        """No refused global, no by-value code and a well-formed pickle: the default policy would let it load."""
        return not self.refused and not self.code and self.error is None

    def raise_if_unsafe(self) -> None:
        """Refuse (as ``gitpack scan`` exits 1) a malformed pickle or one the default policy would not load."""
        if self.error:
            raise ArchiveError(f"{self.path}: {self.error}; the archive's pickle is corrupt")
        if not self.safe:
            what = [f"{len(self.refused)} global(s) the load policy refuses"] if self.refused else []
            what += [f"{len(self.code)} by-value code object(s)"] if self.code else []
            raise PolicyError(f"{self.path} has {' and '.join(what)}; loading it needs --allow or --trust")

    def as_json(self) -> dict[str, Any]:
        def clean(value):
            if isinstance(value, tuple):
                return [clean(v) for v in value]
            if value is _UNKNOWN:
                return None
            if isinstance(value, (bytes, bytearray)):
                return value[:64].hex()
            return value

        return {
            "path": str(self.path) if self.path else None,
            "commit": self.commit,
            "safe": self.safe,
            "error": self.error,
            "opcodes": self.opcodes,
            "nested_pickles": self.nested,
            "declared_by_value_code": self.declared_by_value,
            "globals": [{**asdict(g), "allowed": g.allowed} for g in self.globals],
            "persistent_ids": [{"kind": p.kind, "parts": clean(p.parts), "position": p.position, "depth": p.depth}
                               for p in self.persistent_ids],
            "functions": [asdict(f) for f in self.functions],
            "by_value_code": [asdict(c) for c in self.code],
        }


class _Unknown:
    """A value the scan does not track (an object the pickle would build)."""

    def __repr__(self) -> str:
        return "?"


_UNKNOWN = _Unknown()
_MARK = object()


@dataclass(frozen=True)
class _Global:
    module: Any
    name: Any


@dataclass(frozen=True)
class _Persistent:
    parts: tuple


class _Malformed(Exception):
    pass


def scan_pickle(data: bytes, policy: Policy | None = None, *, depth: int = 0, into: PickleScan | None = None) -> PickleScan:
    """Simulate the pickle machine over *data*, recording what it would resolve; never executes anything."""
    policy = policy or Policy()
    result = into if into is not None else PickleScan()
    stack: list[Any] = []
    memo: dict[int, Any] = {}

    def pop() -> Any:
        if not stack:
            raise _Malformed("stack underflow")
        return stack.pop()

    def pop_to_mark() -> list[Any]:
        items = []
        while True:
            item = pop()
            if item is _MARK:
                items.reverse()
                return items
            items.append(item)

    def record_global(module: Any, name: Any, opcode: str, pos: int) -> _Global:
        result.globals.append(GlobalRef(
            module if isinstance(module, str) else None,
            name if isinstance(name, str) else None,
            opcode, pos, policy.refusal(module, name), depth,
        ))
        return _Global(module, name)

    def constant(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray)) and depth < _MAX_NESTING and _looks_like_pickle(value):
            inner = scan_pickle(bytes(value), policy, depth=depth + 1)
            result.nested += 1 + inner.nested
            result.globals += inner.globals
            result.persistent_ids += inner.persistent_ids
            result.code += inner.code
        return value

    pos = 0
    try:
        for opcode, arg, pos in pickletools.genops(data):
            name = opcode.name
            result.opcodes += 1
            if name in _CONSTANTS:
                stack.append(constant(arg))
            elif name == "BYTEARRAY8":
                stack.append(constant(arg))
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = [pop() for _ in range(n)]
                items.reverse()
                stack.append(tuple(items))
            elif name == "TUPLE":
                stack.append(tuple(pop_to_mark()))
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "POP":
                pop()
            elif name == "POP_MARK":
                pop_to_mark()
            elif name == "DUP":
                top = pop()
                stack += [top, top]
            elif name == "MEMOIZE":
                if not stack:
                    raise _Malformed("MEMOIZE on an empty stack")
                memo[len(memo)] = stack[-1]
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if not stack:
                    raise _Malformed("PUT on an empty stack")
                memo[int(arg)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if int(arg) not in memo:
                    raise _Malformed(f"memo key {arg} is read before it is written")
                stack.append(memo[int(arg)])
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                stack.append(record_global(module, attr, name, pos))
            elif name == "STACK_GLOBAL":
                attr = pop()
                module = pop()
                stack.append(record_global(module, attr, name, pos))
            elif name == "INST":
                module, _, attr = str(arg).partition(" ")
                pop_to_mark()
                record_global(module, attr, name, pos)
                stack.append(_UNKNOWN)
            elif name in ("EXT1", "EXT2", "EXT4"):
                result.globals.append(GlobalRef(None, f"copyreg extension {arg}", name, pos,
                                                "names a global through the copyreg extension registry", depth))
                stack.append(_UNKNOWN)
            elif name == "REDUCE":
                args = pop()
                func = pop()
                _note_call(result, func, args, pos, depth)
                stack.append(_UNKNOWN)
            elif name in ("PERSID", "BINPERSID"):
                pid = (arg,) if name == "PERSID" else pop()
                parts = pid if isinstance(pid, tuple) else (pid,)
                kind = parts[0] if parts and isinstance(parts[0], str) else None
                result.persistent_ids.append(PersistentRef(kind, parts, pos, depth))
                stack.append(_Persistent(parts))
            elif name == "STOP":
                pop()
                break
            elif name in ("PROTO", "FRAME"):
                pass
            else:
                before = opcode.stack_before
                if pickletools.markobject in before:
                    pop_to_mark()
                    popped = [pop() for _ in range(before.index(pickletools.markobject))]
                else:
                    popped = [pop() for _ in range(len(before))]
                popped.reverse()
                if name in _UPDATES_IN_PLACE and popped:
                    stack.append(popped[0])
                else:
                    stack.extend(_UNKNOWN for _ in opcode.stack_after)
    except _Malformed as exc:
        result.error = f"malformed pickle at byte {pos}: {exc}"
    except Exception as exc:  # genops: truncated data, unknown opcode, bad argument
        result.error = f"malformed pickle: {exc}"
    return result


def _looks_like_pickle(value: bytes | bytearray) -> bool:
    return len(value) >= 4 and value[0] == 0x80 and value[1] <= 5 and value[-1:] == b"."


def _note_call(result: PickleScan, func: Any, args: Any, pos: int, depth: int) -> None:
    """Record what a REDUCE calls when it builds code or rebuilds a repo function."""
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        return
    target = (func.module, func.name)
    if target == _BY_VALUE_CODE:
        result.code.append(_describe_code(args, pos, depth))
    elif target == _REBUILD_FUNCTION and depth == 0:
        module = args[0] if args else None
        module_name = None
        if isinstance(module, _Persistent) and len(module.parts) == 2 and isinstance(module.parts[1], str):
            module_name = module.parts[1]
        qualname = args[1] if len(args) > 1 and isinstance(args[1], str) else None
        line = args[2] if len(args) > 2 and type(args[2]) is int else None
        result.functions.append(FunctionRef(module_name, qualname, line, pos))


def _describe_code(args: tuple, pos: int, depth: int) -> CodeRef:
    """Name, file and used names of a by-value code object from dill's ``_create_code`` arguments."""
    fields = list(args)
    if fields and isinstance(fields[0], (bytes, bytearray)):
        fields = fields[1:]  # dill stores co_lnotab first
    # CPython 3.11+: argcount, posonly, kwonly, nlocals, stacksize, flags, code, consts, names,
    # varnames, filename, name, qualname, firstlineno, linetable, exceptiontable, freevars, cellvars
    if len(fields) >= 14 and all(isinstance(fields[i], str) for i in (10, 11, 12)):
        names = fields[8] if isinstance(fields[8], tuple) else ()
        line = fields[13] if type(fields[13]) is int else None
        return CodeRef(fields[11], fields[12], fields[10], line, tuple(n for n in names if isinstance(n, str)), pos, depth)
    strings = tuple(s for s in _strings(fields) if s.isidentifier())
    return CodeRef(None, None, None, None, strings, pos, depth)


def _strings(values: Iterable[Any]):
    for v in values:
        if isinstance(v, str):
            yield v
        elif isinstance(v, tuple):
            yield from _strings(v)


def scan(path: str | os.PathLike, *, allow: Iterable[tuple[str, str] | str] = ()) -> ScanReport:
    """List every global, persistent id, repo function and by-value code object in an archive's pickle.

    The pickle member is read with its digest checked, then walked opcode by
    opcode; nothing is unpickled, imported or resolved, and torch is never
    imported.  Each global is marked allowed or refused by the default
    policy extended with *allow*.
    """
    with ArchiveReader(path) as reader:
        data = reader.read(PICKLE_MEMBER)
        manifest = reader.manifest
    report = ScanReport(path=Path(path))
    scan_pickle(data, Policy(allow), into=report)
    commit = manifest.get("commit")
    report.commit = commit if isinstance(commit, str) else None
    declared = manifest.get("by_value_code")
    report.declared_by_value = [str(d) for d in declared] if isinstance(declared, list) else []
    return report

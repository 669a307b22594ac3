"""``gitpack scan``: the trust gate's verdict on an archive, without running, importing or resolving anything.

The gate (:mod:`gitpack.pickling.gate`) dry-runs the pickle with inert stand-ins and
judges every global, persistent id, call, state and fill.  This module turns
that record into a report: every global with the policy's verdict, every
snapshot reference, every repo function rebuilt from the snapshot's source,
every by-value code object with the names its bytecode uses, pickles nested in
bytes arguments of refused calls (the payload of a ``pickle.loads`` gadget),
and every other construct the gate refuses.  Checks that need the real
classes (see :class:`~gitpack.pickling.standins.Deferred`) are counted as pending:
``load`` makes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..archive import ArchiveReader
from ..errors import ArchiveError, PolicyError
from . import gate, tensortable
from .policy import AllowList, Policy

if TYPE_CHECKING:
    from ..git import Repo

PICKLE_MEMBER = "pickle"  # the archive member holding the pickle (api.PICKLE_MEMBER)


@dataclass(frozen=True)
class GlobalRef:
    """A global the unpickler would be asked to resolve."""

    module: str | None
    name: str | None
    refused: str | None  # why the policy refuses it; None when allowed
    depth: int = 0  # 0: the archive's pickle; 1+: a pickle nested in a bytes argument

    @property
    def allowed(self) -> bool:
        return self.refused is None

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}" if self.module is not None else f"<{self.name}>"


@dataclass(frozen=True)
class PersistentRef:
    """A persistent id: repo code ('class'/'function', module, qualname), a snapshot module, a storage."""

    kind: str | None
    parts: tuple
    depth: int = 0

    @property
    def known(self) -> bool:
        return self.kind in ("class", "function", "global", "module", "storage", "tensor", "columns", "rebuild")


@dataclass(frozen=True)
class FunctionRef:
    """A repo function or lambda rebuilt from the snapshot's source (not bytecode)."""

    module: str | None
    qualname: str | None
    line: int | None


@dataclass(frozen=True)
class CodeRef:
    """A code object carried by value (dill ``_create_code``): bytecode that would run."""

    name: str | None
    qualname: str | None
    filename: str | None
    line: int | None
    names: tuple[str, ...]  # globals and attributes its bytecode uses, e.g. ('os', 'system')
    depth: int = 0


@dataclass
class ScanReport:
    """What the gate found in an archive's pickle, and what its manifest declares."""

    path: Path | None = None
    commit: str | None = None
    declared_by_value: list[str] = field(default_factory=list)
    globals: list[GlobalRef] = field(default_factory=list)
    persistent_ids: list[PersistentRef] = field(default_factory=list)
    functions: list[FunctionRef] = field(default_factory=list)
    code: list[CodeRef] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # every refused construct, globals included
    pending: int = 0  # checks that need the real classes (load makes them)
    nested: int = 0
    opcodes: int = 0
    tensor_rows: int = 0  # plain tensors in the tensor table (format 3; each earlier one is a persistent id)
    error: str | None = None

    @property
    def refused(self) -> list[GlobalRef]:
        return [g for g in self.globals if not g.allowed]

    @property
    def safe(self) -> bool:
        """Nothing refused, no by-value code, a well-formed pickle: the default policy would let it load
        (subject to the pending class checks)."""
        return not self.violations and not self.code and self.error is None

    def raise_if_unsafe(self) -> None:
        """Refuse (as ``gitpack scan`` exits 1) a malformed pickle or one the default policy would not load."""
        if self.error:
            raise ArchiveError(f"{self.path}: malformed pickle ({self.error}); the archive's pickle is corrupt")
        if not self.safe:
            what = [f"{len(self.violations)} construct(s) the load policy refuses"] if self.violations else []
            what += [f"{len(self.code)} by-value code object(s)"] if self.code else []
            raise PolicyError(f"{self.path} has {' and '.join(what)}; loading it needs --allow or --trust")

    def as_json(self) -> dict[str, Any]:
        def clean(value):
            if isinstance(value, tuple):
                return [clean(v) for v in value]
            if isinstance(value, (bytes, bytearray)):
                return value[:64].hex()
            if value is None or isinstance(value, (str, int, float, bool)):
                return value
            return repr(value)[:120]

        return {
            "path": str(self.path) if self.path else None,
            "commit": self.commit,
            "safe": self.safe,
            "error": self.error,
            "opcodes": self.opcodes,
            "tensor_rows": self.tensor_rows,
            "nested_pickles": self.nested,
            "declared_by_value_code": self.declared_by_value,
            "refused": self.violations,
            "pending_class_checks": self.pending,
            "globals": [{**asdict(g), "allowed": g.allowed} for g in self.globals],
            "persistent_ids": [
                {"kind": p.kind, "parts": clean(p.parts), "depth": p.depth} for p in self.persistent_ids
            ],
            "functions": [asdict(f) for f in self.functions],
            "by_value_code": [asdict(c) for c in self.code],
        }


def report(trace: gate.Trace, path: Path | None = None) -> ScanReport:
    """A :class:`ScanReport` of a gate trace (and the pickles nested in it)."""
    out = ScanReport(path=path, violations=list(dict.fromkeys(trace.violations)), pending=len(trace.deferred),
                     opcodes=trace.opcodes, error=trace.error)
    out.functions = [FunctionRef(m, q, line) for m, q, line in trace.functions]
    _add(out, trace, 0)
    return out


def _add(out: ScanReport, trace: gate.Trace, depth: int) -> None:
    for ref in trace.refs:
        if ref.kind == "global":
            out.globals.append(GlobalRef(ref.module, ref.name, ref.refused, depth))
        elif ref.kind != "result":
            out.persistent_ids.append(PersistentRef(ref.parts[0] if ref.parts else ref.kind, ref.parts, depth))
    out.code += [_describe_code(args, depth) for args in trace.code]
    for inner in trace.nested:
        out.nested += 1
        _add(out, inner, depth + 1)


def _describe_code(args: tuple, depth: int) -> CodeRef:
    """Name, file and used names of a by-value code object from dill ``_create_code`` arguments."""
    fields = list(args)
    if fields and isinstance(fields[0], (bytes, bytearray)):
        fields = fields[1:]  # dill stores co_lnotab first
    # CPython 3.11+: argcount, posonly, kwonly, nlocals, stacksize, flags, code, consts, names,
    # varnames, filename, name, qualname, firstlineno, linetable, exceptiontable, freevars, cellvars
    if len(fields) >= 14 and all(isinstance(fields[i], str) for i in (10, 11, 12)):
        names = fields[8] if isinstance(fields[8], tuple) else ()
        line = fields[13] if type(fields[13]) is int else None
        return CodeRef(fields[11], fields[12], fields[10], line, tuple(n for n in names if isinstance(n, str)), depth)
    strings = tuple(s for s in _strings(fields) if s.isidentifier())
    return CodeRef(None, None, None, None, strings, depth)


def _strings(values: Iterable[Any]):
    for v in values:
        if isinstance(v, str):
            yield v
        elif isinstance(v, tuple):
            yield from _strings(v)


def _class_checks(trace: gate.Trace, policy: Policy, manifest: dict[str, Any],
                  repo: str | os.PathLike | Repo | None) -> int:
    """Make the gate's class checks without running snapshot code; returns how many stay pending.

    Library classes (torch.nn and the like) are imported, as any load would; snapshot classes are judged
    from their source in the snapshot's git tree (:mod:`gitpack.pickling.classfacts`), when a repository here has it.
    """
    from ..errors import GitpackError
    from ..git import Repo
    from . import classchecks, classfacts

    modules = manifest.get("modules")
    if not isinstance(modules, dict):
        modules = {}
    tree = manifest.get("tree")
    git_repo = None
    try:
        git_repo = Repo.discover(repo)
        if not (isinstance(tree, str) and git_repo.object_type(tree) == "tree"):
            git_repo.close()
            git_repo = None
    except GitpackError:
        git_repo = None
    pending = 0
    try:
        source_for = None
        if git_repo is not None and isinstance(tree, str):  # (a repository is kept only when tree names a tree)
            from ..isolation import GitSourceTree, shadowing
            from ..isolation.namespace import locate, tree_names

            source = GitSourceTree(git_repo, tree)
            roots = [r for r in manifest.get("roots") or [""] if isinstance(r, str)] or [""]
            known = {n: i.get("root", "") for n, i in modules.items() if isinstance(i, dict) and isinstance(n, str)}
            names = tree_names(source)
            tops: dict[str, str | None] = {}

            def read_module(module: str) -> bytes | None:
                found = locate(names, roots, known, module, tops)
                entry = (source.list_dir(found[0]) or {}).get(found[1]) if found else None
                return source.read(entry[1]) if entry is not None and entry[0] == "blob" else None

            source_for = read_module

            for top in shadowing(source, roots):
                trace.violations.append(f"a top-level {top!r} in the snapshot that would shadow the installed package "
                                        f"{top!r} (only --trust lets it)")
            trace.check_sources(source_for)
        for item in trace.deferred:
            problem: str | None = "pending"
            if item.ref.kind == "global":
                try:
                    problem = classchecks.check_deferred(item, policy.find_class(*item.ref.module_and_name()))
                except GitpackError as exc:
                    problem = str(exc)
            elif source_for is not None and item.ref.kind in ("class", "legacy") and item.what != "tensor-type":
                code = source_for(item.ref.module or "")
                found = classfacts.facts(code, item.ref.name or "") if code is not None else None
                problem = classchecks.check_deferred_source(item, found, _library_class)
            if problem == "pending":
                pending += 1
            elif problem:
                trace.violations.append(problem)
    finally:
        if git_repo is not None:
            git_repo.close()
    return pending


_LIBRARIES = ("torch", "numpy", "sentencepiece", "collections", "enum", "typing", "abc")


def _library_class(dotted: str) -> Any:
    """A base class a snapshot class names, imported only from libraries gitpack's policy is about (as a load
    would import them); None for anything else."""
    import importlib

    module, _, name = dotted.rpartition(".")
    if not module or module.partition(".")[0] not in _LIBRARIES:
        return None
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def scan(path: str | os.PathLike, *, allow: Iterable[tuple[str, str] | str] | AllowList = (),
         repo: str | os.PathLike | Repo | None = None) -> ScanReport:
    """Run the trust gate over an archive's pickle and report what it found.

    The pickle member is read with its digest checked, then dry-run with
    stand-ins; nothing is unpickled and no snapshot code is imported or run.
    Checks about classes import only library classes the policy admits
    (as a load would) and read snapshot classes from their source in the git
    tree of the repository here, when it has the snapshot; the rest are
    reported as pending.  The policy is the default one extended with *allow*.
    """
    with ArchiveReader(path) as reader:
        data = reader.read(PICKLE_MEMBER)
        manifest = reader.manifest
        table = tensortable.from_archive(reader)
    modules = manifest.get("modules")
    buffers = (manifest.get("tensors") or {}).get("buffers", 0) if isinstance(manifest.get("tensors"), dict) else 0
    policy = Policy(allow)
    trace = gate.trace(data, policy, modules=list(modules) if isinstance(modules, dict) else None,
                       buffers=buffers if type(buffers) is int and 0 <= buffers <= 1_000_000 else 0, table=table,
                       count_opcodes=True)
    pending = _class_checks(trace, policy, manifest, repo) if trace.error is None else 0
    out = report(trace, Path(path))
    out.pending = pending
    out.tensor_rows = table.rows if table is not None else 0
    commit = manifest.get("commit")
    out.commit = commit if isinstance(commit, str) else None
    declared = manifest.get("by_value_code")
    out.declared_by_value = [str(d) for d in declared] if isinstance(declared, list) else []
    return out

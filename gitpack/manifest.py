"""The manifest: what an archive records about its save, as one typed, validated value.

A save builds a :class:`Manifest`; the archive stores it as canonical JSON
(:meth:`Manifest.to_json`), and the snapshot commit vouches for its digest.
Load, verify and export read it back with :meth:`Manifest.parse`, which checks
every field they act on before any of it reaches the filesystem, an
allocation or an import (a root of ``../x`` would read another snapshot's
cache).  Readers that *display* an archive (``inspect``, ``diff``,
``textconv``) keep the raw JSON instead: they must show a tampered manifest
too, whatever its shape.

Member names live here as well: one place says where the pickle, the tensor
storages and the numpy buffers are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from .errors import ArchiveError

PICKLE_MEMBER = "pickle"
STORAGE_PREFIX = "storages/"
BUFFER_PREFIX = "buffers/"

_MODULE_NAME = re.compile(r"^[^\W\d]\w*(?:\.[^\W\d]\w*)*$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModuleInfo:
    """Where a snapshot module used by the object lives: its file and the import root it was found under."""

    path: str
    root: str


@dataclass(frozen=True)
class Manifest:
    """An archive's manifest (every field the save records; see the README's "What built it")."""

    tree: str
    branch: str
    head: str | None
    head_branch: str | None
    dirty: bool
    remote_url: str | None
    object_type: str
    params: dict[str, Any]
    message: str | None
    capture: dict[str, Any]
    structure: dict[str, Any]
    allow_stale: bool
    stale_code: list[dict[str, Any]]
    environment: dict[str, Any]
    modules: dict[str, ModuleInfo]
    imported: list[str]  # top-level repo modules the saved code imported
    roots: list[str]  # import roots inside the snapshot
    by_value_code: list[str]  # code carried by value (interactive sessions): loading needs trust
    excluded: list[list[str]]  # [path, reason] left out of the snapshot
    storages: int
    buffers: int
    gitpack: str
    created: str
    scripts: list[str] = field(default_factory=list)  # modules made of a script or notebook: definitions only
    pinned: list[str] = field(default_factory=list)  # files pinned as imported (they differed on disk at save)
    unpinned: list[dict[str, str]] = field(default_factory=list)  # repo modules imported from elsewhere, not pinned
    compiled: list[dict[str, Any]] = field(default_factory=list)  # torch.compile'd modules saved as the original
    notebook: dict[str, Any] | None = None  # the interactive session the object's code came from
    commit: str | None = None  # set when the archive is sealed: the commit is made after the manifest
    extra: dict[str, Any] = field(default_factory=dict)  # fields this gitpack does not know, kept as they are

    def to_json(self) -> dict[str, Any]:
        """The manifest as the archive stores it (without the member table, which sealing adds)."""
        out = {
            "gitpack": self.gitpack, "created": self.created, "tree": self.tree, "branch": self.branch,
            "head": self.head, "head_branch": self.head_branch, "dirty": self.dirty, "remote_url": self.remote_url,
            "object": {"type": self.object_type}, "params": self.params, "message": self.message,
            "capture": self.capture, "structure": self.structure, "allow_stale": self.allow_stale,
            "stale_code": self.stale_code, "environment": self.environment,
            "modules": {name: {"path": m.path, "root": m.root} for name, m in self.modules.items()},
            "imported": self.imported, "roots": self.roots, "by_value_code": self.by_value_code,
            "excluded": self.excluded, "tensors": {"storages": self.storages, "buffers": self.buffers},
            "scripts": self.scripts, "pinned": self.pinned, "unpinned": self.unpinned, "compiled": self.compiled,
            "notebook": self.notebook,
            **self.extra,
        }
        if self.commit is not None:
            out["commit"] = self.commit
        return out

    @classmethod
    def parse(cls, raw: dict[str, Any], path: str | Path) -> Manifest:
        """The manifest of an archive at *path*, every field load acts on checked; ArchiveError names a bad one."""

        def bad(name: str) -> ArchiveError:
            return ArchiveError(
                f"{path}: manifest field {name!r} is malformed; the archive is corrupt or tampered with"
            )

        def text(name: str, optional: bool = False) -> Any:
            value = raw.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, str):
                raise bad(name)
            return value

        roots = raw.get("roots") or [""]
        if not (isinstance(roots, list) and all(is_snapshot_dir(r) for r in roots)):
            raise bad("roots")
        modules_raw = raw.get("modules") or {}
        if not isinstance(modules_raw, dict):
            raise bad("modules")
        modules = {}
        for name, info in modules_raw.items():
            root = info.get("root", "") if isinstance(info, dict) else None
            rel = info.get("path", "") if isinstance(info, dict) else None
            if not (isinstance(name, str) and _MODULE_NAME.match(name)
                    and is_snapshot_dir(root) and isinstance(rel, str)):
                raise bad("modules")
            modules[name] = ModuleInfo(rel, root)
        tensors = raw.get("tensors") or {}
        buffers = tensors.get("buffers", 0) if isinstance(tensors, dict) else None
        storages = tensors.get("storages", 0) if isinstance(tensors, dict) else None
        members_raw = raw.get("members")
        members = members_raw if isinstance(members_raw, list) else []
        if type(buffers) is not int or not 0 <= buffers <= len(members) or type(storages) is not int or storages < 0:
            raise bad("tensors")
        by_value = raw.get("by_value_code") or []
        if not (isinstance(by_value, list) and all(isinstance(x, str) for x in by_value)):
            raise bad("by_value_code")
        imported = raw.get("imported") or []
        if not (isinstance(imported, list) and all(isinstance(x, str) and _MODULE_NAME.match(x) for x in imported)):
            raise bad("imported")
        scripts = raw.get("scripts") or []
        if not (isinstance(scripts, list) and all(isinstance(x, str) and _MODULE_NAME.match(x) for x in scripts)):
            raise bad("scripts")
        tree = text("tree")
        if not _SHA.match(tree):
            raise bad("tree")
        commit = raw.get("commit")
        if commit is not None and not (isinstance(commit, str) and _SHA.match(commit)):
            raise bad("commit")
        obj = raw.get("object")
        object_type = obj.get("type") if isinstance(obj, dict) else None
        known = {"gitpack", "created", "tree", "branch", "head", "head_branch", "dirty", "remote_url", "object",
                 "params", "message", "capture", "structure", "allow_stale", "stale_code", "environment", "modules",
                 "imported", "roots", "by_value_code", "excluded", "tensors", "commit", "scripts", "pinned", "unpinned",
                 "compiled", "notebook"}

        def mapping(name: str) -> dict[str, Any]:
            value = raw.get(name)
            return value if isinstance(value, dict) else {}

        def listing(name: str) -> list:
            value = raw.get(name)
            return value if isinstance(value, list) else []

        return cls(
            tree=tree, branch=str(raw.get("branch") or ""), head=text("head", True),
            head_branch=text("head_branch", True), dirty=bool(raw.get("dirty")), remote_url=text("remote_url", True),
            object_type=object_type if isinstance(object_type, str) else "?", params=mapping("params"),
            message=raw.get("message") if isinstance(raw.get("message"), str) else None, capture=mapping("capture"),
            structure=mapping("structure"), allow_stale=bool(raw.get("allow_stale")), stale_code=listing("stale_code"),
            environment=mapping("environment"), modules=modules, imported=list(imported), roots=list(roots),
            by_value_code=list(by_value), excluded=listing("excluded"), storages=storages, buffers=buffers,
            gitpack=str(raw.get("gitpack") or "?"), created=str(raw.get("created") or "?"), commit=commit,
            scripts=list(scripts), pinned=[p for p in listing("pinned") if isinstance(p, str)],
            unpinned=[u for u in listing("unpinned") if isinstance(u, dict)],
            compiled=[c for c in listing("compiled") if isinstance(c, dict)],
            notebook=raw.get("notebook") if isinstance(raw.get("notebook"), dict) else None,
            extra={k: v for k, v in raw.items() if k not in known},
        )


def is_snapshot_dir(rel: Any) -> TypeGuard[str]:
    """A relative path inside the snapshot: no absolute path, no ``..``, no ``.git``, no NUL; any other name is fine."""
    if not isinstance(rel, str) or rel.startswith("/") or "\0" in rel or "\\" in rel:
        return False
    return rel == "" or all(part not in ("", ".", "..", ".git") for part in rel.split("/"))

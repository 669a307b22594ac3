"""gitpack's Python API: save, load, inspect, log.  The CLI is a thin layer over these."""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import audit, environment, pickling
from .archive import ArchiveReader, ArchiveWriter, read_manifest
from .errors import ArchiveError, GitpackError, MissingCommitError, PolicyError
from .gitrepo import DEFAULT_BRANCH, DEFAULT_SIZE_CAP, Repo, branch_ref
from .isolation import GitSourceTree, namespace_for
from .policy import Policy
from .tensors import STORAGE_PREFIX, StorageLoader

__version__ = "0.1.0"

PICKLE_MEMBER = "pickle"
BUFFER_PREFIX = "buffers/"


@dataclass(frozen=True)
class SaveInfo:
    """What a save produced: the archive, its snapshot commit and what was left out of the snapshot."""

    path: Path
    commit: str
    tree: str
    digest: str
    branch: str
    object_type: str
    excluded: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def object_type_name(obj: Any, module_map: pickling.ModuleMap | None = None) -> str:
    cls = type(obj)
    module = (module_map.canonical(cls.__module__) if module_map else None) or cls.__module__
    return f"{module}:{cls.__qualname__}"


def save(
    obj: Any,
    path: str | os.PathLike,
    *,
    params: dict | None = None,
    message: str | None = None,
    branch: str | None = None,
    size_cap: int | None = None,
    sign: bool = False,
    repo: str | os.PathLike | None = None,
) -> SaveInfo:
    """Snapshot the working tree onto gitpack's branch and write *obj* to the archive at *path*.

    The repository is the one containing the current directory (or *repo*).
    The user's HEAD, index, working tree, stash and reflogs are left exactly as
    they were; on any error no archive is written and the branch does not move.
    """
    params = _jsonable(params or {})
    git_repo = Repo.discover(repo)
    try:
        branch = branch or git_repo.config("gitpack.branch") or DEFAULT_BRANCH
        cap = size_cap if size_cap is not None else int(git_repo.config("gitpack.sizecap") or DEFAULT_SIZE_CAP)
        dest = Path(path).absolute()
        exclude = set()
        try:
            exclude.add(dest.resolve().relative_to(git_repo.root.resolve()).as_posix())
        except ValueError:
            pass
        writer = ArchiveWriter(dest)
        try:
            snap = git_repo.write_snapshot_tree(size_cap=cap, exclude=exclude)
            module_map = pickling.ModuleMap(git_repo.root, lambda rel: git_repo.object_type(f"{snap.tree}:{rel}") == "blob")
            data, storages, buffers, _ = pickling.dump(obj, module_map)
            writer.add(PICKLE_MEMBER, [data])
            for key in storages.storages:
                writer.add(STORAGE_PREFIX + key, storages.buffers(key))
            for i, buf in enumerate(buffers):
                writer.add(f"{BUFFER_PREFIX}{i}", [buf.raw()])
            digest = writer.payload_digest()
            type_name = object_type_name(obj, module_map)
            manifest = {
                "gitpack": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "tree": snap.tree,
                "branch": branch_ref(branch),
                "head": snap.head,
                "head_branch": snap.head_branch,
                "dirty": snap.dirty,
                "remote_url": git_repo.remote_url(),
                "object": {"type": type_name},
                "params": params,
                "message": message,
                "environment": environment.describe(),
                "modules": module_map.used,
                "roots": module_map.roots,
                "by_value_code": module_map.by_value,
                "excluded": [list(e) for e in snap.excluded],
                "tensors": {"storages": len(storages.storages), "buffers": len(buffers)},
            }
            text = audit.format_message(
                archive=dest.name, object_type=type_name, digest=digest, params=params, head=snap.head, message=message
            )

            def seal(commit: str) -> None:
                writer.seal({**manifest, "commit": commit})

            commit = git_repo.commit_snapshot(snap.tree, text, branch=branch, head=snap.head, sign=sign, before_update=seal)
            writer.publish()
        except BaseException:
            writer.abort()
            raise
        return SaveInfo(dest, commit, snap.tree, digest, branch_ref(branch), type_name, list(snap.excluded),
                        list(snap.submodule_warnings))
    finally:
        git_repo.close()


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """What the archive records (provenance, parameters, environment), read without unpickling."""
    return read_manifest(path)


def _verify_commit(git_repo: Repo, manifest: dict[str, Any], path: Path) -> None:
    """The commit must exist, hold the recorded tree, and vouch for the archive's payload digest."""
    commit = manifest.get("commit")
    if not isinstance(commit, str) or len(commit) != 40:
        raise ArchiveError(f"{path}: manifest records no valid commit; the archive is corrupt")
    if git_repo.object_type(commit) != "commit":
        remote = manifest.get("remote_url") or "the repository it was saved in"
        raise MissingCommitError(
            f"snapshot commit {commit} is not in {git_repo.root}; fetch it from {remote} "
            f"(`gitpack pull` or `git fetch origin {manifest.get('branch', 'refs/heads/gitpack')}`)"
        )
    headers, message = audit.parse_commit_object(git_repo.read_object(commit)[1])
    if headers.get("tree", [None])[0] != manifest.get("tree"):
        raise ArchiveError(f"{path}: commit {commit[:12]} does not hold the tree the archive records; the archive was tampered with")
    digest = audit.parse_trailers(message).get("digest")
    if digest != manifest.get("payload_digest"):
        raise ArchiveError(
            f"{path}: payload digest {manifest.get('payload_digest')} does not match the one commit {commit[:12]} vouches for; "
            "the archive was tampered with"
        )


def load(
    path: str | os.PathLike,
    *,
    map_location: Any = None,
    mmap: bool = False,
    trust: bool = False,
    allow: Iterable[tuple[str, str]] = (),
    repo: str | os.PathLike | None = None,
) -> Any:
    """Load an archive against its own snapshot's code, in an isolated namespace.

    Everything is verified before anything is unpickled: the manifest, the
    member table, the commit (which must vouch for the payload digest) and the
    pickle's bytes.  Tensor bytes are verified as they are read.  With
    ``mmap=True`` tensor data is mapped from the archive instead and its digest
    is *not* checked at load (that would read every byte); run
    ``gitpack verify`` to check it.  ``map_location`` works like torch's.
    """
    path = Path(path)
    with ArchiveReader(path) as reader:
        manifest = reader.manifest
        git_repo = Repo.discover(repo)
        _verify_commit(git_repo, manifest, path)
        if manifest.get("by_value_code") and not trust:
            raise PolicyError(
                f"{path} carries by-value code ({', '.join(manifest['by_value_code'][:3])}) defined outside any file; "
                "load it only if you trust its author (trust=True / --trust)"
            )
        data = reader.read(PICKLE_MEMBER)
        count = manifest.get("tensors", {}).get("buffers", 0)
        buffers = [reader.read_buffer(f"{BUFFER_PREFIX}{i}") for i in range(int(count))]
        namespace = namespace_for(
            GitSourceTree(git_repo, manifest["tree"]),
            list(manifest.get("roots") or [""]),
            {name: info.get("root", "") for name, info in (manifest.get("modules") or {}).items()},
        )
        find_global = pickling.trusted_find_class if trust else Policy(allow).find_class
        return pickling.load(
            data,
            namespace=namespace,
            storage_loader=StorageLoader(reader, map_location=map_location, mmap=mmap),
            find_global=find_global,
            buffers=buffers,
        )


def log(*, branch: str | None = None, repo: str | os.PathLike | None = None, limit: int | None = None) -> list[audit.LogEntry]:
    """The saves recorded on the snapshot branch, newest first."""
    git_repo = Repo.discover(repo)
    try:
        branch = branch or git_repo.config("gitpack.branch") or DEFAULT_BRANCH
        return audit.log(git_repo, branch_ref(branch), limit)
    finally:
        git_repo.close()


def source_of(obj: Any) -> str | None:
    """Where *obj*'s class comes from: its file inside the snapshot cache, if it is snapshot code."""
    module = sys.modules.get(type(obj).__module__)
    return getattr(module, "__file__", None)


def apply(obj: Any, value: Any) -> Any:
    """The seed models' convention: ``preprocess``, ``forward`` on a batch of one, ``postprocess``."""
    for method in ("preprocess", "forward", "postprocess"):
        if not callable(getattr(obj, method, None)):
            raise GitpackError(f"{type(obj).__name__} has no {method}() method, so --apply cannot run it")
    x = obj.preprocess(value)
    if "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor):
        import torch

        with torch.no_grad():
            return obj.postprocess(obj.forward(x.unsqueeze(0))[0])
    return obj.postprocess(obj.forward([x])[0])

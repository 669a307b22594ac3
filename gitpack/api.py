"""gitpack's Python API: save, load, inspect, log.  The CLI is a thin layer over these."""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import audit, environment, pickling, progress
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
    """What a save produced: the archive, its snapshot commit and what was left out of the snapshot.

    ``path`` is None when the archive went only into the store; ``artifact``
    is then (or also) its stored version, e.g. ``clf@v3``.
    """

    path: Path | None
    commit: str
    tree: str
    digest: str
    branch: str
    object_type: str
    excluded: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    artifact: str | None = None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def object_type_name(obj: Any, module_map: pickling.ModuleMap | None = None) -> str:
    cls = type(obj)
    module = (module_map.canonical(cls.__module__) if module_map else None) or cls.__module__
    return f"{module}:{cls.__qualname__}"


def save(
    obj: Any,
    path: str | os.PathLike | None = None,
    *,
    name: str | None = None,
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
    With *name*, the archive is also (or, with no *path*, only) stored in the
    repository as the next version of that artifact (see :mod:`gitpack.store`).
    """
    from . import store

    if path is None and name is None:
        raise GitpackError("nothing to save to: give a path for the archive file, a name to store it under, or both")
    if name is not None:
        store.validate_name(name)
    params = _jsonable(params or {})
    git_repo = Repo.discover(repo)
    try:
        branch = branch or git_repo.config("gitpack.branch") or DEFAULT_BRANCH
        cap = size_cap if size_cap is not None else int(git_repo.config("gitpack.sizecap") or DEFAULT_SIZE_CAP)
        # Store-only saves build the archive beside the object database and never publish the file.
        dest = Path(path).absolute() if path is not None else git_repo.common_dir / f"{name}.gitpack"
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
            tensor_bytes = sum(int(s.nbytes()) for s in storages.storages.values()) + sum(b.raw().nbytes for b in buffers)
            with progress.Bar(f"saving {name or dest.name}", len(data) + tensor_bytes) as bar:
                writer.add(PICKLE_MEMBER, [data])
                for key in storages.storages:
                    writer.add(STORAGE_PREFIX + key, storages.buffers(key))
                for i, buf in enumerate(buffers):
                    writer.add(f"{BUFFER_PREFIX}{i}", [buf.raw()])
                bar.update(completed=sum(m.size for m in writer.members))  # waits for the queued writes
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
                archive=dest.name if path is not None else name, object_type=type_name, digest=digest, params=params,
                head=snap.head, message=message, extra={"Artifact": name} if name else None,
            )

            def seal(commit: str) -> None:
                writer.seal({**manifest, "commit": commit})

            commit = git_repo.commit_snapshot(snap.tree, text, branch=branch, head=snap.head, sign=sign, before_update=seal)
            version = None
            if name is not None:
                version = store.Store(git_repo).add(name, writer.temp_path, snapshot=commit, digest=digest,
                                                    object_type=type_name, params=params)
            if path is not None:
                writer.publish()
            else:
                writer.abort()  # the sealed bytes now live in the object database
        except BaseException:
            writer.abort()
            raise
        return SaveInfo(dest if path is not None else None, commit, snap.tree, digest, branch_ref(branch), type_name,
                        list(snap.excluded), list(snap.submodule_warnings), version.label if version else None)
    finally:
        git_repo.close()


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """What the archive (a file, or a stored ``NAME[@VERSION]``) records, read without unpickling."""
    from . import store

    return read_manifest(store.locate(path)[0])


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
    fetch: bool = False,
    remote: str | None = None,
) -> Any:
    """Load an archive against its own snapshot's code, in an isolated namespace.

    *path* is an archive file or a stored artifact, ``NAME``, ``NAME@v2`` or
    ``NAME@latest`` (:mod:`gitpack.store` documents how the two are told
    apart).  ``fetch=True`` runs ``gitpack pull`` (from *remote*, default the
    upstream or origin) first.  A portable archive loads with no repository at
    all, from its embedded, hash-verified source.

    Everything is verified before anything is unpickled: the manifest, the
    member table, the commit (which must vouch for the payload digest) and the
    pickle's bytes.  Tensor bytes are verified as they are read.  With
    ``mmap=True`` tensor data is mapped from the archive instead and its digest
    is *not* checked at load (that would read every byte); run
    ``gitpack verify`` to check it.  ``map_location`` works like torch's.
    """
    from . import portable, store

    if fetch:
        pull(remote, repo=repo)
    path, _ = store.locate(path, repo=repo)
    with ArchiveReader(path) as reader:
        manifest = reader.manifest
        if portable.is_portable(manifest):
            source = portable.verified_source(reader)  # every embedded file checked before anything is imported
        else:
            git_repo = Repo.discover(repo)
            _verify_commit(git_repo, manifest, path)
            source = GitSourceTree(git_repo, manifest["tree"])
        if manifest.get("by_value_code") and not trust:
            raise PolicyError(
                f"{path} carries by-value code ({', '.join(manifest['by_value_code'][:3])}) defined outside any file; "
                "load it only if you trust its author (trust=True / --trust)"
            )
        data = reader.read(PICKLE_MEMBER)
        count = manifest.get("tensors", {}).get("buffers", 0)
        buffers = [reader.read_buffer(f"{BUFFER_PREFIX}{i}") for i in range(int(count))]
        namespace = namespace_for(
            source,
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
        entries = audit.log(git_repo, branch_ref(branch), limit)
        from . import share

        merged = share.merged_in_tips(git_repo, branch_ref(branch))
        if merged:  # saves that `gitpack pull` merged in from other clones
            by_commit = {e.commit: e for e in entries}
            for tip in merged:
                for e in audit.log(git_repo, tip, limit):
                    by_commit.setdefault(e.commit, e)
            entries = list(by_commit.values())
            entries.sort(key=lambda e: _dt.datetime.fromisoformat(e.date), reverse=True)
            entries = entries[:limit] if limit else entries
        return entries
    finally:
        git_repo.close()


# ---------------------------------------------------------------------- the artifact store and sharing
def list_artifacts(name: str | None = None, *, repo: str | os.PathLike | None = None) -> list:
    """Every stored version (of *name*, or of all artifacts), by name, newest first."""
    from . import store

    git_repo = Repo.discover(repo)
    try:
        if name is not None:
            store.validate_name(name)
        return store.Store(git_repo).versions(name)
    finally:
        git_repo.close()


def alias(ref: str, alias_name: str, *, repo: str | os.PathLike | None = None):
    """Point ``NAME@ALIAS`` at the version *ref* names (``clf@v2`` -> ``prod``); returns that version."""
    from . import store

    git_repo = Repo.discover(repo)
    try:
        return store.Store(git_repo).set_alias(ref, alias_name)
    finally:
        git_repo.close()


def pull(remote: str | None = None, *, repo: str | os.PathLike | None = None):
    """Fetch the snapshot branch and artifacts from *remote* (default: upstream, else origin) and merge them in."""
    from . import share

    git_repo = Repo.discover(repo)
    try:
        return share.pull(git_repo, remote)
    finally:
        git_repo.close()


def push(remote: str | None = None, *, repo: str | os.PathLike | None = None):
    """Merge *remote*'s saves, then push the snapshot branch and artifacts, never overwriting anyone's."""
    from . import share

    git_repo = Repo.discover(repo)
    try:
        return share.push(git_repo, remote)
    finally:
        git_repo.close()


def export(ref: str | os.PathLike, output: str | os.PathLike, *, portable: bool = False,
           repo: str | os.PathLike | None = None):
    """Write a stored artifact (or an archive file) to *output*; ``portable=True`` embeds its source too.

    A portable archive loads where there is no repository at all.
    """
    from . import portable as portable_archive
    from . import store

    git_repo = Repo.discover(repo)
    try:
        archive, _ = store.locate(ref, repo=repo)
        manifest = read_manifest(archive)
        if portable_archive.is_portable(manifest):
            raise ArchiveError(f"{ref} is already portable; copy it as it is")
        _verify_commit(git_repo, manifest, archive)
        dest = Path(output).absolute()
        if portable:
            return portable_archive.export(git_repo, archive, dest).path
        import shutil

        if dest.is_dir() or not dest.parent.is_dir():
            raise ArchiveError(f"cannot write {dest}: give a file path in an existing directory")
        temp = dest.with_name(f".{dest.name}.gitpack-export-tmp")
        try:
            shutil.copyfile(archive, temp)
            os.replace(temp, dest)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise ArchiveError(f"cannot write {dest}: {exc.strerror}; check the path and free space") from None
        return dest
    finally:
        git_repo.close()


def init(*, repo: str | os.PathLike | None = None) -> list[str]:
    """Set the repository up for archives: .gitattributes (binary, -delta, diff=gitpack) and git config."""
    from . import native

    git_repo = Repo.discover(repo)
    try:
        return native.init(git_repo)
    finally:
        git_repo.close()


def textconv(path: str | os.PathLike) -> str:
    """An archive's manifest as stable text for ``git diff`` (never unpickles, never imports torch)."""
    from . import native

    return native.textconv(path)


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

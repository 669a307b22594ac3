"""The save pipeline: snapshot the working tree, pickle the object against it, write and vouch for the archive.

1. :mod:`gitpack.snapshot` writes the working tree as a tree (the user's index untouched).
2. :mod:`gitpack.pickling` pickles the object: repo code by reference into that tree, tensors and
   buffers out of band; the archive writer starts hashing and writing them at once.
3. While it does: the code in memory is checked against the snapshot (:mod:`gitpack.staleness`),
   the capture tree and structure summary are built, and the trust gate says what a default load
   would refuse (a warning now rather than a surprise at load).
4. The manifest (:mod:`gitpack.manifest`) and the commit message with its trailers are written;
   :mod:`gitpack.snapshot.branch` commits and moves the branch by compare-and-swap, sealing the archive
   with the commit before the branch moves.
5. With a name, :mod:`gitpack.artifacts` stores the sealed archive as the next version; with a path,
   the archive is renamed into place.  On any error nothing is published and no ref moves.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import artifacts, environment, lfs, progress, signing, snapshot
from ._version import __version__
from .archive import ArchiveWriter, manifest_digest, sealed_manifest
from .capturing import build_tree, paused, summary_lines
from .errors import GitError, GitpackError
from .git import DEFAULT_BRANCH, Repo, branch_ref
from .manifest import BUFFER_PREFIX, PICKLE_MEMBER, STORAGE_PREFIX, Manifest, ModuleInfo
from .pickling.modulemap import ModuleMap
from .pickling.pickler import dump
from .pickling.policy import Policy
from .snapshot import DEFAULT_SIZE_CAP
from .staleness import find_stale, stale_error
from .structure import is_module, object_paths, summarize
from .trailers import format_message


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


def object_type_name(obj: Any, module_map: ModuleMap | None = None) -> str:
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
    allow_stale: bool = False,
) -> SaveInfo:
    """Snapshot the working tree onto gitpack's branch and write *obj* to the archive at *path*.

    The repository is the one containing the current directory (or *repo*).
    The user's HEAD, index, working tree, stash and reflogs are left exactly as
    they were; on any error no archive is written and the branch does not move.
    With *name*, the archive is also (or, with no *path*, only) stored in the
    repository as the next version of that artifact (see :mod:`gitpack.artifacts`).
    The constructor arguments captured by :func:`capture` (or inferred), a
    structure summary of every torch module, and the check that the code in
    memory is the code being snapshotted (refused with StaleCodeError unless
    *allow_stale*) all go into the manifest and the commit message.
    """
    if path is None and name is None:
        raise GitpackError("nothing to save to: give a path for the archive file (-o FILE), "
                           "a name to store it under (--name NAME), or both")
    if name is not None:
        artifacts.validate_name(name)
    params = _jsonable(params or {})
    with Repo.discover(repo) as git_repo:
        branch = branch or git_repo.config("gitpack.branch") or DEFAULT_BRANCH
        cap = size_cap if size_cap is not None else int(git_repo.config("gitpack.sizecap") or DEFAULT_SIZE_CAP)
        if name is not None:
            lfs.settings(git_repo)  # a malformed gitpack.lfs* fails here, before the snapshot branch moves
        # Store-only saves build the archive beside the object database and never publish the file.
        dest = Path(os.path.abspath(path)) if path is not None else git_repo.common_dir / f"{name}.gitpack"
        exclude = set()
        try:
            exclude.add(dest.resolve().relative_to(git_repo.root.resolve()).as_posix())
        except ValueError:
            pass
        writer = ArchiveWriter(dest)
        try:
            snap = snapshot.write_tree(git_repo, size_cap=cap, exclude=exclude)
            if not branch_ref(branch).startswith("refs/heads/") or branch_ref(branch) == snap.head_branch:
                checked_out = branch_ref(branch) == snap.head_branch
                what = "your checked-out branch" if checked_out else "a ref outside refs/heads"
                raise GitpackError(
                    f"--branch {branch} would move {what}; give gitpack a branch of its own (default: gitpack)"
                )
            module_map = ModuleMap(git_repo.root, lambda rel: git_repo.object_type(f"{snap.tree}:{rel}") == "blob",
                                            left_out=dict(snap.excluded))

            def snapshot_source(rel: str) -> bytes | None:
                spec = f"{snap.tree}:{rel}"
                return git_repo.read_object(spec)[1] if git_repo.object_type(spec) == "blob" else None

            with paused():  # gitpack's own work need not pass through the capture hook
                data, storages, buffers, pickler = dump(obj, module_map)
            storage_bytes = sum(int(s.nbytes()) for s in storages.storages.values())
            tensor_bytes = storage_bytes + sum(b.raw().nbytes for b in buffers)
            with progress.Bar(f"saving {name or dest.name}", len(data) + tensor_bytes) as bar:
                # Queue every member first: the writer's threads hash and write them while the checks below run.
                writer.add(PICKLE_MEMBER, [data])
                for key in storages.storages:
                    writer.add(STORAGE_PREFIX + key, storages.buffers(key))
                for i, buf in enumerate(buffers):
                    writer.add(f"{BUFFER_PREFIX}{i}", [buf.raw()])
                with paused():
                    stale = find_stale(pickler.repo_objects, module_map, snapshot_source)
                    if stale and not allow_stale:
                        raise stale_error(stale)
                    instances = pickler.repo_instances
                    paths = object_paths(obj, lambda o: id(o) in instances or is_module(o))
                    captured = build_tree(instances, paths, module_map)
                    structure = summarize(paths, module_map)
                warnings = list(snap.submodule_warnings) + _policy_warnings(data, module_map.used, len(buffers))
                environment_description = environment.describe()
                remote_url = git_repo.remote_url()
                sign = signing.wants_signing(git_repo, sign)
                bar.update(completed=sum(m.size for m in writer.members))  # waits for the queued writes
            digest = writer.payload_digest()
            type_name = object_type_name(obj, module_map)
            manifest = Manifest(
                gitpack=__version__, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                tree=snap.tree, branch=branch_ref(branch), head=snap.head, head_branch=snap.head_branch,
                dirty=snap.dirty, remote_url=remote_url, object_type=type_name, params=params, message=message,
                capture=captured, structure=structure, allow_stale=bool(allow_stale),
                stale_code=[s.as_json() for s in stale],
                environment=environment_description,
                modules={n: ModuleInfo(u["path"], u["root"]) for n, u in module_map.used.items()},
                imported=module_map.imported_tops(),
                # Only roots the snapshot holds: a .venv's site-packages on sys.path is third-party.
                roots=[r for r in module_map.roots if r == "" or git_repo.object_type(f"{snap.tree}:{r}") == "tree"],
                by_value_code=module_map.by_value, excluded=[list(e) for e in snap.excluded],
                storages=len(storages.storages), buffers=len(buffers),
            ).to_json()
            # The commit vouches for the whole manifest too (all of it but the commit field itself).
            vouched = {"Manifest": manifest_digest(sealed_manifest(manifest, writer.members))}
            trailers = {**vouched, "Artifact": name} if name else dict(vouched)
            trailers.update(_capture_trailers(captured, stale))
            archive_label = dest.name
            if path is None:
                assert name is not None  # a save without a path has a name (checked on entry)
                archive_label = name  # store-only: the commit names the artifact, not its temporary file
            text = format_message(
                archive=archive_label, object_type=type_name, digest=digest, params=params, head=snap.head,
                message=_message_with_capture(message, captured), extra=trailers,
            )

            def seal(commit: str) -> None:
                writer.seal({**manifest, "commit": commit})

            try:
                commit = snapshot.branch.commit(git_repo, snap.tree, text, branch=branch, head=snap.head, sign=sign,
                                                before_update=seal)
            except GitError as exc:
                if sign and "commit-tree" in str(exc):
                    raise signing.explain_signing_failure(exc) from None
                raise
            version = None
            if name is not None:
                version = artifacts.Store(git_repo).add(name, writer.temp_path, snapshot=commit, digest=digest,
                                                    object_type=type_name, params=params)
            if path is not None:
                writer.publish()
            else:
                writer.abort()  # the sealed bytes now live in the object database
        except BaseException:
            writer.abort()
            raise
        return SaveInfo(dest if path is not None else None, commit, snap.tree, digest, branch_ref(branch), type_name,
                        list(snap.excluded), warnings, version.label if version else None)


CAPTURE_TRAILER_LIMIT = 16_000


def _policy_warnings(data: bytes, modules: dict, buffers: int) -> list[str]:
    """What the default load policy would refuse in this pickle, said at save time rather than at load."""
    from .pickling import gate

    found = gate.trace(data, Policy(), modules=list(modules), buffers=buffers)
    refused = list(dict.fromkeys(found.violations))
    if found.error:
        refused.insert(0, f"a malformed pickle ({found.error})")
    if not refused:
        return []
    shown = "; ".join(refused[:5]) + (f"; and {len(refused) - 5} more" if len(refused) > 5 else "")
    return [f"the default load policy will refuse {shown}; loading this archive will need --allow (or --trust)"]


def _capture_trailers(captured: dict[str, Any], stale: list) -> dict[str, str]:
    """``Gitpack-Capture`` (the tree as one-line JSON, when it is not huge) and ``Gitpack-Allow-Stale``."""
    out = {}
    text = json.dumps(captured, sort_keys=True, separators=(",", ":"), default=str)
    if captured.get("objects") and len(text) <= CAPTURE_TRAILER_LIMIT:
        out["Capture"] = text
    if stale:
        out["Allow-Stale"] = "; ".join(str(s) for s in stale)
    return out


def _message_with_capture(message: str | None, captured: dict[str, Any]) -> str | None:
    """The user's message plus one readable line per constructed object, for plain ``git log``."""
    lines = summary_lines(captured)
    if not lines:
        return message
    block = "Constructed with:\n" + "\n".join(f"    {line}" for line in lines)
    return f"{message.strip()}\n\n{block}" if message and message.strip() else block

"""gitpack's Python API: save, load, inspect, log.  The CLI is a thin layer over these."""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import audit, environment, pickling, progress, signing
from .archive import ArchiveReader, ArchiveWriter, manifest_digest, read_manifest, sealed_manifest
from .capturing import build_tree, capture, paused, summary_lines  # noqa: F401  (capture: part of the API the CLI calls)
from .diffing import DiffReport, compare as _compare
from .errors import ArchiveError, GitError, GitpackError, MissingCommitError, PolicyError, SignatureError, UnpicklingError
from .gitrepo import DEFAULT_BRANCH, DEFAULT_SIZE_CAP, Repo, branch_ref
from .isolation import GitSourceTree, namespace_for
from .policy import Policy
from .provenance import find_stale, stale_error
from .structure import is_module, object_paths, summarize
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
    allow_stale: bool = False,
) -> SaveInfo:
    """Snapshot the working tree onto gitpack's branch and write *obj* to the archive at *path*.

    The repository is the one containing the current directory (or *repo*).
    The user's HEAD, index, working tree, stash and reflogs are left exactly as
    they were; on any error no archive is written and the branch does not move.
    With *name*, the archive is also (or, with no *path*, only) stored in the
    repository as the next version of that artifact (see :mod:`gitpack.store`).
    The constructor arguments captured by :func:`capture` (or inferred), a
    structure summary of every torch module, and the check that the code in
    memory is the code being snapshotted (refused with StaleCodeError unless
    *allow_stale*) all go into the manifest and the commit message.
    """
    from . import store

    if path is None and name is None:
        raise GitpackError("nothing to save to: give a path for the archive file (-o FILE), a name to store it under (--name NAME), or both")
    if name is not None:
        store.validate_name(name)
    params = _jsonable(params or {})
    with Repo.discover(repo) as git_repo:
        branch = branch or git_repo.config("gitpack.branch") or DEFAULT_BRANCH
        cap = size_cap if size_cap is not None else int(git_repo.config("gitpack.sizecap") or DEFAULT_SIZE_CAP)
        # Store-only saves build the archive beside the object database and never publish the file.
        dest = Path(os.path.abspath(path)) if path is not None else git_repo.common_dir / f"{name}.gitpack"
        exclude = set()
        try:
            exclude.add(dest.resolve().relative_to(git_repo.root.resolve()).as_posix())
        except ValueError:
            pass
        writer = ArchiveWriter(dest)
        try:
            snap = git_repo.write_snapshot_tree(size_cap=cap, exclude=exclude)
            if not branch_ref(branch).startswith("refs/heads/") or branch_ref(branch) == snap.head_branch:
                raise GitpackError(
                    f"--branch {branch} would move {'your checked-out branch' if branch_ref(branch) == snap.head_branch else 'a ref outside refs/heads'}; "
                    "give gitpack a branch of its own (default: gitpack)"
                )
            module_map = pickling.ModuleMap(git_repo.root, lambda rel: git_repo.object_type(f"{snap.tree}:{rel}") == "blob",
                                            left_out=dict(snap.excluded))

            def snapshot_source(rel: str) -> bytes | None:
                spec = f"{snap.tree}:{rel}"
                return git_repo.read_object(spec)[1] if git_repo.object_type(spec) == "blob" else None

            with paused():  # gitpack's own work need not pass through the capture hook
                data, storages, buffers, pickler = pickling.dump(obj, module_map)
            tensor_bytes = sum(int(s.nbytes()) for s in storages.storages.values()) + sum(b.raw().nbytes for b in buffers)
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
            manifest = {
                "gitpack": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "tree": snap.tree,
                "branch": branch_ref(branch),
                "head": snap.head,
                "head_branch": snap.head_branch,
                "dirty": snap.dirty,
                "remote_url": remote_url,
                "object": {"type": type_name},
                "params": params,
                "message": message,
                "capture": captured,
                "structure": structure,
                "allow_stale": bool(allow_stale),
                "stale_code": [s.as_json() for s in stale],
                "environment": environment_description,
                "modules": module_map.used,
                "imported": module_map.imported_tops(),
                # Only roots the snapshot holds: a .venv's site-packages on sys.path is third-party.
                "roots": [r for r in module_map.roots if r == "" or git_repo.object_type(f"{snap.tree}:{r}") == "tree"],
                "by_value_code": module_map.by_value,
                "excluded": [list(e) for e in snap.excluded],
                "tensors": {"storages": len(storages.storages), "buffers": len(buffers)},
            }
            # The commit vouches for the whole manifest too (all of it but the commit field itself).
            vouched = {"Manifest": manifest_digest(sealed_manifest(manifest, writer.members))}
            trailers = {**vouched, "Artifact": name} if name else dict(vouched)
            trailers.update(_capture_trailers(captured, stale))
            text = audit.format_message(
                archive=dest.name if path is not None else name, object_type=type_name, digest=digest, params=params,
                head=snap.head, message=_message_with_capture(message, captured), extra=trailers,
            )

            def seal(commit: str) -> None:
                writer.seal({**manifest, "commit": commit})

            try:
                commit = git_repo.commit_snapshot(snap.tree, text, branch=branch, head=snap.head, sign=sign, before_update=seal)
            except GitError as exc:
                if sign and "commit-tree" in str(exc):
                    raise signing.explain_signing_failure(exc) from None
                raise
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
                        list(snap.excluded), warnings, version.label if version else None)


CAPTURE_TRAILER_LIMIT = 16_000


def _policy_warnings(data: bytes, modules: dict, buffers: int) -> list[str]:
    """What the default load policy would refuse in this pickle, said at save time rather than at load."""
    from . import gate

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


def diff(a: str | os.PathLike, b: str | os.PathLike | None = None, *, all_files: bool = False,
         repo: str | os.PathLike | None = None) -> DiffReport:
    """What differs between two saves (parameters, environment, code), or between a save and the working tree.

    Reads manifests and git only; nothing is unpickled.  *a* and *b* are archive
    files or stored ``NAME[@VERSION]`` artifacts.  The code diff is limited to
    the repo modules the objects use unless *all_files*.
    """
    from . import store

    path_a = store.locate(a, repo=repo)[0]
    path_b = store.locate(b, repo=repo)[0] if b is not None else None
    return _compare(path_a, path_b, all_files=all_files, repo=repo)


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """What the archive (a file, or a stored ``NAME[@VERSION]``) records, read without unpickling."""
    from . import store

    return read_manifest(store.locate(path)[0])


def load(
    path: str | os.PathLike,
    *,
    map_location: Any = None,
    mmap: bool = False,
    trust: bool = False,
    allow: Iterable[tuple[str, str] | str] = (),
    require_signed: bool | None = None,
    repo: str | os.PathLike | None = None,
    fetch: bool = False,
    remote: str | None = None,
) -> Any:
    """Load an archive against its own snapshot's code, in an isolated namespace.

    Args:
        path: an archive file or a stored artifact, ``NAME``, ``NAME@v2`` or ``NAME@latest``
            (:mod:`gitpack.store` documents how the two are told apart).
        map_location: where tensors go, as in ``torch.load`` (a device string, a dict, a callable, ``"meta"``).
        mmap: with ``mmap=True`` tensor data is mapped from the archive instead of read, and its digests are
            *not* checked at load (that would read every byte): run ``gitpack verify`` for that.
        trust: turn the policy off and admit by-value code: only for archives whose author you trust.
        allow: more globals the policy admits, ``"module:qualname"`` strings or ``(module, qualname)`` pairs.
        require_signed: refuse unless the snapshot commit has a trusted signature (None: ``gitpack.requireSigned``).
        repo: the repository (default: the one containing the current directory).
        fetch: run ``gitpack pull`` (from *remote*, default the upstream or origin) first.
    Returns:
        The object, running the code of the snapshot it was saved with.
    Example:
        >>> model = gitpack.load("model.gitpack")            # doctest: +SKIP
        >>> model = gitpack.load("clf@v2", map_location="cpu")  # doctest: +SKIP

    Everything is verified before anything is unpickled (:func:`gitpack.verification.open_verified`:
    the file, the commit that vouches for it, its signature when required), then the pickle passes the
    trust gate (:mod:`gitpack.gate`: every global, call, state and fill it would make), then every tensor
    storage it names is read and checked.  A portable archive loads with no repository at all, from its
    embedded, hash-verified source, but only with *trust* unless a clone here has its commit.
    """
    from . import gate, store
    from .verification import open_verified

    policy = Policy(allow)  # a malformed allow entry fails before anything is read
    if fetch:
        pull(remote, repo=repo)
    path, _ = store.locate(path, repo=repo)
    with open_verified(path, repo=repo, require_signed=require_signed, trust=trust) as checked:
        plan = checked.plan
        if plan.by_value and not trust:
            raise PolicyError(
                f"{path} carries by-value code ({', '.join(plan.by_value[:3])}) defined outside any file; "
                "load it only if you trust its author (trust=True / --trust)"
            )
        data = checked.reader.read(PICKLE_MEMBER)
        modules = frozenset(plan.modules)
        verdict = gate.trace(data, policy, modules=modules, buffers=plan.buffers)
        if not trust:
            verdict.raise_if_refused(str(path))
        buffers = [checked.reader.read_buffer(f"{BUFFER_PREFIX}{i}") for i in range(plan.buffers)]
        storage_loader = StorageLoader(checked.reader, map_location=map_location, mmap=mmap)
        if not mmap:
            _read_storages_first(storage_loader, verdict.storages)  # every byte verified before any import
        namespace = namespace_for(checked.source, plan.roots, plan.modules, imported=plan.imported, trusted=trust)
        resolver = pickling.Resolver(namespace, policy, trust=trust, modules=None if trust else modules)
        if not trust:
            verdict.check_classes(resolver.ref)  # imports only the snapshot modules the manifest records as used
            verdict.raise_if_refused(str(path))
        return pickling.load(data, resolver=resolver, storage_loader=storage_loader, buffers=buffers)


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` checked: every member's digest, the commit that vouches for them, its signature."""

    path: Path
    members: int
    size: int
    payload_digest: str
    manifest_vouched: bool  # the commit's message carries the manifest digest (and it matched)
    commit: str
    tree: str
    signature: signing.Signature | None  # None for a portable archive outside a repository
    portable: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "members": self.members, "bytes": self.size, "payload_digest": self.payload_digest,
            "manifest_vouched": self.manifest_vouched, "commit": self.commit, "tree": self.tree, "portable": self.portable,
            "signature": self.signature.as_json() if self.signature else None,
        }


def verify(
    path: str | os.PathLike, *, require_signed: bool | None = None, repo: str | os.PathLike | None = None
) -> VerifyReport:
    """Check an archive completely, without unpickling it (and without importing torch).

    Args:
        path: an archive file or a stored ``NAME[@VERSION]``.
        require_signed: refuse unless the snapshot commit has a trusted signature (None: ``gitpack.requireSigned``).
        repo: the repository (default: the one containing the current directory).
    Returns:
        A :class:`VerifyReport` of what was checked.
    Raises:
        GitpackError: at the first problem.

    The same checks as :func:`load` (one verification path), plus the digest of every member now
    and that every object of the snapshot commit is present.
    """
    from . import store
    from .verification import open_verified

    path, _ = store.locate(path, repo=repo)
    with open_verified(path, repo=repo, require_signed=require_signed, every_member=True, report_signature=True) as checked:
        manifest = checked.manifest
        size = sum(m.size for m in checked.reader.members.values())
        payload = manifest["portable"].get("payload_digest") if checked.portable else manifest.get("payload_digest")
        return VerifyReport(Path(path), len(checked.reader.members), size, str(payload), checked.manifest_vouched,
                            checked.commit, str(manifest.get("tree")), checked.signature, checked.portable)


def scan(path: str | os.PathLike, *, allow: Iterable[tuple[str, str] | str] = (), repo: str | os.PathLike | None = None):
    """Every global, persistent id, call and state the archive's pickle would make, judged by the trust gate.

    Read from a dry run of the pickle (:mod:`gitpack.gate`): nothing is
    unpickled and no snapshot code is imported or run, and no repository is
    needed.  Checks about snapshot classes are made from their source when the
    repository here has the snapshot, else reported as pending (load makes them).
    """
    from . import store
    from .scanner import scan as scan_archive

    path, _ = store.locate(path, repo=repo)
    return scan_archive(path, allow=allow, repo=repo)


def _read_storages_first(storage_loader: StorageLoader, storages: list[tuple]) -> None:
    """Read (and so verify) every tensor storage the pickle names before unpickling starts; the unpickler
    then finds them already loaded."""
    for pid in storages:
        try:
            storage_loader.load(pid)
        except GitpackError:
            raise
        except Exception as exc:  # torch: a bad device string, a size that does not fit the dtype
            raise UnpicklingError(f"cannot load tensor storage {str(pid[2])[:40]!r}: {type(exc).__name__}: {exc}") from exc


def log(*, branch: str | None = None, repo: str | os.PathLike | None = None, limit: int | None = None) -> list[audit.LogEntry]:
    """The saves recorded on the snapshot branch, newest first."""
    with Repo.discover(repo) as git_repo:
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


# ---------------------------------------------------------------------- the artifact store and sharing
def list_artifacts(name: str | None = None, *, repo: str | os.PathLike | None = None) -> list:
    """Every stored version (of *name*, or of all artifacts), by name, newest first."""
    from . import store

    with Repo.discover(repo) as git_repo:
        if name is not None:
            store.validate_name(name)
        return store.Store(git_repo).versions(name)


def alias(ref: str, alias_name: str, *, repo: str | os.PathLike | None = None):
    """Point ``NAME@ALIAS`` at the version *ref* names (``clf@v2`` -> ``prod``); returns that version."""
    from . import store

    with Repo.discover(repo) as git_repo:
        return store.Store(git_repo).set_alias(ref, alias_name)


def pull(remote: str | None = None, *, repo: str | os.PathLike | None = None):
    """Fetch the snapshot branch and artifacts from *remote* (default: upstream, else origin) and merge them in."""
    from . import share

    with Repo.discover(repo) as git_repo:
        return share.pull(git_repo, remote)


def push(remote: str | None = None, *, repo: str | os.PathLike | None = None):
    """Merge *remote*'s saves, then push the snapshot branch and artifacts, never overwriting anyone's."""
    from . import share

    with Repo.discover(repo) as git_repo:
        return share.push(git_repo, remote)


def export(ref: str | os.PathLike, output: str | os.PathLike, *, portable: bool = False,
           repo: str | os.PathLike | None = None):
    """Write a stored artifact (or an archive file) to *output*; ``portable=True`` embeds its source too.

    A portable archive loads where there is no repository at all.
    """
    from . import portable as portable_archive
    from . import store

    with Repo.discover(repo) as git_repo:
        archive, _ = store.locate(ref, repo=repo)
        manifest = read_manifest(archive)
        if portable_archive.is_portable(manifest):
            raise ArchiveError(f"{ref} is already portable; copy it as it is")
        from .verification import open_verified

        with open_verified(archive, repo=repo):
            pass  # the same checks as load: a tampered archive is never exported
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


def init(*, repo: str | os.PathLike | None = None) -> list[str]:
    """Set the repository up for archives: .gitattributes (binary, -delta, diff=gitpack) and git config."""
    from . import native

    with Repo.discover(repo) as git_repo:
        return native.init(git_repo)


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

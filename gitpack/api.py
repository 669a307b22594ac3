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
                warnings = list(snap.submodule_warnings) + _policy_warnings(data)
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


def _policy_warnings(data: bytes) -> list[str]:
    """What the default load policy would refuse in this pickle, said at save time rather than at load."""
    from .scanner import scan_pickle

    found = scan_pickle(data, Policy())
    refused = sorted({g.dotted for g in found.refused})
    if not refused:
        return []
    shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
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


def _verify_commit(git_repo: Repo, manifest: dict[str, Any], path: Path) -> bool:
    """The commit must exist, hold the recorded tree, and vouch for the archive's payload (and manifest) digest.

    Returns whether the commit vouches for the manifest as well (it does for every save since the
    ``Gitpack-Manifest`` trailer exists).
    """
    commit = audit.require_snapshot_commit(git_repo, manifest, path)
    headers, message = audit.parse_commit_object(git_repo.read_object(commit)[1])
    if headers.get("tree", [None])[0] != manifest.get("tree"):
        raise ArchiveError(f"{path}: commit {commit[:12]} does not hold the tree the archive records; the archive was tampered with")
    trailers = audit.parse_trailers(message)
    if trailers.get("digest") != manifest.get("payload_digest"):
        raise ArchiveError(
            f"{path}: payload digest {str(manifest.get('payload_digest'))[:80]} does not match the one commit {commit[:12]} "
            "vouches for; the archive was tampered with"
        )
    vouched = trailers.get("manifest")
    if vouched is not None and vouched != manifest_digest(manifest):
        raise ArchiveError(
            f"{path}: the manifest does not match the digest commit {commit[:12]} vouches for; the archive was tampered with"
        )
    return vouched is not None


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

    *path* is an archive file or a stored artifact, ``NAME``, ``NAME@v2`` or
    ``NAME@latest`` (:mod:`gitpack.store` documents how the two are told
    apart).  ``fetch=True`` runs ``gitpack pull`` (from *remote*, default the
    upstream or origin) first.  A portable archive loads with no repository at
    all, from its embedded, hash-verified source.

    Everything is verified before anything is unpickled: the manifest, the
    member table, the commit (which must hold the tree and vouch for the
    payload and manifest digests), its signature when one is required
    (*require_signed*, or git config ``gitpack.requireSigned``), the pickle's
    bytes and every tensor storage the pickle names.  With ``mmap=True``
    tensor data is mapped from the archive instead and its digest is *not*
    checked at load (that would read every byte); run ``gitpack verify`` to
    check it.  ``map_location`` works like torch's.

    Globals resolve only through the strict policy (:mod:`gitpack.policy`),
    extended by *allow* (``(module, qualname)`` pairs or ``"module:qualname"``
    strings).  ``trust=True`` turns the policy off and admits by-value code:
    only for archives whose author you trust.
    """
    from . import portable, store

    policy = Policy(allow)  # a malformed allow entry fails before anything is read

    if fetch:
        pull(remote, repo=repo)
    path, _ = store.locate(path, repo=repo)
    with ArchiveReader(path) as reader:
        manifest = reader.manifest
        roots, known, count, by_value = _load_plan(manifest, path)
        if portable.is_portable(manifest):
            source = portable.verified_source(reader)  # every embedded file checked before anything is imported
            if not _check_portable_signature(manifest, repo, require_signed) and not trust:
                # The hashes prove the archive is intact, not who wrote the code it carries.
                raise PolicyError(
                    f"{path} is a portable archive whose snapshot commit {str(manifest.get('commit'))[:12]} is not in a "
                    "repository here, so loading it imports code only the archive vouches for; load it only if you "
                    "trust its author (trust=True / --trust), or inside a clone that has the commit"
                )
        else:
            git_repo = Repo.discover(repo)
            try:
                _verify_commit(git_repo, manifest, path)
                signing.check(git_repo, manifest["commit"], require=require_signed)
            except BaseException:
                git_repo.close()
                raise
            source = GitSourceTree(git_repo, manifest["tree"])
        if by_value and not trust:
            raise PolicyError(
                f"{path} carries by-value code ({', '.join(by_value[:3])}) defined outside any file; "
                "load it only if you trust its author (trust=True / --trust)"
            )
        data = reader.read(PICKLE_MEMBER)
        buffers = [reader.read_buffer(f"{BUFFER_PREFIX}{i}") for i in range(count)]
        storage_loader = StorageLoader(reader, map_location=map_location, mmap=mmap)
        if not mmap:
            _read_storages_first(storage_loader, data)
        namespace = namespace_for(source, roots, known)
        find_global = pickling.trusted_find_class if trust else policy.find_class
        return pickling.load(
            data,
            namespace=namespace,
            storage_loader=storage_loader,
            find_global=find_global,
            buffers=buffers,
        )


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

    Every byte: header, trailer, canonical manifest, member table, padding and
    the sha256 of every member; then that the snapshot commit exists, holds
    the recorded tree with all its objects, and its message vouches for the
    payload and manifest digests; then the commit's signature, when it has
    one (refused unless trusted when *require_signed* or
    ``gitpack.requireSigned``).  Raises a :class:`GitpackError` at the first
    problem; returns what was checked.
    """
    from . import portable, store

    path, _ = store.locate(path, repo=repo)
    with ArchiveReader(path) as reader:
        manifest = reader.manifest
        _load_plan(manifest, path)
        for name in reader.members:
            reader.verify_member(name)
        size = sum(m.size for m in reader.members.values())
        is_portable = portable.is_portable(manifest)
        vouched = False
        if is_portable:
            # The embedded commit must hash right and vouch for the payload and the saved manifest.
            portable.verified_source(reader)
            embedded = audit.parse_commit_object(reader.read(portable.COMMIT_MEMBER))[1]
            vouched = "manifest" in audit.parse_trailers(embedded)
    commit, tree = str(manifest.get("commit")), str(manifest.get("tree"))
    signature = None
    try:
        git_repo = Repo.discover(repo)
    except GitpackError:
        if not is_portable:
            raise
        git_repo = None
    try:
        if git_repo is None or (is_portable and git_repo.object_type(commit) != "commit"):
            # Portable and its commit not here: the embedded commit vouched for everything (verified_source).
            _check_portable_signature(manifest, repo, require_signed)
        elif is_portable:
            signature = signing.signature(git_repo, commit)
            signing.check(git_repo, commit, require=require_signed)
        else:
            vouched = _verify_commit(git_repo, manifest, path)
            listed = git_repo.git("rev-list", "--objects", "--no-walk", "--missing=print", commit).splitlines()
            missing = [line[1:] for line in listed if line.startswith("?")]
            if missing:
                raise MissingCommitError(
                    f"snapshot commit {commit[:12]} is here but {len(missing)} of its objects are missing "
                    f"(e.g. {missing[0][:12]}); fetch it again (`gitpack pull`)"
                )
            signature = signing.signature(git_repo, commit)
            signing.check(git_repo, commit, require=require_signed)
    finally:
        if git_repo is not None:
            git_repo.close()
    payload = manifest["portable"].get("payload_digest") if is_portable else manifest.get("payload_digest")
    return VerifyReport(Path(path), len(reader.members), size, str(payload), vouched, commit, tree, signature, is_portable)


def scan(path: str | os.PathLike, *, allow: Iterable[tuple[str, str] | str] = (), repo: str | os.PathLike | None = None):
    """Every global, persistent id, repo function and by-value code object the archive's pickle names.

    Read from the pickle's opcodes (:mod:`gitpack.scanner`): nothing is
    unpickled, imported or resolved, and no repository is needed.  Each
    global is marked allowed or refused by the default policy plus *allow*.
    """
    from . import store
    from .scanner import scan as scan_archive

    path, _ = store.locate(path, repo=repo)
    return scan_archive(path, allow=allow)


def _check_portable_signature(manifest: dict[str, Any], repo: str | os.PathLike | None, require: bool | None) -> bool:
    """A portable archive needs no repository, but a required signature can only be checked in one.

    Returns whether the snapshot commit is in a repository here (then the embedded source, which
    hashes to that commit, is code this clone already vouches for).
    """
    try:
        git_repo = Repo.discover(repo)
    except GitpackError:
        if require:
            raise SignatureError(
                "a signed snapshot is required but this portable archive is loaded outside any repository, where git "
                "cannot check signatures; load it inside a clone that has the snapshot commit"
            ) from None
        return False
    try:
        commit = manifest.get("commit")
        if signing.requires_signature(git_repo, require) and not (isinstance(commit, str) and git_repo.object_type(commit) == "commit"):
            raise SignatureError(
                f"a signed snapshot is required but commit {str(commit)[:12]} of this portable archive is not in "
                f"{git_repo.root}, so git cannot check its signature; fetch it first (`gitpack pull`)"
            )
        if isinstance(commit, str) and git_repo.object_type(commit) == "commit":
            signing.check(git_repo, commit, require=require)
            return True
        return False
    finally:
        git_repo.close()


def _read_storages_first(storage_loader: StorageLoader, data: bytes) -> None:
    """Read (and so verify) every tensor storage the pickle names before unpickling starts.

    The storages are found by scanning the pickle's opcodes (nothing runs);
    the unpickler then finds them already loaded.  A storage whose id the scan
    cannot read as constants is simply loaded (and verified) when met.
    """
    from .scanner import scan_pickle

    for pid in scan_pickle(data, Policy()).storages():
        try:
            storage_loader.load(pid)
        except GitpackError:
            raise
        except Exception as exc:  # torch: a bad device string, a size that does not fit the dtype
            raise UnpicklingError(f"cannot load tensor storage {str(pid[2])[:40]!r}: {type(exc).__name__}: {exc}") from exc


_MODULE_NAME = re.compile(r"^[^\W\d]\w*(?:\.[^\W\d]\w*)*$")


def _load_plan(manifest: dict[str, Any], path: Path) -> tuple[list[str], dict[str, str], int, list[str]]:
    """The manifest fields load acts on, checked: import roots, module roots, buffer count, by-value code.

    The commit already vouches for them (manifest digest); this keeps a bad
    value from ever reaching the filesystem (a root of ``../x`` would read
    another snapshot's cache) or an allocation.
    """
    def bad(field_name: str) -> ArchiveError:
        return ArchiveError(f"{path}: manifest field {field_name!r} is malformed; the archive is corrupt or tampered with")

    roots = manifest.get("roots") or [""]
    if not (isinstance(roots, list) and all(_is_snapshot_dir(r) for r in roots)):
        raise bad("roots")
    modules = manifest.get("modules") or {}
    if not isinstance(modules, dict):
        raise bad("modules")
    known = {}
    for name, info in modules.items():
        root = info.get("root", "") if isinstance(info, dict) else None
        if not (_MODULE_NAME.match(name) and _is_snapshot_dir(root)):
            raise bad("modules")
        known[name] = root
    tensors = manifest.get("tensors") or {}
    count = tensors.get("buffers", 0) if isinstance(tensors, dict) else None
    if type(count) is not int or not 0 <= count <= len(manifest.get("members", [])):
        raise bad("tensors")
    by_value = manifest.get("by_value_code") or []
    if not (isinstance(by_value, list) and all(isinstance(x, str) for x in by_value)):
        raise bad("by_value_code")
    return roots, known, count, by_value


def _is_snapshot_dir(rel: Any) -> bool:
    """A relative path inside the snapshot: no absolute path, no ``..``, no ``.git``, no NUL; any other name is fine."""
    if not isinstance(rel, str) or rel.startswith("/") or "\0" in rel or "\\" in rel:
        return False
    return rel == "" or all(part not in ("", ".", "..", ".git") for part in rel.split("/"))


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

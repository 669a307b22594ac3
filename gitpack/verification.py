"""One verification path: what makes an archive trustworthy enough to import its code.

``load``, ``verify`` and ``export`` all open archives through
:func:`open_verified`, so they refuse exactly the same tampered archives.  It
checks, before anything is imported or unpickled:

1. the file: header, trailer, canonical manifest, member table, padding (and,
   for ``verify``, every member's digest; ``load`` checks each member as it
   reads it);
2. the manifest fields load acts on are well formed (no ``../`` roots, sane
   counts);
3. *who vouches*: a snapshot commit that

   * holds exactly the tree the manifest names;
   * carries both ``Gitpack-Digest`` (the payload digest) and
     ``Gitpack-Manifest`` (the manifest digest, which covers every field load
     uses) in its **trailer block**, not merely somewhere in its message;
   * is one of gitpack's own saves: on the first-parent history of gitpack's
     snapshot branch (or of a branch gitpack started, or of snapshots a
     ``gitpack pull`` merged in), or the snapshot of a stored artifact.  An
     ordinary commit merged into the user's branches cannot vouch, even though
     every save's second parent makes all of those reachable;
4. its signature, when signatures are required.

A portable archive vouches for itself with its embedded commit (git's own
hashes); outside a repository that has that commit, only ``trust`` admits it.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import audit, signing
from .archive import ArchiveReader, manifest_digest
from .errors import ArchiveError, GitpackError, MissingCommitError, PolicyError, SignatureError
from .gitrepo import DEFAULT_BRANCH, START_MESSAGE, Repo, branch_ref
_MODULE_NAME = re.compile(r"^[^\W\d]\w*(?:\.[^\W\d]\w*)*$")


@dataclass(frozen=True)
class LoadPlan:
    """The manifest fields load acts on, checked (:func:`load_plan`)."""

    roots: list[str]
    modules: dict[str, str]  # canonical module name -> import root
    buffers: int
    by_value: list[str]
    imported: list[str]  # top-level repo modules the saved code imported (they may shadow installed packages)


@dataclass
class Verified:
    """An archive that passed :func:`open_verified`, still open for reading."""

    path: Path
    reader: ArchiveReader
    manifest: dict[str, Any]
    plan: LoadPlan
    repo: Repo | None  # the repository holding the snapshot commit (None: a portable archive outside one)
    source: Any  # where the snapshot's files come from (a SourceTree)
    portable: bool
    manifest_vouched: bool
    signature: signing.Signature | None

    @property
    def commit(self) -> str:
        return str(self.manifest.get("commit"))


@contextmanager
def open_verified(path: str | os.PathLike, *, repo: str | os.PathLike | None = None, require_signed: bool | None = None,
                  trust: bool = False, every_member: bool = False, report_signature: bool = False) -> Iterator[Verified]:
    """Open *path* and prove it trustworthy (see the module's docstring); raise a GitpackError otherwise.

    Args:
        path: an archive file (stored artifacts are located by the caller).
        repo: where to look for the snapshot commit (default: the repository of the current directory).
        require_signed: refuse unless the snapshot commit has a trusted signature (None: ``gitpack.requireSigned``).
        trust: admit a portable archive whose commit is in no repository here (its hashes prove integrity only).
        every_member: also hash every member now (``verify``); ``load`` hashes each member as it reads it.
        report_signature: look the signature up even when none is required (``verify`` reports it).
    Yields:
        A :class:`Verified`; the reader and repository are closed when the block ends.
    """
    from . import portable
    from .isolation import GitSourceTree

    path = Path(path)
    reader = ArchiveReader(path)
    git_repo: Repo | None = None
    try:
        manifest = reader.manifest
        plan = load_plan(manifest, path)
        if every_member:
            for name in reader.members:
                reader.verify_member(name)
        signature = None
        if portable.is_portable(manifest):
            source = portable.verified_source(reader)  # every embedded object hashed before anything is imported
            embedded = audit.parse_trailers(audit.parse_commit_object(reader.read(portable.COMMIT_MEMBER))[1])
            git_repo = _repo_with(manifest.get("commit"), repo)
            if git_repo is not None:
                signature = _signature(git_repo, str(manifest.get("commit")), require_signed, report_signature)
            else:
                _no_repo_for_signature(require_signed, repo, manifest)
                if not trust and not every_member:
                    raise PolicyError(
                        f"{path} is a portable archive whose snapshot commit {str(manifest.get('commit'))[:12]} is not in "
                        "a repository here, so loading it imports code only the archive vouches for; load it only if "
                        "you trust its author (trust=True / --trust), or inside a clone that has the commit"
                    )
            yield Verified(path, reader, manifest, plan, git_repo, source, True, "manifest" in embedded, signature)
            return
        git_repo = Repo.discover(repo)
        vouch(git_repo, manifest, path)
        if every_member:
            _objects_present(git_repo, str(manifest["commit"]))
        signature = _signature(git_repo, str(manifest["commit"]), require_signed, report_signature)
        source = GitSourceTree(git_repo, manifest["tree"])
        yield Verified(path, reader, manifest, plan, git_repo, source, False, True, signature)
    finally:
        reader.close()
        if git_repo is not None:
            git_repo.close()


def vouch(repo: Repo, manifest: dict[str, Any], path: Path) -> str:
    """The snapshot commit that vouches for *manifest*, checked as the module docstring says; returns it."""
    commit = audit.require_snapshot_commit(repo, manifest, path)
    headers, message = audit.parse_commit_object(repo.read_object(commit)[1])
    if headers.get("tree", [None])[0] != manifest.get("tree"):
        raise ArchiveError(f"{path}: commit {commit[:12]} does not hold the tree the archive records; the archive was tampered with")
    trailers = audit.parse_trailers(message)
    if "digest" not in trailers or "manifest" not in trailers:
        raise ArchiveError(
            f"{path}: commit {commit[:12]} is not a gitpack snapshot (its trailers do not vouch for a payload and a "
            "manifest); the archive was tampered with, or was saved by gitpack 0.1 before manifests were vouched for: "
            "re-save it"
        )
    if trailers["digest"] != manifest.get("payload_digest"):
        raise ArchiveError(
            f"{path}: payload digest {str(manifest.get('payload_digest'))[:80]} does not match the one commit {commit[:12]} "
            "vouches for; the archive was tampered with"
        )
    if trailers["manifest"] != manifest_digest(manifest):
        raise ArchiveError(
            f"{path}: the manifest does not match the digest commit {commit[:12]} vouches for; the archive was tampered with"
        )
    if not is_gitpack_snapshot(repo, commit, manifest.get("branch")):
        raise ArchiveError(
            f"{path}: commit {commit[:12]} is not on gitpack's snapshot history (the snapshot branch, or a stored "
            "artifact), so it cannot vouch for an archive: only commits gitpack saved can; if the save came from "
            "another clone, `gitpack pull` it first"
        )
    return commit


def is_gitpack_snapshot(repo: Repo, commit: str, recorded_branch: Any = None) -> bool:
    """Whether *commit* is one of gitpack's own saves (see the module docstring, point 3)."""
    parents = repo.git("for-each-ref", "--format=%(parent)", "refs/gitpack/artifacts")
    if commit in parents.split():
        return True
    branches = {branch_ref(repo.config("gitpack.branch") or DEFAULT_BRANCH)}
    if isinstance(recorded_branch, str) and recorded_branch.startswith("refs/heads/"):
        branches.add(recorded_branch)
    for ref in sorted(branches):
        if repo.rev_parse(ref) is None:
            continue
        chain = repo.git("rev-list", "--first-parent", ref, "--").split()
        if not chain or not _is_start_commit(repo, chain[-1]):
            continue  # not a branch gitpack started: someone else's, whatever its name
        if commit in chain:
            return True
        from .share import merged_in_tips

        for tip in merged_in_tips(repo, ref):
            if commit in repo.git("rev-list", "--first-parent", tip, "--").split():
                return True
    return False


def _is_start_commit(repo: Repo, sha: str) -> bool:
    headers, message = audit.parse_commit_object(repo.read_object(sha)[1])
    return "parent" not in headers and message.strip() == START_MESSAGE


def _repo_with(commit: Any, repo: str | os.PathLike | None) -> Repo | None:
    """The repository here, if it has *commit*; None otherwise (also when there is no repository)."""
    try:
        git_repo = Repo.discover(repo)
    except GitpackError:
        return None
    if isinstance(commit, str) and git_repo.object_type(commit) == "commit":
        return git_repo
    git_repo.close()
    return None


def _no_repo_for_signature(require: bool | None, repo: str | os.PathLike | None, manifest: dict[str, Any]) -> None:
    commit = str(manifest.get("commit"))[:12]
    try:
        git_repo = Repo.discover(repo)
    except GitpackError:
        if require:
            raise SignatureError(
                "a signed snapshot is required but this portable archive is loaded outside any repository, where git "
                "cannot check signatures; load it inside a clone that has the snapshot commit"
            ) from None
        return
    with git_repo:
        if signing.requires_signature(git_repo, require):
            raise SignatureError(
                f"a signed snapshot is required but commit {commit} of this portable archive is not in "
                f"{git_repo.root}, so git cannot check its signature; fetch it first (`gitpack pull`)"
            )


def _signature(repo: Repo, commit: str, require: bool | None, report: bool) -> signing.Signature | None:
    checked = signing.check(repo, commit, require=require)
    if checked is None and report:
        return signing.signature(repo, commit)
    return checked


def _objects_present(repo: Repo, commit: str) -> None:
    listed = repo.git("rev-list", "--objects", "--no-walk", "--missing=print", commit).splitlines()
    missing = [line[1:] for line in listed if line.startswith("?")]
    if missing:
        raise MissingCommitError(
            f"snapshot commit {commit[:12]} is here but {len(missing)} of its objects are missing "
            f"(e.g. {missing[0][:12]}); fetch it again (`gitpack pull`)"
        )


def load_plan(manifest: dict[str, Any], path: Path) -> LoadPlan:
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
    imported = manifest.get("imported") or []
    if not (isinstance(imported, list) and all(isinstance(x, str) and _MODULE_NAME.match(x) for x in imported)):
        raise bad("imported")
    return LoadPlan(roots, known, count, by_value, imported)


def _is_snapshot_dir(rel: Any) -> bool:
    """A relative path inside the snapshot: no absolute path, no ``..``, no ``.git``, no NUL; any other name is fine."""
    if not isinstance(rel, str) or rel.startswith("/") or "\0" in rel or "\\" in rel:
        return False
    return rel == "" or all(part not in ("", ".", "..", ".git") for part in rel.split("/"))

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import artifacts, signing
from .archive import ArchiveReader, manifest_digest, portable
from .errors import (
    ArchiveError,
    GitpackError,
    MissingCommitError,
    PolicyError,
    SignatureError,
)
from .git import DEFAULT_BRANCH, Repo, branch_ref, parse_commit_object, plain_branch, runner
from .history import require_snapshot_commit
from .isolation import FilteredSource, GitSourceTree, SourceTree
from .manifest import Manifest
from .snapshot.branch import is_gitpack_branch, is_recorded_start, merged_in_tips
from .trailers import parse_trailers


@dataclass
class Verified:
    """An archive that passed :func:`open_verified`, still open for reading."""

    path: Path
    reader: ArchiveReader
    manifest: dict[str, Any]
    plan: Manifest  # the manifest, every field load acts on checked
    repo: Repo | None  # the repository holding the snapshot commit (None: a portable archive outside one)
    source: SourceTree  # where the snapshot's files come from
    portable: bool
    manifest_vouched: bool
    signature: signing.Signature | None

    @property
    def commit(self) -> str:
        return str(self.manifest.get("commit"))


@contextmanager
def open_verified(
    path: str | os.PathLike, *, repo: str | os.PathLike | Repo | None = None, require_signed: bool | None = None,
    trust: bool = False, every_member: bool = False, report_signature: bool = False,
    on_open: Callable[[ArchiveReader], object] | None = None,
) -> Iterator[Verified]:
    """Open *path* and prove it trustworthy (see the module's docstring); raise a GitpackError otherwise.

    Args:
        path: an archive file (stored artifacts are located by the caller).
        repo: where to look for the snapshot commit (default: the repository of the current directory).
        require_signed: refuse unless the snapshot commit has a trusted signature (None: ``gitpack.requireSigned``).
        trust: admit a portable archive whose commit is in no repository here (its hashes prove integrity only).
        every_member: also hash every member now (``verify``); ``load`` hashes each member as it reads it.
        report_signature: look the signature up even when none is required (``verify`` reports it).
        on_open: called with the reader once its manifest and member table are validated, before the
            repository is asked to vouch: ``load`` starts reading and hashing tensor bytes there, so those
            reads overlap the git checks.  Tensor bytes are only data, never unpickled, and the reads still
            queued are cancelled when the archive is refused.
    Yields:
        A :class:`Verified`; the reader and repository are closed when the block ends.
    """
    path = Path(path)
    reader = ArchiveReader(path)
    git_repo: Repo | None = None
    try:
        manifest = reader.manifest
        plan = Manifest.parse(manifest, path)
        if on_open is not None:
            on_open(reader)
        if every_member:
            for name in reader.members:
                reader.verify_member(name)
        signature = None
        source: SourceTree  # the archive's embedded objects, or the repository's
        if portable.is_portable(manifest):
            embedded = parse_trailers(parse_commit_object(reader.read(portable.COMMIT_MEMBER))[1])
            git_repo = _repo_with(manifest.get("commit"), repo)
            # Every embedded object hashed before anything is imported; filtered files as a checkout writes them.
            source = FilteredSource(portable.verified_source(reader), git_repo)
            if git_repo is not None:
                signature = _signature(git_repo, str(manifest.get("commit")), require_signed, report_signature)
            else:
                _no_repo_for_signature(require_signed, repo, manifest)
                if not trust and not every_member:
                    raise PolicyError(
                        f"{path} is a portable archive whose snapshot commit {str(manifest.get('commit'))[:12]} "
                        "is not in a repository here, so loading it imports code only the archive vouches for; "
                        "load it only if you trust its author (trust=True / --trust), "
                        "or inside a clone that has the commit"
                    )
            yield Verified(path, reader, manifest, plan, git_repo, source, True, "manifest" in embedded, signature)
            return
        git_repo = Repo.discover(repo)
        vouch(git_repo, manifest, path)
        if every_member:
            _objects_present(git_repo, str(manifest["commit"]))
        signature = _signature(git_repo, str(manifest["commit"]), require_signed, report_signature)
        source = FilteredSource(GitSourceTree(git_repo, manifest["tree"]), git_repo)  # files as a checkout writes
        yield Verified(path, reader, manifest, plan, git_repo, source, False, True, signature)
    finally:
        reader.close()
        if git_repo is not None:
            git_repo.close()


def vouch(repo: Repo, manifest: dict[str, Any], path: Path) -> str:
    """The snapshot commit that vouches for *manifest*, checked as the module docstring says; returns it."""
    commit = require_snapshot_commit(repo, manifest, path)
    headers, message = parse_commit_object(repo.read_object(commit)[1])
    if headers.get("tree", [None])[0] != manifest.get("tree"):
        raise ArchiveError(
            f"{path}: commit {commit[:12]} does not hold the tree the archive records; the archive was tampered with"
        )
    trailers = parse_trailers(message)
    if "digest" not in trailers or "manifest" not in trailers:
        raise ArchiveError(
            f"{path}: commit {commit[:12]} is not a gitpack snapshot (its trailers do not vouch for a payload and a "
            "manifest); the archive was tampered with, or was saved by gitpack 0.1 before manifests were vouched for: "
            "re-save it"
        )
    if trailers["digest"] != manifest.get("payload_digest"):
        raise ArchiveError(
            f"{path}: payload digest {str(manifest.get('payload_digest'))[:80]} does not match the one "
            f"commit {commit[:12]} vouches for; the archive was tampered with"
        )
    if trailers["manifest"] != manifest_digest(manifest):
        raise ArchiveError(
            f"{path}: the manifest does not match the digest commit {commit[:12]} vouches for; "
            "the archive was tampered with"
        )
    if not is_gitpack_snapshot(repo, commit, manifest.get("branch")):
        raise ArchiveError(
            f"{path}: commit {commit[:12]} is not on gitpack's snapshot history (the snapshot branch, or a stored "
            "artifact), so it cannot vouch for an archive: only commits gitpack saved can; if the save came from "
            "another clone, `gitpack pull` it first"
        )
    return commit


def is_gitpack_snapshot(repo: Repo, commit: str, recorded_branch: Any = None) -> bool:
    """Whether *commit* is one of gitpack's own saves (see the module docstring, point 3).

    The snapshot branch is asked first: it holds nearly every save, and its history is kept per process
    (:func:`is_gitpack_branch`), so a load usually starts no git process here."""
    configured = branch_ref(repo.config("gitpack.branch") or DEFAULT_BRANCH)
    branches = {configured}
    recorded = plain_branch(recorded_branch)  # a name only: a forged manifest could name `main^2`, or a blob
    if recorded is not None:
        branches.add(recorded)
    chains = {}
    for ref in sorted(branches):
        chain = is_gitpack_branch(repo, ref)
        if chain is not None and ref != configured and not is_recorded_start(repo, chain[-1]):
            chain = None  # a branch only the archive names (a checked-out pull request?): its start is no proof
        chains[ref] = chain
    if any(chain is not None and commit in chain for chain in chains.values()):
        return True
    parents = repo.git("for-each-ref", "--format=%(parent)", "refs/gitpack/artifacts")
    if commit in parents.split():
        return True
    for ref, chain in chains.items():
        if chain is None:
            continue  # not a branch gitpack started: someone else's, whatever its name
        for tip in merged_in_tips(repo, ref):
            if commit in repo.git("rev-list", "--first-parent", tip, "--").split():
                return True
    return False


def _repo_with(commit: Any, repo: str | os.PathLike | Repo | None) -> Repo | None:
    """The repository here, if it has *commit*; None otherwise (also when there is no repository)."""
    try:
        git_repo = Repo.discover(repo)
    except GitpackError:
        return None
    if isinstance(commit, str) and git_repo.object_type(commit) == "commit":
        return git_repo
    git_repo.close()
    return None


def _no_repo_for_signature(
    require: bool | None, repo: str | os.PathLike | Repo | None, manifest: dict[str, Any]
) -> None:
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
    if missing and repo.is_partial_clone():
        # A partial clone lacks blobs on purpose: its promisor remote hands them over when asked, as a load asks.
        promised = runner.run(["rev-list", "--objects", "--no-walk", "--missing=allow-promisor", commit],
                              cwd=repo.root, check=False)
        missing = [] if promised.returncode == 0 else missing
    if missing:
        raise MissingCommitError(
            f"snapshot commit {commit[:12]} is here but {len(missing)} of its objects are missing "
            f"(e.g. {missing[0][:12]}); fetch it again (`gitpack pull`)"
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
            "path": str(self.path), "members": self.members, "bytes": self.size,
            "payload_digest": self.payload_digest, "manifest_vouched": self.manifest_vouched,
            "commit": self.commit, "tree": self.tree, "portable": self.portable,
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
    path, _ = artifacts.locate(path, repo=repo)
    with open_verified(
        path, repo=repo, require_signed=require_signed, every_member=True, report_signature=True
    ) as checked:
        manifest = checked.manifest
        size = sum(m.size for m in checked.reader.members.values())
        payload = manifest["portable"].get("payload_digest") if checked.portable else manifest.get("payload_digest")
        return VerifyReport(Path(path), len(checked.reader.members), size, str(payload), checked.manifest_vouched,
                            checked.commit, str(manifest.get("tree")), checked.signature, checked.portable)

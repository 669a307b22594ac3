"""What ``gitpack push`` does about Git LFS before it pushes refs: move, upload, and explain refusals.

A push publishes version commits (:mod:`gitpack.sync`).  Before git sends them:

1. :func:`move_into_lfs`: a version never published anywhere whose archive is
   still a plain blob, and which the LFS settings now want in LFS (git-lfs was
   installed after it was saved, or ``gitpack.lfs`` changed), gets the same
   version commit with a pointer instead: same parent, message, author and
   dates; every ref on it moves in one transaction.  Nobody else can have the
   old commit, so nothing is renumbered or lost.  This is what makes "install
   git-lfs, then push again" work after a host refused a large blob.
2. :func:`upload`: every LFS object of the versions the remote lacks is
   uploaded with ``git lfs push --object-id`` *before* the refs, so a remote
   never has a pointer whose bytes it lacks.
3. :func:`refusal_advice`: when the remote refuses the push anyway and a
   pushed archive is a large plain blob, the error says how to get it into LFS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

from . import lfs
from .artifacts import ARCHIVE_ENTRY, split_store_ref
from .errors import GitError, StoreError
from .git import Repo, parse_commit_object
from .sizes import binary_size_text

Update = tuple[str, str, "str | None"]  # (ref, local sha, the remote's sha or None), as sync computes them
_IDENT = re.compile(r"(?P<name>.*) <(?P<email>[^>]*)> (?P<when>[0-9]+ [+-][0-9]{4})")


class Target(Protocol):
    """The remote as :class:`gitpack.sync.Remote` describes it."""

    @property
    def argument(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def tracking(self) -> str: ...  # gitpack's remote-tracking refs of this remote: "refs/gitpack-remotes/<key>/"


def _labels(updates: Iterable[Update]) -> dict[str, str]:
    """``{version commit: "clf@v2"}`` for the store refs among *updates* (a version ref's label wins)."""
    labels: dict[str, str] = {}
    for kind in ("artifacts", "aliases"):
        for ref, sha, _ in updates:
            parts = split_store_ref(ref)
            if parts and parts[0] == kind:
                labels.setdefault(sha, f"{parts[1]}@{parts[2]}")
    return labels


def archive_entry(repo: Repo, commit: str) -> tuple[str, int, lfs.Pointer | None] | None:
    """(blob, size, pointer or None) of a version commit's ``archive.gitpack``; None for any other commit."""
    kind, raw = repo.read_object(commit)
    if kind != "commit":
        return None
    headers, _ = parse_commit_object(raw)
    entries = repo.read_tree(headers["tree"][0]) if headers.get("tree") else []
    if len(entries) != 1 or entries[0].name != ARCHIVE_ENTRY or entries[0].kind != "blob":
        return None
    blob = entries[0].sha
    size = repo.object_size(blob) or 0
    return blob, size, lfs.read_pointer(repo, blob, size)


def move_into_lfs(repo: Repo, updates: list[Update], tracking: str) -> list[str]:
    """Put the unpublished versions among *updates* that belong in LFS there; returns one note per version.

    Unpublished: no remote-tracking ref under *tracking* (every remote's) holds the commit.
    """
    if lfs.settings(repo).mode == "never":
        return []
    moved: dict[str, str] = {}
    notes = []
    published: set[str] | None = None
    for sha, label in _labels(updates).items():
        entry = archive_entry(repo, sha)
        if entry is None or entry[2] is not None or not lfs.wanted(repo, entry[1]):
            continue
        if published is None:
            published = set(repo.refs(tracking.rstrip("/")).values())
        if sha in published:
            continue
        blob, size, _ = entry
        moved[sha] = _with_pointer(repo, sha, lfs.store_blob(repo, blob, size, f"moving {label} into Git LFS"))
        notes.append(f"{label}: its archive ({binary_size_text(size)}) moved into Git LFS before its first push")
    if moved:
        ops = [(ref, moved[sha], sha) for ref, sha in repo.refs("refs/gitpack").items() if sha in moved]
        try:
            repo.update_refs(ops)
        except GitError:
            raise StoreError("the local store changed while gitpack moved archives into Git LFS (a save running "
                             "meanwhile?); run `gitpack push` again") from None
    return notes


def _with_pointer(repo: Repo, commit: str, pointer: lfs.Pointer) -> str:
    """The version commit *commit* again, its archive replaced by *pointer*: same parent, message, people, dates."""
    _, raw = repo.read_object(commit)
    headers, _ = parse_commit_object(raw)
    message = raw.partition(b"\n\n")[2]
    env = {}
    for role in ("author", "committer"):
        m = _IDENT.fullmatch(headers.get(role, [""])[0])
        if m:
            env.update({f"GIT_{role.upper()}_NAME": m["name"], f"GIT_{role.upper()}_EMAIL": m["email"],
                        f"GIT_{role.upper()}_DATE": "@" + m["when"]})
    blob = repo.git("hash-object", "-w", "--no-filters", "--stdin", input=pointer.text().encode())
    tree = repo.git("mktree", input=f"100644 blob {blob}\t{ARCHIVE_ENTRY}\n".encode())
    parents = [arg for p in headers.get("parent", []) for arg in ("-p", p)]
    return repo.git("commit-tree", tree, *parents, "-F", "-", input=message, env=env)


def upload(repo: Repo, remote: Target, updates: list[Update]) -> list[str]:
    """Upload the LFS objects of the versions among *updates* that *remote* does not have yet; a note saying so."""
    pointers: list[tuple[str, lfs.Pointer]] = []
    remote_has: set[str] | None = None
    for sha, label in _labels(updates).items():
        entry = archive_entry(repo, sha)
        if entry is None or entry[2] is None:
            continue
        if remote_has is None:  # as last fetched: a version renumbered there is still there
            remote_has = set(repo.refs(remote.tracking.rstrip("/")).values())
        if sha in remote_has:
            continue
        pointer = entry[2]
        if not lfs.has_object(repo, pointer):
            raise lfs.LfsError(
                f"{label}'s archive (Git LFS object {pointer.short}, {binary_size_text(pointer.size)}) is not in this "
                f"clone, so it cannot be pushed to {remote.label}; download it first (`gitpack load {label} --remote "
                "<the remote it came from>`), then `gitpack push` again (nothing was pushed)"
            )
        pointers.append((label, pointer))
    if not pointers:
        return []
    lfs.push(repo, remote.argument, remote.label, [p for _, p in pointers])
    return [f"uploaded the Git LFS objects of {', '.join(label for label, _ in pointers)} "
            f"({binary_size_text(sum(p.size for _, p in pointers))}) to {remote.argument}"]


def refusal_advice(repo: Repo, updates: list[Update]) -> str:
    """What to add to a refused push's error when it carried a large archive as a plain git blob ("" if none)."""
    settings = lfs.settings(repo)
    large = []
    for sha, label in _labels(updates).items():
        entry = archive_entry(repo, sha)
        if entry is not None and entry[2] is None and entry[1] > settings.threshold:
            large.append((entry[1], label))
    if not large:
        return ""
    size, label = max(large)
    said = f" - {label}'s archive is a {binary_size_text(size)} plain git blob, and hosts refuse large blobs"
    if not lfs.installed(repo):
        return (f"{said}: {lfs.INSTALL_HINT}, then `gitpack push` again (versions not pushed yet move into Git LFS "
                "then)")
    if settings.mode == "never":
        return (f"{said}: `git config gitpack.lfs auto`, then `gitpack push` again (versions not pushed yet move "
                "into Git LFS then)")
    return ""

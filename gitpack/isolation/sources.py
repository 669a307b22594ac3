"""Where a snapshot's files come from: the repository's object database, or a portable archive's copy.

Both implement :class:`SourceTree`, so materialisation and the private
namespaces never care which.  Reads of the repository go through its
long-lived object reader, many objects per round trip.
"""

from __future__ import annotations

from typing import Protocol

_SYMLINK_MODE = "120000"


class SourceTree(Protocol):
    """Where a snapshot's files come from: a git repository, or an archive's embedded copy."""

    key: str

    def list_dir(self, rel: str) -> dict[str, tuple[str, str]] | None:
        """``{name: (kind, ref)}`` for a directory ('blob', 'link' or 'tree'), or None if absent."""

    def read(self, ref: str) -> bytes:
        """The bytes of one blob."""


class GitSourceTree:
    """A tree read through the repository's long-lived ``git cat-file --batch``."""

    def __init__(self, repo, tree: str):
        self.repo = repo
        self.key = tree
        self._trees: dict[str, str | None] = {"": tree}  # directory -> its tree's sha

    def _tree_of(self, rel: str) -> str | None:
        if rel in self._trees:
            return self._trees[rel]
        parent, _, name = rel.rpartition("/")
        parent_sha = self._tree_of(parent)
        sha = None
        if parent_sha is not None:
            entry = next((e for e in self.repo.read_tree(parent_sha) if e.name == name), None)
            sha = entry.sha if entry is not None and entry.kind == "tree" else None
        self._trees[rel] = sha
        return sha

    def list_dir(self, rel: str) -> dict[str, tuple[str, str]] | None:
        sha = self._tree_of("/".join(p for p in rel.split("/") if p))
        if sha is None:
            return None
        out = {}
        for e in self.repo.read_tree(sha):
            if e.kind == "commit":
                continue  # submodule: not part of the snapshot's own code
            kind = "tree" if e.kind == "tree" else "link" if e.mode == _SYMLINK_MODE else "blob"
            out[e.name] = (kind, e.sha)
        return out

    def read(self, ref: str) -> bytes:
        return self.repo.read_object(ref)[1]

    def read_many(self, refs: list[str]) -> list[bytes]:
        """Blobs' bytes, and subtrees remembered for :meth:`list_dir`, all in one request to git."""
        wanted = [r for r in refs if not self.repo.knows_tree(r)]
        out: dict[str, bytes] = {}
        for ref, (kind, data) in zip(wanted, self.repo.read_objects(wanted), strict=True):
            if kind == "tree":
                self.repo.remember_tree(ref, data)
            out[ref] = data
        return [out.get(r, b"") for r in refs]



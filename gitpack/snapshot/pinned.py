"""Files whose content in the snapshot is not the working tree's: code as it was imported, a notebook's cells.

The working tree says what the code is *now*; a save must pin what the object
was built with.  When a module was edited after Python imported it, the bytes
it was imported from (kept by :mod:`gitpack.capturing.sources`) replace the
file in the snapshot tree; a notebook's cells are added as a module of
gitpack's own.  Both are written as blobs in one ``git hash-object`` and only
the directories on their paths are rewritten.  No filter runs: the bytes are
exactly what Python compiled.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..git import Repo, runner
from .overlay import apply_changes, hash_bytes


def pin_files(repo: Repo, tree: str, files: dict[str, bytes]) -> str:
    """*tree* with each repo-relative path in *files* holding those bytes (a regular file; an executable keeps
    its mode)."""
    if not files:
        return tree
    paths = sorted(files)
    shas = hash_bytes(repo, [files[rel] for rel in paths])
    modes = _modes(repo, tree, paths)
    changes: dict[str, tuple[str, str] | None] = {
        rel: (modes.get(rel, "100644"), sha) for rel, sha in zip(paths, shas, strict=True)}
    return apply_changes(repo, tree, changes)


def _modes(repo: Repo, tree: str, paths: Iterable[str]) -> dict[str, str]:
    out = {}
    for rel in paths:
        parent, _, name = rel.rpartition("/")
        listing = f"{tree}:{parent}" if parent else tree
        if repo.object_type(listing) != "tree":
            continue
        for entry in repo.read_tree(listing):
            if entry.name == name and entry.mode in ("100644", "100755"):
                out[rel] = entry.mode
    return out


def ignored(repo: Repo, paths: list[str]) -> set[str]:
    """Which of *paths* git ignores (whether or not they exist; a tracked file is never ignored), with one
    ``git check-ignore``."""
    if not paths:
        return set()
    result = runner.run(["check-ignore", "-z", "--stdin"], cwd=repo.root,
                        input=b"".join(os.fsencode(p) + b"\0" for p in paths), check=False)
    if result.returncode not in (0, 1):
        return set()
    return {p for p in result.stdout.decode("utf-8", "surrogateescape").split("\0") if p}

"""The general snapshot: ``git add`` the changed paths in a private copy of the user's index.

For what the overlay (:mod:`.overlay`) cannot promise to get right: changed
submodules, merge conflicts, line-ending conversion, unusual names.  The copy
keeps the index's mtime (git's racy-clean check depends on it), so git's stat
cache still skips unchanged files; the user's own index is only read.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ..fsutil import TEMP_MARK
from ..git import Repo
from .exclude import Limits, left_out
from .status import STATUS_ARGS, changed_paths, staged_only, untracked_paths
from .tree import SnapshotTree, temp_prefix


def write_via_index(repo: Repo, limits: Limits) -> SnapshotTree:
    """The general way: ``git add`` the changed paths in a private copy of the user's index."""
    user_index = repo.git_dir / "index"
    fd, temp_index = tempfile.mkstemp(prefix=temp_prefix("index"), dir=str(repo.git_dir))
    os.close(fd)
    try:
        try:
            shutil.copy2(user_index, temp_index)  # keep its mtime: git's racy-clean check depends on it
        except FileNotFoundError:
            os.unlink(temp_index)  # git creates it; an empty file is not a valid index
        env = {"GIT_INDEX_FILE": temp_index, "GIT_LITERAL_PATHSPECS": "1"}
        # A constant handful of git processes, whatever the repo's size: ls-files runs
        # beside status, and status (porcelain v2) also reports HEAD and its branch.
        archives_listing = repo.start("ls-files", "-z", "--", "*.gitpack", env={"GIT_INDEX_FILE": temp_index})
        status = repo.git(*STATUS_ARGS, env=env, strip=False)
        changed, submodule_warnings, head, head_branch = changed_paths(status)
        settled = staged_only(status)
        dirty = bool(changed)
        to_add: list[str] = []
        excluded: list[tuple[str, str]] = []
        untracked = untracked_paths(status)
        reasons = left_out(repo.root, [(p, p in untracked) for p in changed if TEMP_MARK not in os.path.basename(p)],
                           limits)
        for path in changed:
            if TEMP_MARK in os.path.basename(path):
                continue  # another save's archive, still being written: never snapshot, nothing to report
            reason = reasons.get(path)
            if reason:
                excluded.append((path, reason))
            elif path not in settled:
                to_add.append(path)
        # Committed archives stay out too, however they are named.
        tracked_archives = [p for p in archives_listing.finish().decode("utf-8", "surrogateescape").split("\0")
                    if p and p not in changed]
        if to_add:
            _with_pathspec_file(repo, ["add", "-A", "--force"], to_add, env)
        removals = [p for p, _ in excluded] + tracked_archives
        if removals:
            _with_pathspec_file(repo, ["rm", "--cached", "-q", "--ignore-unmatch", "-r"], removals, env)
        excluded += [(p, "gitpack archive") for p in tracked_archives]
        tree = repo.git("write-tree", env=env)
    finally:
        try:
            os.unlink(temp_index)
        except FileNotFoundError:
            pass
    repo.head_branch_seen = (head_branch,)
    return SnapshotTree(tree, head, head_branch, dirty, excluded, submodule_warnings)


def _with_pathspec_file(repo: Repo, args: list[str], paths: list[str], env: dict[str, str]) -> None:
    fd, spec = tempfile.mkstemp(prefix=temp_prefix("spec"), dir=str(repo.git_dir))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\0".join(os.fsencode(p) for p in paths) + b"\0")
        repo.git(*args, f"--pathspec-from-file={spec}", "--pathspec-file-nul", env=env)
    finally:
        os.unlink(spec)


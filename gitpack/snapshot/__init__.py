"""The working tree as a git tree, and that tree as a commit on gitpack's branch, the user's git state untouched.

:func:`write_tree` takes the fast way (:mod:`.overlay`: read-only ``git status``
and an overlay on HEAD's tree, no index written) and falls back to a private
copy of the user's index (:mod:`.index`) where only ``git add`` can be trusted
to get it right.  Both leave out what :mod:`.exclude` says and report it.
:mod:`.branch` commits the tree and moves the snapshot branch.
"""

from __future__ import annotations

from ..fsutil import remove_stale
from ..git import Repo
from ..git.objects import NeedsIndex
from . import branch, pinned
from .exclude import DEFAULT_SIZE_CAP, DEFAULT_UNTRACKED_BUDGET, Limits, limits_from_config
from .index import write_via_index
from .overlay import write_overlay
from .tree import GIT_DIR_TEMP_PREFIX, SnapshotTree

__all__ = ["DEFAULT_SIZE_CAP", "DEFAULT_UNTRACKED_BUDGET", "Limits", "SnapshotTree", "branch", "limits_from_config",
           "pinned", "write_tree"]


def write_tree(repo: Repo, limits: Limits | None = None) -> SnapshotTree:
    """Write the working tree (tracked, modified and untracked-not-ignored) as a tree object.

    *limits* bound the untracked files (:mod:`.exclude`; default: the default cap and budget).  The user's
    index is only read; temp files that crashed saves left in ``.git`` are removed first (with git's own temp
    object files, once they are an hour old).
    """
    limits = limits or Limits()
    if remove_stale(repo.git_dir, GIT_DIR_TEMP_PREFIX + "*"):
        repo.remove_stale_temp_objects()  # a save died here: its git children may have left temp objects too
    try:
        return write_overlay(repo, limits)
    except NeedsIndex:
        return write_via_index(repo, limits)

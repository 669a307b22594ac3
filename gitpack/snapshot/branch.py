"""gitpack's snapshot branch: commits on it, the compare-and-swap that moves it, and whose branch it is.

The first parent of every save is the previous save and the second the
user's HEAD, so ``git log --first-parent gitpack`` is the audit log.  The
branch starts at an empty, parentless *start commit*, which is also how a
branch gitpack started is told from anyone else's (:func:`is_gitpack_branch`).
The branch moves by compare-and-swap and retries when another save won the
race; no reflog entry is written.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable

from ..errors import GitError
from ..git import DEFAULT_BRANCH, START_MESSAGE, Repo, branch_ref
from ..git.objects import parse_commit_object
from .tree import temp_prefix

MERGE_TRAILER = "Gitpack-Merge"  # in the message of a merge commit `gitpack pull` makes on the snapshot branch


def commit(
    repo: Repo,
    tree: str,
    message: str,
    *,
    branch: str = DEFAULT_BRANCH,
    head: str | None = None,
    sign: bool = False,
    before_update: Callable[[str], None] | None = None,
    max_attempts: int = 200,
) -> str:
    """Commit *tree* on top of *branch* and move the branch with compare-and-swap.

    The first parent is the branch's previous tip (so the branch is the
    audit log); the second is the user's HEAD at save time.  When another
    save moved the branch meanwhile, the commit is rebuilt on the new tip.
    *before_update* runs with each new commit before the ref may move (the
    archive records the commit, so it is sealed there).
    """
    ref = branch_ref(branch)
    fd, msg_file = tempfile.mkstemp(prefix=temp_prefix("msg"), dir=str(repo.git_dir))
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(message)
    try:
        for attempt in range(max_attempts):
            # First try: the tip through the long-lived cat-file (a save has it running
            # already); retries ask a fresh rev-parse.  update-ref's compare-and-swap
            # guards against a stale answer either way.
            tip = repo.resolve_commit(ref) if attempt == 0 else repo.rev_parse(ref)
            args = [tree]
            for parent in (tip or start_commit(repo), head):
                if parent:
                    args += ["-p", parent]
            if sign:
                args.append("-S")
            args += ["-F", msg_file]
            commit = repo.commit_tree(args)
            if before_update is not None:
                before_update(commit)
            try:
                # No reflog for gitpack's own branch: the branch itself is the log,
                # and the user's reflogs must stay exactly as they were.
                repo.update_refs([(ref, commit, tip)])
                return commit
            except GitError:
                if repo.rev_parse(ref) == tip and not _ref_locked(repo, ref):
                    raise  # not a lost race: a real failure to report
                time.sleep(min(0.2, 0.002 * (attempt + 1)) * random.random())
        raise GitError(f"could not move {ref}: other saves kept winning the race; try again")
    finally:
        os.unlink(msg_file)


def _ref_locked(repo: Repo, ref: str) -> bool:
    return (repo.common_dir / (ref + ".lock")).exists() or (repo.common_dir / "packed-refs.lock").exists()


def start_commit(repo: Repo) -> str:
    """A parentless, empty commit to start the snapshot branch.

    With it every save has the same shape: first parent the previous save,
    second parent the user's HEAD, so ``git log --first-parent gitpack``
    walks saves only and ``<save>^2`` is always the HEAD it was taken from.
    """
    empty_index = os.path.join(str(repo.git_dir), f"{temp_prefix('empty')}{random.random()}")
    empty_tree = repo.git("write-tree", env={"GIT_INDEX_FILE": empty_index})
    try:
        os.unlink(empty_index)
    except FileNotFoundError:
        pass
    return repo.commit_tree([empty_tree, "-m", START_MESSAGE])


def is_gitpack_branch(repo: Repo, ref: str) -> list[str] | None:
    """The first-parent history of *ref* (newest first) when gitpack started it, else None.

    A branch gitpack started ends, following first parents, at its start commit: empty tree, no parent,
    the start message.  Anyone else's branch, whatever its name, does not.
    """
    if repo.rev_parse(ref) is None:
        return None
    chain = repo.git("rev-list", "--first-parent", ref, "--").split()
    if not chain:
        return None
    headers, message = parse_commit_object(repo.read_object(chain[-1])[1])
    if "parent" in headers or message.strip() != START_MESSAGE:
        return None
    return chain


def merged_in_tips(repo: Repo, ref: str) -> list[str]:
    """Second parents of gitpack's merge commits on *ref*'s first-parent history (recursively).

    ``gitpack log`` walks first parents only (the second parent of a save is
    the user's HEAD); these tips add the saves that a pull merged in.
    """
    if repo.rev_parse(ref) is None:
        return []
    seen: list[str] = []
    frontier = [ref]
    while frontier:
        out = repo.git("rev-list", "--first-parent", "--parents", f"--grep=^{MERGE_TRAILER}: ", *frontier, "--")
        frontier = []
        for line in out.splitlines():
            for parent in line.split()[2:]:
                if parent not in seen:
                    seen.append(parent)
                    frontier.append(parent)
    return seen

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
from pathlib import Path

from ..errors import BranchNotOursError, DamagedRefError, GitError
from ..git import DEFAULT_BRANCH, START_MESSAGE, Repo, branch_ref, runner
from ..git.objects import parse_commit_object
from ..trailers import parse_trailers
from .tree import temp_prefix

MERGE_TRAILER = "Gitpack-Merge"  # in the message of a merge commit `gitpack pull` makes on the snapshot branch
# One ref per start commit gitpack made (or, for a branch started before these refs, first saved to) in this
# repository.  A start commit's shape is no proof: anyone can write a parentless commit with the start message
# into a pull request.  A branch an archive merely names vouches only when its start is recorded here.
STARTS = "refs/gitpack/starts/"


RefUpdate = tuple[str, "str | None", "str | None"]  # (ref, new or None to delete, expected old or None)


def commit(
    repo: Repo,
    tree: str,
    message: str,
    *,
    branch: str = DEFAULT_BRANCH,
    head: str | None = None,
    sign: bool = False,
    before_update: Callable[[str], None] | None = None,
    more_refs: Callable[[str], list[RefUpdate]] | None = None,
    max_attempts: int = 200,
) -> str:
    """Commit *tree* on top of *branch* and move the branch with compare-and-swap.

    The first parent is the branch's previous tip (so the branch is the
    audit log); the second is the user's HEAD at save time.  When another
    save moved the branch meanwhile, the commit is rebuilt on the new tip.
    *before_update* runs with each new commit before the ref may move (the
    archive records the commit, so it is sealed there); *more_refs* names the
    refs that must move together with the branch (a stored version and its
    ``latest``): all of them move in one transaction, or none does.  That
    transaction's ``commit`` is the save's commit point.

    Refuses (:class:`BranchNotOursError`) a branch gitpack did not start or
    that is checked out in any worktree, and (:class:`DamagedRefError`) one
    that points at a missing object.
    """
    ref = branch_ref(branch)
    fd, msg_file = tempfile.mkstemp(prefix=temp_prefix("msg"), dir=str(repo.git_dir))
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(message)
    try:
        races = 0
        for attempt in range(max_attempts):
            # First try: the tip through the long-lived cat-file (a save has it running
            # already); retries ask a fresh rev-parse.  update-ref's compare-and-swap
            # guards against a stale answer either way.
            tip = tip_of(repo, ref)
            starts: list[RefUpdate] = []
            if tip is not None:
                root = require_own(repo, ref, tip)
                if root is not None and not is_recorded_start(repo, root):
                    starts.append((STARTS + root, root, None))  # a branch started before starts were recorded
            else:
                root = start_commit(repo)
                starts.append((STARTS + root, root, None))
            refuse_checked_out(repo, ref)
            args = [tree]
            for parent in (tip or root, head):
                if parent:
                    args += ["-p", parent]
            if sign:
                args.append("-S")
            args += ["-F", msg_file]
            updates: list[RefUpdate] = []
            try:
                commit = repo.commit_tree(args)
                if before_update is not None:
                    before_update(commit)
                updates = [(ref, commit, tip)] + starts + (more_refs(commit) if more_refs else [])
                # No reflog for gitpack's own branch: the branch itself is the log,
                # and the user's reflogs must stay exactly as they were.
                repo.update_refs(updates)
                _owned.add((str(repo.common_dir), commit))  # our commit on our branch: the next save skips the walk
                return commit
            except runner.GitFailed as exc:
                races += runner.gc_race(exc.stderr)  # a concurrent gc's window: the objects are written again
                raced = runner.gc_race(exc.stderr) and races < runner.GC_RACE_RETRIES
                if not raced and not (updates and lost_race(repo, updates)):
                    raise  # not a lost race: a real failure to report
                time.sleep(min(0.2, 0.002 * (attempt + 1)) * random.random())
        raise GitError(f"could not move {ref}: other saves kept winning the race; try again")
    finally:
        os.unlink(msg_file)


def lost_race(repo: Repo, updates: list[RefUpdate]) -> bool:
    """Whether a refused transaction lost a race (a ref moved or is locked by another writer): worth a retry."""
    current = ref_targets(repo, [ref for ref, _, _ in updates])
    if any(current.get(ref) != old for ref, _, old in updates):
        return True
    return any(_ref_locked(repo, ref) for ref, _, _ in updates)


def _ref_locked(repo: Repo, ref: str) -> bool:
    return (repo.common_dir / (ref + ".lock")).exists() or (repo.common_dir / "packed-refs.lock").exists()


def ref_targets(repo: Repo, refs: list[str]) -> dict[str, str]:
    """``{ref: sha}`` for those of *refs* that exist, read without touching the objects (a ref may be damaged)."""
    out = repo.git("for-each-ref", "--format=%(refname) %(objectname)", *refs) if refs else ""
    wanted = set(refs)
    return {name: sha for name, _, sha in (line.partition(" ") for line in out.splitlines()) if name in wanted}


def tip_of(repo: Repo, ref: str) -> str | None:
    """The commit *ref* points at, None when it does not exist; :class:`DamagedRefError` when its object is gone."""
    found = repo.resolve_commit(ref)
    if found is not None:
        return found
    # The long-lived reader can answer from a moment when another save was moving the ref;
    # before calling a ref damaged, ask again with fresh processes (this path is rare).
    target = ref_targets(repo, [ref]).get(ref)
    if target is None:
        return None
    kind = repo.fresh_object_type(target)
    if kind == "commit":
        return target  # the ref moved under the reader: not damage, the newest tip
    raise damaged(ref, target, kind)


def damaged(ref: str, target: str, kind: str | None) -> DamagedRefError:
    """The one line that says *ref* is damaged and how to mend it."""
    what = "a missing object" if kind is None else f"a {kind}, not a commit"
    return DamagedRefError(
        f"{ref} points at {what} ({target[:12]}; was `git gc --prune=now` run while gitpack saved?); "
        "run `gitpack repair` to move it back to the newest intact state (it says what was lost)"
    )


_owned: set[tuple[str, str]] = set()  # (repository, tip) known to end at gitpack's start commit, this process


def is_start_commit(headers: dict, message: str) -> bool:
    """gitpack's start commit: no parent, the start message (its tree is empty)."""
    return "parent" not in headers and message.strip() == START_MESSAGE


def is_snapshot_message(message: str) -> bool:
    """A message gitpack writes on its branch: a save's (both digest trailers) or a pull's merge."""
    trailers = parse_trailers(message)
    return {"digest", "manifest"} <= trailers.keys() or "merge" in trailers


def is_recorded_start(repo: Repo, start: str) -> bool:
    """Whether *start* is a start commit gitpack recorded in this repository (:data:`STARTS`)."""
    found = repo.object_info(STARTS + start)
    return found is not None and found[0] == start


def require_own(repo: Repo, ref: str, tip: str) -> str | None:
    """Refuse to move *ref* unless gitpack started it: its tip is a snapshot (or merge or start) commit of
    gitpack's and its first-parent history ends at gitpack's start commit.  The history is walked once per
    tip and process: a tip this process committed on an owned one is known to be owned.  Returns the start
    commit when it walked (None when it knew)."""
    if (str(repo.common_dir), tip) in _owned:
        return None
    headers, message = parse_commit_object(repo.read_object(tip)[1])
    own_tip = is_start_commit(headers, message) or is_snapshot_message(message)
    roots = repo.git("rev-list", "--first-parent", "--max-parents=0", tip, "--").split() if own_tip else []
    if not roots or not is_start_commit(*parse_commit_object(repo.read_object(roots[-1])[1])):
        raise BranchNotOursError(
            f"{ref} is not gitpack's snapshot branch (gitpack did not start it), so gitpack will not add saves to "
            f"it; pick a branch of gitpack's own with --branch NAME or `git config gitpack.branch NAME`"
        )
    _owned.add((str(repo.common_dir), tip))
    return roots[-1]


def refuse_checked_out(repo: Repo, ref: str) -> None:
    """Refuse to move a branch that any worktree has checked out (or is rebasing), as ``git branch -f`` does."""
    where = checked_out_in(repo, ref)
    if where is not None:
        raise BranchNotOursError(
            f"{ref} is checked out in the worktree {where}, and moving it would change that worktree's state; "
            "switch that worktree to another branch, or save to another with --branch NAME or "
            "`git config gitpack.branch NAME`"
        )


def checked_out_in(repo: Repo, ref: str) -> str | None:
    """The worktree that has *ref* checked out (or is rebasing it), read from the HEAD files: no git process."""
    common = repo.common_dir
    gitdirs: list[tuple[Path, Path | None]] = [(common, None)]
    try:
        gitdirs += [(d, d / "gitdir") for d in (common / "worktrees").iterdir() if d.is_dir()]
    except OSError:
        pass
    for gitdir, pointer in gitdirs:
        for name in ("HEAD", "rebase-merge/head-name", "rebase-apply/head-name", "BISECT_START"):
            try:
                text = (gitdir / name).read_text(errors="replace").strip()
            except OSError:
                continue
            if text.removeprefix("ref:").strip() in (ref, ref.removeprefix("refs/heads/")):
                if pointer is None:
                    return str(repo.root if gitdir == repo.git_dir else common.parent)
                try:
                    return str(Path(pointer.read_text().strip()).parent)
                except OSError:
                    return str(gitdir)
    return None


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
    # The tip through the object reader (no process, nothing read but its type); asked again afresh when the
    # reader finds nothing, as it may not see a pack another process wrote since it started
    found = repo.object_info(ref)
    if found is not None and found[1] != "commit":
        return None  # a ref at a tree or blob: no branch at all
    tip = found[0] if found is not None else repo.rev_parse(ref)
    if tip is None:
        return None
    key = (str(repo.common_dir), tip)
    try:
        return _histories[key]  # a commit's history never changes: walked once per tip and process
    except KeyError:  # (one read: another thread may clear the cache between a test and a read)
        pass
    chain = repo.git("rev-list", "--first-parent", tip, "--").split()
    answer = chain if chain and is_start_commit(*parse_commit_object(repo.read_object(chain[-1])[1])) else None
    if len(_histories) >= 16:
        _histories.clear()
    _histories[key] = answer
    return answer


_histories: dict[tuple[str, str], list[str] | None] = {}  # (repository, tip) -> is_gitpack_branch's answer


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

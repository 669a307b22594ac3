"""``gitpack repair``: mend snapshot and artifact refs that point at missing or broken objects.

git calls ``git gc --prune=now`` unsafe while anything else writes to the
repository, and it means it: a save that creates its commit just before such a
gc and moves its branch just after leaves ``refs/heads/gitpack`` pointing at a
commit that is gone.  Every save then fails, and so does the user's own
``git gc``, until the ref is mended.  Repair:

* moves a damaged snapshot branch back to its newest intact snapshot: one whose
  every object of gitpack's own (its first-parent chain's commits and trees)
  is present and whose history starts at gitpack's start commit, found on the
  damaged branch itself, among the snapshots stored versions point at, and
  among the repository's unreachable commits (a gc packs the previous tip before
  the race makes it unreachable); when there is none, removes the branch;
* removes a stored version whose version commit, archive or snapshot is gone
  (version numbers never point anywhere else), and moves ``latest`` back to the
  newest intact version (another alias pointing at a lost version is removed);
* removes the record of a start commit that is gone (``refs/gitpack/starts/``);
* removes what killed saves left behind: gitpack's temp files, and git's own
  ``tmp_obj_*``/``tmp_pack_*`` files older than an hour (younger ones may belong
  to a git still writing them).

Every change goes through one ref transaction, and each one is reported in a line
that says what was lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import artifacts
from .fsutil import remove_stale
from .git import DEFAULT_BRANCH, Repo, branch_ref, parse_commit_object, runner
from .snapshot.branch import STARTS, is_snapshot_message, is_start_commit, ref_targets
from .snapshot.tree import GIT_DIR_TEMP_PREFIX


@dataclass(frozen=True)
class Repaired:
    """One mended ref: where it pointed, where it points now (None: removed), and what was lost."""

    ref: str
    was: str
    now: str | None
    note: str


def repair(repo: Repo, branch: str | None = None) -> list[Repaired]:
    """Mend gitpack's damaged refs in *repo* (see the module docstring); returns what was done, one per ref."""
    ref = branch_ref(branch or repo.config("gitpack.branch") or DEFAULT_BRANCH)
    checker = _Checker(repo, ref)
    done: list[Repaired] = []
    store_refs = artifacts.Store(repo).refs("refs/gitpack")
    tip = ref_targets(repo, [ref]).get(ref)
    if tip is not None and not checker.intact(tip):
        done.append(_mend_branch(repo, checker, ref, tip, store_refs))
    done += _mend_store(repo, checker, store_refs)
    done += [Repaired(start, sha, None, f"removed {start}: the start commit it records is gone")
             for start, sha in sorted(store_refs.items()) if start.startswith(STARTS) and checker.kind(sha) is None]
    if done:
        repo.update_refs([(r.ref, r.now, r.was) for r in done])
    clean_leftovers(repo)
    return done


def _mend_branch(repo: Repo, checker: _Checker, ref: str, tip: str, store_refs: dict[str, str]) -> Repaired:
    lost_chain = checker.first_parents(tip)  # what of the damaged history can still be read
    candidates = list(lost_chain)
    for sha in store_refs.values():
        parent = checker.first_parent(sha)
        if parent:
            candidates.append(parent)
    candidates += checker.unreachable_commits()
    best: tuple[int, int, str] | None = None
    for sha in dict.fromkeys(candidates):
        if not checker.is_snapshot(sha) or not checker.intact(sha):
            continue
        chain = checker.first_parents(sha)
        if not chain or not checker.is_start(chain[-1]):
            continue
        key = (checker.date(sha), len(chain), sha)
        if best is None or key > best:
            best = key
    what = "a missing commit" if checker.kind(tip) is None else "a broken commit (objects of it are missing)"
    if best is None:
        return Repaired(ref, tip, None, f"removed {ref}: it pointed at {what} {tip[:12]} and no intact snapshot "
                                       "is left; its saves are lost (stored versions are kept)")
    new = best[2]
    kept = set(checker.first_parents(new))
    gone = [c for c in lost_chain if c not in kept and checker.is_snapshot(c)]
    lost = f"{len(gone)} save(s)" if lost_chain else "the save(s) after it (their commits are gone)"
    return Repaired(ref, tip, new, f"moved {ref} back to {new[:12]}, its newest intact snapshot (it pointed at "
                                   f"{what} {tip[:12]}); lost: {lost}")


def _mend_store(repo: Repo, checker: _Checker, store_refs: dict[str, str]) -> list[Repaired]:
    done: list[Repaired] = []
    versions: dict[str, dict[int, str]] = {}  # name -> {number: commit} of the intact versions
    for ref, sha in sorted(store_refs.items()):
        parts = artifacts.split_store_ref(ref)
        if parts is None or parts[0] != "artifacts":
            continue
        number = artifacts.version_number(parts[2])
        if checker.intact(sha) and checker.holds_archive(sha):
            if number is not None:
                versions.setdefault(parts[1], {})[number] = sha
            continue
        done.append(Repaired(ref, sha, None, f"removed {parts[1]}@{parts[2]}: its version commit {sha[:12]} or its "
                                             "archive or snapshot is missing; that version is lost (save it again)"))
    for ref, sha in sorted(store_refs.items()):
        parts = artifacts.split_store_ref(ref)
        if parts is None or parts[0] != "aliases" or sha in versions.get(parts[1], {}).values():
            continue
        if checker.intact(sha) and checker.holds_archive(sha):
            continue  # an intact commit that no version ref names (pulled aliases): not damage
        label = f"{parts[1]}@{parts[2]}"
        intact = versions.get(parts[1], {})
        if parts[2] == artifacts.LATEST and intact:
            newest = max(intact)
            done.append(Repaired(ref, sha, intact[newest], f"moved {label} back to {parts[1]}@v{newest}, the newest "
                                                           f"intact version (it pointed at {sha[:12]}, which is gone)"))
        else:
            done.append(Repaired(ref, sha, None, f"removed {label}: it pointed at {sha[:12]}, which is gone"))
    return done


def clean_leftovers(repo: Repo) -> None:
    """Temp files killed saves left: gitpack's own (their owner is gone) and git's (older than an hour)."""
    for directory in dict.fromkeys([repo.git_dir, repo.common_dir]):
        remove_stale(directory, GIT_DIR_TEMP_PREFIX + "*")
        remove_stale(directory, ".*.gitpack-tmp-*")
    repo.remove_stale_temp_objects()


class _Checker:
    """Questions about objects, each answered once: is it there, is everything of gitpack's under it there."""

    def __init__(self, repo: Repo, branch: str):
        self.repo = repo
        self.branch = branch
        self._intact: dict[str, bool] = {}
        self._commits: dict[str, tuple[dict[str, list[str]], str] | None] = {}
        self._unreachable: list[str] | None = None

    def kind(self, sha: str) -> str | None:
        return self.repo.object_type(sha)

    def _commit(self, sha: str) -> tuple[dict[str, list[str]], str] | None:
        if sha not in self._commits:
            parsed = None
            if self.kind(sha) == "commit":
                parsed = parse_commit_object(self.repo.read_object(sha)[1])
            self._commits[sha] = parsed
        return self._commits[sha]

    def first_parent(self, sha: str) -> str | None:
        found = self._commit(sha)
        return found[0].get("parent", [None])[0] if found else None

    def first_parents(self, sha: str) -> list[str]:
        """*sha* and its first parents, newest first, as far as they can be read."""
        chain: list[str] = []
        current: str | None = sha
        while current and self._commit(current) is not None and current not in chain:
            chain.append(current)
            current = self.first_parent(current)
        return chain

    def is_start(self, sha: str) -> bool:
        found = self._commit(sha)
        return found is not None and is_start_commit(*found)

    def is_snapshot(self, sha: str) -> bool:
        found = self._commit(sha)
        return found is not None and is_snapshot_message(found[1])

    def date(self, sha: str) -> int:
        found = self._commit(sha)
        try:
            return int(found[0]["committer"][0].rsplit(" ", 2)[1]) if found else 0
        except (KeyError, IndexError, ValueError):
            return 0

    def holds_archive(self, sha: str) -> bool:
        found = self._commit(sha)
        if found is None or not found[0].get("tree"):
            return False
        entries = self.repo.read_tree(found[0]["tree"][0])
        return any(e.name == artifacts.ARCHIVE_ENTRY and e.kind == "blob" for e in entries)

    def intact(self, sha: str) -> bool:
        """Every object reachable from *sha* that no ref of the user's holds is present (so ``git gc`` can work)."""
        if sha not in self._intact:
            ok = self.kind(sha) == "commit"
            if ok:
                # Only what gitpack's refs alone hold: the user's own history is theirs to mend.
                args = ["rev-list", "--objects", "--missing=print", sha, "--not", f"--exclude={self.branch}",
                        "--exclude=refs/gitpack/*", "--exclude=refs/gitpack-remotes/*", "--all"]
                result = runner.run(args, cwd=self.repo.root, check=False)
                if result.returncode != 0:  # a damaged ref of the user's: walk everything under sha instead
                    result = runner.run(args[:4], cwd=self.repo.root, check=False)
                ok = result.returncode == 0 and not any(line.startswith("?") for line in result.text.splitlines())
            self._intact[sha] = ok
        return self._intact[sha]

    def unreachable_commits(self) -> list[str]:
        """Commits no ref reaches (a damaged branch's previous tips among them), from ``git fsck``."""
        if self._unreachable is None:
            out = runner.run(["fsck", "--unreachable", "--no-reflogs", "--connectivity-only", "--no-progress"],
                             cwd=self.repo.root, check=False).text
            self._unreachable = [line.split()[2] for line in out.splitlines()
                                 if line.startswith(("unreachable commit ", "dangling commit "))]
        return self._unreachable

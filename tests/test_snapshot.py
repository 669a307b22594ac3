"""The fast snapshot (HEAD's tree + what ``git status`` reports) equals ``git add -A`` in an index.

Each scenario is a real repository in a real state; the tree written by the
overlay must be the very tree that ``git add`` in a private copy of the index
writes (the general way, kept for the cases the overlay hands over), and the
user's index must not change by a byte.  About 5 s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import commit_files, git, init_repo

from gitpack import snapshot
from gitpack.archive import MAGIC
from gitpack.git import Repo
from gitpack.git.objects import NeedsIndex as _NeedsIndex
from gitpack.snapshot import Limits
from gitpack.snapshot.index import write_via_index
from gitpack.snapshot.overlay import write_overlay


def _index_digest(repo: Path) -> str | None:
    index = repo / ".git" / "index"
    return hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else None


def both_ways(path: Path, *, expect_overlay: bool = True, **limits):
    """(overlay snapshot or None when it hands over, index snapshot); the user's index never changes.

    *limits* are :class:`~gitpack.snapshot.Limits` fields (size_cap, budget, include, exclude)."""
    before = _index_digest(path)
    repo = Repo.discover(path)
    bounds = Limits(**limits)
    try:
        try:
            fast = write_overlay(repo, bounds)
        except _NeedsIndex:
            fast = None
        assert (fast is not None) == expect_overlay
        general = write_via_index(repo, bounds)
        public = snapshot.write_tree(repo, bounds)
    finally:
        repo.close()
    assert _index_digest(path) == before
    assert public.tree == general.tree
    return fast, general


def assert_same(fast, general) -> None:
    assert fast is not None
    assert fast.tree == general.tree
    assert (fast.head, fast.head_branch, fast.dirty) == (general.head, general.head_branch, general.dirty)
    assert sorted(fast.excluded) == sorted(general.excluded)
    assert sorted(fast.submodule_warnings) == sorted(general.submodule_warnings)


@pytest.fixture
def base(repo: Path) -> Path:
    """A committed tree with nesting, an executable and a symlink."""
    (repo / "pkg" / "sub").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "a.py").write_text("A = 1\n")
    (repo / "pkg" / "sub" / "b.py").write_text("B = 2\n")
    (repo / "pkg" / "sub" / "data.txt").write_text("data\n")
    (repo / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(repo / "run.sh", 0o755)
    os.symlink("pkg/a.py", repo / "link.py")
    (repo / "other").mkdir()
    (repo / "other" / "x.txt").write_text("x\n")
    (repo / ".gitignore").write_text("ignored/\n*.log\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def test_clean_tree_is_heads_tree(base):
    fast, general = both_ways(base)
    assert_same(fast, general)
    assert fast.tree == git(base, "rev-parse", "HEAD^{tree}") and not fast.dirty


def test_edits_deletions_and_untracked_files_at_any_depth(base):
    (base / "pkg" / "a.py").write_text("A = 10\n")
    (base / "pkg" / "sub" / "data.txt").unlink()
    (base / "new" / "deep" / "er").mkdir(parents=True)
    (base / "new" / "deep" / "er" / "c.py").write_text("C = 3\n")
    (base / "top.txt").write_text("top\n")
    (base / "name with spaces and ünïcode.txt").write_text("u\n")
    (base / "tab\there.txt").write_text("t\n")
    (base / "ignored").mkdir()
    (base / "ignored" / "skip.py").write_text("no\n")
    (base / "debug.log").write_text("no\n")
    fast, general = both_ways(base)
    assert_same(fast, general)
    names = git(base, "ls-tree", "-r", "--name-only", fast.tree).splitlines()
    assert "new/deep/er/c.py" in names and "pkg/sub/data.txt" not in names and "debug.log" not in names


def test_staged_changes_under_worktree_changes(base):
    (base / "pkg" / "a.py").write_text("staged\n")
    git(base, "add", "pkg/a.py")
    (base / "pkg" / "a.py").write_text("worktree wins\n")
    (base / "staged_only.py").write_text("S = 1\n")
    git(base, "add", "staged_only.py")
    (base / "added_then_deleted.py").write_text("gone\n")
    git(base, "add", "added_then_deleted.py")
    os.unlink(base / "added_then_deleted.py")
    git(base, "rm", "-q", "--cached", "other/x.txt")  # staged deletion, file still there: untracked
    git(base, "rm", "-q", "pkg/sub/b.py")  # staged deletion, file gone
    (base / "intent.py").write_text("I = 1\n")
    git(base, "add", "-N", "intent.py")
    fast, general = both_ways(base)
    assert_same(fast, general)


def test_modes_symlinks_and_type_changes(base):
    os.chmod(base / "pkg" / "a.py", 0o755)
    os.chmod(base / "run.sh", 0o644)
    os.unlink(base / "link.py")
    os.symlink("other/x.txt", base / "link.py")  # retargeted
    os.symlink("../pkg", base / "other" / "to_pkg")  # new link to a directory
    os.unlink(base / "pkg" / "sub" / "data.txt")
    os.symlink("b.py", base / "pkg" / "sub" / "data.txt")  # file -> symlink
    (base / "tool").write_text("#!/bin/sh\n")
    os.chmod(base / "tool", 0o755)
    fast, general = both_ways(base)
    assert_same(fast, general)


def test_file_mode_off_keeps_recorded_modes(base):
    git(base, "config", "core.fileMode", "false")
    os.chmod(base / "pkg" / "a.py", 0o755)
    (base / "pkg" / "a.py").write_text("changed\n")
    (base / "new_exec").write_text("x\n")
    os.chmod(base / "new_exec", 0o755)
    fast, general = both_ways(base)
    assert_same(fast, general)


def test_files_and_directories_trade_places(base):
    shutil.rmtree(base / "other")
    (base / "other").write_text("now a file\n")
    os.unlink(base / "pkg" / "a.py")
    (base / "pkg" / "a.py").mkdir()
    (base / "pkg" / "a.py" / "inner.py").write_text("I = 1\n")
    fast, general = both_ways(base)
    assert_same(fast, general)


def test_emptied_directories_and_everything_deleted(base):
    shutil.rmtree(base / "pkg" / "sub")
    fast, general = both_ways(base)
    assert_same(fast, general)
    for entry in base.iterdir():
        if entry.name != ".git":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    fast, general = both_ways(base)
    assert_same(fast, general)
    assert git(base, "ls-tree", fast.tree) == ""


def test_size_cap_archives_and_tracked_archives_stay_out(base):
    (base / "committed.gitpack").write_bytes(MAGIC + b"\0" * 100)
    git(base, "add", "-f", "committed.gitpack")
    git(base, "commit", "-q", "-m", "an archive got committed")
    (base / "pkg" / "a.py").write_text("x" * 5000)  # tracked, now over the cap: tracked files are always taken
    (base / "big.bin").write_bytes(b"\1" * 5000)  # untracked, over the cap
    (base / "model.pt").write_bytes(MAGIC + b"payload")  # an archive under another name
    (base / "keep.txt").write_text("small\n")
    fast, general = both_ways(base, size_cap=1000, exclude={"keep.txt"})
    assert_same(fast, general)
    reasons = dict(fast.excluded)
    assert set(reasons) == {"big.bin", "model.pt", "committed.gitpack", "keep.txt"}
    assert "untracked, 5.0 kB: larger than the size cap of 1.0 kB" in reasons["big.bin"]
    assert "--include big.bin" in reasons["big.bin"]
    assert git(base, "cat-file", "-p", f"{fast.tree}:pkg/a.py") == "x" * 5000


def test_untracked_files_past_the_budget_stay_out_largest_first(base):
    (base / "data").mkdir()
    for i, size in enumerate([400, 300, 300, 200, 100]):
        (base / "data" / f"shard{i}.bin").write_bytes(bytes([i]) * size)
    (base / "pkg" / "a.py").write_text("y" * 3000)  # tracked: never counted against the budget, never left out
    fast, general = both_ways(base, size_cap=1000, budget=700)
    assert_same(fast, general)
    reasons = dict(fast.excluded)
    # 1300 bytes of untracked files for a budget of 700: the 400 and one 300 go, largest first.
    assert set(reasons) == {"data/shard0.bin", "data/shard1.bin"}
    assert all("past the budget of 700 bytes" in why for why in reasons.values())
    taken = git(base, "ls-tree", "-r", "--name-only", fast.tree).split()
    assert {"data/shard2.bin", "data/shard3.bin", "data/shard4.bin", "pkg/a.py"} <= set(taken)
    # What the user includes is taken whatever its size, and does not count against the budget.
    fast, general = both_ways(base, size_cap=1000, budget=700, include=("data/shard0.bin",))
    assert_same(fast, general)
    assert set(dict(fast.excluded)) == {"data/shard1.bin"}
    fast, general = both_ways(base, size_cap=100, budget=700, include=("data",))
    assert_same(fast, general)
    assert fast.excluded == []
    fast, general = both_ways(base, size_cap=100, budget=10**6, include=("data/shard[34].bin",))
    assert_same(fast, general)
    assert set(dict(fast.excluded)) == {"data/shard0.bin", "data/shard1.bin", "data/shard2.bin"}


def test_unborn_head(repo):
    (repo / "a.py").write_text("A = 1\n")
    (repo / "d").mkdir()
    (repo / "d" / "b.py").write_text("B = 1\n")
    fast, general = both_ways(repo)
    assert_same(fast, general)
    assert fast.head is None and fast.head_branch == "refs/heads/main"


def test_detached_head(base):
    git(base, "checkout", "-q", "--detach")
    (base / "pkg" / "a.py").write_text("detached\n")
    fast, general = both_ways(base)
    assert_same(fast, general)
    assert fast.head_branch is None


def test_line_ending_conversion_hands_over_to_the_index(base):
    (base / ".gitattributes").write_text("* text=auto\n")
    (base / "crlf.txt").write_bytes(b"one\r\ntwo\r\n")
    git(base, "add", ".gitattributes", "crlf.txt")
    git(base, "commit", "-q", "-m", "attributes")
    (base / "crlf.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    both_ways(base, expect_overlay=False)
    (base / "crlf.txt").write_bytes(b"one\ntwo\n")  # no CR: both ways agree without help
    fast, general = both_ways(base)
    assert_same(fast, general)


def test_submodules_hand_over_and_nested_repos_are_reported(base, tmp_path):
    inner = init_repo(tmp_path / "inner")
    commit_files(inner, {"f.txt": "f\n"}, "inner")
    git(base, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(inner), "vendor/inner")
    git(base, "commit", "-q", "-m", "submodule")
    fast, general = both_ways(base)  # a clean submodule: nothing to decide
    assert_same(fast, general)
    (base / "vendor" / "inner" / "f.txt").write_text("changed\n")
    git(base / "vendor" / "inner", "commit", "-q", "-am", "moved on")
    both_ways(base, expect_overlay=False)
    nested = init_repo(base / "nested")
    (nested / "g.txt").write_text("g\n")
    git(base / "vendor" / "inner", "reset", "-q", "--hard", "HEAD~1")
    fast, general = both_ways(base)
    assert_same(fast, general)
    assert fast.submodule_warnings == ["nested/ is a nested git repository and is not captured"]


def test_merge_conflicts_hand_over(base):
    git(base, "checkout", "-q", "-b", "other")
    (base / "pkg" / "a.py").write_text("theirs\n")
    git(base, "commit", "-q", "-am", "theirs")
    git(base, "checkout", "-q", "main")
    (base / "pkg" / "a.py").write_text("ours\n")
    git(base, "commit", "-q", "-am", "ours")
    subprocess.run(["git", "merge", "-q", "other"], cwd=base, capture_output=True)
    both_ways(base, expect_overlay=False)


def test_a_constant_handful_of_git_processes_however_many_files_changed(base, tmp_path):
    """Counted from git's own trace: the same number for 1 changed file as for 200."""

    def processes() -> list[str]:
        trace = tmp_path / "trace.json"
        if trace.exists():
            trace.unlink()
        os.environ["GIT_TRACE2_EVENT"] = str(trace)
        try:
            repo = Repo.discover(base)
            snap = snapshot.write_tree(repo)
            snapshot.branch.commit(repo, snap.tree, "snapshot\n\nGitpack-Digest: sha256:0\nGitpack-Manifest: sha256:0\n", head=snap.head)
            repo.close()
        finally:
            del os.environ["GIT_TRACE2_EVENT"]
        import json

        return [json.loads(line)["argv"][1] for line in trace.read_text().splitlines() if '"event":"start"' in line]

    processes()  # the first save also creates the branch's root commit
    (base / "pkg" / "a.py").write_text("one change\n")
    few = processes()
    for i in range(200):
        (base / "other" / f"gen{i}.py").write_text(f"G = {i}\n")
    many = processes()
    assert len(few) == len(many) <= 10, (few, many)
    assert "add" not in many and "write-tree" not in many  # no index is written


def test_a_racily_clean_edit_is_seen_by_both_ways(repo: Path):
    """An edit with the same size and mtime as the index entry: git's racy check must still see it.

    git treats an entry whose file is not older than the index file as "racily
    clean" and compares content.  A copy of the index with a fresh mtime hides
    that, and the snapshot silently recorded the old file (seen by two helpers,
    1 run in 5 with real timing; made deterministic here with utime).
    """
    import time

    git(repo, "config", "core.trustctime", "false")  # utime cannot set ctime; mtime alone must do
    target = repo / "model.py"
    target.write_text("VALUE = 1\n")
    stamp = time.time_ns() - 10**10  # older than the index git is about to write: not smudged
    os.utime(target, ns=(stamp, stamp))
    git(repo, "add", "model.py")
    git(repo, "commit", "-q", "-m", "one")
    os.utime(repo / ".git" / "index", ns=(stamp, stamp))  # the index written in that same instant
    target.write_text("VALUE = 2\n")  # same size
    os.utime(target, ns=(stamp, stamp))  # and the same mtime: only the content tells

    r = Repo.discover(repo)
    try:
        for snap in (write_overlay(r, Limits()), write_via_index(r, Limits())):
            assert git(repo, "cat-file", "-p", f"{snap.tree}:model.py") == "VALUE = 2"
    finally:
        r.close()

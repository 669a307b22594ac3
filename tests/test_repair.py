"""Damaged snapshot and artifact refs are named in one line, and ``gitpack repair`` mends them.

The damage is real: the loose object a ref points at is deleted, as a ``git gc --prune=now`` racing a save
leaves it (the new commit pruned before the ref moved onto it).
"""

from __future__ import annotations

from pathlib import Path

from conftest import commit_files, git, gitpack_cli, init_repo, run

MODEL = "class M:\n    def __init__(self, n=1):\n        self.n = n\n"


def _project(root: Path, saves: int = 3) -> Path:
    repo = init_repo(root / "repo")
    commit_files(repo, {"pkg/__init__.py": "", "pkg/model.py": MODEL})
    for i in range(1, saves + 1):
        proc = gitpack_cli(repo, "save", "pkg.model:M", "-p", f"n={i}", "--name", "clf", "-q")
        assert proc.returncode == 0, proc.stderr
    return repo


def _delete_object(repo: Path, sha: str) -> None:
    loose = repo / ".git" / "objects" / sha[:2] / sha[2:]
    assert loose.exists(), "the object should still be loose"
    loose.unlink()
    assert run(repo, "git", "cat-file", "-e", sha).returncode != 0


def _one_line(proc, *needles: str) -> None:
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not proc.stderr.startswith("gitpack: error: git -c"), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_a_snapshot_branch_pointing_at_a_missing_commit_is_reported_then_repaired(tmp_path):
    repo = _project(tmp_path)
    saves = git(repo, "rev-list", "--first-parent", "gitpack").split()
    _delete_object(repo, saves[0])

    _one_line(gitpack_cli(repo, "save", "pkg.model:M", "-o", "../x.gitpack"), "refs/heads/gitpack", "gitpack repair")
    _one_line(gitpack_cli(repo, "log"), "refs/heads/gitpack", "gitpack repair")  # not an empty log and exit 0
    assert run(repo, "git", "gc", "-q").returncode != 0  # the user's gc is broken too

    proc = gitpack_cli(repo, "repair")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(f"moved refs/heads/gitpack back to {saves[1][:12]}" in line and "lost" in line for line in lines), lines
    assert any("clf@v3" in line and "lost" in line for line in lines), lines  # its snapshot is gone
    assert any("clf@latest back to clf@v2" in line for line in lines), lines

    assert git(repo, "rev-parse", "gitpack") == saves[1]
    assert run(repo, "git", "gc", "-q").returncode == 0
    fsck = run(repo, "git", "fsck", "--no-dangling")
    assert fsck.returncode == 0 and "error" not in fsck.stderr, fsck.stderr
    assert len(gitpack_cli(repo, "log").stdout.splitlines()) == 2
    listed = gitpack_cli(repo, "list").stdout
    assert "v3" not in listed and "latest" in listed.splitlines()[1], listed

    proc = gitpack_cli(repo, "save", "pkg.model:M", "-p", "n=4", "--name", "clf", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "stored pkg.model:M as clf@v3" in proc.stdout
    assert gitpack_cli(repo, "repair").stdout.startswith("nothing to repair")


def test_a_damaged_stored_version_is_named_and_removed(tmp_path):
    repo = _project(tmp_path, saves=2)
    v2 = git(repo, "rev-parse", "refs/gitpack/artifacts/clf/v2")
    _delete_object(repo, v2)
    _one_line(gitpack_cli(repo, "list"), "refs/gitpack/artifacts/clf/v2", "gitpack repair")
    _one_line(gitpack_cli(repo, "load", "clf@v1"), "refs/gitpack/artifacts/clf/v2")

    proc = gitpack_cli(repo, "repair")
    assert proc.returncode == 0, proc.stderr
    assert "removed clf@v2" in proc.stdout and "clf@latest back to clf@v1" in proc.stdout, proc.stdout
    assert "refs/heads/gitpack" not in proc.stdout  # the branch itself was intact
    assert run(repo, "git", "gc", "-q").returncode == 0
    assert gitpack_cli(repo, "load", "clf").returncode == 0


def test_a_snapshot_branch_with_no_intact_snapshot_left_is_removed(tmp_path):
    repo = init_repo(tmp_path / "repo")
    commit_files(repo, {"pkg/__init__.py": "", "pkg/model.py": MODEL})
    assert gitpack_cli(repo, "save", "pkg.model:M", "-o", "../a.gitpack", "-q").returncode == 0
    tip = git(repo, "rev-parse", "gitpack")
    start = git(repo, "rev-parse", "gitpack^1")
    _delete_object(repo, tip)
    _delete_object(repo, start)
    proc = gitpack_cli(repo, "repair")
    assert proc.returncode == 0 and "removed refs/heads/gitpack" in proc.stdout, proc.stdout + proc.stderr
    assert run(repo, "git", "rev-parse", "-q", "--verify", "refs/heads/gitpack").returncode != 0
    assert run(repo, "git", "gc", "-q").returncode == 0
    assert gitpack_cli(repo, "save", "pkg.model:M", "-o", "../b.gitpack", "-q").returncode == 0

"""gitpack moves only its own snapshot branch: one it started, checked out in no worktree."""

from __future__ import annotations

from pathlib import Path

from conftest import commit_files, git, gitpack_cli, init_repo

MODEL = "class M:\n    def __init__(self, n=1):\n        self.n = n\n"


def _project(root: Path) -> Path:
    repo = init_repo(root / "repo")
    commit_files(repo, {"pkg/__init__.py": "", "pkg/model.py": MODEL})
    return repo


def _refused_in_one_line(proc, *needles: str) -> None:
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_a_snapshot_branch_checked_out_in_another_worktree_is_not_moved(tmp_path):
    repo = _project(tmp_path)
    assert gitpack_cli(repo, "save", "pkg.model:M", "-o", "../a.gitpack", "-q").returncode == 0
    tip = git(repo, "rev-parse", "gitpack")
    other = tmp_path / "other"
    git(repo, "worktree", "add", "-q", str(other), "gitpack")
    assert git(other, "status", "--porcelain") == ""

    proc = gitpack_cli(repo, "save", "pkg.model:M", "-o", "../b.gitpack")
    _refused_in_one_line(proc, "refs/heads/gitpack", str(other), "--branch", "gitpack.branch")
    assert git(repo, "rev-parse", "gitpack") == tip
    assert git(other, "status", "--porcelain") == ""  # that worktree shows no staged changes
    assert not (tmp_path / "b.gitpack").exists()

    # Saving to a branch of gitpack's own still works.
    proc = gitpack_cli(repo, "save", "pkg.model:M", "-o", "../b.gitpack", "--branch", "snapshots", "-q")
    assert proc.returncode == 0, proc.stderr
    assert git(repo, "rev-parse", "gitpack") == tip


def test_a_users_own_branch_named_gitpack_gets_no_snapshot_commits(tmp_path):
    repo = _project(tmp_path)
    git(repo, "branch", "gitpack")  # the user's branch, which happens to be called gitpack
    mine = git(repo, "rev-parse", "gitpack")

    proc = gitpack_cli(repo, "save", "pkg.model:M", "-o", "../a.gitpack")
    _refused_in_one_line(proc, "refs/heads/gitpack", "not gitpack's", "--branch", "git config gitpack.branch")
    assert git(repo, "rev-parse", "gitpack") == mine
    proc = gitpack_cli(repo, "save", "pkg.model:M", "--name", "m")
    _refused_in_one_line(proc, "refs/heads/gitpack")
    assert git(repo, "for-each-ref", "refs/gitpack") == ""  # no stored version either

    git(repo, "config", "gitpack.branch", "gitpack-snapshots")
    assert gitpack_cli(repo, "save", "pkg.model:M", "-o", "../a.gitpack", "-q").returncode == 0
    assert git(repo, "rev-parse", "gitpack") == mine
    assert git(repo, "rev-list", "--count", "gitpack-snapshots") != "0"


def test_a_branch_whose_tip_is_not_a_snapshot_is_not_gitpacks(tmp_path):
    """The user committed on top of gitpack's branch: its tip is theirs now, and gitpack leaves it alone."""
    repo = _project(tmp_path)
    assert gitpack_cli(repo, "save", "pkg.model:M", "-o", "../a.gitpack", "-q").returncode == 0
    git(repo, "checkout", "-q", "gitpack")
    commit_files(repo, {"notes.txt": "mine\n"}, "my own commit on that branch")
    git(repo, "checkout", "-q", "main")
    tip = git(repo, "rev-parse", "gitpack")
    _refused_in_one_line(gitpack_cli(repo, "save", "pkg.model:M", "-o", "../b.gitpack"), "not gitpack's")
    assert git(repo, "rev-parse", "gitpack") == tip

"""gitpack moves only its own snapshot branch: one it started, checked out in no worktree."""

from __future__ import annotations

from pathlib import Path

from conftest import commit_files, git, gitpack_cli, init_repo
from forging import rewrite_manifest

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


def _load(repo: Path, archive: str):
    return gitpack_cli(repo, "load", archive, "-q")


def test_an_archive_saved_to_another_branch_loads_and_a_look_alike_branch_does_not_vouch(tmp_path):
    """A save with ``--branch exp`` is vouched for by ``exp``, which gitpack started and recorded.  A branch that
    only looks started by gitpack (a parentless commit with the start message, as a pull request can bring
    and ``gh pr checkout`` makes a local branch of) vouches for nothing, though the archive names it."""
    import subprocess

    from gitpack.git import START_MESSAGE
    from gitpack.snapshot.branch import STARTS

    repo = _project(tmp_path)
    assert gitpack_cli(repo, "save", "pkg.model:M", "-o", "../exp.gitpack", "--branch", "exp", "-q").returncode == 0
    root = git(repo, "rev-list", "--first-parent", "--max-parents=0", "refs/heads/exp")
    assert git(repo, "rev-parse", STARTS + root) == root
    assert _load(repo, "../exp.gitpack").returncode == 0

    # The look-alike: the same snapshot tree and trailers, on an orphan history of the attacker's making.
    exp_tip = git(repo, "rev-parse", "refs/heads/exp")
    tree, message = git(repo, "rev-parse", f"{exp_tip}^{{tree}}"), git(repo, "log", "-1", "--format=%B", exp_tip)

    def commit_tree(tree_sha: str, text: str, *parents: str) -> str:
        args = ["git", "commit-tree", tree_sha, *sum((["-p", p] for p in parents), []), "-F", "-"]
        return subprocess.run(args, cwd=repo, input=text, capture_output=True, text=True, check=True).stdout.strip()

    empty = subprocess.run(["git", "mktree"], cwd=repo, input="", capture_output=True, text=True, check=True).stdout
    fake_start = commit_tree(empty.strip(), START_MESSAGE)
    look_alike = commit_tree(tree, message, fake_start)
    git(repo, "update-ref", "refs/heads/exp", look_alike, exp_tip)  # the branch the archive names, now the look-alike
    rewrite_manifest(tmp_path / "exp.gitpack", tmp_path / "claims.gitpack", lambda m: m.update(commit=look_alike))
    _refused_in_one_line(_load(repo, "../claims.gitpack"), "not on gitpack's snapshot history")
    git(repo, "update-ref", STARTS + fake_start, fake_start)  # had gitpack made that start, the same archive loads
    assert _load(repo, "../claims.gitpack").returncode == 0


def test_a_branch_started_before_starts_were_recorded_vouches_once_gitpack_saves_to_it_again(tmp_path):
    """Branches gitpack started before it recorded start commits: the archives on them load again after the next
    save to the branch, which records its start (the branch is gitpack's by the walk that every save makes)."""
    from gitpack.snapshot.branch import STARTS

    repo = _project(tmp_path)
    assert gitpack_cli(repo, "save", "pkg.model:M", "-o", "../old.gitpack", "--branch", "exp", "-q").returncode == 0
    root = git(repo, "rev-list", "--first-parent", "--max-parents=0", "refs/heads/exp")
    git(repo, "update-ref", "-d", STARTS + root)  # as an older gitpack left it
    _refused_in_one_line(_load(repo, "../old.gitpack"), "not on gitpack's snapshot history")
    assert gitpack_cli(repo, "save", "pkg.model:M", "-o", "../new.gitpack", "--branch", "exp", "-q").returncode == 0
    assert git(repo, "rev-parse", STARTS + root) == root
    assert _load(repo, "../old.gitpack").returncode == 0
    assert _load(repo, "../new.gitpack").returncode == 0

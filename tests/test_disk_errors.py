"""A full disk, a read-only filesystem or a missing permission: one line naming the path and what to do.

Real failures: small tmpfs mounts (the tests run as root; they skip, saying why, where mounting is not
allowed), a tmpfs remounted read-only, and a save run as another user (``nobody``) where ``.git`` or the
cache is not writable.  After each failure nothing has moved: no ref, no log entry, no stored version.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import commit_files, git, gitpack_cli, init_repo, run

MODEL = "import os\n\n\nclass M:\n    def __init__(self, n=1):\n        self.n = n\n        self.data = os.urandom(n)\n"


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path(f"/tmp/gitpack-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], capture_output=True)
    probe.rmdir()
    return ok


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root and tmpfs mounts for real full/read-only disks")


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs filesystems under tmp_path; all unmounted at the end."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(where: Path, leave: int = 0) -> None:
    """Fill the filesystem of *where*, leaving about *leave* bytes free."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize - leave
    with open(where / "filler", "wb") as fh:
        try:
            fh.write(b"\0" * max(free, 0))
        except OSError:
            pass


def _one_line(proc, *needles: str) -> None:
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not proc.stderr.startswith("gitpack: error: git -c"), proc.stderr
    assert "unpickle" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def _project(where: Path) -> Path:
    repo = init_repo(where / "repo")
    commit_files(repo, {"pkg/__init__.py": "", "pkg/model.py": MODEL})
    return repo


def _refs(repo: Path) -> str:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


@needs_mount
def test_a_full_git_dir_fails_a_save_in_one_line_and_moves_nothing(tmpfs):
    disk = tmpfs("disk", "4m")
    repo = _project(disk)
    assert gitpack_cli(repo, "save", "pkg.model:M", "--name", "m", "-q").returncode == 0
    refs = _refs(repo)
    with open(repo / "pkg" / "model.py", "a") as fh:
        fh.write("EDITED = 1\n")  # the snapshot has a file to write into .git
    _fill(disk)
    _one_line(gitpack_cli(repo, "save", "pkg.model:M", "--name", "m"), str(repo / ".git"), "No space left",
              "free some space")
    _one_line(gitpack_cli(repo, "save", "pkg.model:M", "-o", str(disk.parent / "out.gitpack")), "No space left")
    assert _refs(repo) == refs
    (disk / "filler").unlink()
    assert not [p for p in (repo / ".git").iterdir() if "gitpack-tmp" in p.name]


@needs_mount
def test_a_named_save_that_runs_out_of_space_while_storing_leaves_no_log_entry(tmpfs):
    """The snapshot fits; storing the archive does not: neither the branch nor latest moves."""
    disk = tmpfs("disk", "8m")
    repo = _project(disk)
    assert gitpack_cli(repo, "save", "pkg.model:M", "--name", "m", "-q").returncode == 0
    refs, log = _refs(repo), gitpack_cli(repo, "log").stdout
    _fill(disk, leave=3 << 20)  # room for the 2 MiB temp archive, not for storing it as well
    proc = gitpack_cli(repo, "save", "pkg.model:M", "-p", f"n={2 << 20}", "--name", "m")
    _one_line(proc, "No space left")
    assert _refs(repo) == refs and gitpack_cli(repo, "log").stdout == log
    (disk / "filler").unlink()
    assert gitpack_cli(repo, "save", "pkg.model:M", "-p", "n=3", "--name", "m", "-q").returncode == 0


@needs_mount
def test_a_full_output_directory(tmpfs, tmp_path):
    repo = _project(tmp_path)
    out = tmpfs("out", "1m")
    proc = gitpack_cli(repo, "save", "pkg.model:M", "-p", f"n={2 << 20}", "-o", str(out / "m.gitpack"))
    _one_line(proc, str(out / "m.gitpack"), "No space left", "free some space")
    assert os.listdir(out) == [] and "gitpack" not in _refs(repo)


@needs_mount
def test_a_full_or_read_only_cache_fails_a_load_in_one_line(tmpfs, tmp_path):
    repo = _project(tmp_path)
    assert gitpack_cli(repo, "save", "pkg.model:M", "-p", "n=300000", "--name", "m", "-o", "../m.gitpack",
                       "-q").returncode == 0
    cache = tmpfs("cache", "1m")
    _fill(cache)
    env = {"GITPACK_CACHE": str(cache)}
    _one_line(gitpack_cli(repo, "load", "m", env=env), str(cache), "No space left", "GITPACK_CACHE")
    _one_line(gitpack_cli(repo, "load", "../m.gitpack", env=env), str(cache), "No space left", "GITPACK_CACHE")
    (cache / "filler").unlink()
    assert not list(cache.rglob("*gitpack-tmp*"))  # no partial copy left behind
    subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)
    _one_line(gitpack_cli(repo, "load", "m", env=env), str(cache), "Read-only file system", "GITPACK_CACHE")


@needs_mount
def test_a_read_only_git_dir(tmpfs):
    disk = tmpfs("disk", "4m")
    repo = _project(disk)
    assert gitpack_cli(repo, "save", "pkg.model:M", "--name", "m", "-q").returncode == 0
    with open(repo / "pkg" / "model.py", "a") as fh:
        fh.write("EDITED = 1\n")
    refs = _refs(repo)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    _one_line(gitpack_cli(repo, "save", "pkg.model:M", "--name", "m"), str(repo / ".git"), "Read-only file system")
    assert _refs(repo) == refs
    assert gitpack_cli(repo, "log").returncode == 0  # reading still works


def _without_permission_override(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A gitpack command run by root without CAP_DAC_OVERRIDE: file permissions bind it as any user."""
    return run(cwd, "setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", sys.executable, "-m", "gitpack",
               *args, env=env)


needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                   reason="needs root and setpriv (util-linux) to drop the permission override")


@needs_setpriv
def test_no_permission_in_git_dir_or_cache(tmp_path):
    repo = _project(tmp_path)
    assert gitpack_cli(repo, "save", "pkg.model:M", "--name", "m", "-q").returncode == 0
    with open(repo / "pkg" / "model.py", "a") as fh:
        fh.write("EDITED = 1\n")
    refs = _refs(repo)
    cache = tmp_path / "cache"
    cache.mkdir()
    for path in [repo / ".git", *(repo / ".git").rglob("*"), cache]:
        if path.is_dir():
            os.chmod(path, 0o555)
    try:
        proc = _without_permission_override(repo, "save", "pkg.model:M", "--name", "m", env={"GITPACK_CACHE": str(cache)})
        _one_line(proc, str(repo / ".git"), "Permission denied", "permissions")
        assert _refs(repo) == refs
        proc = _without_permission_override(repo, "load", "m", env={"GITPACK_CACHE": str(cache)})
        _one_line(proc, str(cache), "Permission denied", "GITPACK_CACHE")
    finally:
        for path in [repo / ".git", *(repo / ".git").rglob("*"), cache]:
            if path.is_dir():
                os.chmod(path, 0o755)


def test_a_repository_owned_by_another_user_passes_gits_safe_directory_advice_through(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the repository to another user")
    repo = _project(tmp_path)
    assert gitpack_cli(repo, "save", "pkg.model:M", "--name", "m", "-o", "../m.gitpack", "-q").returncode == 0
    subprocess.run(["chown", "-R", "65534:65534", str(repo)], check=True)
    env = {"SUDO_UID": "", "GIT_CONFIG_GLOBAL": str(tmp_path / "empty-gitconfig")}
    for args in (["save", "pkg.model:M", "-o", "../n.gitpack"], ["load", "m"], ["log"], ["load", "../m.gitpack"]):
        proc = gitpack_cli(repo, *args, env=env)
        _one_line(proc, "dubious ownership", f"git config --global --add safe.directory {repo}")
        assert "not inside a git working tree" not in proc.stderr


def test_a_bare_repository_and_a_deleted_current_directory(tmp_path):
    repo = _project(tmp_path)
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    (tmp_path / "model.py").write_text(MODEL)
    proc = gitpack_cli(bare, "save", f"{tmp_path / 'model.py'}:M", "-o", str(tmp_path / "x.gitpack"))
    _one_line(proc, "bare repository", "working tree")
    _one_line(gitpack_cli(bare, "log"), "bare repository")

    gone = repo / "gone"
    gone.mkdir()
    script = ("import os, sys, subprocess; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); "
              "sys.exit(subprocess.run([sys.executable, '-m', 'gitpack', *sys.argv[2:]]).returncode)")
    for args in (["save", "pkg.model:M", "-o", "x.gitpack"], ["log"], ["load", "m"]):
        gone.mkdir(exist_ok=True)
        proc = run(repo, sys.executable, "-c", script, str(gone), *args)
        _one_line(proc, "current directory no longer exists")

"""Archives are ordinary files (umask, symlinks), killed runs leave nothing behind, verify works in a partial clone."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from conftest import QUIET_ENV, commit_files, git, gitpack_cli, init_repo, run

import gitpack

MODEL = "import os\n\n\nclass M:\n    def __init__(self, n=1):\n        self.n = n\n        self.data = os.urandom(n)\n"


def _project(root: Path) -> Path:
    repo = init_repo(root / "repo")
    commit_files(repo, {"pkg/__init__.py": "", "pkg/model.py": MODEL, ".gitignore": "*.pyc\n"})
    return repo


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_archives_get_the_umask_mode_and_a_replaced_file_keeps_its_own(tmp_path):
    repo = _project(tmp_path)
    for umask, expected in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        dest = tmp_path / f"m{umask:o}.gitpack"
        proc = run(repo, "sh", "-c", f"umask {umask:03o} && exec {sys.executable} -m gitpack save pkg.model:M -q "
                                     f"-o {dest}")
        assert proc.returncode == 0, proc.stderr
        assert _mode(dest) == expected, (oct(umask), oct(_mode(dest)))
    dest = tmp_path / "m22.gitpack"
    os.chmod(dest, 0o640)
    assert gitpack_cli(repo, "save", "pkg.model:M", "-q", "-o", str(dest)).returncode == 0
    assert _mode(dest) == 0o640  # as open() on an existing file leaves its mode


def test_output_through_a_symlink_writes_the_links_target(tmp_path):
    repo = _project(tmp_path)
    target = tmp_path / "models" / "real.gitpack"
    target.parent.mkdir()
    link = tmp_path / "current.gitpack"
    link.symlink_to(target)  # dangling until the first save, as open() would create it
    for n in (1, 2):
        assert gitpack_cli(repo, "save", "pkg.model:M", "-p", f"n={n}", "-q", "-o", str(link)).returncode == 0
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert gitpack.inspect(target)["params"] == {"n": n}
        assert gitpack.load(link, repo=repo).n == n


SLOW_SAVE = '''\
import os, sys
import gitpack
from pkg.model import M
print("READY", flush=True)
gitpack.save(M(int(sys.argv[2])), sys.argv[1])
'''


def test_a_killed_saves_temp_archive_inside_the_repo_never_shows_in_git_status(tmp_path):
    repo = _project(tmp_path)
    (repo / "slow_save.py").write_text(SLOW_SAVE)
    git(repo, "add", "slow_save.py")
    git(repo, "commit", "-q", "-m", "saver")
    (repo / "models").mkdir()
    env = {**os.environ, **QUIET_ENV, "GITPACK_CACHE": str(tmp_path / "cache")}
    seen = False
    for _attempt in range(20):  # kill while the temp archive exists (the save's timing varies)
        proc = subprocess.Popen([sys.executable, "slow_save.py", "models/m.gitpack", str(64 << 20)], cwd=repo, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().startswith("READY")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            temps = [p for p in (repo / ".git").iterdir() if ".gitpack-tmp-" in p.name]
            if temps:
                assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""  # while it is written
                proc.send_signal(signal.SIGKILL)
                seen = True
                break
            time.sleep(0.005)
        proc.wait()
        if seen:
            break
    assert seen, "never caught a save with its temp archive in .git"
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert not [p for p in repo.rglob("*") if ".gitpack-tmp-" in p.name and ".git" not in p.relative_to(repo).parts]
    git(repo, "add", "-A")
    assert git(repo, "diff", "--cached", "--name-only") == ""  # `git add -A` picks nothing up

    assert gitpack_cli(repo, "save", "pkg.model:M", "-q", "-o", "models/m.gitpack").returncode == 0
    tree = gitpack.inspect(repo / "models" / "m.gitpack")["tree"]
    assert not [p for p in git(repo, "ls-tree", "-r", "--name-only", tree).splitlines() if "gitpack-tmp" in p]
    assert not [p for p in (repo / ".git").iterdir() if "gitpack-tmp-" in p.name]  # the next save cleaned up


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_left_behind_temp_files_and_old_git_temp_objects_are_cleaned(tmp_path):
    repo = _project(tmp_path)
    assert gitpack_cli(repo, "save", "pkg.model:M", "-q", "-o", "../a.gitpack").returncode == 0
    host = __import__("gitpack.fsutil", fromlist=["owner_tag"]).owner_tag().split("@")[1]
    dead = f"{_dead_pid()}@{host}"
    message = repo / ".git" / f"gitpack-tmp-msg-{dead}abc123"  # what a save killed mid-commit leaves
    message.write_text("snapshot")
    old_obj = repo / ".git" / "objects" / "ab" / "tmp_obj_Xy12Z"  # what a killed git hash-object leaves
    old_obj.parent.mkdir(exist_ok=True)
    old_obj.write_bytes(b"x" * 100)
    os.utime(old_obj, (time.time() - 7200, time.time() - 7200))
    young_obj = repo / ".git" / "objects" / "pack" / "tmp_pack_Ab34"  # a git may be writing it right now
    young_obj.write_bytes(b"y")

    with open(repo / "pkg" / "model.py", "a") as fh:
        fh.write("EDITED = 1\n")
    assert gitpack_cli(repo, "save", "pkg.model:M", "-q", "-o", "../b.gitpack").returncode == 0
    assert not message.exists() and not old_obj.exists()
    assert young_obj.exists()
    young_obj.unlink()


LOAD = '''\
import sys, gitpack
print("READY", flush=True)
gitpack.load(sys.argv[1])
print("DONE", flush=True)
'''


def test_killed_loads_of_a_stored_artifact_leave_no_partial_copies(tmp_path):
    repo = _project(tmp_path)
    git(repo, "config", "gitpack.lfs", "never")  # a git blob, copied into the cache (LFS objects are read in place)
    assert gitpack_cli(repo, "save", "pkg.model:M", "-p", f"n={96 << 20}", "--name", "big", "-q").returncode == 0
    cache = tmp_path / "cache"
    env = {**os.environ, **QUIET_ENV, "GITPACK_CACHE": str(cache)}
    store = cache / "store"
    partial = 0
    for _attempt in range(30):
        proc = subprocess.Popen([sys.executable, "-c", LOAD, "big"], cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().startswith("READY")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if store.is_dir() and [p for p in store.iterdir() if ".gitpack-tmp-" in p.name]:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait()
        partial = len([p for p in store.iterdir() if ".gitpack-tmp-" in p.name]) if store.is_dir() else 0
        if partial:
            break
    assert partial, "never caught a load while it copied the archive"
    proc = subprocess.run([sys.executable, "-c", LOAD, "big"], cwd=repo, env=env, capture_output=True, text=True)
    assert "DONE" in proc.stdout, proc.stderr
    assert not [p for p in store.iterdir() if ".gitpack-tmp-" in p.name]
    assert len(list(store.iterdir())) == 1


def test_verify_works_in_a_partial_clone_as_load_does(tmp_path):
    repo = _project(tmp_path)
    commit_files(repo, {"pkg/data.txt": "data\n" * 100})
    assert gitpack_cli(repo, "save", "pkg.model:M", "--name", "m", "-q").returncode == 0
    git(repo, "config", "uploadpack.allowFilter", "true")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--filter=blob:none", "--no-checkout", f"file://{repo}", str(clone))
    assert gitpack_cli(clone, "pull", "-q").returncode == 0
    missing = run(clone, "git", "rev-list", "--objects", "--missing=print", "gitpack").stdout
    assert "?" in missing  # blobs really are missing, promised by the remote

    proc = gitpack_cli(clone, "verify", "m")
    assert proc.returncode == 0, proc.stderr
    assert gitpack_cli(clone, "load", "m").returncode == 0

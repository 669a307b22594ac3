"""No crash loses data.

Saves run in real subprocesses that are SIGKILLed at many points of a save,
from its first instruction to its last; a write failure is a real
``RLIMIT_FSIZE`` in a subprocess; concurrency is 8 real processes.  After
every kill: the destination holds the old archive or a complete, valid new
one; the snapshot branch holds the old tip or one new complete commit; the
user's index (and the rest of their git state) is untouched; and the next save
succeeds and removes what the killed one left behind.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUIET_ENV, git, init_repo, run, user_git_state

import gitpack
from gitpack.archive import ArchiveReader

KILL_POINTS = int(os.environ.get("CRASH_KILL_POINTS") or 32)

MODEL = '''\
class Blob:
    def __init__(self, data, tag):
        self.data = data
        self.tag = tag
'''
# Prints READY just before gitpack.save starts, so kill offsets are measured from the save itself.
SAVE = '''\
import os, sys, time
import gitpack
from ck.model import Blob
dest, size, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
blob = Blob(os.urandom(size), tag)
print("READY", flush=True)
start = time.monotonic()
gitpack.save(blob, dest, params={"tag": tag})
print("DONE", time.monotonic() - start, flush=True)
'''


def _project(root: Path, files: int = 40) -> Path:
    repo = init_repo(root / "repo")
    (repo / "ck").mkdir()
    (repo / "ck" / "__init__.py").write_text("")
    (repo / "ck" / "model.py").write_text(MODEL)
    (repo / "save.py").write_text(SAVE)
    for i in range(files):  # some tracked files, so the snapshot step has real work to do
        (repo / "ck" / f"part{i}.py").write_text(f"VALUE = {i}\n" * 20)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "project")
    for i in range(0, files, 4):  # and some uncommitted edits the snapshot must capture
        with open(repo / "ck" / f"part{i}.py", "a") as fh:
            fh.write("EDITED = True\n")
    git(repo, "add", "ck/part0.py")  # a staged change: the user's index is not pristine
    return repo


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env.update(QUIET_ENV)
    env["GITPACK_CACHE"] = str(root / "cache")
    return env


def _tip(repo: Path) -> str | None:
    out = git(repo, "rev-parse", "--verify", "-q", "refs/heads/gitpack", check=False)
    return out or None


def _temp_files(repo: Path, out_dir: Path) -> list[str]:
    git_dir = repo / ".git"
    return sorted([p.name for p in out_dir.iterdir() if ".gitpack-tmp-" in p.name]
                  + [p.name for p in git_dir.iterdir() if p.name.startswith("gitpack-tmp-")])


def _live_group_members(pgid: int) -> int:
    """Processes of group *pgid* that are still running (zombies do not count)."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            count += 1
    return count


def _wait_for_group(pgid: int, timeout: float = 60.0) -> None:
    """Wait until git children of a killed save have finished: they may still move the ref."""
    deadline = time.monotonic() + timeout
    while _live_group_members(pgid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of the killed save (group {pgid}) did not finish")
        time.sleep(0.01)


def _save(repo: Path, root: Path, dest: Path, size: int, tag: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "save.py", str(dest), str(size), tag], cwd=repo, env=_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _complete_save(repo: Path, root: Path, dest: Path, size: int, tag: str) -> float:
    proc = _save(repo, root, dest, size, tag)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return float(out.split("DONE", 1)[1])


def _archive_commit(path: Path) -> str:
    with ArchiveReader(path) as reader:
        return reader.manifest["commit"]


def test_sigkill_at_any_point_of_a_save_leaves_old_or_new_state(tmp_path):
    repo = _project(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = out_dir / "model.gitpack"
    size = 48 << 20
    # Calibrate: how long a whole save takes here, measured from its first instruction.
    durations = sorted(_complete_save(repo, tmp_path, dest, size, f"calibrate{i}") for i in range(3))
    duration = durations[1]
    outcomes = {"archive old": 0, "archive new": 0, "ref old": 0, "ref new": 0, "left temp files": 0, "finished": 0}

    for point in range(KILL_POINTS):
        old_bytes = hashlib.sha256(dest.read_bytes()).hexdigest()
        old_tip = _tip(repo)
        before = user_git_state(repo)
        # Spread over 0..1.2 of the latest full save's duration (re-measured every round, as the
        # machine's load changes): the last few land after the save's end.
        offset = 1.2 * duration * point / (KILL_POINTS - 1)

        proc = _save(repo, tmp_path, dest, size, f"killed{point}")
        assert proc.stdout.readline().startswith("READY")
        time.sleep(offset)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        outcomes["finished"] += proc.returncode == 0
        _wait_for_group(proc.pid)

        # The destination is the old file or a complete, valid archive recording the new tip.
        if hashlib.sha256(dest.read_bytes()).hexdigest() == old_bytes:
            outcomes["archive old"] += 1
        else:
            outcomes["archive new"] += 1
            report = gitpack.verify(dest, repo=repo)
            assert report.commit == _tip(repo), f"kill point {point}: a new archive but the ref does not hold its commit"
        # The ref is the old tip or one new, complete commit on top of it.
        tip = _tip(repo)
        if tip == old_tip:
            outcomes["ref old"] += 1
        else:
            outcomes["ref new"] += 1
            assert git(repo, "rev-parse", f"{tip}^1") == old_tip, f"kill point {point}"
            missing = [line for line in git(repo, "rev-list", "--objects", "--no-walk", "--missing=print", tip).splitlines() if line.startswith("?")]
            assert not missing, f"kill point {point}: the new commit is incomplete: {missing[:3]}"
        # The user's index, HEAD, worktree, stash and reflogs are exactly as they were.
        assert user_git_state(repo) == before, f"kill point {point}"
        outcomes["left temp files"] += bool(_temp_files(repo, out_dir))

        # The next save succeeds and cleans up what the killed one left behind.
        duration = _complete_save(repo, tmp_path, dest, size, f"after{point}")
        assert _temp_files(repo, out_dir) == [], f"kill point {point}"
        assert gitpack.verify(dest, repo=repo).commit == _tip(repo)

    print(f"\n{KILL_POINTS} kill points over 0..1.2x a save of about {duration:.2f}s: {outcomes}")
    assert outcomes["archive old"] + outcomes["archive new"] == KILL_POINTS


WRITE_FAILS = '''\
import os, resource, signal, sys
import gitpack
from ck.model import Blob
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so the write fails with EFBIG instead of killing us
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    gitpack.save(Blob(os.urandom(4 * limit), "too big"), sys.argv[1])
except gitpack.GitpackError as exc:
    print("GITPACK_ERROR", exc)
    sys.exit(3)
'''


def test_a_write_failure_leaves_the_old_archive_and_no_temp_file(tmp_path):
    repo = _project(tmp_path, files=4)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = out_dir / "model.gitpack"
    _complete_save(repo, tmp_path, dest, 1000, "old")
    old_bytes, old_tip, before = dest.read_bytes(), _tip(repo), user_git_state(repo)

    (repo / "fails.py").write_text(WRITE_FAILS)
    proc = subprocess.run([sys.executable, str(repo / "fails.py"), str(dest), str(1 << 20)], cwd=repo, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "File too large" in proc.stdout or "too large" in proc.stdout.lower(), proc.stdout
    assert dest.read_bytes() == old_bytes
    assert _temp_files(repo, out_dir) == []
    assert _tip(repo) == old_tip
    (repo / "fails.py").unlink()
    assert user_git_state(repo) == before
    assert gitpack.load(dest, repo=repo).tag == "old"


CONCURRENT = '''\
import sys, time, os
from pathlib import Path
import gitpack
from ck.model import Blob
proc, go = sys.argv[1], Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
for i in range(5):
    gitpack.save(Blob(os.urandom(4096), f"{proc}-{i}"), f"../out/p{proc}-{i}.gitpack", params={"proc": proc, "i": i})
'''


def test_eight_processes_saving_five_times_each_in_one_repo(tmp_path):
    repo = _project(tmp_path, files=8)
    (tmp_path / "out").mkdir()
    (repo / "many_saves.py").write_text(CONCURRENT)
    git(repo, "add", "many_saves.py")
    git(repo, "commit", "-q", "-m", "concurrent saver")
    before = user_git_state(repo)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "many_saves.py", str(p), str(go)], cwd=repo, env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(8)]
    time.sleep(0.5)
    go.write_text("go")
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err

    saves = gitpack.log(repo=repo)
    assert len(saves) == 40 and len({s.commit for s in saves}) == 40
    first_parent = git(repo, "rev-list", "--first-parent", "refs/heads/gitpack").splitlines()
    archives = sorted((tmp_path / "out").glob("*.gitpack"))
    assert len(archives) == 40
    commits = set()
    for archive in archives:
        commits.add(gitpack.verify(archive, repo=repo).commit)
    assert commits == {s.commit for s in saves} and commits <= set(first_parent)
    assert gitpack.load(archives[0], repo=repo).tag == archives[0].stem[1:]
    assert _temp_files(repo, tmp_path / "out") == []
    assert user_git_state(repo) == before


LOADER = '''\
import sys, time
from pathlib import Path
import gitpack
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.002)
obj = gitpack.load(sys.argv[1])
print("RESULT", obj.tag, obj.total())
'''
PACKAGE_MODULE = '''\
from . import {prev}
VALUE = {prev}.VALUE + 1
'''


def test_eight_concurrent_first_loads_share_one_intact_cache(tmp_path):
    repo = init_repo(tmp_path / "repo")
    pkg = repo / "deep"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m0.py").write_text("VALUE = 0\n")
    for i in range(1, 30):  # a chain of imports: each load materialises and imports all of them
        (pkg / f"m{i}.py").write_text(PACKAGE_MODULE.format(prev=f"m{i - 1}"))
    (pkg / "data").mkdir()
    for i in range(20):
        (pkg / "data" / f"table{i}.txt").write_text(f"{i}\n" * 500)
    (pkg / "model.py").write_text(
        "from pathlib import Path\nfrom . import m29\n\n\nclass Model:\n    def __init__(self, tag):\n        self.tag = tag\n\n"
        "    def total(self):\n        data = Path(__file__).parent / 'data'\n"
        "        return m29.VALUE + sum(int((data / f'table{i}.txt').read_text().split()[0]) for i in range(20))\n"
    )
    (repo / "save.py").write_text("import gitpack\nfrom deep.model import Model\ngitpack.save(Model('shared'), 'm.gitpack')\n")
    (repo / "load.py").write_text(LOADER)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "deep")
    assert run(repo, sys.executable, "save.py", env={"GITPACK_CACHE": str(tmp_path / "save-cache")}).returncode == 0

    cache = tmp_path / "shared-cache"
    env = _env(tmp_path)
    env["GITPACK_CACHE"] = str(cache)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "load.py", "m.gitpack", str(go)], cwd=repo, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    time.sleep(0.5)
    go.write_text("go")
    expected = 29 + sum(range(20))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert f"RESULT shared {expected}" in out

    tree = gitpack.inspect(repo / "m.gitpack")["tree"]
    tree_dir = cache / "trees" / tree
    # Every file written is the tree's own, byte for byte; deep/ (imported, with its data) is all there.
    materialised = sorted(str(p.relative_to(tree_dir)) for p in tree_dir.rglob("*")
                          if p.is_file() and not p.name.startswith(".gitpack-") and "__pycache__" not in p.parts)
    in_tree = git(repo, "ls-tree", "-r", "--name-only", tree).splitlines()
    assert set(materialised) <= set(in_tree)
    assert [p for p in materialised if p.startswith("deep/")] == sorted(p for p in in_tree if p.startswith("deep/"))
    for rel in materialised:
        assert (tree_dir / rel).read_bytes() == subprocess.run(["git", "show", f"{tree}:{rel}"], cwd=repo,
                                                                capture_output=True, check=True).stdout, rel
    assert not [p for p in cache.rglob("*") if ".gitpack-tmp-" in p.name]


# --------------------------------------------------------------------------- stored (--name) saves
NAMED_SAVE = '''\
import os, sys, time
import gitpack
from ck.model import Blob
size, tag = int(sys.argv[1]), sys.argv[2]
blob = Blob(os.urandom(size), tag)
print("READY", flush=True)
start = time.monotonic()
gitpack.save(blob, name="ck", params={"tag": tag})
print("DONE", time.monotonic() - start, flush=True)
'''


def _named_save(repo: Path, root: Path, size: int, tag: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "named_save.py", str(size), tag], cwd=repo, env=_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _store_matches_history(repo: Path, where: str) -> int:
    """Every save the log shows has its stored version, and ``latest`` is the newest version; returns how many."""
    logged = [e.commit for e in gitpack.log(repo=repo) if e.trailers.get("artifact") == "ck"]
    versions = gitpack.api.list_artifacts("ck", repo=repo)
    assert sorted(v.snapshot for v in versions) == sorted(logged), f"{where}: a log entry without its version"
    assert sorted(v.number for v in versions) == list(range(1, len(versions) + 1)), where
    if versions:
        latest = git(repo, "rev-parse", "refs/gitpack/aliases/ck/latest")
        assert latest == max(versions, key=lambda v: v.number).commit, f"{where}: a stale latest"
    return len(versions)


@pytest.mark.slow
def test_sigkill_at_random_points_of_named_saves_leaves_no_log_entry_without_its_version(tmp_path):
    repo = _project(tmp_path, files=8)
    (repo / "named_save.py").write_text(NAMED_SAVE)
    git(repo, "add", "named_save.py")
    git(repo, "commit", "-q", "-m", "named saver")
    size = 8 << 20

    def complete(tag: str) -> float:
        proc = _named_save(repo, tmp_path, size, tag)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        return float(out.split("DONE", 1)[1])

    duration = max(complete(f"calibrate{i}") for i in range(2))
    rng = random.Random(20240610)
    outcomes = {"stored": 0, "not stored": 0}
    for point in range(KILL_POINTS):
        before = _store_matches_history(repo, f"before kill {point}")
        proc = _named_save(repo, tmp_path, size, f"killed{point}")
        assert proc.stdout.readline().startswith("READY")
        time.sleep(rng.uniform(0, 1.2 * duration))
        proc.send_signal(signal.SIGKILL)  # the Python process only: its git children are orphaned, not killed
        proc.wait()
        _wait_for_group(proc.pid)
        after = _store_matches_history(repo, f"kill point {point}")
        assert after in (before, before + 1), f"kill point {point}"
        outcomes["stored" if after > before else "not stored"] += 1
        duration = complete(f"after{point}")
        _store_matches_history(repo, f"after kill point {point}")
        assert not [p for p in (repo / ".git").iterdir() if "gitpack-tmp-" in p.name], f"kill point {point}"
    print(f"\n{KILL_POINTS} random kill points of --name saves: {outcomes}")
    assert run(repo, "git", "fsck", "--no-dangling").returncode == 0


CONCURRENT_NAMED = '''\
import sys, time, os
from pathlib import Path
import gitpack
from ck.model import Blob
proc, go = sys.argv[1], Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
for i in range(5):
    gitpack.save(Blob(os.urandom(4096), f"{proc}-{i}"), name="ck", params={"proc": proc, "i": i})
'''
GC_LOOP = '''\
import subprocess, sys, time
from pathlib import Path
stop = Path(sys.argv[1])
runs = 0
while not stop.exists():
    subprocess.run(["git", "gc", "-q"], check=True)  # gc's default prune window: safe with writers
    runs += 1
print("GC_RUNS", runs)
'''


@pytest.mark.slow
def test_forty_concurrent_named_saves_land_while_git_gc_runs_in_a_loop(tmp_path):
    repo = _project(tmp_path, files=8)
    (repo / "many_saves.py").write_text(CONCURRENT_NAMED)
    git(repo, "add", "many_saves.py")
    git(repo, "commit", "-q", "-m", "concurrent saver")
    before = user_git_state(repo)
    go, stop = tmp_path / "go", tmp_path / "stop"
    gc = subprocess.Popen([sys.executable, "-c", GC_LOOP, str(stop)], cwd=repo, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    procs = [subprocess.Popen([sys.executable, "many_saves.py", str(p), str(go)], cwd=repo, env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(8)]
    time.sleep(0.5)
    go.write_text("go")
    try:
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
    finally:
        stop.write_text("stop")
        out, err = gc.communicate(timeout=300)
    assert gc.returncode == 0, err
    print(f"\n{out.strip()} while 40 saves ran")

    assert _store_matches_history(repo, "after 40 concurrent saves") == 40
    assert len({e.commit for e in gitpack.log(repo=repo)}) == 40
    fsck = run(repo, "git", "fsck", "--no-dangling")
    assert fsck.returncode == 0 and "error" not in fsck.stderr.lower(), fsck.stderr
    assert gitpack.load("ck@v40", repo=repo).tag
    assert user_git_state(repo) == before

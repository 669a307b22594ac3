"""Materialisation costs what the model uses, a cache hit costs a stat, concurrent loads are safe.

A real repository with many files, of which the model uses a few modules in a
few directories; real subprocesses for every load (each a first load or a cache
hit, as a user's next program would be); git's own trace to count git
processes.  Nothing here measures time (``scripts/bench.py`` does).  About 15 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUIET_ENV, git, run_python

MODEL = '''\
"""The model: uses two layer modules and data files found next to its own file."""
import json
import os

from app.layers.dense import Dense
from app.layers.norm import Norm

HERE = os.path.dirname(__file__)
VOCAB = open(os.path.join(HERE, "assets", "vocab.txt")).read().split()
MORE = open(os.path.join(HERE, "assets", "nested", "more.txt")).read().strip()


class Model:
    def __init__(self):
        self.dense = Dense(3)
        self.norm = Norm()

    def describe(self):
        return {"vocab": VOCAB, "more": MORE, "dense": self.dense.scale, "table": self.norm.table, "norm": self.norm(4.0)}
'''

NORM = '''\
import json
import os

TABLE = json.load(open(os.path.join(os.path.dirname(__file__), "table.json")))


class Norm:
    def __init__(self):
        self.table = TABLE

    def __call__(self, x):
        return x / self.table["divisor"]
'''

EXPECTED = {"vocab": ["alpha", "beta"], "more": "nested data", "dense": 3, "table": {"divisor": 2}, "norm": 2.0}

# Every file the model needs: the directories of the modules it imports, with their data.
USED = {
    "app/__init__.py", "app/model.py",
    "app/assets/vocab.txt", "app/assets/nested/more.txt",
    "app/layers/__init__.py", "app/layers/dense.py", "app/layers/norm.py", "app/layers/unused.py",
    "app/layers/table.json",
}


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory) -> tuple[Path, Path]:
    """A repository of ~700 files; returns (repo, archive saved from it by another program)."""
    from conftest import init_repo

    repo = init_repo(tmp_path_factory.mktemp("big") / "repo")
    files = {
        "app/__init__.py": "",
        "app/model.py": MODEL,
        "app/assets/vocab.txt": "alpha beta\n",
        "app/assets/nested/more.txt": "nested data\n",
        "app/layers/__init__.py": "",
        "app/layers/dense.py": "class Dense:\n    def __init__(self, scale):\n        self.scale = scale\n",
        "app/layers/norm.py": NORM,
        "app/layers/unused.py": "X = 1\n",
        "app/layers/table.json": json.dumps({"divisor": 2}),
        "app/tools/__init__.py": "",
        "app/tools/cli.py": "Y = 2\n",
        "docs/guide.md": "# guide\n",
        "README.md": "big\n",
        "setup.py": "print('never imported')\n",
        ".gitignore": "*.gitpack\n",
    }
    for d in range(30):
        files[f"lib/pkg{d:02d}/__init__.py"] = ""
        files[f"lib/pkg{d:02d}/data.csv"] = "a,b\n1,2\n"
        for m in range(20):
            files[f"lib/pkg{d:02d}/mod{m:02d}.py"] = f"VALUE = {m}\n"
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "many files")
    archive = repo.parent / "app.gitpack"
    proc = run_python(repo, "import sys, gitpack, app.model\ngitpack.save(app.model.Model(), sys.argv[1])", str(archive),
                      env={"PYTHONPATH": str(repo), "GITPACK_CACHE": str(repo.parent / "save-cache")})
    assert proc.returncode == 0, proc.stderr
    return repo, archive


LOAD = """
import json, sys, gitpack
print("RESULT " + json.dumps(gitpack.load(sys.argv[1]).describe()))
"""


def load_in_new_process(repo: Path, archive: Path, cache: Path) -> dict:
    proc = run_python(repo, LOAD, str(archive), env={"GITPACK_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])


def cached_files(cache: Path) -> dict[str, tuple[int, int]]:
    """Every file under the cache's tree directory: relative path -> (size, mtime_ns)."""
    trees = list((cache / "trees").iterdir())
    assert len(trees) == 1
    out = {}
    for p in trees[0].rglob("*"):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(trees[0]).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def test_only_the_directories_of_modules_in_use_are_written(big_repo, tmp_path):
    repo, archive = big_repo
    cache = tmp_path / "cache"
    assert load_in_new_process(repo, archive, cache) == EXPECTED
    written = cached_files(cache)
    code_and_data = {p for p in written if not p.rpartition("/")[2].startswith(".gitpack-")}
    assert code_and_data == USED  # not lib/ (600 files), not app/tools/, not docs/, not the root's files
    # Directories imports only passed through are listed (names), never filled.
    assert ".gitpack-names.json" in written and "README.md" not in written
    assert all(not p.startswith("lib/pkg") for p in written)


HIT = """
import json, os, sys
import gitpack
from gitpack.git import Repo
from gitpack.isolation import GitSourceTree, namespace_for

manifest = gitpack.inspect(sys.argv[1])
repo = Repo.discover(sys.argv[2])
os.environ["GIT_TRACE2_EVENT"] = sys.argv[3]  # from here on, every git process leaves a trace
ns = namespace_for(GitSourceTree(repo, manifest["tree"]), manifest["roots"],
                   {name: info["root"] for name, info in manifest["modules"].items()})
model = ns.import_module("app.model").Model()
print("RESULT " + json.dumps(model.describe()))
"""


def _git_processes(trace: Path) -> list[str]:
    if not trace.exists():
        return []
    return [json.loads(line)["argv"][1] for line in trace.read_text().splitlines() if '"event":"start"' in line]


def test_a_cache_hit_runs_no_git_and_writes_nothing(big_repo, tmp_path):
    repo, archive = big_repo
    cache = tmp_path / "cache"
    env = {"GITPACK_CACHE": str(cache)}

    # Control: with an empty cache the same code must read the snapshot through git.
    cold = tmp_path / "cold.json"
    proc = run_python(repo, HIT, str(archive), str(repo), str(cold), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "cat-file" in _git_processes(cold)
    before = cached_files(cache)

    hot = tmp_path / "hot.json"
    proc = run_python(repo, HIT, str(archive), str(repo), str(hot), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT " + json.dumps(EXPECTED) in proc.stdout
    assert _git_processes(hot) == []  # the markers answered everything
    assert cached_files(cache) == before  # and nothing was rewritten


def test_concurrent_first_loads_in_processes_and_threads(big_repo, tmp_path):
    repo, archive = big_repo
    cache = tmp_path / "cache"
    env = dict(os.environ, **QUIET_ENV, GITPACK_CACHE=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", LOAD, str(archive)], cwd=repo, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):]) == EXPECTED

    threads_code = """
import json, sys, threading, gitpack
results, errors = [], []
def one():
    try:
        results.append(gitpack.load(sys.argv[1]).describe())
    except BaseException as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=one) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print("RESULT " + json.dumps({"results": results, "errors": errors}))
"""
    thread_cache = tmp_path / "thread-cache"
    proc = run_python(repo, threads_code, str(archive), env={"GITPACK_CACHE": str(thread_cache)})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert got == {"results": [EXPECTED] * 4, "errors": []}

    for c in (cache, thread_cache):
        written = cached_files(c)
        assert not [p for p in written if ".gitpack-tmp-" in p]  # no half-written file left behind
        assert {p for p in written if not p.rpartition("/")[2].startswith(".gitpack-")} == USED


def test_file_relative_data_files_resolve_after_the_checkout_changes(big_repo, tmp_path):
    """The data read next to __file__ is the snapshot's, even when the checkout's copy changed or vanished."""
    repo, archive = big_repo
    vocab = repo / "app" / "assets" / "vocab.txt"
    table = repo / "app" / "layers" / "table.json"
    original = vocab.read_text(), table.read_text()
    try:
        vocab.write_text("changed in the checkout\n")
        table.unlink()
        assert load_in_new_process(repo, archive, tmp_path / "cache") == EXPECTED
    finally:
        vocab.write_text(original[0])
        table.write_text(original[1])

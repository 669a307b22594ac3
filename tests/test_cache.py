"""The load cache stays bounded: `gitpack cache`, `gitpack cache prune`, and gitpack.cacheMaxSize.

Real saves and loads in separate processes, and a real process that keeps a loaded model alive while another
prunes: a tree in use is never removed, whatever the limits say.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import QUIET_ENV, commit_files, git, gitpack_cli, run_python

MODEL = "class M:\n    def __init__(self, n=1):\n        self.n = n\n\n    def f(self):\n        return {version}\n"
LOAD = "import gitpack, sys; print('RESULT', gitpack.load(sys.argv[1]).f())"


def _two_saves(repo):
    """Two archives of two different snapshots (so two cache trees)."""
    commit_files(repo, {"model.py": MODEL.format(version=1), ".gitignore": "*.gitpack\n"})
    assert gitpack_cli(repo, "save", "model:M", "-o", "one.gitpack").returncode == 0
    (repo / "model.py").write_text(MODEL.format(version=2))
    assert gitpack_cli(repo, "save", "model:M", "-o", "two.gitpack").returncode == 0
    return {name: json.loads(gitpack_cli(repo, "inspect", f"{name}.gitpack", "--json").stdout)["tree"]
            for name in ("one", "two")}


def _load(repo, name, env=None) -> str:
    proc = run_python(repo, LOAD, f"{name}.gitpack", env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("RESULT ")[1].strip()


def _trees(cache) -> set[str]:
    folder = cache / "trees"
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.exists() else set()


def test_cache_shows_its_size_and_prune_removes_by_age_then_all(repo, _isolated_cache):
    cache = _isolated_cache
    trees = _two_saves(repo)
    assert (_load(repo, "one"), _load(repo, "two")) == ("1", "2")
    assert _trees(cache) == set(trees.values())
    shown = gitpack_cli(repo, "cache")
    assert shown.returncode == 0, shown.stderr
    assert "trees    2 snapshot trees" in shown.stdout and "of at most 5.0 GB" in shown.stdout
    usage = json.loads(gitpack_cli(repo, "cache", "--json").stdout)
    assert usage["size"] > 0 and {e["kind"] for e in usage["entries"]} == {"tree"}

    # Used just now: --older-than keeps both.  Made two days old, "one" goes, "two" stays.
    assert "removed 0 snapshot trees" in gitpack_cli(repo, "cache", "prune", "--older-than", "1d").stdout
    old = time.time() - 2 * 86400
    os.utime(cache / "trees" / trees["one"], (old, old))
    pruned = gitpack_cli(repo, "cache", "prune", "--older-than", "1d")
    assert pruned.returncode == 0 and "removed 1 snapshot trees" in pruned.stdout, pruned.stderr
    assert _trees(cache) == {trees["two"]}
    # With no option: everything no process uses; the next load writes what it needs again.
    assert "removed 1 snapshot trees" in gitpack_cli(repo, "cache", "prune").stdout
    assert _trees(cache) == set()
    assert _load(repo, "one") == "1" and _trees(cache) == {trees["one"]}
    # A bad option is one line.
    bad = gitpack_cli(repo, "cache", "prune", "--older-than", "soon")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--older-than 'soon'" in bad.stderr


def test_a_tree_in_use_by_another_process_is_never_pruned(repo, _isolated_cache):
    cache = _isolated_cache
    trees = _two_saves(repo)
    _load(repo, "two")
    # Another program loads "one" and keeps the model alive (it imports lazily and reads files from its tree).
    code = LOAD + "; sys.stdout.flush(); sys.stdin.readline(); print('STILL', gitpack.load(sys.argv[1]).f())"
    env = {**os.environ, **QUIET_ENV}
    holder = subprocess.Popen([sys.executable, "-c", code, "one.gitpack"], cwd=repo, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "RESULT 1"
        pruned = gitpack_cli(repo, "cache", "prune", "--max-size", "0")
        assert pruned.returncode == 0, pruned.stderr
        assert "removed 1 snapshot trees" in pruned.stdout and "kept 1 in use" in pruned.stdout
        assert _trees(cache) == {trees["one"]}
        assert json.loads(gitpack_cli(repo, "cache", "--json").stdout)["entries"][0]["in_use"] is True
        out, err = holder.communicate("go\n", timeout=120)
        assert holder.returncode == 0 and "STILL 1" in out, err
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # Once that program is gone, the tree is free to go.
    assert "removed 1 snapshot trees" in gitpack_cli(repo, "cache", "prune").stdout
    assert _trees(cache) == set()


def test_the_cache_keeps_itself_under_its_configured_size(repo, _isolated_cache):
    cache = _isolated_cache
    trees = _two_saves(repo)
    _load(repo, "one")
    assert _trees(cache) == {trees["one"]}
    git(repo, "config", "gitpack.cacheMaxSize", "1")  # one byte: every tree not in use must go
    # Loading "two" writes its tree, then drops the least recently used tree no one uses ("one"), never its own.
    assert _load(repo, "two") == "2"
    assert _trees(cache) == {trees["two"]}
    git(repo, "config", "gitpack.cacheMaxSize", "lots")
    proc = gitpack_cli(repo, "cache")
    assert proc.returncode == 1 and "gitpack.cacheMaxSize = 'lots' is not a size" in proc.stderr

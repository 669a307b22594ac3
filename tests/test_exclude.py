"""Bounded snapshots: untracked data never fills ``.git``, and what is left out is said, with how to take it.

Real repositories, real saves through the CLI and the API; `test_snapshot` checks the same rules on both ways
of writing a snapshot tree.
"""

from __future__ import annotations

import json
import os
import sys

from conftest import commit_files, git, gitpack_cli, run

MODEL = "class M:\n    def __init__(self, n=1):\n        self.n = n\n"


def _size(directory) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def test_forty_untracked_shards_do_not_go_into_every_snapshot(repo):
    commit_files(repo, {"model.py": MODEL, ".gitignore": "*.gitpack\n"})
    (repo / "data").mkdir()
    for i in range(40):
        (repo / "data" / f"shard{i:02}.bin").write_bytes(os.urandom(5 * 1000 * 1000))  # incompressible
    before = _size(repo / ".git")
    proc = gitpack_cli(repo, "save", "model:M", "-o", "m.gitpack")
    assert proc.returncode == 0, proc.stderr
    grown = _size(repo / ".git") - before
    assert grown < 25 * 1000 * 1000, grown  # not 200 MB
    taken = git(repo, "ls-tree", "-r", "--name-only", "gitpack", "--", "data").split()
    assert len(taken) == 4  # 20 MB of 5 MB shards: the default budget for untracked files
    # Every file left out is named, with its size, and how to take it anyway.
    notes = [line for line in proc.stderr.splitlines() if line.startswith("gitpack: left out of the snapshot: data/")]
    assert len(notes) == 20 and all("untracked, 5.0 MB: past the budget of 20.0 MB" in n for n in notes)
    assert "... and 16 more left out (gitpack inspect --json lists them all)" in proc.stderr
    assert "36 untracked files left out by size; to snapshot one anyway: --include PATH" in proc.stderr
    assert "git config --add gitpack.include PATH" in proc.stderr
    manifest = json.loads(gitpack_cli(repo, "inspect", "m.gitpack", "--json").stdout)
    left_out = {path for path, _ in manifest["excluded"]}
    assert len(left_out) == 36 and not left_out & set(taken)

    # --include and gitpack.include take what the user names, whatever the budget.
    proc = gitpack_cli(repo, "save", "model:M", "-o", "m.gitpack", "--include", "data/shard39.bin")
    assert proc.returncode == 0, proc.stderr
    assert "data/shard39.bin" in git(repo, "ls-tree", "-r", "--name-only", "gitpack", "--", "data").split()
    git(repo, "config", "--add", "gitpack.include", "data/shard3*")
    git(repo, "config", "gitpack.untrackedBudget", "0")
    proc = gitpack_cli(repo, "save", "model:M", "-o", "m.gitpack")
    assert proc.returncode == 0, proc.stderr
    assert sorted(git(repo, "ls-tree", "-r", "--name-only", "gitpack", "--", "data").split()) == \
        [f"data/shard{i}.bin" for i in range(30, 40)]


def test_tracked_files_are_always_taken_and_the_api_warns(repo):
    commit_files(repo, {"model.py": MODEL, "weights.txt": "w" * 3000, ".gitignore": "*.gitpack\n"})
    (repo / "weights.txt").write_text("v" * 3000)  # tracked and modified, over the cap below
    (repo / "notes.txt").write_text("n" * 3000)  # untracked, over the cap
    code = ("import warnings, gitpack, model\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    info = gitpack.save(model.M(), 'm.gitpack', size_cap=1000)\n"
            "print('EXCLUDED', info.excluded)\n"
            "print('WARNED', [(w.category.__name__, str(w.message)) for w in caught])\n")
    proc = run(repo, sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "('notes.txt', 'untracked, 3.0 kB: larger than the size cap of 1.0 kB;" in proc.stdout
    assert "weights.txt" not in proc.stdout.split("EXCLUDED")[1].split("WARNED")[0]
    assert "('GitpackWarning', 'left 1 untracked file(s) out of the snapshot by size: notes.txt;" in proc.stdout
    assert git(repo, "show", "gitpack:weights.txt") == "v" * 3000

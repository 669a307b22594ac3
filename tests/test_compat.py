"""Archives written by earlier gitpack releases still load: format 1 (gitpack 0.1, sha256 digests, dill's pickler).

The fixture was made by gitpack 0.1 itself (commit 0fa404b): ``fixtures/format1/repo.bundle`` is the
repository it was saved in, snapshot branch included, and ``scaler-format1.gitpack`` the archive.  It
exercises what 0.1 wrote differently: ``('global', module, qualname)`` snapshot references for classes
and functions alike, and the lambda rebuilder named as the global ``gitpack.pickling.rebuild_function``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from conftest import git, run

import gitpack

FIXTURE = Path(__file__).parent / "fixtures" / "format1"
EXPECTED = [[1.321842908859253, 4.381037712097168]]  # what the model returned when 0.1 saved it


def _clone_with_archive(tmp_path: Path, fixture: Path, archive: str, name: str, breaks: str) -> Path:
    """A clone of *fixture*'s repository with its snapshot refs and its *archive* copied in as *name*, and the
    checkout's *breaks* (a repo module) made to raise: a load must run the snapshot's code, never the checkout's."""
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(fixture / "repo.bundle"), str(clone))
    git(clone, "fetch", "-q", str(fixture / "repo.bundle"), "refs/heads/gitpack:refs/heads/gitpack",
        "+refs/gitpack/*:refs/gitpack/*")
    shutil.copy(fixture / archive, clone / name)
    (clone / breaks).write_text("raise ImportError('the checkout, not the snapshot')\n")
    return clone


def _results(proc) -> list:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("RESULT")]


def test_a_format1_archive_loads_and_runs_its_saved_code(tmp_path):
    clone = _clone_with_archive(tmp_path, FIXTURE, "scaler-format1.gitpack", "scaler.gitpack", "tinypkg/model.py")
    code = ("import json, torch, gitpack\n"
            "m = gitpack.load('scaler.gitpack')\n"
            "with torch.no_grad():\n"
            "    print('RESULT', json.dumps(m(torch.ones(1, 4)).tolist()), m.table.sum())\n")
    proc = run(clone, sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")][0]
    result, table_sum = line.split(" ", 1)[1].rsplit(" ", 1)
    assert json.loads(result) == EXPECTED and table_sum == "15.0"

    report = gitpack.verify(clone / "scaler.gitpack", repo=clone)
    assert report.manifest_vouched
    scan = gitpack.api.scan(clone / "scaler.gitpack", repo=clone)
    assert scan.safe, scan.violations
    assert [(f.module, f.qualname) for f in scan.functions] == [("tinypkg.model", "Scaler.__init__.<locals>.<lambda>")]


# The last format-1 layout (gitpack before format 2, commit e85cdaa): the C pickler, plain tensors and parameters
# as one ``('tensor', ...)`` persistent id each, every storage its own member, ``columns`` for the 4,100-word
# vocabulary, a numpy buffer out of band and sha256 member digests.  ``fixtures/format1-cpickle`` holds the
# repository (``repo.bundle``, snapshot branch included) and the archive, made by that code.
CPICKLE = Path(__file__).parent / "fixtures" / "format1-cpickle"
CPICKLE_EXPECTED = [0.5218783617019653, 0.5443993210792542, 2.2682831287384033, 3.8695335388183594]


def test_a_format1_archive_of_the_c_pickler_era_loads_and_verifies(tmp_path):
    clone = _clone_with_archive(tmp_path, CPICKLE, "vocab-format1.gitpack", "vocab.gitpack", "vocabpkg/model.py")
    manifest = gitpack.inspect(clone / "vocab.gitpack")
    assert manifest["format"] == 1 and all(len(m["sha256"]) == 64 for m in manifest["members"])
    code = ("import json, torch, gitpack\n"
            "for mmap in (False, True):\n"
            "    m = gitpack.load('vocab.gitpack', mmap=mmap)\n"
            "    with torch.no_grad():\n"
            "        out = m('W1 w2 w4099 unknown').tolist()\n"
            "    print('RESULT', json.dumps([out, len(m.tokenizer.itos), m.tokenizer.stoi['w4099'],\n"
            "                                m.table.sum().item(), m.tokenizer.normalise(' A ')]))\n")
    assert _results(run(clone, sys.executable, "-c", code)) == [[CPICKLE_EXPECTED, 4100, 4099, 15.0, "a"]] * 2

    report = gitpack.verify(clone / "vocab.gitpack", repo=clone)
    assert report.manifest_vouched and report.members == 13
    scan = gitpack.api.scan(clone / "vocab.gitpack", repo=clone)
    assert scan.safe, scan.violations

    # Exported portable, it stays format 1: its sha256 member digests are what its commit vouches for.
    gitpack.api.export(clone / "vocab.gitpack", tmp_path / "portable.gitpack", portable=True, repo=clone)
    exported = gitpack.inspect(tmp_path / "portable.gitpack")
    assert exported["format"] == 1 and all("sha256" in m for m in exported["members"])
    outside = tmp_path / "outside"
    outside.mkdir()
    code = ("import json, sys, torch, gitpack\n"
            "m = gitpack.load(sys.argv[1], trust=True)\n"
            "print('RESULT', json.dumps(m('W1 w2 w4099 unknown').tolist()))\n")
    proc = run(outside, sys.executable, "-c", code, str(tmp_path / "portable.gitpack"))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("RESULT")] \
        == [CPICKLE_EXPECTED]


# The last format-2 layout (before format 3's tensor table, commit 32a11b6): BLAKE3 member digests, every plain
# tensor one ``('tensor', ...)`` persistent id, small storages packed.  ``fixtures/format2`` holds the repository
# (``repo.bundle``, snapshot branch and recorded start included) and the archive, made by that code.
FORMAT2 = Path(__file__).parent / "fixtures" / "format2"
FORMAT2_EXPECTED = [[-0.04677924886345863, -0.24748675525188446, -0.12529805302619934, -0.1908591240644455]]


def test_a_format2_archive_of_tensor_ids_loads_verifies_and_scans(tmp_path):
    clone = _clone_with_archive(tmp_path, FORMAT2, "stack-format2.gitpack", "stack.gitpack", "layerpkg/model.py")
    manifest = gitpack.inspect(clone / "stack.gitpack")
    assert manifest["format"] == 2 and [m["name"] for m in manifest["members"]] == ["pickle", "storages/pack-0"]
    code = ("import json, torch, gitpack\n"
            "for mmap in (False, True):\n"
            "    m = gitpack.load('stack.gitpack', mmap=mmap)\n"
            "    with torch.no_grad():\n"
            "        out = m(torch.ones(1, 4)).tolist()\n"
            "    shared = m.row.untyped_storage().data_ptr() == m.table.untyped_storage().data_ptr()\n"
            "    print('RESULT', json.dumps([out, shared, m.row.tolist(), m.frozen.requires_grad,\n"
            "          type(m.scales[0]).__name__, str(m.halves.dtype), m.layers[2].weight.requires_grad]))\n")
    assert _results(run(clone, sys.executable, "-c", code)) == \
        [[FORMAT2_EXPECTED, True, [3.0, 4.0, 5.0], False, "Parameter", "torch.float16", True]] * 2

    report = gitpack.verify(clone / "stack.gitpack", repo=clone)
    assert report.manifest_vouched
    scan = gitpack.api.scan(clone / "stack.gitpack", repo=clone)
    assert scan.safe, scan.violations

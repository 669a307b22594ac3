"""Portable archives load with no repository, and refuse tampered source before importing it.

The "deploy server" is a temp directory with no ``.git`` anywhere above it (the
test checks ``git rev-parse`` fails there), the source repository is deleted
before the load, and the load runs in a fresh process with a fresh cache.  The
model module appends to a marker file when it is executed, which proves
whether a refused archive's code ever ran.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import git, gitpack_cli, run_python
from test_artifacts import make_project, ok, one_line_error, save

from gitpack import api
from gitpack.archive import ArchiveReader, ArchiveWriter
from gitpack.archive.portable import BLOB_PREFIX, COMMIT_MEMBER, TREE_PREFIX
from gitpack.errors import ArchiveError

LOAD = """
import sys, gitpack
print("RESULT", gitpack.load(sys.argv[1], trust=True).predict(1))
"""


@pytest.fixture
def exported(tmp_path):
    """A project with clf@v1 and clf@v2 stored, clf@v1 exported portable into a repo-less directory."""
    repo = make_project(tmp_path / "proj")
    snapshot = next(line.split()[1] for line in ok(save(repo, "clf", "v1")).stdout.splitlines() if line.startswith("snapshot "))
    ok(save(repo, "clf", "v2"))
    outside = tmp_path / "deploy"
    outside.mkdir()
    archive = outside / "clf.gitpack"
    assert ok(gitpack_cli(repo, "export", "clf@v1", "-o", str(archive), "--portable")).stdout.strip() == \
        f"wrote portable archive {archive}"
    model_blob = git(repo, "rev-parse", f"{snapshot}:clfpkg/model.py")
    return repo, outside, archive, model_blob


def _no_repo_here(directory: Path) -> None:
    proc = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=directory, capture_output=True, text=True)
    assert proc.returncode != 0, f"{directory} is inside a git repository: {proc.stdout}"


def rewrite(src: Path, dest: Path, edit=lambda name, data: data, edit_manifest=lambda m: m) -> None:
    """A consistent archive (member digests, payload digest, manifest digest all recomputed) with edits:
    what a careful attacker, not a flipped bit, would produce."""
    with ArchiveReader(src) as reader:
        members = [(name, reader.read(name)) for name in reader.members]
        manifest = {k: v for k, v in reader.manifest.items() if k not in ("members", "payload_digest", "format")}
    writer = ArchiveWriter(dest)
    for name, data in members:
        writer.add(name, [edit(name, data)])
    writer.commit(edit_manifest(manifest))


def test_portable_archive_loads_in_a_fresh_process_with_no_repository(exported, tmp_path):
    repo, outside, archive, _ = exported
    shutil.rmtree(repo)  # the source repository is gone altogether
    _no_repo_here(outside)
    marker = tmp_path / "marker.txt"
    env = {"GITPACK_CACHE": str(tmp_path / "fresh-cache"), "GITPACK_TEST_MARKER": str(marker)}
    # Intact is not trusted: with no repository vouching for the commit, the embedded code needs --trust.
    one_line_error(gitpack_cli(outside, "load", "clf.gitpack", env=env), "portable archive", "--trust")
    assert not marker.exists()
    proc = ok(run_python(outside, LOAD, "clf.gitpack", env=env))
    assert "RESULT v1:True" in proc.stdout.splitlines()
    assert marker.read_text() == "v1\n"  # the embedded module really ran (the control for the tamper test)
    loaded = ok(gitpack_cli(outside, "load", "clf.gitpack", "--trust", env=env))
    assert "class   Clf from " + str(tmp_path / "fresh-cache") in loaded.stdout
    text = ok(gitpack_cli(outside, "textconv", "clf.gitpack")).stdout
    assert "portable    source embedded (2 files, 2 trees)" in text and "threshold = 0.3" in text


def test_tampered_embedded_source_is_refused_before_any_import(exported, tmp_path):
    _, outside, archive, model_blob = exported
    tampered = outside / "tampered.gitpack"
    rewrite(archive, tampered, lambda name, data: data + b"\nEVIL = True\n" if name == BLOB_PREFIX + model_blob else data)
    with ArchiveReader(tampered) as reader:  # the archive layer itself is consistent: only git's hashes can tell
        reader.read(BLOB_PREFIX + model_blob)
    marker = tmp_path / "marker.txt"
    env = {"GITPACK_CACHE": str(tmp_path / "fresh-cache"), "GITPACK_TEST_MARKER": str(marker)}
    one_line_error(gitpack_cli(outside, "load", "tampered.gitpack", "--trust", env=env),
                   "file clfpkg/model.py does not match its git blob hash", "refusing to load")
    proc = run_python(outside, LOAD, "tampered.gitpack", env=env)
    assert proc.returncode == 1 and "ArchiveError" in proc.stderr and "RESULT" not in proc.stdout
    assert not marker.exists()  # the module never ran
    assert not (tmp_path / "fresh-cache" / "trees").exists()  # nothing was even materialised


@pytest.mark.parametrize("what, expected", [
    ("tree", "does not hash to its tree"),
    ("commit", "embedded commit does not hash to"),
    ("manifest", "manifest field 'roots' differs"),
    ("pickle", "payload does not match"),
])
def test_every_part_is_checked(exported, tmp_path, what, expected, monkeypatch):
    _, outside, archive, _ = exported
    with ArchiveReader(archive) as reader:
        tree = reader.manifest["tree"]
    edits = {
        "tree": (lambda n, d: d.replace(b"model.py", b"modeL.py") if n == TREE_PREFIX + tree or n.startswith(TREE_PREFIX) else d,
                 lambda m: m),
        "commit": (lambda n, d: d.replace(b"gitpack save", b"gitpack SAVE") if n == COMMIT_MEMBER else d, lambda m: m),
        "manifest": (lambda n, d: d, lambda m: {**m, "roots": ["elsewhere"]}),
        "pickle": (lambda n, d: d + b"." if n == "pickle" else d, lambda m: m),
    }
    tampered = outside / f"{what}.gitpack"
    rewrite(archive, tampered, *edits[what])
    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("GITPACK_TEST_MARKER", str(marker))
    monkeypatch.chdir(outside)
    with pytest.raises(ArchiveError, match=expected):
        api.load(str(tampered))
    assert not marker.exists()


def test_plain_export_is_the_stored_archive_and_bad_exports_fail_cleanly(exported, tmp_path):
    repo, outside, archive, _ = exported
    plain = tmp_path / "plain.gitpack"
    ok(gitpack_cli(repo, "export", "clf@v2", "-o", str(plain)))
    stored = subprocess.run(["git", "cat-file", "blob", "refs/gitpack/artifacts/clf/v2:archive.gitpack"], cwd=repo,
                            capture_output=True).stdout
    assert plain.read_bytes() == stored
    one_line_error(gitpack_cli(repo, "export", "clf@v9", "-o", str(tmp_path / "x.gitpack"), "--portable"), "no version v9")
    one_line_error(gitpack_cli(repo, "export", str(archive), "-o", str(tmp_path / "y.gitpack"), "--portable"), "already portable")
    assert not (tmp_path / "x.gitpack").exists() and not (tmp_path / "y.gitpack").exists()

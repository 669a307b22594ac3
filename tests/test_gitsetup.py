"""`gitpack textconv` (what `git diff` shows of an archive) takes any manifest.

git runs textconv on every committed archive a diff or log touches, including
archives someone else committed: the manifest is untrusted JSON in every
field.  textconv must print what it can, never fail, never let a control
character reach the pager, and still show every difference.  Real archives,
real git and CLI processes.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys

import pytest
from conftest import git, gitpack_cli, init_repo, run
from test_render import SHAPES, assert_clean, rewrite_manifest, saved  # noqa: F401  (saved: the fixture)

from gitpack.gitsetup import textconv_command


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_textconv_prints_every_manifest_shape(saved, tmp_path, name):  # noqa: F811
    repo, archive = saved
    change, _ = SHAPES[name]
    target = rewrite_manifest(archive, tmp_path / f"{name}.gitpack", change)
    out = assert_clean(gitpack_cli(repo, "textconv", str(target)))
    assert out.startswith("gitpack archive\n") and "\npayload     sha256:" in out


def test_textconv_escapes_control_characters_and_keeps_every_difference(saved, tmp_path):  # noqa: F811
    repo, archive = saved
    a = rewrite_manifest(archive, tmp_path / "a.gitpack", lambda m: m["params"].update(
        {"\x1b[2Jkey": "\u202evalue\x07", "long": "x" * 5000 + "A", "modules": 1}))
    b = rewrite_manifest(archive, tmp_path / "b.gitpack", lambda m: m["params"].update(
        {"\x1b[2Jkey": "\u202evalue\x07", "long": "x" * 5000 + "B", "modules": 1}))
    out_a = assert_clean(gitpack_cli(repo, "textconv", str(a)))
    assert '    \\x1b[2Jkey = "\\u202evalue\\u0007"' in out_a  # JSON's escape for BEL, ours for the bidi override
    out_b = assert_clean(gitpack_cli(repo, "textconv", str(b)))
    assert out_a != out_b  # a difference 5000 characters into a value still shows


def test_textconv_under_git_diff_of_a_hostile_commit(saved, tmp_path):  # noqa: F811
    """End to end: git diff runs textconv on a committed archive with a hostile manifest."""
    _, archive = saved
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    for key, value in (("user.name", "T"), ("user.email", "t@e"), ("commit.gpgsign", "false")):
        git(work, "config", key, value)
    git(work, "config", "diff.gitpack.textconv", textconv_command())
    (work / ".gitattributes").write_text("*.gitpack binary -delta diff=gitpack\n")
    rewrite_manifest(archive, work / "m.gitpack", lambda m: None)
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "model")
    rewrite_manifest(archive, work / "m.gitpack", lambda m: m.update(
        {"object": ["\x1b]52;c;owned\x07"], "params": {"n": json.loads("[" * 500 + "]" * 500)}}))
    diff = git(work, "diff", "m.gitpack")
    assert "Binary files" not in diff
    assert "\x1b" not in diff and "\x07" not in diff
    assert '+object      ["\\u001b]52;c;owned\\u0007"]' in diff.splitlines()


def test_git_diff_never_breaks_without_gitpack_on_path(saved, tmp_path):  # noqa: F811
    """After `gitpack init`, `git diff` works with a bare PATH (the driver runs this interpreter by its path); with
    even that interpreter gone it shows a raw summary of the archive, and never aborts the diff of other files."""
    if shutil.which("git", path="/usr/bin:/bin") is None or shutil.which("gitpack", path="/usr/bin:/bin"):
        pytest.skip("needs git, and no gitpack, in /usr/bin:/bin")
    _, archive = saved
    work = init_repo(tmp_path / "work")
    assert gitpack_cli(work, "init").returncode == 0
    rewrite_manifest(archive, work / "m.gitpack", lambda m: m["params"].update(n=2))
    (work / "notes.txt").write_text("before\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "model")
    rewrite_manifest(archive, work / "m.gitpack", lambda m: m["params"].update(n=3))
    (work / "notes.txt").write_text("after\n")
    bare = {"PATH": "/usr/bin:/bin"}

    proc = run(work, "git", "diff", env=bare)
    assert proc.returncode == 0, proc.stderr
    assert "-    n = 2" in proc.stdout and "+    n = 3" in proc.stdout and "+after" in proc.stdout

    # The interpreter that ran `gitpack init` is gone (a deleted virtualenv): a raw summary, and exit 0.
    command = git(work, "config", "diff.gitpack.textconv")
    gone = command.replace(shlex.quote(sys.executable), shlex.quote(str(tmp_path / "deleted-venv/bin/python")))
    assert gone != command
    git(work, "config", "diff.gitpack.textconv", gone)
    proc = run(work, "git", "diff", env=bare)
    assert proc.returncode == 0, proc.stderr
    assert "gitpack archive (gitpack could not be run here to read its manifest)" in proc.stdout
    assert "+cksum  " in proc.stdout and "+after" in proc.stdout

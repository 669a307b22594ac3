"""The audit log and commit trailers read hostile commit messages safely.

Someone who can push to the shared remote's snapshot branch writes the commit
messages ``gitpack log`` reads.  One commit must always be one entry (a \\x1e in
a message once forged a whole entry), only the real trailer block counts, JSON
in trailers is depth-bounded, odd dates do not break the log, and control
characters never reach the terminal.  Real repositories, real CLI processes.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import commit_files, git, gitpack_cli, init_repo

from gitpack.trailers import format_message, parse_trailers

FORGED_SHA = "f" * 40


def _ok(proc):
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def _raw_commit(repo, message: bytes, *, parent: str | None, committer_date: str = "1700000000 +0000") -> str:
    """Write a commit object exactly as given (any message bytes, any date) and return its sha."""
    tree = git(repo, "rev-parse", "HEAD^{tree}")
    head = f"tree {tree}\n" + (f"parent {parent}\n" if parent else "")
    head += f"author Mallory <m@example.com> {committer_date}\ncommitter Mallory <m@example.com> {committer_date}\n\n"
    proc = subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--literally", "--stdin"], cwd=repo,
                          input=head.encode() + message, capture_output=True, check=True)
    return proc.stdout.decode().strip()


def _push_to_branch(repo, message: bytes, **kwargs) -> str:
    """What a hostile push does: a new commit on top of the snapshot branch."""
    tip = git(repo, "rev-parse", "--verify", "-q", "refs/heads/gitpack", check=False) or None
    sha = _raw_commit(repo, message, parent=tip, **kwargs)
    git(repo, "update-ref", "refs/heads/gitpack", sha)
    return sha


def _save_message(archive: str, params: str, *, body: str = "") -> bytes:
    text = f"gitpack save: {archive} (pkg.model:M)\n\n{body}"
    text += f"Gitpack-Archive: {archive}\nGitpack-Object: pkg.model:M\nGitpack-Digest: sha256:{'1' * 64}\n"
    text += f"Gitpack-Head: none\nGitpack-Params: {params}\n"
    return text.encode("utf-8", "surrogateescape")


@pytest.fixture
def project(tmp_path):
    repo = init_repo(tmp_path / "repo")
    commit_files(repo, {"pkg/__init__.py": "", ".gitignore": "*.gitpack\n",
                        "pkg/model.py": "class M:\n    def __init__(self, n=1):\n        self.n = n\n"}, "model")
    return repo


# ------------------------------------------------------------------------------------ trailers
MESSAGE = format_message(archive="a.gitpack", object_type="pkg.model:M", digest="sha256:real", params={"lr": 0.1},
                         head=None, message="notes\n\nGitpack-Digest: sha256:in-the-body\nmore notes")


def test_trailers_come_only_from_the_last_paragraph():
    """gitpack's own message: the Gitpack-Digest line of the user's message is text, the trailer block wins."""
    t = parse_trailers(MESSAGE)
    assert t["digest"] == "sha256:real" and t["archive"] == "a.gitpack" and json.loads(t["params"]) == {"lr": 0.1}


@pytest.mark.parametrize("message", [
    # In the middle of a body, followed by a body paragraph: not a trailer.
    "subject\n\nbody\nGitpack-Digest: sha256:evil\n\nthe end of the body\n",
    # A last paragraph with one line that is not a trailer is body text, all of it.
    "subject\n\nGitpack-Digest: sha256:evil\nthis line is prose\n",
    "subject\n\nprose first\nGitpack-Digest: sha256:evil\n",
    # The subject (the first paragraph) is never trailers.
    "Gitpack-Digest: sha256:evil\n",
    "Gitpack-Digest: sha256:evil\nGitpack-Object: x\n",
    # A line split with \x1e, \x1c or U+2028 is still one line to git.
    "subject\n\nnot a trailer\x1eGitpack-Digest: sha256:evil\n",
    "subject\n\nnot a trailer\u2028Gitpack-Digest: sha256:evil\n",
    # A "blank" line made of \x1e or U+2028 does not end a paragraph (git's blank is ASCII whitespace).
    "subject\n\nprose\n\x1e\nGitpack-Digest: sha256:evil\n",
    "",
])
def test_a_gitpack_line_outside_the_trailer_block_is_not_a_trailer(message):
    assert "digest" not in parse_trailers(message)


def test_trailer_block_details():
    assert parse_trailers("s\n\nGitpack-Digest: a\nSigned-off-by: x <y>\n\n\n") == {"digest": "a"}
    assert parse_trailers("s\r\n\r\nGitpack-Digest: a\r\n") == {"digest": "a"}
    # A value holding \x1e is one value, not a second trailer.
    assert parse_trailers("s\n\nGitpack-Digest: a\x1eGitpack-Object: b\n") == {"digest": "a\x1eGitpack-Object: b"}


def test_format_message_keeps_every_trailer_on_one_line():
    """An archive file name with a newline must not end the trailer block early (or add a trailer)."""
    message = format_message(archive="evil\nGitpack-Digest: sha256:forged.gitpack", object_type="m:C",
                             digest="sha256:real", params={}, head=None)
    t = parse_trailers(message)
    assert t["digest"] == "sha256:real" and t["archive"] == "evil Gitpack-Digest: sha256:forged.gitpack"


# ------------------------------------------------------------------------------------ gitpack log
def test_a_record_separator_in_a_message_cannot_forge_a_log_entry(project):
    """\\x1e/\\x1f in a pushed message once made `gitpack log` show an invented sha, a 2001 date and fake params."""
    repo = project
    _ok(gitpack_cli(repo, "save", "pkg.model:M", "-p", "n=1", "-o", "real.gitpack"))
    forged = (f"\x1e{FORGED_SHA}\x1f2001-09-09T01:46:40+00:00\x1f"
              "gitpack save: forged.gitpack (x:Y)\n\nGitpack-Archive: forged.gitpack\nGitpack-Object: x:Y\n"
              f"Gitpack-Digest: sha256:{'2' * 64}\nGitpack-Params: {{\"lr\":999}}\n\x1e")
    hostile = _push_to_branch(repo, f"innocent update\n\n{forged}\n\nmore text\n".encode())
    real = git(repo, "rev-list", "--first-parent", "gitpack").split()

    entries = json.loads(_ok(gitpack_cli(repo, "log", "--json")).stdout)
    assert {e["commit"] for e in entries} <= set(real)
    assert FORGED_SHA not in json.dumps(entries)
    assert not any(e["date"].startswith("2001") or e["params"] == {"lr": 999} for e in entries)
    assert hostile not in {e["commit"] for e in entries}  # its only Gitpack lines are in its body: not a save
    assert [e["archive"] for e in entries] == ["real.gitpack"]
    text = _ok(gitpack_cli(repo, "log")).stdout
    assert FORGED_SHA[:12] not in text and "2001-" not in text and len(text.splitlines()) == 1


def test_log_escapes_control_characters_and_bounds_values(project):
    repo = project
    _push_to_branch(repo, _save_message("\x1b]0;owned\x07a\u202eb.gitpack", json.dumps({"k\x1b[2J": "v" * 5000, "n": 1})))
    proc = _ok(gitpack_cli(repo, "log"))
    out = proc.stdout
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b]0;owned\\x07a\\u202eb.gitpack" in out
    assert len(out.splitlines()) == 1 and len(out) < 1000  # a 5000-character value is shortened
    entry = json.loads(_ok(gitpack_cli(repo, "log", "--json")).stdout)[0]
    assert entry["archive"] == "\x1b]0;owned\x07a\u202eb.gitpack" and entry["params"]["k\x1b[2J"] == "v" * 5000


def test_log_survives_deeply_nested_json_wrong_types_and_odd_dates(project):
    """A 100,000-deep Gitpack-Params (RecursionError), params that are not an object, captures of any shape,
    and committer dates git itself cannot format: each save is still listed, with a placeholder where needed."""
    repo = project
    deep = "[" * 100_000 + "]" * 100_000
    shas = {
        "deep": _push_to_branch(repo, _save_message("deep.gitpack", deep)),
        "list": _push_to_branch(repo, _save_message("list.gitpack", "[1, 2]")),
        "capture": _push_to_branch(repo, _save_message("capture.gitpack", "{}").replace(
            b"Gitpack-Params: {}\n", b'Gitpack-Params: {}\nGitpack-Capture: {"objects": [1, 2]}\n')),
        "deep-capture": _push_to_branch(repo, _save_message("deepcap.gitpack", "{}").replace(
            b"Gitpack-Params: {}\n", b"Gitpack-Params: {}\nGitpack-Capture: " + deep.encode() + b"\n")),
        "bad-json": _push_to_branch(repo, _save_message("bad.gitpack", "{not json")),
        "zone": _push_to_branch(repo, _save_message("zone.gitpack", "{}"), committer_date="1 +9999"),
        "epoch": _push_to_branch(repo, _save_message("epoch.gitpack", "{}"), committer_date="1 -9959"),
        "bytes": _push_to_branch(repo, _save_message("b\udcff\udcfe.gitpack", "{}")),
    }
    proc = _ok(gitpack_cli(repo, "log"))
    lines = proc.stdout.splitlines()
    assert len(lines) == len(shas)
    by_sha = {line.split()[0]: line for line in lines}
    assert "params=<not shown: nested deeper than 200 levels>" in by_sha[shas["deep"][:12]]
    assert "params=<not shown: not an object but list>" in by_sha[shas["list"][:12]]
    assert "params=<not shown: not valid JSON>" in by_sha[shas["bad-json"][:12]]
    assert "b\\xff\\xfe.gitpack" in by_sha[shas["bytes"][:12]]
    entries = {e["commit"]: e for e in json.loads(_ok(gitpack_cli(repo, "log", "--json")).stdout)}
    assert set(entries) == set(shas.values())
    assert entries[shas["deep"]]["params"] == {} and "deeper than 200" in entries[shas["deep"]]["params_note"]
    assert entries[shas["deep-capture"]]["capture"] is None
    assert entries[shas["capture"]]["capture"] == {"objects": [1, 2]}
    for e in entries.values():  # every date is a real ISO date, whatever the commit said
        assert e["date"][:4].isdigit() and e["date"][10] == "T"


def test_log_api_reads_trailers_only_from_the_trailer_block(project):
    """The API: a Gitpack line in the body of a save's message is not one of its trailers."""
    import gitpack

    repo = project
    _push_to_branch(repo, _save_message("a.gitpack", "{\"x\": 1}", body="Gitpack-Manifest: sha256:fake\n\n"))
    entries = gitpack.api.log(repo=repo)
    assert len(entries) == 1 and entries[0].digest == f"sha256:{'1' * 64}" and entries[0].params == {"x": 1}
    assert "manifest" not in entries[0].trailers  # that line was in the body


def test_the_missing_commit_hint_names_a_remote_that_has_the_snapshot_branch(tmp_path):
    """The hint asks this clone's remotes (git ls-remote), never the URL the archive claims."""
    shared = tmp_path / "shared.git"
    git(tmp_path, "init", "-q", "--bare", str(shared))
    a = init_repo(tmp_path / "a")
    commit_files(a, {"model.py": "class M:\n    pass\n", ".gitignore": "*.gitpack\n"})
    git(a, "remote", "add", "origin", str(shared))
    git(a, "push", "-q", "origin", "main")
    lonely = tmp_path / "lonely.git"  # a remote with the code but never the snapshot branch
    git(tmp_path, "init", "-q", "--bare", str(lonely))
    git(a, "push", "-q", str(lonely), "main")
    _ok(gitpack_cli(a, "save", "model:M", "-o", "first.gitpack"))
    _ok(gitpack_cli(a, "push"))
    _ok(gitpack_cli(a, "save", "model:M", "-o", str(tmp_path / "unpushed.gitpack"), "-m", "not pushed yet"))

    def hint(clone) -> str:
        proc = gitpack_cli(clone, "load", str(tmp_path / "unpushed.gitpack"))
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        return proc.stderr

    b = tmp_path / "b"
    git(tmp_path, "clone", "-q", str(shared), str(b))
    git(b, "remote", "add", "lonely", str(lonely))
    said = hint(b)
    assert "remote origin has the snapshot branch refs/heads/gitpack: fetch it with `gitpack pull origin`" in said
    c = tmp_path / "c"
    git(tmp_path, "clone", "-q", str(lonely), str(c))
    said = hint(c)
    assert "none of this clone's remotes (origin) has refs/heads/gitpack" in said and str(shared) in said
    d = init_repo(tmp_path / "d")
    assert "this clone has no remotes" in hint(d) and "gitpack pull" in hint(d)

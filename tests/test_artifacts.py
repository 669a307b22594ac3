"""Named, versioned artifacts in the repository's object database (no remote involved).

Real git repos, real subprocesses for every "other program"; the model is a
small pure-Python classifier so that each process starts in well under a
second.  The helpers here are shared with test_sync.py and test_portable.py.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import QUIET_ENV, git, gitpack_cli, init_repo, run, run_python

from gitpack import api
from gitpack.errors import GitpackError, StoreError

MODEL = textwrap.dedent(
    '''
    import os

    VERSION = {version!r}
    if os.environ.get("GITPACK_TEST_MARKER"):  # proves whether this module was ever executed
        with open(os.environ["GITPACK_TEST_MARKER"], "a") as fh:
            fh.write(VERSION + "\\n")


    class Clf:
        def __init__(self, threshold=0.5):
            self.threshold = threshold

        def predict(self, x):
            return f"{{VERSION}}:{{x > self.threshold}}"


    def make(threshold=0.5):
        return Clf(threshold)
    '''
)

PREDICT = """
import sys, gitpack
for ref in sys.argv[1:]:
    print("RESULT", ref, gitpack.load(ref).predict(1))
import clfpkg.model  # the checkout's own module, untouched by the loads above
print("CHECKOUT", clfpkg.model.VERSION)
"""


_writes = iter(range(1, 1_000_000))


def write_model(repo: Path, version: str) -> None:
    """Write the model with this VERSION.

    Every write has a different size: the snapshot's temp index is a fresh copy
    of the user's index (new mtime), so an edit made in the same second as the
    last index write, at the same size, is currently missed by git's stat check
    (racy-git detection needs the index's original mtime).  Reported in the
    issue-6 notes; the size change keeps these store tests independent of it.
    """
    (repo / "clfpkg").mkdir(exist_ok=True)
    (repo / "clfpkg" / "__init__.py").write_text("")
    (repo / "clfpkg" / "model.py").write_text(MODEL.format(version=version) + "#" * next(_writes) + "\n")


def make_project(path: Path, version: str = "v1") -> Path:
    init_repo(path)
    write_model(path, version)
    git(path, "add", "clfpkg")
    git(path, "commit", "-q", "-m", "classifier")
    return path


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The CLI failed with exactly one `gitpack: error:` line on stderr and no traceback."""
    assert proc.returncode == 1, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gitpack: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def save(repo: Path, name: str, version: str | None = None, *extra: str) -> subprocess.CompletedProcess:
    """`gitpack save clfpkg.model:make --name NAME`, after writing the model's VERSION when given."""
    if version is not None:
        write_model(repo, version)
    return gitpack_cli(repo, "save", "clfpkg.model:make", "-p", "threshold=0.3", "--name", name, *extra)


def predictions(repo: Path, *refs: str, env=None) -> tuple[dict[str, str], str]:
    """Each ref loaded in one fresh process: {ref: predict(1)}, and the checkout's own VERSION."""
    proc = ok(run_python(repo, PREDICT, *refs, env=env))
    results = {}
    checkout = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            _, ref, value = line.split(" ", 2)
            results[ref] = value
        elif line.startswith("CHECKOUT "):
            checkout = line.split(" ", 1)[1]
    return results, checkout


def listing(repo: Path) -> list[dict]:
    return json.loads(ok(gitpack_cli(repo, "list", "--json")).stdout)


# ---------------------------------------------------------------------------------------------


def test_versions_count_up_and_each_loads_its_own_code(tmp_path):
    repo = make_project(tmp_path / "proj")
    assert "stored clfpkg.model:Clf as clf@v1" in ok(save(repo, "clf", "v1")).stdout
    assert "stored clfpkg.model:Clf as clf@v2" in ok(save(repo, "clf", "v2")).stdout
    write_model(repo, "working-tree")  # the checkout moves on again

    versions = listing(repo)
    assert [(v["name"], v["version"], v["aliases"]) for v in versions] == [("clf", "v2", ["latest"]), ("clf", "v1", [])]
    for v in versions:
        assert v["size"] > 0 and v["date"] and v["object"] == "clfpkg.model:Clf" and v["params"] == {"threshold": 0.3}
    table = ok(gitpack_cli(repo, "list")).stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "ALIASES", "DATE", "SNAPSHOT", "SIZE", "OBJECT"]
    assert table[1].split()[:3] == ["clf", "v2", "latest"] and versions[0]["snapshot"][:12] in table[1]

    results, checkout = predictions(repo, "clf@v1", "clf@v2", "clf@latest", "clf")
    assert results == {"clf@v1": "v1:True", "clf@v2": "v2:True", "clf@latest": "v2:True", "clf": "v2:True"}
    assert checkout == "working-tree"

    # An alias moves; versions never do.
    assert ok(gitpack_cli(repo, "alias", "clf@v1", "prod")).stdout.strip() == "clf@prod -> clf@v1"
    assert predictions(repo, "clf@prod")[0] == {"clf@prod": "v1:True"}
    ok(gitpack_cli(repo, "alias", "clf@v2", "prod"))
    assert predictions(repo, "clf@prod")[0] == {"clf@prod": "v2:True"}


def test_layout_is_plain_git_objects_that_gc_keeps(tmp_path):
    repo = make_project(tmp_path / "proj")
    write_model(repo, "v1")
    user_state = [git(repo, *args) for args in (["status", "--porcelain"], ["rev-parse", "HEAD"], ["ls-files", "-s"],
                                                ["stash", "list"], ["reflog", "--all"])]
    out = ok(save(repo, "clf", None, "-o", "model.gitpack")).stdout  # store and file at once
    snapshot = next(line.split()[1] for line in out.splitlines() if line.startswith("snapshot "))

    version_commit = git(repo, "rev-parse", "refs/gitpack/artifacts/clf/v1")
    assert git(repo, "rev-parse", "refs/gitpack/aliases/clf/latest") == version_commit
    assert git(repo, "rev-list", "--parents", "-n1", version_commit).split()[1:] == [snapshot]
    assert git(repo, "ls-tree", "--name-only", version_commit) == "archive.gitpack"
    stored = subprocess.run(["git", "cat-file", "blob", f"{version_commit}:archive.gitpack"], cwd=repo, capture_output=True).stdout
    assert stored == (repo / "model.gitpack").read_bytes()
    assert "Gitpack-Artifact: clf" in git(repo, "log", "-1", "--format=%B", snapshot)

    # Nothing of the user's moved (but the new archive file); gc with immediate pruning keeps every stored object.
    user_state[0] += "\n?? model.gitpack"
    assert [git(repo, *args) for args in (["status", "--porcelain"], ["rev-parse", "HEAD"], ["ls-files", "-s"],
                                          ["stash", "list"], ["reflog", "--all"])] == user_state
    ok(run(repo, "git", "gc", "-q", "--prune=now"))
    (repo / "model.gitpack").unlink()
    assert predictions(repo, "clf@v1")[0] == {"clf@v1": "v1:True"}


def test_name_or_path_rule_and_ambiguity(tmp_path):
    repo = make_project(tmp_path / "proj")
    ok(save(repo, "clf", "v1"))
    ok(gitpack_cli(repo, "save", "clfpkg.model:make", "-p", "threshold=0.3", "-o", "clf"))  # a FILE named clf
    write_model(repo, "v2")
    ok(gitpack_cli(repo, "save", "clfpkg.model:make", "-p", "threshold=0.3", "-o", "model.gitpack"))

    one_line_error(gitpack_cli(repo, "load", "clf"), "both a file here and an artifact", "./clf", "clf@latest")
    results, _ = predictions(repo, "./clf", "clf@latest", "model.gitpack")
    assert results == {"./clf": "v1:True", "clf@latest": "v1:True", "model.gitpack": "v2:True"}
    # A path with a separator is always a path, even where no such file exists.
    one_line_error(gitpack_cli(repo, "load", "sub/clf"), "no such archive")


def test_unknown_names_versions_and_aliases_are_one_line_errors(tmp_path, monkeypatch):
    repo = make_project(tmp_path / "proj")
    ok(save(repo, "clf", "v1"))
    refs_before = git(repo, "for-each-ref")
    # The CLI's one line, for each kind of command ...
    one_line_error(gitpack_cli(repo, "load", "nope"), "no artifact named 'nope'", "gitpack pull")
    one_line_error(gitpack_cli(repo, "inspect", "clf@v7"), "clf has no version v7 (it has v1)", "gitpack pull")
    one_line_error(save(repo, "bad/name"), "not a valid artifact name")
    one_line_error(gitpack_cli(repo, "save", "clfpkg.model:make"), "-o FILE", "--name NAME")
    # ... and the same errors from the API, in-process (cheaper than a process each).
    monkeypatch.chdir(repo)
    for call, error, message in [
        (lambda: api.load("clf@v7"), StoreError, r"clf has no version v7 \(it has v1\)"),
        (lambda: api.load("clf@prod"), StoreError, r"no alias 'prod' \(aliases: latest; versions: v1\)"),
        (lambda: api.alias("clf@v7", "prod"), StoreError, "no version v7"),
        (lambda: api.alias("clf@v1", "v3"), StoreError, "looks like a version"),
        (lambda: api.save(object(), name="-dash"), StoreError, "not a valid artifact name"),
        (lambda: api.list_artifacts("no/such"), StoreError, "not a valid artifact name"),
        (lambda: api.save(object()), GitpackError, "give a path .* a name"),
    ]:
        with pytest.raises(error, match=message):
            call()
    assert git(repo, "for-each-ref") == refs_before  # nothing moved, nothing half-written
    assert listing(repo)[0]["version"] == "v1"


def test_a_version_gitpack_did_not_write_is_refused(tmp_path):
    repo = make_project(tmp_path / "proj")
    ok(save(repo, "clf", "v1"))
    ok(save(repo, "clf", "v2"))
    v1 = git(repo, "rev-parse", "refs/gitpack/artifacts/clf/v1")
    # v3 claims v1's snapshot but holds v2's archive; v4 holds no archive at all.
    forged = git(repo, "commit-tree", "refs/gitpack/artifacts/clf/v2^{tree}", "-p", f"{v1}^", "-m", "forged")
    git(repo, "update-ref", "refs/gitpack/artifacts/clf/v3", forged)
    empty = git(repo, "commit-tree", git(repo, "hash-object", "-t", "tree", "/dev/null"), "-p", f"{v1}^", "-m", "empty")
    git(repo, "update-ref", "refs/gitpack/artifacts/clf/v4", empty)
    one_line_error(gitpack_cli(repo, "load", "clf@v3"), "holds an archive of another snapshot", "do not trust it")
    one_line_error(gitpack_cli(repo, "load", "clf@v4"), "holds no archive.gitpack")


def test_concurrent_saves_in_one_clone_get_distinct_versions(tmp_path):
    repo = make_project(tmp_path / "proj")
    env = dict(os.environ, **QUIET_ENV)
    cmd = [sys.executable, "-m", "gitpack", "save", "clfpkg.model:make", "--name", "clf", "-p"]
    procs = [subprocess.Popen(cmd + [f"threshold={t}"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for t in (0.1, 0.2, 0.3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    versions = listing(repo)
    assert sorted(v["version"] for v in versions) == ["v1", "v2", "v3"]
    assert sorted(v["params"]["threshold"] for v in versions) == [0.1, 0.2, 0.3]
    assert versions[0]["aliases"] == ["latest"]  # latest is the highest number, whatever order they finished in
    assert len({v["snapshot"] for v in versions}) == 3


def test_list_and_textconv_never_import_torch(tmp_path):
    repo = make_project(tmp_path / "proj")
    ok(save(repo, "clf", "v1", "-o", "model.gitpack"))
    for args in (["list"], ["textconv", "model.gitpack"], ["inspect", "clf@v1"]):
        proc = ok(run(repo, sys.executable, "-X", "importtime", "-m", "gitpack", *args))
        assert not [line for line in proc.stderr.splitlines() if line.startswith("import time:") and "torch" in line], args


def test_init_makes_git_diff_show_the_changed_parameter(tmp_path):
    repo = make_project(tmp_path / "proj")
    out = ok(gitpack_cli(repo, "init")).stdout
    assert ".gitattributes" in out and "diff.gitpack.textconv" in out
    assert "*.gitpack binary -delta diff=gitpack" in (repo / ".gitattributes").read_text()
    assert ok(gitpack_cli(repo, "init")).stdout.strip() == "already set up"  # idempotent
    assert (repo / ".gitattributes").read_text().count("diff=gitpack") == 1
    assert git(repo, "check-attr", "diff", "delta", "--", "model.gitpack").splitlines() == [
        "model.gitpack: diff: gitpack", "model.gitpack: delta: unset"]
    assert git(repo, "config", "core.bigFileThreshold")

    gitpack_save = ["save", "clfpkg.model:make", "-o", "model.gitpack", "-p"]
    ok(gitpack_cli(repo, *gitpack_save, "threshold=0.3"))
    git(repo, "add", ".gitattributes", "model.gitpack")
    git(repo, "commit", "-q", "-m", "model at 0.3")
    ok(gitpack_cli(repo, *gitpack_save, "threshold=0.7"))

    diff = git(repo, "diff", "model.gitpack")
    assert "Binary files" not in diff
    assert "-    threshold = 0.3" in diff.splitlines() and "+    threshold = 0.7" in diff.splitlines()
    assert any(line.startswith("-commit ") for line in diff.splitlines()) and any(line.startswith("+commit ") for line in diff.splitlines())
    git(repo, "commit", "-q", "-am", "model at 0.7")
    log = git(repo, "log", "-p", "--format=%s", "--", "model.gitpack")
    assert "+    threshold = 0.3" in log.splitlines() and "+    threshold = 0.7" in log.splitlines()

    # textconv of something that is not an archive says so instead of failing the diff.
    (repo / "junk.gitpack").write_bytes(b"not an archive at all")
    assert ok(gitpack_cli(repo, "textconv", "junk.gitpack")).stdout.startswith("not a readable gitpack archive")


def _under_pty(repo: Path, *args: str, env: dict) -> str:
    """Run the CLI with a pseudo-terminal as stdin/stdout/stderr; return everything it drew."""
    master, slave = pty.openpty()
    full_env = dict(os.environ, **QUIET_ENV, TERM="xterm-256color", COLUMNS="120", **env)
    proc = subprocess.Popen([sys.executable, "-m", "gitpack", *args], cwd=repo, env=full_env,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_progress_bar_on_a_terminal_only(tmp_path):
    repo = make_project(tmp_path / "proj")
    small = {"GITPACK_PROGRESS_MIN_BYTES": "0"}  # every transfer counts as large here
    drawn = _under_pty(repo, "save", "clfpkg.model:make", "--name", "clf", env=small)
    assert "saving clf" in drawn and "stored clfpkg.model:Clf as clf@v1" in drawn
    assert "reading clf@v1" in _under_pty(repo, "load", "clf@v1", env=small)
    assert "saving" not in _under_pty(repo, "save", "clfpkg.model:make", "--name", "clf", "--quiet", env=small)
    piped = ok(gitpack_cli(repo, "save", "clfpkg.model:make", "--name", "clf", env=small))
    assert "saving" not in piped.stderr + piped.stdout
    # Default threshold: a tiny artifact draws nothing even on a terminal.
    assert "saving" not in _under_pty(repo, "save", "clfpkg.model:make", "--name", "clf", env={})

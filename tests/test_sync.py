"""Sharing artifacts through a real git server (``git daemon`` on 127.0.0.1).

Every clone is a real ``git clone`` of a bare repository that a real
``git daemon --enable=receive-pack`` serves; every gitpack call is a separate
process.  Nothing is mocked: the refused push is a real pre-receive hook, the
down server is the daemon stopped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUIET_ENV, git, gitpack_cli
from test_artifacts import listing, make_project, ok, one_line_error, predictions, save, write_model

from gitpack.sync import merge_versions


class GitServer:
    """``git daemon`` serving every repository under *base*, on a free port of 127.0.0.1."""

    def __init__(self, base: Path):
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        for _ in range(5):
            port = self.port or _free_port()
            proc = subprocess.Popen(
                ["git", "daemon", "--enable=receive-pack", f"--base-path={self.base}", "--export-all", "--reuseaddr",
                 "--informative-errors", f"--port={port}", "--listen=127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    self.port, self.proc = port, proc
                    return
                except OSError:
                    time.sleep(0.05)
            proc.kill()
            proc.wait()
        raise RuntimeError("git daemon did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    srv = GitServer(tmp_path / "server")
    srv.start()
    yield srv
    srv.stop()


def make_team(tmp_path: Path, server: GitServer) -> str:
    """A bare repository on the server holding the project's main branch; returns its URL."""
    git(server.base, "init", "-q", "--bare", "-b", "main", "team.git")
    seed = make_project(tmp_path / "seed")
    url = server.url("team.git")
    git(seed, "push", "-q", url, "main")
    return url


def clone(url: str, path: Path) -> Path:
    git(path.parent, "clone", "-q", url, path.name)
    for key, value in (("user.name", "Test User"), ("user.email", "test@example.com"), ("commit.gpgsign", "false")):
        git(path, "config", key, value)
    return path


def remote_refs(url: str) -> dict[str, str]:
    out = git(Path.cwd(), "ls-remote", url)
    return {ref: sha for sha, ref in (line.split("\t") for line in out.splitlines())}


def snapshot_of(proc: subprocess.CompletedProcess) -> str:
    return next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("snapshot "))


def is_ancestor(repo: Path, a: str, b: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", a, b], cwd=repo).returncode == 0


# ---------------------------------------------------------------------------------------------


def test_clone_b_pulls_versions_saved_in_clone_a_and_each_runs_its_own_code(tmp_path, server):
    url = make_team(tmp_path, server)
    b = clone(url, tmp_path / "b")  # made before any save
    a = clone(url, tmp_path / "a")
    main_before = remote_refs(url)["refs/heads/main"]

    snap1 = snapshot_of(ok(save(a, "clf", "v1")))
    snap2 = snapshot_of(ok(save(a, "clf", "v2")))
    git(a, "commit", "-q", "-am", "local work that is not gitpack's to push")
    pushed = ok(gitpack_cli(a, "push"))
    assert pushed.stdout.strip() == f"pushed 4 ref(s) to origin ({url})"
    refs = remote_refs(url)
    assert {r for r in refs if r.startswith("refs/gitpack/")} == {
        "refs/gitpack/artifacts/clf/v1", "refs/gitpack/artifacts/clf/v2", "refs/gitpack/aliases/clf/latest"}
    assert refs["refs/heads/gitpack"] == git(a, "rev-parse", "gitpack")
    assert refs["refs/heads/main"] == main_before  # the user's branch is not gitpack's to push
    assert ok(gitpack_cli(a, "push")).stdout.strip() == f"origin ({url}) is up to date"

    # Clone B has none of it yet, and says how to get it.
    write_model(b, "B-working-tree")
    one_line_error(gitpack_cli(b, "load", "clf@v1"), "no artifact named 'clf'", "`gitpack pull`")
    pulled = ok(gitpack_cli(b, "pull"))
    assert "gitpack: clf: got v1, v2 from origin" in pulled.stderr.splitlines()
    assert [(v["version"], v["aliases"], v["snapshot"]) for v in listing(b)] == [("v2", ["latest"], snap2), ("v1", [], snap1)]
    table = ok(gitpack_cli(b, "list")).stdout
    assert "clf   v2       latest" in table and "clf   v1" in table
    results, checkout = predictions(b, "clf@v1", "clf@v2", "clf")
    assert results == {"clf@v1": "v1:True", "clf@v2": "v2:True", "clf": "v2:True"}
    assert checkout == "B-working-tree"
    assert ok(gitpack_cli(b, "pull")).stdout.strip() == f"already up to date with origin ({url})"

    # A third clone loads with --fetch in one step; an archive file from A needs the commit, and says so.
    c = clone(url, tmp_path / "c")
    loaded = ok(gitpack_cli(c, "load", "clf@v1", "--fetch"))
    assert f"commit  {snap1}" in loaded.stdout
    ok(gitpack_cli(a, "save", "clfpkg.model:make", "-o", str(tmp_path / "file.gitpack")))
    d = clone(url, tmp_path / "d")
    one_line_error(gitpack_cli(d, "load", str(tmp_path / "file.gitpack")), "is not in", "gitpack pull")


def test_second_push_merges_and_renumbers_instead_of_overwriting(tmp_path, server):
    url = make_team(tmp_path, server)
    a, b = clone(url, tmp_path / "a"), clone(url, tmp_path / "b")
    ok(save(a, "clf", "v1"))
    ok(gitpack_cli(a, "alias", "clf@v1", "prod"))
    ok(gitpack_cli(a, "push"))
    ok(gitpack_cli(b, "pull"))

    snap_a = snapshot_of(ok(save(a, "clf", "A2")))
    ok(gitpack_cli(a, "push"))
    snap_b = snapshot_of(ok(save(b, "clf", "B2")))  # B has not seen A's v2
    ok(gitpack_cli(b, "alias", "clf@v2", "prod"))  # B's own v2, before it learns it is not v2
    pushed = ok(gitpack_cli(b, "push"))
    notes = pushed.stderr.splitlines()
    assert "gitpack: clf: your v2 is now clf@v3 (origin already had a different v2)" in notes
    assert any(n.startswith("gitpack: snapshot branch gitpack: merged origin's saves") for n in notes)

    # Never force-pushed: the remote branch holds both saves, and B's local refs equal the remote's.
    refs = remote_refs(url)
    assert refs["refs/heads/gitpack"] == git(b, "rev-parse", "gitpack")
    assert is_ancestor(b, snap_a, "gitpack") and is_ancestor(b, snap_b, "gitpack")

    ok(gitpack_cli(a, "pull"))
    for clone_dir in (a, b):
        versions = {v["version"]: v for v in listing(clone_dir)}
        assert sorted(versions) == ["v1", "v2", "v3"]
        assert versions["v2"]["snapshot"] == snap_a and versions["v3"]["snapshot"] == snap_b
        assert versions["v3"]["aliases"] == ["latest", "prod"]  # the alias followed B's version to its new number
        assert git(clone_dir, "for-each-ref", "refs/gitpack/") == git(a, "for-each-ref", "refs/gitpack/")
    results, _ = predictions(a, "clf@v1", "clf@v2", "clf@v3", "clf@prod", "clf")
    assert results == {"clf@v1": "v1:True", "clf@v2": "A2:True", "clf@v3": "B2:True", "clf@prod": "B2:True",
                       "clf": "B2:True"}
    # Both histories are in `gitpack log`, though each clone saved only on its own side of the merge.
    logged = {e["commit"] for e in json.loads(ok(gitpack_cli(a, "log", "--json")).stdout)}
    assert {snap_a, snap_b} <= logged and len(logged) == 3


def test_concurrent_saves_and_pushes_lose_nothing(tmp_path, server):
    url = make_team(tmp_path, server)
    a, b = clone(url, tmp_path / "a"), clone(url, tmp_path / "b")
    ok(save(a, "clf", "v1"))
    ok(gitpack_cli(a, "push"))
    ok(gitpack_cli(b, "pull"))

    # A slow pre-receive hook widens the window in which both pushes are in flight at the server.
    hook = server.base / "team.git" / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\ncat >/dev/null\nsleep 1\n")
    hook.chmod(0o755)
    write_model(a, "A-concurrent")
    write_model(b, "B-concurrent")
    env = dict(os.environ, **QUIET_ENV)
    script = f"{sys.executable} -m gitpack save clfpkg.model:make --name clf && {sys.executable} -m gitpack push"
    procs = [subprocess.Popen(["bash", "-c", script], cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for d in (a, b)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    snaps = [snapshot_of(subprocess.CompletedProcess([], 0, out, err)) for out, err in outputs]

    for clone_dir in (a, b):
        ok(gitpack_cli(clone_dir, "pull"))
    assert git(a, "for-each-ref", "refs/gitpack/", "refs/heads/gitpack") == git(b, "for-each-ref", "refs/gitpack/", "refs/heads/gitpack")
    versions = {v["version"]: v for v in listing(a)}
    assert sorted(versions) == ["v1", "v2", "v3"]
    assert {versions["v2"]["snapshot"], versions["v3"]["snapshot"]} == set(snaps)
    results, _ = predictions(b, "clf@v2", "clf@v3")
    assert set(results.values()) == {"A-concurrent:True", "B-concurrent:True"}
    refs = remote_refs(url)
    assert refs["refs/heads/gitpack"] == git(a, "rev-parse", "gitpack")
    assert all(is_ancestor(a, s, "gitpack") for s in snaps)
    assert {e["commit"] for e in json.loads(ok(gitpack_cli(b, "log", "--json")).stdout)} >= set(snaps)


def test_refused_push_and_down_server_are_one_line_errors_and_lose_nothing(tmp_path, server):
    url = make_team(tmp_path, server)
    a = clone(url, tmp_path / "a")
    ok(save(a, "clf", "v1"))

    hook = server.base / "team.git" / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pushes are frozen by policy' >&2\nexit 1\n")
    hook.chmod(0o755)
    before = remote_refs(url)
    local = git(a, "for-each-ref")
    one_line_error(gitpack_cli(a, "push"), "refused the push", "pushes are frozen by policy", "nothing was pushed")
    assert remote_refs(url) == before
    assert [line for line in git(a, "for-each-ref").splitlines() if "gitpack-remotes" not in line] == \
           [line for line in local.splitlines() if "gitpack-remotes" not in line]
    hook.unlink()
    ok(gitpack_cli(a, "push"))
    assert "refs/gitpack/artifacts/clf/v1" in remote_refs(url)

    ok(save(a, "clf", "v2"))
    local = git(a, "for-each-ref")
    server.stop()
    one_line_error(gitpack_cli(a, "push"), "cannot reach origin", "nothing was changed")
    one_line_error(gitpack_cli(a, "pull"), "cannot reach origin")
    one_line_error(gitpack_cli(a, "load", "clf@v2", "--fetch"), "cannot reach origin")
    assert git(a, "for-each-ref") == local
    assert predictions(a, "clf@v2")[0] == {"clf@v2": "v2:True"}

    server.start()  # same port: the remote URL still points at it
    ok(gitpack_cli(a, "push"))
    assert remote_refs(url)["refs/gitpack/artifacts/clf/v2"] == git(a, "rev-parse", "refs/gitpack/artifacts/clf/v2")


def test_no_remote_and_unknown_remote_are_clear_errors(tmp_path):
    repo = make_project(tmp_path / "alone")
    ok(save(repo, "clf", "v1"))
    one_line_error(gitpack_cli(repo, "push"), "no remote to use", "git remote add origin")
    one_line_error(gitpack_cli(repo, "pull", "upstream"), "no remote named 'upstream'")


@pytest.mark.parametrize(
    "local, remote, merged, moves",
    [
        ({1: "a"}, {1: "a"}, {1: "a"}, []),                                   # in sync
        ({1: "a", 2: "b"}, {1: "a"}, {1: "a", 2: "b"}, []),                  # ours only: keeps its number
        ({1: "a"}, {1: "a", 2: "c"}, {1: "a", 2: "c"}, []),                  # theirs only: taken as is
        ({1: "a", 2: "b"}, {1: "a", 2: "c"}, {1: "a", 2: "c", 3: "b"}, [(2, 3)]),  # clash: ours goes on top
        ({1: "a", 2: "b", 3: "d"}, {1: "a", 2: "c", 3: "e", 4: "f"},
         {1: "a", 2: "c", 3: "e", 4: "f", 5: "b", 6: "d"}, [(2, 5), (3, 6)]),  # order of ours is kept
        ({4: "b"}, {1: "a", 5: "b"}, {1: "a", 5: "b"}, [(4, 5)]),            # the remote's number wins for a shared one
    ],
)
def test_version_merge_rule(local, remote, merged, moves):
    assert merge_versions(local, remote) == (merged, moves)


def _incoming_lines(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """``{short sha: rest of the line}`` of the "new snapshot ..." lines a pull or push printed."""
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("new "):
            kind, short, rest = line[4:].split(" ", 2)
            out[short.rstrip(":")] = f"{kind} {rest}"
    return out


def test_pull_names_the_paths_each_new_snapshot_changes(tmp_path, server):
    """Code pushed to the shared snapshot branch is shown before anything is loaded from it: one line per new
    snapshot with the paths it changes against its first parent, shortened when there are many."""
    url = make_team(tmp_path, server)
    a, b = clone(url, tmp_path / "a"), clone(url, tmp_path / "b")
    snap1 = snapshot_of(ok(save(a, "clf", "v1")))
    (a / "clfpkg" / "__init__.py").write_text("import os  # runs whenever clfpkg.model is imported\n")
    (a / "torch.py").write_text("raise SystemExit('not torch')\n")
    snap2 = snapshot_of(ok(gitpack_cli(a, "save", "clfpkg.model:make", "--name", "clf")))
    for i in range(12):
        (a / "data").mkdir(exist_ok=True)
        (a / "data" / f"f{i:02}.py").write_text(f"X = {i}\n")
    snap3 = snapshot_of(ok(gitpack_cli(a, "save", "clfpkg.model:make", "--name", "clf")))
    ok(gitpack_cli(a, "push"))

    pulled = ok(gitpack_cli(b, "pull"))
    lines = _incoming_lines(pulled)
    assert set(lines) == {snap1[:12], snap2[:12], snap3[:12]}  # no line for version commits or the empty root
    assert lines[snap1[:12]].startswith("snapshot A ") and "A clfpkg/model.py" in lines[snap1[:12]]
    assert lines[snap2[:12]] == "snapshot M clfpkg/__init__.py, A torch.py"
    assert lines[snap3[:12]].startswith("snapshot A data/f00.py, A data/f01.py")
    assert f"... and 4 more (git diff-tree -r --name-status {snap2[:12]} {snap3[:12]})" in lines[snap3[:12]]
    order = [line.split()[2].rstrip(":") for line in pulled.stdout.splitlines() if line.startswith("new ")]
    assert order == [snap1[:12], snap2[:12], snap3[:12]]  # oldest first
    assert pulled.stdout.splitlines()[-1] == f"pulled from origin ({url})"
    assert ok(gitpack_cli(b, "pull")).stdout.strip() == f"already up to date with origin ({url})"

    # A push that has to merge someone else's saves first names them too.
    (a / "torch.py").unlink()
    snap4 = snapshot_of(ok(gitpack_cli(a, "save", "clfpkg.model:make", "--name", "clf")))
    ok(gitpack_cli(a, "push"))
    ok(save(b, "clf", "B"))
    pushed = ok(gitpack_cli(b, "push"))
    assert _incoming_lines(pushed) == {snap4[:12]: "snapshot D torch.py"}

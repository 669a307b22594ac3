"""Large stored artifacts through Git LFS, with the real git-lfs client and real remotes.

The remotes refuse large blobs the way hosted git does: a pre-receive hook
rejects any blob over 10 MB.  The model is a real torch module of about 30 MB
(random weights, so nothing compresses it away).  Every gitpack call is a
separate process; "another clone" is a real ``git clone``; the HTTP remote is
git's own ``http-backend`` next to giftless, a real LFS server, on 127.0.0.1
(``lfs_http_server.py``); "git-lfs is not installed" is a PATH without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import QUIET_ENV, git, gitpack_cli, init_repo, run_python
from test_artifacts import _under_pty, make_project, ok, one_line_error, save

from gitpack.lfs import Pointer, parse_pointer

LIMIT = 10_000_000  # what the remotes' hook refuses above, in bytes

BIG_MODEL = textwrap.dedent(
    """
    import torch


    class Big(torch.nn.Module):
        def __init__(self, n=2800, seed=0):
            super().__init__()
            self.n = n
            self.layer = torch.nn.Linear(n, n)
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                self.layer.weight.copy_(torch.randn(n, n, generator=generator))
                self.layer.bias.zero_()

        def predict(self, x):
            with torch.no_grad():
                return round(float(self.layer(torch.full((1, self.n), float(x))).sum()), 3)


    def make(n=2800, seed=0):
        return Big(n, seed)
    """
)

# Loads each ref in one process; prints its prediction, and with --mmap whether the LFS object file is mapped.
LOAD = """
import sys, gitpack
refs, mmap = [a for a in sys.argv[1:] if a != "--mmap"], "--mmap" in sys.argv
for ref in refs:
    model = gitpack.load(ref, mmap=mmap)
    maps = open("/proc/self/maps").read()
    print("RESULT", ref, model.predict(1.0), "mapped-lfs" if "/lfs/objects/" in maps else "not-mapped")
"""

HOOK = f"""#!/bin/sh
# Refuse any new blob over {LIMIT} bytes, as hosted git refuses large files.
zero=0000000000000000000000000000000000000000
while read old new ref; do
    [ "$new" = "$zero" ] && continue
    if [ "$old" = "$zero" ]; then range="$new --not --all"; else range="$old..$new"; fi
    git rev-list --objects $range | cut -d' ' -f1 \\
        | git cat-file --batch-check='%(objecttype) %(objectsize) %(objectname)' \\
        | while read type size name; do
            if [ "$type" = blob ] && [ "$size" -gt {LIMIT} ]; then
                echo "blob $name is $size bytes; files over 10 MB are refused here, use Git LFS" >&2
                exit 1
            fi
        done || exit 1
done
"""


def bare_remote(path: Path) -> Path:
    """A bare repository whose pre-receive hook refuses blobs over LIMIT."""
    path.parent.mkdir(parents=True, exist_ok=True)
    git(path.parent, "init", "-q", "--bare", "-b", "main", path.name)
    hook = path / "hooks" / "pre-receive"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    return path


def big_project(path: Path, url: str) -> Path:
    init_repo(path)
    (path / "bigpkg").mkdir()
    (path / "bigpkg" / "__init__.py").write_text("")
    (path / "bigpkg" / "model.py").write_text(BIG_MODEL)
    (path / ".gitignore").write_text("__pycache__/\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "big model")
    git(path, "remote", "add", "origin", url)
    git(path, "push", "-q", "origin", "main")
    return path


def save_big(repo: Path, seed: int, *extra: str, env=None) -> subprocess.CompletedProcess:
    return gitpack_cli(repo, "save", "bigpkg.model:make", "--name", "clf", "-p", f"seed={seed}", *extra, env=env)


def clone(url: str, path: Path, env=None) -> Path:
    git(path.parent, "clone", "-q", url, path.name, env=env)
    for key, value in (("user.name", "Test User"), ("user.email", "test@example.com"), ("commit.gpgsign", "false")):
        git(path, "config", key, value)
    return path


def lfs_objects(storage: Path) -> dict[str, Path]:
    """``{oid: file}`` of an LFS store (``.git/lfs`` of a clone, ``lfs`` of a bare repository)."""
    return {f.name: f for f in (storage / "objects").glob("*/*/*") if f.is_file()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pointer_of(repo: Path, ref: str, path: str = "archive.gitpack") -> Pointer | None:
    data = subprocess.run(["git", "cat-file", "blob", f"{ref}:{path}"], cwd=repo, capture_output=True,
                          check=True).stdout
    return parse_pointer(data)


def largest_blob(repo: Path) -> int:
    """The size of the largest blob in a repository's object database (loose and packed)."""
    out = git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objecttype) %(objectsize)")
    return max((int(size) for kind, size in (line.split() for line in out.splitlines()) if kind == "blob"), default=0)


def results(repo: Path, *refs: str, env=None) -> dict[str, tuple[str, str]]:
    proc = ok(run_python(repo, LOAD, *refs, env=env))
    return {ref: (value, mapped) for _, ref, value, mapped in
            (line.split() for line in proc.stdout.splitlines() if line.startswith("RESULT "))}


def without_git_lfs(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has every program of this one's but git-lfs."""
    bin_dir = tmp_path / "bin-without-git-lfs"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = bin_dir / entry.name
            if entry.name != "git-lfs" and not target.exists() and not target.is_symlink():
                target.symlink_to(entry.path)
    return {"PATH": str(bin_dir)}


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """A file:// remote refusing blobs over 10 MB, and clone A that stored clf@v1 and clf@v2 (30 MB each) and
    pushed them with no configuration; with what each version predicts, loaded in A."""
    base = tmp_path_factory.mktemp("lfs-team")
    env = {"GITPACK_CACHE": str(base / "cache"), **QUIET_ENV}
    remote = bare_remote(base / "team.git")
    url = remote.as_uri()
    a = big_project(base / "a", url)
    ok(save_big(a, 1, env=env))
    ok(save_big(a, 2, env=env))
    pushed = ok(gitpack_cli(a, "push", env=env))
    expected = results(a, "clf@v1", "clf@v2", env=env)
    return {"remote": remote, "url": url, "a": a, "pushed": pushed, "expected": expected}


# ---------------------------------------------------------------------------------------------


def test_stored_large_archive_is_an_lfs_pointer_and_push_puts_its_bytes_in_the_remote_lfs_store(team):
    a, remote = team["a"], team["remote"]
    pointers = {v: pointer_of(a, f"refs/gitpack/artifacts/clf/{v}") for v in ("v1", "v2")}
    assert all(p is not None and p.size > 3 * LIMIT for p in pointers.values())
    local = lfs_objects(a / ".git" / "lfs")
    assert set(local) == {p.oid for p in pointers.values()}
    assert all(sha256(local[p.oid]) == p.oid and local[p.oid].stat().st_size == p.size for p in pointers.values())

    # Everything else is as before: numbers, latest, the listed size (the archive's), the parent snapshot, trailers.
    listed = {v["version"]: v for v in json.loads(ok(gitpack_cli(a, "list", "--json")).stdout)}
    assert set(listed) == {"v1", "v2"} and listed["v2"]["aliases"] == ["latest"]
    assert all(listed[v]["size"] == pointers[v].size for v in listed)
    for v in ("v1", "v2"):
        commit = f"refs/gitpack/artifacts/clf/{v}"
        assert git(a, "rev-parse", f"{commit}^") == listed[v]["snapshot"]
        assert f"Gitpack-Size: {pointers[v].size}" in git(a, "log", "-1", "--format=%B", commit)

    # The push needed no configuration; the remote's git holds no large blob, its LFS store holds the bytes.
    assert "pushed 4 ref(s)" in team["pushed"].stdout
    assert "uploaded the Git LFS objects of clf@v1, clf@v2 (59.8 MiB)" in team["pushed"].stderr
    assert largest_blob(remote) < LIMIT
    theirs = lfs_objects(remote / "lfs")
    assert set(theirs) == set(local) and all(sha256(f) == oid for oid, f in theirs.items())
    assert git(remote, "rev-parse", "refs/gitpack/artifacts/clf/v2") == git(a, "rev-parse", "refs/gitpack/artifacts/clf/v2")


def test_a_fresh_clone_pulls_pointers_only_and_downloads_just_the_version_it_loads(team, tmp_path):
    b = clone(team["url"], tmp_path / "b")
    pulled = ok(gitpack_cli(b, "pull"))
    assert "clf: got v1, v2 from origin" in pulled.stderr
    assert lfs_objects(b / ".git" / "lfs") == {}  # refs and pointers only
    assert largest_blob(b) < LIMIT
    assert [v["version"] for v in json.loads(ok(gitpack_cli(b, "list", "--json")).stdout)] == ["v2", "v1"]

    assert results(b, "clf@v1") == {"clf@v1": team["expected"]["clf@v1"]}
    v1 = pointer_of(b, "refs/gitpack/artifacts/clf/v1")
    assert v1 is not None and set(lfs_objects(b / ".git" / "lfs")) == {v1.oid}  # only the loaded version's

    # Loaded straight from the LFS object file: nothing copied into the cache, and mmap maps that file.
    cache = Path(os.environ["GITPACK_CACHE"])
    assert not (cache / "store").exists() or not any((cache / "store").iterdir())
    assert results(b, "clf@v1", "--mmap") == {"clf@v1": (team["expected"]["clf@v1"][0], "mapped-lfs")}
    assert set(lfs_objects(b / ".git" / "lfs")) == {v1.oid}


def test_load_fetch_in_a_fresh_clone_gets_refs_snapshot_and_the_one_object(team, tmp_path):
    c = clone(team["url"], tmp_path / "c")
    loaded = ok(gitpack_cli(c, "load", "clf@v2", "--fetch"))
    assert "class   Big from" in loaded.stdout and "clf: got v1, v2 from origin" in loaded.stderr
    v2 = pointer_of(c, "refs/gitpack/artifacts/clf/v2")
    assert v2 is not None and set(lfs_objects(c / ".git" / "lfs")) == {v2.oid}
    assert largest_blob(c) < LIMIT  # no archive came through git
    snapshot = git(c, "rev-parse", "refs/gitpack/artifacts/clf/v2^")
    assert git(c, "cat-file", "-t", snapshot) == "commit" and git(c, "cat-file", "-e", f"{snapshot}:bigpkg/model.py") == ""
    assert results(c, "clf@v2") == {"clf@v2": team["expected"]["clf@v2"]}


def test_download_draws_a_progress_bar_on_a_terminal(team, tmp_path):
    d = clone(team["url"], tmp_path / "d")
    ok(gitpack_cli(d, "pull"))
    drawn = _under_pty(d, "load", "clf@v1", env={"GITPACK_PROGRESS_MIN_BYTES": "0"})
    assert "downloading clf@v1" in drawn or "verifying clf@v1" in drawn
    assert "class   Big from" in drawn


def test_missing_git_lfs_missing_object_and_a_damaged_object_are_one_line_errors(team, tmp_path):
    no_lfs = without_git_lfs(tmp_path)
    b = clone(team["url"], tmp_path / "b")
    ok(gitpack_cli(b, "pull", env=no_lfs))
    one_line_error(gitpack_cli(b, "load", "clf@v1", env=no_lfs), "clf@v1 is stored with Git LFS",
                   "install git-lfs")
    assert lfs_objects(b / ".git" / "lfs") == {}

    # Pushing elsewhere what this clone never downloaded: refused before any ref moves, saying what to do.
    elsewhere = bare_remote(tmp_path / "elsewhere.git")
    one_line_error(gitpack_cli(b, "push", elsewhere.as_uri()), "clf@v1's archive", "is not in this clone",
                   "gitpack load clf@v1 --remote")
    assert git(elsewhere, "for-each-ref") == ""

    # A remote that has the pointers but not the bytes (someone pushed with plain git).
    bare = tmp_path / "pointers-only.git"
    shutil.copytree(team["remote"], bare, symlinks=True)
    shutil.rmtree(bare / "lfs")
    e = clone(bare.as_uri(), tmp_path / "e")
    ok(gitpack_cli(e, "pull"))
    one_line_error(gitpack_cli(e, "load", "clf@v1"), "cannot download clf@v1", "check that it was pushed")
    assert lfs_objects(e / ".git" / "lfs") == {}

    # A remote whose copy is damaged: the download is verified against the pointer and nothing is kept.
    damaged = tmp_path / "damaged.git"
    shutil.copytree(team["remote"], damaged, symlinks=True)
    v1 = pointer_of(b, "refs/gitpack/artifacts/clf/v1")
    assert v1 is not None
    target = lfs_objects(damaged / "lfs")[v1.oid]
    target.chmod(0o644)
    with open(target, "r+b") as fh:
        fh.seek(v1.size // 2)
        fh.write(b"\0" * 64)
    f = clone(damaged.as_uri(), tmp_path / "f")
    ok(gitpack_cli(f, "pull"))
    proc = gitpack_cli(f, "load", "clf@v1")
    one_line_error(proc)
    assert "Traceback" not in proc.stderr
    assert lfs_objects(f / ".git" / "lfs") == {}
    assert sha256(lfs_objects(team["a"] / ".git" / "lfs")[v1.oid]) == v1.oid  # the saver's copy is untouched


def test_refused_large_blob_says_how_to_use_lfs_and_push_then_moves_it_into_lfs(tmp_path):
    remote = bare_remote(tmp_path / "team.git")
    a = big_project(tmp_path / "a", remote.as_uri())
    no_lfs = without_git_lfs(tmp_path)

    # Saved while git-lfs is missing: an ordinary blob, which the remote refuses; the error says what to do.
    ok(save_big(a, 3, env=no_lfs))
    assert pointer_of(a, "refs/gitpack/artifacts/clf/v1") is None
    before_remote = git(remote, "for-each-ref")
    before_local = git(a, "for-each-ref", "refs/gitpack", "refs/heads")
    line = one_line_error(gitpack_cli(a, "push", env=no_lfs), "refused the push", "use Git LFS",
                          "clf@v1's archive is a", "plain git blob", "install git-lfs")
    assert "apt-get install git-lfs" in line
    assert git(remote, "for-each-ref") == before_remote
    assert git(a, "for-each-ref", "refs/gitpack", "refs/heads") == before_local

    # gitpack.lfs=never with git-lfs installed: the advice is the setting.
    git(a, "config", "gitpack.lfs", "never")
    one_line_error(gitpack_cli(a, "push"), "refused the push", "git config gitpack.lfs auto")
    git(a, "config", "--unset", "gitpack.lfs")

    # With git-lfs: the unpublished version moves into LFS (same number, parent, message, dates) and is pushed.
    old = git(a, "rev-parse", "refs/gitpack/artifacts/clf/v1")
    old_info = git(a, "log", "-1", "--format=%P%n%an %ae %ad%n%cn %ce %cd%n%B", old)
    pushed = ok(gitpack_cli(a, "push"))
    assert "clf@v1: its archive" in pushed.stderr and "moved into Git LFS before its first push" in pushed.stderr
    new = git(a, "rev-parse", "refs/gitpack/artifacts/clf/v1")
    assert new != old and git(a, "rev-parse", "refs/gitpack/aliases/clf/latest") == new
    assert git(a, "log", "-1", "--format=%P%n%an %ae %ad%n%cn %ce %cd%n%B", new) == old_info
    pointer = pointer_of(a, "refs/gitpack/artifacts/clf/v1")
    assert pointer is not None and pointer.size == int(git(a, "cat-file", "-s", f"{old}:archive.gitpack"))
    assert set(lfs_objects(remote / "lfs")) == {pointer.oid} and largest_blob(remote) < LIMIT

    # A clone whose origin is a plain path: git-lfs is given its file:// endpoint.
    b = clone(str(remote), tmp_path / "b")
    ok(gitpack_cli(b, "pull"))
    assert results(b, "clf@v1") == results(a, "clf@v1")
    assert set(lfs_objects(b / ".git" / "lfs")) == {pointer.oid}

    # A remote given as a path on the command line, too.
    other = bare_remote(tmp_path / "other.git")
    ok(gitpack_cli(a, "push", str(other)))
    assert set(lfs_objects(other / "lfs")) == {pointer.oid}


def test_lfs_settings_always_never_threshold_and_bad_values(tmp_path):
    repo = make_project(tmp_path / "proj")
    git(repo, "config", "gitpack.lfs", "always")
    ok(save(repo, "clf", "v1"))  # a tiny archive
    pointer = pointer_of(repo, "refs/gitpack/artifacts/clf/v1")
    assert pointer is not None and pointer.oid in lfs_objects(repo / ".git" / "lfs")
    # Stored as git-lfs itself stores it: its fsck checks the object against the version's pointer, and its
    # own pointer for the object's bytes is the blob the version holds, byte for byte.
    obj = lfs_objects(repo / ".git" / "lfs")[pointer.oid]
    assert "Git LFS fsck OK" in git(repo, "lfs", "fsck", "--objects", "refs/gitpack/artifacts/clf/v1")
    assert git(repo, "lfs", "pointer", f"--file={obj}") == pointer.text().strip()
    good = obj.read_bytes()
    obj.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert subprocess.run(["git", "lfs", "fsck", "--objects", "refs/gitpack/artifacts/clf/v1"], cwd=repo,
                          capture_output=True).returncode != 0
    obj.write_bytes(good)

    git(repo, "config", "gitpack.lfs", "never")
    ok(save(repo, "clf", "v2"))
    assert pointer_of(repo, "refs/gitpack/artifacts/clf/v2") is None

    git(repo, "config", "--unset", "gitpack.lfs")
    git(repo, "config", "gitpack.lfsThreshold", "1k")
    ok(save(repo, "clf", "v3"))
    assert pointer_of(repo, "refs/gitpack/artifacts/clf/v3") is not None
    git(repo, "config", "gitpack.lfsThreshold", "64m")
    ok(save(repo, "clf", "v4"))
    assert pointer_of(repo, "refs/gitpack/artifacts/clf/v4") is None

    # Every version loads, wherever its bytes are.
    out = ok(run_python(repo, "import gitpack\nfor v in (1, 2, 3, 4): print(gitpack.load(f'clf@v{v}').predict(1))"))
    assert out.stdout.split() == ["v1:True", "v2:True", "v3:True", "v4:True"]

    refs = git(repo, "for-each-ref")
    for key, value, needle in (("gitpack.lfs", "sometimes", "set it to auto, always or never"),
                               ("gitpack.lfsThreshold", "ten megs", "give bytes")):
        git(repo, "config", key, value)
        one_line_error(save(repo, "clf", "v5"), needle)
        assert git(repo, "for-each-ref") == refs  # refused before the snapshot branch moved
        git(repo, "config", "--unset", key)


def test_init_lfs_tracks_committed_archives_and_git_diff_still_shows_manifests(tmp_path):
    repo = make_project(tmp_path / "proj")
    assert "gitpack init --lfs" in ok(gitpack_cli(repo, "init")).stdout  # offered, since git-lfs is installed
    done = ok(gitpack_cli(repo, "init", "--lfs")).stdout
    assert "*.gitpack filter=lfs" in done and "git lfs install --local" in done
    assert ok(gitpack_cli(repo, "init", "--lfs")).stdout.strip() == "already set up"
    assert git(repo, "check-attr", "filter", "diff", "delta", "--", "model.gitpack").splitlines() == [
        "model.gitpack: filter: lfs", "model.gitpack: diff: gitpack", "model.gitpack: delta: unset"]

    gitpack_save = ["save", "clfpkg.model:make", "-o", "model.gitpack", "-p"]
    ok(gitpack_cli(repo, *gitpack_save, "threshold=0.3"))
    git(repo, "add", ".gitattributes", "model.gitpack")
    git(repo, "commit", "-q", "-m", "model at 0.3")
    pointer = pointer_of(repo, "HEAD", "model.gitpack")
    assert pointer is not None and pointer.oid in lfs_objects(repo / ".git" / "lfs")

    ok(gitpack_cli(repo, *gitpack_save, "threshold=0.7"))
    git(repo, "commit", "-q", "-am", "model at 0.7")
    diff = git(repo, "diff", "HEAD~1", "HEAD", "--", "model.gitpack").splitlines()
    assert "-    threshold = 0.3" in diff and "+    threshold = 0.7" in diff
    assert not any("oid sha256:" in line for line in diff)

    # A repository with a pre-push hook of its own: the filter is set, the hook left alone, and init says so.
    hooked = make_project(tmp_path / "hooked")
    hook = hooked / ".git" / "hooks" / "pre-push"
    hook.write_text("#!/bin/sh\necho mine\n")
    hook.chmod(0o755)
    said = ok(gitpack_cli(hooked, "init", "--lfs")).stdout
    assert "git lfs pre-push" in said and "git lfs update --manual" in said
    assert hook.read_text() == "#!/bin/sh\necho mine\n"
    assert git(hooked, "check-attr", "filter", "--", "m.gitpack") == "m.gitpack: filter: lfs"

    no_lfs = tmp_path / "no-lfs"
    no_lfs.mkdir()
    other = make_project(no_lfs / "proj")
    one_line_error(gitpack_cli(other, "init", "--lfs", env=without_git_lfs(no_lfs)), "install git-lfs")


# ---------------------------------------------------------------------------------------------- over HTTP
class LfsHttpServer:
    """git's smart HTTP and giftless, on one free port of 127.0.0.1 (``lfs_http_server.py``)."""

    def __init__(self, root: Path):
        self.root = root
        port_file = root / "port"
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("lfs_http_server.py")),
                                      str(root), str(port_file)], stdout=subprocess.DEVNULL,
                                     stderr=open(root / "server.log", "wb"))
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the LFS server did not start: " + (root / "server.log").read_text())
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.mark.slow
def test_the_same_over_http_with_a_real_lfs_server(team, tmp_path):
    root = tmp_path / "host"
    root.mkdir()
    bare_remote(root / "org" / "team.git")
    server = LfsHttpServer(root)
    try:
        url = server.url("org/team.git")
        a = team["a"]
        git(a, "remote", "add", "http", url)
        try:
            pushed = ok(gitpack_cli(a, "push", "http"))  # no configuration: git-lfs finds <url>/info/lfs
        finally:
            git(a, "remote", "remove", "http")
        assert "pushed" in pushed.stdout
        stored = {f.name: f for f in (root / "lfs-storage").rglob("*") if f.is_file()}
        assert set(stored) == set(lfs_objects(a / ".git" / "lfs")) and all(sha256(f) == o for o, f in stored.items())
        assert largest_blob(root / "org" / "team.git") < LIMIT

        b = clone(url, tmp_path / "b")
        ok(gitpack_cli(b, "pull"))
        assert lfs_objects(b / ".git" / "lfs") == {}
        assert results(b, "clf@v1") == {"clf@v1": team["expected"]["clf@v1"]}
        v1 = pointer_of(b, "refs/gitpack/artifacts/clf/v1")
        assert v1 is not None and set(lfs_objects(b / ".git" / "lfs")) == {v1.oid}
    finally:
        server.stop()


SPEC = "version https://git-lfs.github.com/spec/v1\n"
OID = "oid sha256:" + "ab" * 32 + "\n"


@pytest.mark.parametrize("text, expected", [
    (SPEC + OID + "size 12\n", Pointer("ab" * 32, 12)),
    (SPEC + "ext-0-foo sha256:" + "cd" * 32 + "\n" + OID + "size 0\n", Pointer("ab" * 32, 0)),  # extension key
    (OID + SPEC + "size 12\n", None),                       # version must come first
    (SPEC + "size 12\n" + OID, None),                       # keys in order
    (SPEC + OID + "size 12\n" + "size 13\n", None),        # each key once
    (SPEC + OID.upper() + "size 12\n", None),               # lower-case hex only
    (SPEC + OID + "size 012\n", None),                      # a plain decimal size
    (SPEC + OID + "size -1\n", None),
    (SPEC + OID, None),                                      # no size
    (SPEC + OID + "size 12", None),                          # the last line ends too
    (SPEC.replace("\n", "\r\n") + OID + "size 12\n", None),  # LF only
    ("version https://example.com/spec\n" + OID + "size 12\n", None),
    (SPEC + "oid sha256:" + "ab" * 31 + "\nsize 12\n", None),  # 64 digits
    (SPEC + OID + "size 12\n" + "x" * 1024, None),           # pointers are small
    ("\x89GPK" + "\0" * 60, None),                           # an archive
])
def test_pointer_parsing_is_strict(text, expected):
    assert parse_pointer(text.encode("latin-1")) == expected
    if expected is not None and "ext-" not in text:
        assert expected.text() == text  # canonical: what git lfs writes


def test_the_lfs_threshold_takes_sizes_as_every_size_setting_does(tmp_path):
    """gitpack.lfsThreshold had a parser of its own that refused decimal units (``20MB``); it reads sizes as
    gitpack.sizecap and gitpack.cacheMaxSize do."""
    from gitpack import lfs
    from gitpack.git import Repo

    repo = init_repo(tmp_path / "repo")
    for value, expected in (("20MB", 20_000_000), ("10m", 10 << 20), ("1.5k", 1536), ("4096", 4096)):
        git(repo, "config", "gitpack.lfsThreshold", value)
        with Repo.discover(repo) as r:
            assert lfs.settings(r).threshold == expected

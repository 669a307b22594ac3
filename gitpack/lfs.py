"""Git LFS for stored archives: the pointer format, the local object store, and transfers through git-lfs.

Hosted git refuses large blobs (GitHub above 100 MB, the Hugging Face Hub
above 10 MB, GitLab and Bitbucket at limits of their own) and points at Git
LFS, which every host serves.  So a stored archive above
``gitpack.lfsThreshold`` keeps its bytes in the repository's LFS store, laid
out exactly as ``git lfs`` lays it out (``.git/lfs/objects/ab/cd/abcd...``,
or under ``lfs.storage``), and the version commit's tree holds the small LFS
pointer instead (spec: https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md).

Only the transfers need the real ``git-lfs`` client, always through
:mod:`gitpack.git.runner`: ``git lfs push --object-id`` uploads the objects a
push publishes and ``git lfs fetch REMOTE COMMIT`` downloads the one a load
needs.  git-lfs finds the endpoint from the remote as it does for any
repository (``<url>/info/lfs`` over HTTP with the batch API, its standalone
file transfer for ``file://`` remotes, ``lfs.url`` / ``.lfsconfig`` where a
host keeps LFS elsewhere) and asks git's credential helpers for passwords.
Writing an object into the local store needs no client: gitpack hashes and
copies the archive itself, so saving works with git-lfs missing.

Settings (git config):

* ``gitpack.lfs``: ``auto`` (default: LFS for archives above the threshold
  when git-lfs is installed), ``always`` (every stored archive, installed or
  not: pushing and downloading then need git-lfs), ``never``;
* ``gitpack.lfsThreshold``: a size as every gitpack size setting takes it
  (:mod:`gitpack.sizes`: bytes, ``10m``, ``20MB``; default ``10m``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import progress
from .errors import StoreError
from .fsutil import removed_on_failure
from .git import Repo, runner
from .sizes import binary_size_text, setting

SPEC = "https://git-lfs.github.com/spec/v1"
POINTER_MAX = 1024  # git-lfs never reads a blob this large or larger as a pointer
MODES = ("auto", "always", "never")
DEFAULT_THRESHOLD = 10 << 20
CHUNK = 8 << 20
INSTALL_HINT = "install git-lfs (`apt-get install git-lfs`, `brew install git-lfs`, or https://git-lfs.com)"

_POINTER_LINE = re.compile(r"([a-z0-9.\-]+) ([^\r\n]*)")
_OID = re.compile(r"sha256:([0-9a-f]{64})")
_SIZE = re.compile(r"(0|[1-9][0-9]{0,17})")


class LfsError(StoreError):
    """git-lfs is missing, or a transfer through it failed."""


# ------------------------------------------------------------------ pointers
@dataclass(frozen=True)
class Pointer:
    """An LFS pointer: the sha256 and size of the bytes it stands for."""

    oid: str  # 64 hex digits, without the "sha256:" prefix
    size: int

    def text(self) -> str:
        """The canonical pointer file, byte for byte as ``git lfs clean`` writes it."""
        return f"version {SPEC}\noid sha256:{self.oid}\nsize {self.size}\n"

    @property
    def short(self) -> str:
        return self.oid[:12]


def parse_pointer(data: bytes) -> Pointer | None:
    """The pointer *data* spells, or None when it is anything else (an archive, a forged or broken pointer).

    Strict, as the spec asks: ``version`` first, then keys in order, each once,
    LF line ends, a sha256 oid and a decimal size.
    """
    if len(data) >= POINTER_MAX or not data.endswith(b"\n"):
        return None
    try:
        lines = data.decode("ascii").split("\n")[:-1]
    except UnicodeDecodeError:
        return None
    fields: list[tuple[str, str]] = []
    for line in lines:
        m = _POINTER_LINE.fullmatch(line)
        if m is None:
            return None
        fields.append((m[1], m[2]))
    if not fields or fields[0] != ("version", SPEC):
        return None
    keys = [k for k, _ in fields[1:]]
    if keys != sorted(set(keys)):
        return None
    values = dict(fields[1:])
    oid, size = _OID.fullmatch(values.get("oid", "")), _SIZE.fullmatch(values.get("size", ""))
    if oid is None or size is None:
        return None
    return Pointer(oid[1], int(size[1]))


def read_pointer(repo: Repo, blob: str, size: int) -> Pointer | None:
    """The pointer git blob *blob* (of *size* bytes) holds, or None when it holds the archive itself."""
    return parse_pointer(repo.read_object(blob)[1]) if size < POINTER_MAX else None


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    mode: str
    threshold: int


def settings(repo: Repo) -> Settings:
    """``gitpack.lfs`` and ``gitpack.lfsThreshold``; an error naming the setting when one is malformed."""
    mode = (repo.config("gitpack.lfs") or "auto").strip().lower()
    if mode not in MODES:
        raise StoreError(f"git config gitpack.lfs is {mode!r}; set it to auto, always or never")
    threshold = setting("gitpack.lfsThreshold", repo.config("gitpack.lfsThreshold"), DEFAULT_THRESHOLD)
    return Settings(mode, threshold)


@functools.cache
def _installed(cwd: str) -> bool:
    result = runner.run(["lfs", "version"], cwd=cwd, check=False)
    return result.returncode == 0 and result.text.startswith("git-lfs/")


def installed(repo: Repo) -> bool:
    """Whether ``git lfs`` runs here (asked once per process)."""
    return _installed(str(repo.root))


def wanted(repo: Repo, size: int) -> bool:
    """Whether an archive of *size* bytes stored now goes into LFS."""
    s = settings(repo)
    if s.mode == "never":
        return False
    if s.mode == "always":
        return True
    return size > s.threshold and installed(repo)


def require_client(repo: Repo, what: str) -> None:
    """LfsError saying to install git-lfs, unless it is installed."""
    if not installed(repo):
        raise LfsError(f"{what} needs git-lfs, which is not installed; {INSTALL_HINT}")


# ------------------------------------------------------------------ the local object store
def storage_dir(repo: Repo) -> Path:
    """git-lfs's storage directory: ``lfs.storage`` (relative to the git dir), else ``<git common dir>/lfs``."""
    configured = repo.config("lfs.storage")
    if configured:
        path = Path(os.path.expanduser(configured))
        return path if path.is_absolute() else repo.common_dir / path
    return repo.common_dir / "lfs"


def object_path(repo: Repo, pointer: Pointer) -> Path:
    return storage_dir(repo) / "objects" / pointer.oid[:2] / pointer.oid[2:4] / pointer.oid


def has_object(repo: Repo, pointer: Pointer) -> bool:
    """Whether the store holds the object at its full size (its content is checked where it is read)."""
    try:
        return object_path(repo, pointer).stat().st_size == pointer.size
    except OSError:
        return False


def store_file(repo: Repo, path: Path, description: str) -> Pointer:
    """Copy the file into the LFS store, hashing on the way; returns its pointer."""
    size = path.stat().st_size
    with open(path, "rb") as src:
        return _store_stream(repo, src, size, description)


def store_blob(repo: Repo, blob: str, size: int, description: str) -> Pointer:
    """Stream a git blob into the LFS store, checking its git object id as well; returns its pointer."""
    proc = runner.start(["cat-file", "blob", blob], cwd=repo.root, stderr=False)
    git_hash = hashlib.sha1() if len(blob) == 40 else hashlib.sha256()
    git_hash.update(b"blob %d\0" % size)

    def intact() -> None:
        if proc.wait() != 0 or git_hash.hexdigest() != blob:
            raise StoreError(f"blob {blob[:12]} could not be read back intact; the repository may be damaged "
                             "(`git fsck`)")

    try:
        assert proc.stdout is not None
        return _store_stream(repo, proc.stdout, size, description, git_hash, intact)
    finally:
        if proc.poll() is None:
            proc.popen.kill()
        proc.close()


def _store_stream(repo: Repo, src: IO[bytes], size: int, description: str, also: hashlib._Hash | None = None,
                  check: Callable[[], None] | None = None) -> Pointer:
    """Write *src* into the store's temp dir while hashing it (and into *also*), then, when *check* passes,
    rename it to its content's name."""
    tmp_dir = storage_dir(repo) / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="gitpack-", dir=str(tmp_dir))
    digest = hashlib.sha256()
    written = 0
    with removed_on_failure(tmp):
        with os.fdopen(fd, "wb") as out, progress.Bar(description, size) as bar:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                if also is not None:
                    also.update(chunk)
                out.write(chunk)
                written += len(chunk)
                bar.advance(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if written != size:
            raise StoreError(f"expected {size} bytes, read {written}; the file changed while it was stored")
        if check is not None:
            check()
        pointer = Pointer(digest.hexdigest(), size)
        dest = object_path(repo, pointer)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o644)
        if has_object(repo, pointer):
            os.unlink(tmp)
        else:
            os.replace(tmp, dest)
        return pointer


def verify_object(repo: Repo, pointer: Pointer, description: str) -> None:
    """Hash the stored object; a mismatch removes it (the next download replaces it) and raises LfsError."""
    path = object_path(repo, pointer)
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh, progress.Bar(description, pointer.size) as bar:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            bar.advance(len(chunk))
    if size != pointer.size or digest.hexdigest() != pointer.oid:
        path.unlink(missing_ok=True)
        raise LfsError(f"the Git LFS object {pointer.short} did not match its pointer and was removed; "
                       "download it again (the server's copy may be damaged)")


# ------------------------------------------------------------------ transfers
def default_remote(repo: Repo) -> str:
    """Where a download comes from without --remote: the branch's upstream remote, else origin."""
    remote = repo.branch_remote()
    return remote if remote and remote != "." else "origin"


def endpoint(repo: Repo, remote: str) -> str:
    """*remote* as git-lfs takes it: a remote's name or a URL as they are, a repository's path as a file:// URL.

    git-lfs turns a configured remote whose URL is a path into its file:// endpoint itself, but reads a bare
    path given on the command line as an ssh address.  git resolves a relative path from the repository's root.
    """
    if "://" in remote or repo.config(f"remote.{remote}.url"):
        return remote
    path = Path(os.path.expanduser(remote))
    path = path if path.is_absolute() else repo.root / path
    return path.resolve().as_uri() if path.is_dir() else remote


def fetch(repo: Repo, pointer: Pointer, commit: str, *, remote: str | None, label: str) -> Path:
    """Download one object (the one *commit*'s tree points at) with git-lfs, verify it, return its path."""
    remote = remote or default_remote(repo)
    # Only this commit's tree is scanned (its one pointer); a fetchinclude/-exclude set for checkouts must not
    # filter out archive.gitpack.
    args = ["-c", "lfs.fetchinclude=", "-c", "lfs.fetchexclude=", "lfs", "fetch", endpoint(repo, remote), commit]
    ok, detail = _transfer(repo, args, f"downloading {label}", pointer.size)
    if not ok:
        require_client(repo, f"{label} is stored with Git LFS and its archive is not in this clone; downloading it")
    if not ok or not has_object(repo, pointer):
        raise LfsError(f"cannot download {label} ({binary_size_text(pointer.size)}, Git LFS object {pointer.short}) "
                       f"from {remote}: {detail or 'git-lfs fetched nothing'}; check that it was pushed "
                       "(`gitpack push` in the clone that saved it) and that you can read the remote")
    verify_object(repo, pointer, f"verifying {label}")
    return object_path(repo, pointer)


def push(repo: Repo, remote: str, label: str, pointers: Iterable[Pointer]) -> None:
    """Upload objects to *remote*'s LFS endpoint with ``git lfs push --object-id`` (those it has are skipped)."""
    wanted_objects = sorted(set(pointers), key=lambda p: p.oid)
    if not wanted_objects:
        return
    total = sum(p.size for p in wanted_objects)
    what = f"{len(wanted_objects)} Git LFS object(s) ({binary_size_text(total)})"
    for oids in _batches([p.oid for p in wanted_objects]):
        args = ["lfs", "push", "--object-id", endpoint(repo, remote), *oids]
        ok, detail = _transfer(repo, args, f"uploading to {remote}", total)
        if not ok:
            require_client(repo, f"pushing {what}")
            raise LfsError(f"cannot upload {what} to {label}: {detail}; no ref was pushed and every save is kept "
                           "here - check the remote's LFS server and your access, then `gitpack push` again")


def _batches(items: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _transfer(repo: Repo, args: list[str], description: str, total: int) -> tuple[bool, str]:
    """Run a git-lfs transfer; a bar follows its ``GIT_LFS_PROGRESS`` file.  Returns (succeeded, its reason)."""
    env = runner.network_env()
    if not progress.wanted(total):
        result = runner.run(args, cwd=repo.root, env=env, check=False)
        return result.returncode == 0, _detail(result.stderr.decode("utf-8", "replace"))
    with tempfile.TemporaryDirectory(prefix="gitpack-lfs-") as tmp:
        progress_file = Path(tmp) / "progress"
        env["GIT_LFS_PROGRESS"] = str(progress_file)
        proc = runner.start(args, cwd=repo.root, env=env)
        streams: dict[str, bytes] = {}
        readers = [threading.Thread(target=lambda k=k, s=s: streams.__setitem__(k, s.read()), daemon=True)
                   for k, s in (("out", proc.stdout), ("err", proc.stderr)) if s is not None]
        for reader in readers:
            reader.start()
        with progress.Bar(description, total) as bar:
            done: dict[str, int] = {}
            offset = 0
            while True:
                finished = proc.poll() is not None
                offset = _follow(progress_file, offset, done, bar)
                if finished:
                    break
                time.sleep(0.1)
        returncode = proc.wait()
        for reader in readers:
            reader.join()
    return returncode == 0, _detail(streams.get("err", b"").decode("utf-8", "replace"))


def _follow(path: Path, offset: int, done: dict[str, int], bar: progress.Bar) -> int:
    """Read the progress lines git-lfs appended since *offset* (``download 1/1 1024/2048 name``)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return offset
    end = data.rfind(b"\n") + 1
    for line in data[:end].decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and "/" in parts[2]:
            so_far = parts[2].split("/", 1)[0]
            if so_far.isdigit():
                done[parts[3]] = int(so_far)
    bar.update(completed=sum(done.values()))
    return offset + end


def _detail(stderr: str) -> str:
    """git-lfs's reason in one line: its last lines, without progress and announcements."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("fetch: Fetching", "Downloading LFS", "Uploading LFS"))]
    return " / ".join(dict.fromkeys(lines[-3:]))

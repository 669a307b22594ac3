"""The archive format: one file, raw aligned members, a JSON manifest at the end.

Layout::

    header   "GITPACK\\0" + u32 format version + u32 reserved         (16 bytes)
    members  raw bytes, each starting on a 64-byte boundary
    manifest UTF-8 JSON: provenance, parameters and the member table
    trailer  u64 manifest offset, u64 manifest length,
             32-byte sha256 of the manifest, "GPKTAIL\\0"               (56 bytes)

The manifest sits at the end because it records digests that are only known
once the members have streamed through.  Each member carries its own sha256;
the *payload digest* hashes the member table, so a single value vouches for
every byte the loader will use, and the snapshot commit's message carries it.

Readers bound every size and count before allocating, and nothing here ever
unpickles: this module is how ``inspect``, ``log`` and ``diff`` look inside.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import struct
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from .errors import ArchiveError

MAGIC = b"GITPACK\x00"
TAIL_MAGIC = b"GPKTAIL\x00"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sII")
TRAILER = struct.Struct("<QQ32s8s")
ALIGN = 64
CHUNK = 256 << 10  # small enough that a chunk just hashed is still in L2 when it is copied
READ_CHUNK = 8 << 20  # unverified reads: fewer, larger syscalls
FLUSH_EVERY = 64 << 20
MAX_MANIFEST_BYTES = 64 << 20
MAX_MEMBERS = 1_000_000
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$")
TEMP_MARK = ".gitpack-tmp-"


@dataclass(frozen=True)
class Member:
    name: str
    offset: int
    size: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "offset": self.offset, "size": self.size, "sha256": self.sha256}


def manifest_digest(manifest: dict[str, Any]) -> str:
    """One digest over the whole manifest except its ``commit`` field.

    The snapshot commit's message carries it (next to the payload digest), so
    the commit vouches for every manifest field the loader uses (tree, roots,
    modules, tensor counts, parameters), not just for the member table.
    """
    rest = {k: v for k, v in manifest.items() if k != "commit"}
    return "sha256:" + hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed_manifest(manifest: dict[str, Any], members: list[Member]) -> dict[str, Any]:
    """*manifest* exactly as :meth:`ArchiveWriter.seal` writes it: plus format, member table and payload digest."""
    manifest = dict(manifest)
    manifest["format"] = FORMAT_VERSION
    manifest["members"] = [m.as_json() for m in members]
    manifest["payload_digest"] = payload_digest(members)
    return manifest


def payload_digest(members: Iterable[Member]) -> str:
    """One digest over every member's name, size and sha256."""
    h = hashlib.sha256()
    for m in members:
        h.update(f"{m.name}\0{m.size}\0{m.sha256}\n".encode())
    return "sha256:" + h.hexdigest()


class DeferredBuffer:
    """A member's bytes that exist only once asked for, such as a device tensor's copy in host memory.

    The writer asks (:meth:`materialise`) on a worker thread right before
    hashing and writing them, so at most one such copy per worker exists at a
    time: saving a model from a GPU never holds a second copy of it in RAM.
    """

    nbytes: int

    def materialise(self):
        raise NotImplementedError


def io_workers() -> int:
    """Threads for hashing and I/O: one per usable core, at most four (sha256 is the bottleneck)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _Flusher:
    """``fdatasync`` on a background thread while members are still being written.

    Writing back to disk costs I/O wait, not CPU, so it overlaps with the
    hashing that does cost CPU; the fsync in :meth:`ArchiveWriter.seal` then
    finds little left to flush.  An error is kept and raised by :meth:`stop`:
    once a failed fsync has been reported, the kernel forgets it, so the final
    fsync alone would not see it.
    """

    def __init__(self, fd: int, every: int = FLUSH_EVERY):
        self._fd = fd
        self._every = every
        self._cond = threading.Condition()
        self._unflushed = 0
        self._stopping = False
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="gitpack-flush", daemon=True)
        self._thread.start()

    def wrote(self, n: int) -> None:
        with self._cond:
            self._unflushed += n
            if self._unflushed >= self._every:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._unflushed < self._every and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                self._unflushed = 0
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                self.error = exc
                return

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()


class ArchiveWriter:
    """Writes members into a temp file beside *dest*; :meth:`commit` fsyncs and renames it into place.

    :meth:`add` only reserves the member's place and queues it: worker threads
    (one per core) hash each chunk and write it at its offset while it is still
    in the CPU cache, several members at once, straight from the caller's
    buffers (no copy of the data is made).  The caller must leave the buffers
    unchanged until :meth:`seal`.  Digests are known once :attr:`members` has
    drained the queue.

    Until :meth:`publish` succeeds nothing at *dest* changes, so a crash or an
    error leaves the old file (or none) and at worst a temp file that a later
    save in that directory removes.
    """

    def __init__(self, dest: str | os.PathLike, *, workers: int | None = None):
        self.dest = Path(dest).absolute()
        if self.dest.is_dir():
            raise ArchiveError(f"{self.dest} is a directory; give a file path for the archive")
        if os.path.lexists(self.dest) and not self.dest.is_file():
            raise ArchiveError(f"{self.dest} exists and is not a regular file (a device, socket or dangling link); give another path")
        if not self.dest.parent.is_dir():
            raise ArchiveError(f"directory {self.dest.parent} does not exist; create it first")
        cleanup_stale_temp_files(self.dest.parent)
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + self.dest.name + TEMP_MARK + temp_owner_tag(), dir=str(self.dest.parent))
        except OSError as exc:
            raise ArchiveError(f"cannot write in {self.dest.parent}: {exc.strerror}; check permissions") from None
        self.temp_path = Path(tmp)
        self._fd: int | None = fd
        self._end = HEADER.size
        self._queued: list[tuple[str, int, int, Future]] = []
        self._members: list[Member] = []
        self._names: set[str] = set()
        self._sealed_at: int | None = None
        self._aborted = False
        try:
            _pwrite_all(fd, memoryview(HEADER.pack(MAGIC, FORMAT_VERSION, 0)), 0)
        except OSError as exc:
            os.close(fd)
            self.temp_path.unlink()
            raise ArchiveError(f"cannot write in {self.dest.parent}: {exc.strerror}; free some space or check the disk") from None
        self._pool = ThreadPoolExecutor(workers or io_workers(), thread_name_prefix="gitpack-write")
        self._flusher = _Flusher(fd)

    def add(self, name: str, buffers: Iterable) -> None:
        """Queue a member made of *buffers* (bytes-like, contiguous) to be hashed and written."""
        if not _MEMBER_NAME.fullmatch(name) or ".." in name.split("/"):
            raise ValueError(f"bad member name {name!r}")
        if name in self._names:
            raise ValueError(f"member {name!r} added twice")
        if self._sealed_at is not None:
            raise ValueError("archive is sealed; no more members can be added")
        views = [b if isinstance(b, DeferredBuffer) else memoryview(b).cast("B") for b in buffers]
        size = sum(v.nbytes for v in views)
        offset = _align(self._end)
        self._end = offset + size
        self._names.add(name)
        self._queued.append((name, offset, size, self._pool.submit(self._hash_and_write, views, offset, size)))

    def _hash_and_write(self, views: list, offset: int, size: int) -> str:
        h = hashlib.sha256()
        for view in views:
            if isinstance(view, DeferredBuffer):
                expected = view.nbytes
                view = memoryview(view.materialise()).cast("B")
                if len(view) != expected:
                    raise ValueError(f"a deferred buffer promised {expected} bytes and gave {len(view)}")
            for i in range(0, len(view), CHUNK):
                if self._aborted:
                    return ""
                chunk = view[i : i + CHUNK]
                h.update(chunk)  # reads the chunk into the cache; the write below copies it from there
                _pwrite_all(self._fd, chunk, offset)
                offset += len(chunk)
                self._flusher.wrote(len(chunk))
            view = chunk = None  # a deferred copy is freed before the next one is made
        return h.hexdigest()

    @property
    def members(self) -> list[Member]:
        """Every member added so far, in file order, with its digest (waits for queued writes)."""
        for name, offset, size, future in self._queued:
            try:
                digest = future.result()
            except OSError as exc:
                raise ArchiveError(f"cannot write {self.temp_path}: {exc.strerror}; free some space or check the disk") from None
            self._members.append(Member(name, offset, size, digest))
        self._queued.clear()
        return list(self._members)

    def payload_digest(self) -> str:
        return payload_digest(self.members)

    def seal(self, manifest: dict[str, Any]) -> None:
        """Write manifest and trailer after the members and fsync; may be called again to replace them."""
        manifest = sealed_manifest(manifest, self.members)
        blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        if self._sealed_at is None:
            self._sealed_at = _align(self._end)
        try:
            os.ftruncate(self._fd, self._sealed_at)
            tail = TRAILER.pack(self._sealed_at, len(blob), hashlib.sha256(blob).digest(), TAIL_MAGIC)
            _pwrite_all(self._fd, memoryview(blob + tail), self._sealed_at)
            self._flusher.stop()
            if self._flusher.error is not None:
                raise self._flusher.error
            os.fsync(self._fd)
        except OSError as exc:
            raise ArchiveError(f"cannot write {self.temp_path}: {exc.strerror}; free some space or check the disk") from None

    def publish(self) -> Path:
        """Atomically rename the sealed temp file over the destination."""
        if self._sealed_at is None:
            raise ValueError("seal the archive before publishing it")
        self._close()
        replaced = _open_replaced(self.dest)
        os.replace(self.temp_path, self.dest)
        _fsync_dir(self.dest.parent)
        if replaced is not None:
            # Closing the last handle on the replaced archive frees its blocks and
            # page cache (tens of ms per GB): let that happen off the caller's path.
            threading.Thread(target=os.close, args=(replaced,), name="gitpack-release", daemon=True).start()
        return self.dest

    def commit(self, manifest: dict[str, Any]) -> Path:
        self.seal(manifest)
        return self.publish()

    def _close(self) -> None:
        self._pool.shutdown(wait=True)
        self._flusher.stop()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        """Stop the workers, close and remove the temp file; the destination is untouched."""
        self._aborted = True
        for _, _, _, future in self._queued:
            future.cancel()
        try:
            self._close()
        finally:
            try:
                self.temp_path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._fd is not None:
            self.abort()


def _open_replaced(dest: Path) -> int | None:
    """A read handle on the regular file about to be replaced at *dest*, if any."""
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _align(pos: int) -> int:
    return pos + (-pos) % ALIGN


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_HOST = re.sub(r"[^A-Za-z0-9.\-]", "_", socket.gethostname())[:64] or "host"
_OWNER = re.compile(r"(\d+)@([A-Za-z0-9.\-_]+)~")


def temp_owner_tag() -> str:
    """``<pid>@<host>~``, put in every temp file's name so a later save can tell when its owner is dead."""
    return f"{os.getpid()}@{_HOST}~"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def is_stale_temp(path: Path, older_than: float = 3600.0) -> bool:
    """Whether a temp file was left by a save that is gone.

    Its owner, named in the file name, is a process on this host that no
    longer exists: stale at once, so the next save after a crash cleans up.
    Otherwise (an owner on another host sharing the directory, or a name
    without an owner) only an hour without writes makes it stale.
    """
    found = _OWNER.search(path.name)
    if found and found.group(2) == _HOST and int(found.group(1)) != os.getpid() and not _process_alive(int(found.group(1))):
        return True
    try:
        return path.lstat().st_mtime < time.time() - older_than
    except OSError:
        return False


def cleanup_stale_temp_files(directory: Path, older_than: float = 3600.0) -> None:
    """Remove archive temp files in *directory* that a crashed save left behind."""
    try:
        entries = list(directory.glob(".*" + TEMP_MARK + "*"))
    except OSError:
        return
    for entry in entries:
        try:
            if is_stale_temp(entry, older_than):
                entry.unlink()
        except OSError:
            pass


class ArchiveReader:
    """Reads and validates an archive's manifest; reads members with their digests checked."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._fh: BinaryIO = open(self.path, "rb", buffering=0)
        except FileNotFoundError:
            raise ArchiveError(f"{self.path}: no such archive; check the path") from None
        except IsADirectoryError:
            raise ArchiveError(f"{self.path} is a directory, not a gitpack archive") from None
        except OSError as exc:
            raise ArchiveError(f"{self.path}: cannot open ({exc.strerror})") from None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closing = False
        try:
            self.size = os.fstat(self._fh.fileno()).st_size
            self.manifest = self._read_manifest()
            self.members = self._validate_members()
        except Exception:
            self._fh.close()
            raise

    def _fail(self, what: str) -> ArchiveError:
        return ArchiveError(f"{self.path}: {what}; the archive is corrupt or truncated, re-save or re-fetch it")

    def _pread(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fh.fileno(), size, offset)
        if len(data) != size:
            raise self._fail("unexpected end of file")
        return data

    def _read_manifest(self) -> dict[str, Any]:
        if os.pread(self._fh.fileno(), len(MAGIC), 0) != MAGIC:
            raise ArchiveError(f"{self.path} is not a gitpack archive (bad magic); check the path")
        if self.size < HEADER.size + TRAILER.size:
            raise self._fail("file too short to be a gitpack archive")
        magic, version, reserved = HEADER.unpack(self._pread(0, HEADER.size))
        if version != FORMAT_VERSION:
            raise ArchiveError(f"{self.path}: archive format {version} is not supported by this gitpack; upgrade gitpack")
        if reserved != 0:
            raise self._fail("header has a non-zero reserved field")
        offset, length, digest, tail = TRAILER.unpack(self._pread(self.size - TRAILER.size, TRAILER.size))
        if tail != TAIL_MAGIC:
            raise self._fail("missing trailer")
        if length > MAX_MANIFEST_BYTES or offset < HEADER.size or offset + length != self.size - TRAILER.size:
            raise self._fail("manifest bounds are invalid")
        blob = self._pread(offset, length)
        if hashlib.sha256(blob).digest() != digest:
            raise self._fail("manifest digest mismatch")
        try:
            manifest = json.loads(blob)
        except (ValueError, RecursionError):
            raise self._fail("manifest is not valid JSON") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("members"), list):
            raise self._fail("manifest has no member table")
        try:
            canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        except (RecursionError, ValueError):
            raise self._fail("manifest is nested too deeply") from None
        if canonical != blob:
            raise self._fail("manifest is not in canonical form")  # one archive, one byte sequence
        self.manifest_offset = offset
        return manifest

    def _validate_members(self) -> dict[str, Member]:
        raw = self.manifest["members"]
        if len(raw) > MAX_MEMBERS:
            raise self._fail("too many members")
        members: dict[str, Member] = {}
        end = HEADER.size
        for item in raw:
            try:
                m = Member(item["name"], item["offset"], item["size"], item["sha256"])
            except (KeyError, TypeError):
                raise self._fail("malformed member entry") from None
            if not (isinstance(m.name, str) and isinstance(m.sha256, str)):
                raise self._fail("malformed member entry")
            if not (type(m.offset) is int and type(m.size) is int):
                raise self._fail(f"member {m.name[:80]!r} has non-integer bounds")
            if not _MEMBER_NAME.fullmatch(m.name) or ".." in m.name.split("/") or m.name in members:
                raise self._fail(f"bad or duplicate member name {m.name[:80]!r}")
            # Canonical layout: each member starts at the next aligned offset, so no byte of the
            # file is outside what a digest covers except zero padding, which is checked.
            if m.offset != _align(end) or m.size < 0 or m.offset + m.size > self.manifest_offset:
                raise self._fail(f"member {m.name!r} lies outside the data area")
            if not re.fullmatch(r"[0-9a-f]{64}", m.sha256):
                raise self._fail(f"member {m.name!r} has a malformed digest")
            self._check_padding(end, m.offset)
            end = m.offset + m.size
            members[m.name] = m
        if self.manifest_offset != _align(end):
            raise self._fail("data after the last member")
        self._check_padding(end, self.manifest_offset)
        if self.manifest.get("payload_digest") != payload_digest(members.values()):
            raise self._fail("payload digest does not match the member table")
        return members

    def _check_padding(self, start: int, stop: int) -> None:
        if stop > start and self._pread(start, stop - start).count(0) != stop - start:
            raise self._fail("non-zero bytes in alignment padding")

    def member(self, name: str) -> Member:
        try:
            return self.members[name]
        except KeyError:
            raise self._fail(f"member {name!r} is missing") from None

    def read(self, name: str) -> bytes:
        """A whole member, verified."""
        return bytes(self.read_buffer(name))

    def read_buffer(self, name: str) -> bytearray:
        """A whole member, verified, in a fresh writable buffer (no second copy is made)."""
        buf = bytearray(self.member(name).size)
        self.readinto(name, buf)
        return buf

    def readinto(self, name: str, buffer, *, verify: bool = True) -> None:
        """Fill *buffer* with a member's bytes, hashing each chunk right after reading it (still in cache)."""
        m = self.member(name)
        view = memoryview(buffer).cast("B")
        if len(view) != m.size:
            raise ValueError(f"buffer of {len(view)} bytes for member {name!r} of {m.size}")
        self._fill(m, view, verify)

    def readinto_async(self, name: str, buffer, *, verify: bool = True) -> Future:
        """Like :meth:`readinto`, on a worker thread; several members are read and hashed at once.

        The future's ``result()`` raises :class:`ArchiveError` when the bytes do
        not match their digest.  :meth:`close` waits for reads still running.
        """
        m = self.member(name)
        view = memoryview(buffer).cast("B")
        if len(view) != m.size:
            raise ValueError(f"buffer of {len(view)} bytes for member {name!r} of {m.size}")
        with self._pool_lock:
            if self._closing:
                raise ValueError("archive reader is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(io_workers(), thread_name_prefix="gitpack-read")
            return self._pool.submit(self._fill, m, view, verify)

    def _fill(self, m: Member, view: memoryview, verify: bool) -> None:
        fd = self._fh.fileno()
        h = hashlib.sha256() if verify else None
        step = CHUNK if verify else READ_CHUNK
        pos = 0
        while pos < m.size:
            if self._closing:
                raise ArchiveError(f"{self.path}: closed while member {m.name!r} was being read")
            n = os.preadv(fd, [view[pos : pos + step]], m.offset + pos)
            if n <= 0:
                raise self._fail(f"member {m.name!r} is truncated")
            if h is not None:
                h.update(view[pos : pos + n])
            pos += n
        if h is not None and h.hexdigest() != m.sha256:
            raise ArchiveError(f"{self.path}: member {m.name!r} does not match its digest; the archive was corrupted or tampered with")

    def verify_member(self, name: str) -> None:
        """Hash a member in place without keeping its bytes."""
        m = self.member(name)
        h = hashlib.sha256()
        pos = 0
        while pos < m.size:
            data = os.pread(self._fh.fileno(), min(READ_CHUNK, m.size - pos), m.offset + pos)
            if not data:
                raise self._fail(f"member {name!r} is truncated")
            h.update(data)
            pos += len(data)
        if h.hexdigest() != m.sha256:
            raise ArchiveError(f"{self.path}: member {name!r} does not match its digest; the archive was corrupted or tampered with")

    def close(self) -> None:
        """Close the file, after cancelling queued reads and waiting for running ones."""
        with self._pool_lock:
            self._closing = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._fh.close()

    def __enter__(self) -> "ArchiveReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an archive, validated, without reading or unpickling its payload."""
    with ArchiveReader(path) as reader:
        return reader.manifest

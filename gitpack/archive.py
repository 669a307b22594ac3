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
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
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
CHUNK = 8 << 20
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


def payload_digest(members: Iterable[Member]) -> str:
    """One digest over every member's name, size and sha256."""
    h = hashlib.sha256()
    for m in members:
        h.update(f"{m.name}\0{m.size}\0{m.sha256}\n".encode())
    return "sha256:" + h.hexdigest()


class _Hasher:
    """sha256 on a worker thread, so hashing overlaps with the write or read of the next chunk."""

    def __init__(self, pool: ThreadPoolExecutor):
        self._pool = pool
        self._h = hashlib.sha256()
        self._pending = None

    def update(self, chunk) -> None:
        if self._pending is not None:
            self._pending.result()
        self._pending = self._pool.submit(self._h.update, chunk)

    def hexdigest(self) -> str:
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        return self._h.hexdigest()


class ArchiveWriter:
    """Streams members into a temp file beside *dest*; :meth:`commit` fsyncs and renames it into place.

    Until :meth:`commit` succeeds nothing at *dest* changes, so a crash or an
    error leaves the old file (or none) and at worst a temp file that the next
    save in that directory removes.
    """

    def __init__(self, dest: str | os.PathLike):
        self.dest = Path(dest).absolute()
        if self.dest.is_dir():
            raise ArchiveError(f"{self.dest} is a directory; give a file path for the archive")
        if not self.dest.parent.is_dir():
            raise ArchiveError(f"directory {self.dest.parent} does not exist; create it first")
        cleanup_stale_temp_files(self.dest.parent)
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + self.dest.name + TEMP_MARK, dir=str(self.dest.parent))
        except OSError as exc:
            raise ArchiveError(f"cannot write in {self.dest.parent}: {exc.strerror}; check permissions") from None
        self.temp_path = Path(tmp)
        self._fh: BinaryIO = os.fdopen(fd, "wb", buffering=0)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gitpack-hash")
        self._pos = 0
        self.members: list[Member] = []
        self._sealed_at: int | None = None
        self._write(HEADER.pack(MAGIC, FORMAT_VERSION, 0))

    def _write(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = self._fh.write(view)
            view = view[n:]
            self._pos += n

    def _pad(self) -> None:
        pad = (-self._pos) % ALIGN
        if pad:
            self._write(b"\0" * pad)

    def add(self, name: str, buffers: Iterable) -> Member:
        """Append a member made of *buffers* (bytes-like), hashing while writing."""
        if not _MEMBER_NAME.match(name) or ".." in name.split("/"):
            raise ValueError(f"bad member name {name!r}")
        self._pad()
        start = self._pos
        hasher = _Hasher(self._pool)
        for buf in buffers:
            view = memoryview(buf).cast("B")
            for i in range(0, len(view), CHUNK):
                chunk = view[i : i + CHUNK]
                hasher.update(chunk)
                self._write(chunk)
        member = Member(name, start, self._pos - start, hasher.hexdigest())
        self.members.append(member)
        return member

    def payload_digest(self) -> str:
        return payload_digest(self.members)

    def seal(self, manifest: dict[str, Any]) -> None:
        """Write manifest and trailer after the members and fsync; may be called again to replace them."""
        manifest = dict(manifest)
        manifest["format"] = FORMAT_VERSION
        manifest["members"] = [m.as_json() for m in self.members]
        manifest["payload_digest"] = self.payload_digest()
        blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        if self._sealed_at is None:
            self._pad()
            self._sealed_at = self._pos
        else:
            self._fh.truncate(self._sealed_at)
            self._fh.seek(self._sealed_at)
            self._pos = self._sealed_at
        self._write(blob)
        self._write(TRAILER.pack(self._sealed_at, len(blob), hashlib.sha256(blob).digest(), TAIL_MAGIC))
        os.fsync(self._fh.fileno())

    def publish(self) -> Path:
        """Atomically rename the sealed temp file over the destination."""
        self._fh.close()
        self._pool.shutdown()
        os.replace(self.temp_path, self.dest)
        _fsync_dir(self.dest.parent)
        return self.dest

    def commit(self, manifest: dict[str, Any]) -> Path:
        self.seal(manifest)
        return self.publish()

    def abort(self) -> None:
        try:
            self._fh.close()
        finally:
            self._pool.shutdown()
            try:
                self.temp_path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._fh.closed:
            self.abort()


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


def cleanup_stale_temp_files(directory: Path, older_than: float = 3600.0) -> None:
    """Remove archive temp files in *directory* that a crashed save left behind."""
    import time

    cutoff = time.time() - older_than
    try:
        entries = list(directory.glob(".*" + TEMP_MARK + "*"))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.stat().st_mtime < cutoff:
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
        magic, version, _ = HEADER.unpack(self._pread(0, HEADER.size))
        if version != FORMAT_VERSION:
            raise ArchiveError(f"{self.path}: archive format {version} is not supported by this gitpack; upgrade gitpack")
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
                m = Member(str(item["name"]), item["offset"], item["size"], str(item["sha256"]))
            except (KeyError, TypeError):
                raise self._fail("malformed member entry") from None
            if not (type(m.offset) is int and type(m.size) is int):
                raise self._fail(f"member {m.name!r} has non-integer bounds")
            if not _MEMBER_NAME.match(m.name) or ".." in m.name.split("/") or m.name in members:
                raise self._fail(f"bad or duplicate member name {m.name!r}")
            if m.offset < end or m.size < 0 or m.offset + m.size > self.manifest_offset or m.offset % ALIGN:
                raise self._fail(f"member {m.name!r} lies outside the data area")
            if not re.fullmatch(r"[0-9a-f]{64}", m.sha256):
                raise self._fail(f"member {m.name!r} has a malformed digest")
            end = m.offset + m.size
            members[m.name] = m
        if self.manifest.get("payload_digest") != payload_digest(members.values()):
            raise self._fail("payload digest does not match the member table")
        return members

    def member(self, name: str) -> Member:
        try:
            return self.members[name]
        except KeyError:
            raise self._fail(f"member {name!r} is missing") from None

    def read(self, name: str) -> bytes:
        """A whole member, verified."""
        m = self.member(name)
        buf = bytearray(m.size)
        self.readinto(name, buf)
        return bytes(buf)

    def readinto(self, name: str, buffer, *, verify: bool = True) -> None:
        """Fill *buffer* with a member's bytes, hashing each chunk while the next one is read."""
        m = self.member(name)
        view = memoryview(buffer).cast("B")
        if len(view) != m.size:
            raise ValueError(f"buffer of {len(view)} bytes for member {name!r} of {m.size}")
        pool = ThreadPoolExecutor(1, thread_name_prefix="gitpack-hash") if verify else None
        try:
            hasher = _Hasher(pool) if pool else None
            fd = self._fh.fileno()
            pos = 0
            while pos < m.size:
                n = os.preadv(fd, [view[pos : pos + CHUNK]], m.offset + pos)
                if n <= 0:
                    raise self._fail(f"member {name!r} is truncated")
                if hasher:
                    hasher.update(view[pos : pos + n])
                pos += n
            if hasher and hasher.hexdigest() != m.sha256:
                raise ArchiveError(
                    f"{self.path}: member {name!r} does not match its digest; the archive was corrupted or tampered with"
                )
        finally:
            if pool:
                pool.shutdown()

    def verify_member(self, name: str) -> None:
        """Hash a member in place without keeping its bytes."""
        m = self.member(name)
        h = hashlib.sha256()
        pos = 0
        while pos < m.size:
            data = os.pread(self._fh.fileno(), min(CHUNK, m.size - pos), m.offset + pos)
            if not data:
                raise self._fail(f"member {name!r} is truncated")
            h.update(data)
            pos += len(data)
        if h.hexdigest() != m.sha256:
            raise ArchiveError(f"{self.path}: member {name!r} does not match its digest; the archive was corrupted or tampered with")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ArchiveReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an archive, validated, without reading or unpickling its payload."""
    with ArchiveReader(path) as reader:
        return reader.manifest


def is_archive(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False

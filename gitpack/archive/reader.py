"""Reading an archive: the manifest and member table validated, members read with their digests checked.

Readers bound every size and count before allocating, and nothing here ever
unpickles: this is how ``inspect``, ``log`` and ``diff`` look inside.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ArchiveError
from . import prefault
from .format import (
    _MEMBER_NAME,
    DIGEST_KEY,
    HEADER,
    MAGIC,
    MAX_MANIFEST_BYTES,
    MAX_MEMBERS,
    READ_CHUNK,
    TAIL_MAGIC,
    TRAILER,
    Member,
    align,
    hash_step,
    io_workers,
    new_hasher,
    payload_digest,
)

_HEX64 = re.compile(r"[0-9a-f]{64}")


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
        if version not in DIGEST_KEY:
            raise ArchiveError(
                f"{self.path}: archive format {version} is not supported by this gitpack; upgrade gitpack"
            )
        self.version = version
        self.algorithm = DIGEST_KEY[version]
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
        if manifest.get("format", 1) != version:  # format 1 archives of gitpack 0.1 may lack the field
            raise self._fail("the manifest and the header name different formats")
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
        key = self.algorithm
        fields = {"name", "offset", "size", key}
        for item in raw:
            try:
                m = Member(item["name"], item["offset"], item["size"], item[key], key)
            except (KeyError, TypeError):
                raise self._fail("malformed member entry") from None
            if not (isinstance(m.name, str) and isinstance(m.digest, str)):
                raise self._fail("malformed member entry")
            if self.version >= 2 and item.keys() != fields:
                raise self._fail(f"member {m.name[:80]!r} has fields other than {sorted(fields)}")
            if not (type(m.offset) is int and type(m.size) is int):
                raise self._fail(f"member {m.name[:80]!r} has non-integer bounds")
            if not _MEMBER_NAME.fullmatch(m.name) or ".." in m.name.split("/") or m.name in members:
                raise self._fail(f"bad or duplicate member name {m.name[:80]!r}")
            # Canonical layout: each member starts at the next aligned offset, so no byte of the
            # file is outside what a digest covers except zero padding, which is checked.
            if m.offset != align(end) or m.size < 0 or m.offset + m.size > self.manifest_offset:
                raise self._fail(f"member {m.name!r} lies outside the data area")
            if not _HEX64.fullmatch(m.digest):
                raise self._fail(f"member {m.name!r} has a malformed digest")
            self._check_padding(end, m.offset)
            end = m.offset + m.size
            members[m.name] = m
        if self.manifest_offset != align(end):
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
        h = new_hasher(m.algorithm, m.size) if verify else None
        step = hash_step(m.algorithm, m.size) if verify else READ_CHUNK
        pos = mapped = 0
        while pos < m.size:
            if self._closing:
                raise ArchiveError(f"{self.path}: closed while member {m.name!r} was being read")
            if pos >= mapped:  # one call maps the next window of fresh pages (at least this read's), not a fault each
                mapped = pos + max(prefault.WINDOW, step)
                prefault.populate(view[pos:mapped])
            n = os.preadv(fd, [view[pos : pos + step]], m.offset + pos)
            if n <= 0:
                raise self._fail(f"member {m.name!r} is truncated")
            if h is not None:
                h.update(view[pos : pos + n])
            pos += n
        if h is not None and h.hexdigest() != m.digest:
            raise ArchiveError(
                f"{self.path}: member {m.name!r} does not match its digest; the archive was corrupted or tampered with"
            )

    def verify_member(self, name: str) -> None:
        """Hash a member in place without keeping its bytes."""
        m = self.member(name)
        h = new_hasher(m.algorithm, m.size)
        pos = 0
        while pos < m.size:
            data = os.pread(self._fh.fileno(), min(READ_CHUNK, m.size - pos), m.offset + pos)
            if not data:
                raise self._fail(f"member {name!r} is truncated")
            h.update(data)
            pos += len(data)
        if h.hexdigest() != m.digest:
            raise ArchiveError(
                f"{self.path}: member {name!r} does not match its digest; the archive was corrupted or tampered with"
            )

    def close(self) -> None:
        """Close the file, after cancelling queued reads and waiting for running ones."""
        with self._pool_lock:
            self._closing = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._fh.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an archive, validated, without reading or unpickling its payload."""
    with ArchiveReader(path) as reader:
        return reader.manifest

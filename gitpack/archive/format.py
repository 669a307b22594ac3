"""The archive format: one file, raw aligned members, a JSON manifest at the end (constants, digests).

Layout::

    header   "GITPACK\\0" + u32 format version + u32 reserved         (16 bytes)
    members  raw bytes, each starting on a 64-byte boundary
    manifest UTF-8 JSON: provenance, parameters and the member table
    trailer  u64 manifest offset, u64 manifest length,
             32-byte sha256 of the manifest, "GPKTAIL\\0"               (56 bytes)

The manifest sits at the end because it records digests that are only known
once the members have streamed through.  Each member carries its own digest;
the *payload digest* hashes the member table, so a single value vouches for
every byte the loader will use, and the snapshot commit's message carries it.

**Format 2** (written since gitpack 0.2) hashes members with BLAKE3 (table key
``blake3``); format 1 used sha256 (key ``sha256``) and is still read and
verified.  Members are most of an archive's bytes and a verified load hashes
every one of them: sha256 runs at about 2 GB/s per core, BLAKE3 several times
that on one core (SIMD) and more with threads, so a verified load is now bound
by the copy from the page cache, not by the hash.

**Format 3** keeps format 2's container and digests and adds
one member, ``tensors``: every plain tensor as a row of integers, which the
pickle names by row number (:mod:`gitpack.pickling.tensortable`).  Its number
tells an older gitpack that it cannot read such a pickle, before it tries.

The two digests recorded in git, the *payload digest* (over the member table)
and the *manifest digest*, and the trailer's manifest digest, stay **sha256**:
they hash a few kilobytes, so speed is irrelevant there; sha256 is what git
itself, ``sha256sum`` and every language's standard library compute, so anyone
can check a commit's trailers against an archive without gitpack or a
third-party hash; and the ``sha256:`` values in existing commit messages keep
their meaning.  The payload digest of a format-2 archive covers the
``blake3:`` algorithm name of each member's digest, so a member table can never
be read as the other format's.

Readers bound every size and count before allocating, and nothing here ever
unpickles: this module is how ``inspect``, ``log`` and ``diff`` look inside.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAGIC = b"GITPACK\x00"
TAIL_MAGIC = b"GPKTAIL\x00"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
DIGEST_KEY = {1: "sha256", 2: "blake3", 3: "blake3"}  # the member table's digest field, by format
HEADER = struct.Struct("<8sII")
TRAILER = struct.Struct("<QQ32s8s")
ALIGN = 64
CHUNK = 256 << 10  # small enough that a chunk just hashed is still in L2 when it is copied
PARALLEL_HASH_BYTES = 64 << 20  # members at least this large are hashed by BLAKE3 on several threads
PARALLEL_CHUNK = 8 << 20  # what one update hands a multithreaded hasher (each thread takes a part)
READ_CHUNK = 8 << 20  # unverified reads: fewer, larger syscalls
FLUSH_EVERY = 64 << 20
MAX_MANIFEST_BYTES = 64 << 20
MAX_MEMBERS = 1_000_000
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$")


@dataclass(frozen=True)
class Member:
    """One member of the table: its bytes lie at ``[offset, offset + size)``; *digest* is hex, of *algorithm*."""

    name: str
    offset: int
    size: int
    digest: str
    algorithm: str = "blake3"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "offset": self.offset, "size": self.size, self.algorithm: self.digest}


def new_hasher(algorithm: str, size: int = 0) -> Any:
    """A hash object for a member of *size* bytes: sha256 (format 1) or BLAKE3 (format 2, threaded when large).

    BLAKE3's ``update`` releases the GIL, so several members hash at once on the
    archive's worker threads; one large member also spreads over several cores.
    """
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm != "blake3":
        raise ValueError(f"unknown member digest {algorithm!r}")
    import blake3

    if size >= PARALLEL_HASH_BYTES:
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    return blake3.blake3()


def hash_step(algorithm: str, size: int) -> int:
    """How many bytes one read-and-hash step takes: a cache-sized chunk, or a large one for a threaded hasher."""
    return PARALLEL_CHUNK if algorithm == "blake3" and size >= PARALLEL_HASH_BYTES else CHUNK


def manifest_digest(manifest: dict[str, Any]) -> str:
    """One digest over the whole manifest except its ``commit`` field.

    The snapshot commit's message carries it (next to the payload digest), so
    the commit vouches for every manifest field the loader uses (tree, roots,
    modules, tensor counts, parameters), not just for the member table.
    """
    rest = {k: v for k, v in manifest.items() if k != "commit"}
    return "sha256:" + hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed_manifest(manifest: dict[str, Any], members: list[Member], version: int = FORMAT_VERSION) -> dict[str, Any]:
    """*manifest* exactly as :meth:`ArchiveWriter.seal` writes it: plus format, member table and payload digest."""
    manifest = dict(manifest)
    manifest["format"] = version
    manifest["members"] = [m.as_json() for m in members]
    manifest["payload_digest"] = payload_digest(members)
    return manifest


def payload_digest(members: Iterable[Member]) -> str:
    """One sha256 over every member's name, size and digest (format 2: with the digest's algorithm name)."""
    h = hashlib.sha256()
    for m in members:
        digest = m.digest if m.algorithm == "sha256" else f"{m.algorithm}:{m.digest}"
        h.update(f"{m.name}\0{m.size}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()


def align(pos: int) -> int:
    return pos + (-pos) % ALIGN


def io_workers() -> int:
    """Threads for hashing and I/O: one per usable core, at most four (hashing and copying are the work)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))



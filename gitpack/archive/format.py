"""The archive format: one file, raw aligned members, a JSON manifest at the end (constants, digests).

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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


def align(pos: int) -> int:
    return pos + (-pos) % ALIGN


def io_workers() -> int:
    """Threads for hashing and I/O: one per usable core, at most four (sha256 is the bottleneck)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))



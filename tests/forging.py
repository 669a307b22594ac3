"""Forging archives as an attacker would: every digest recomputed, and a vouching commit where one is wanted.

Digests are not secrets.  An attacker who can push to the team's remote can add a snapshot commit to
gitpack's branch that vouches for any payload and manifest, so the forged archives here pass every
integrity check, and it is the trust gate that must stop what their pickles try.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from conftest import git

from gitpack import trailers as audit
from gitpack.archive import TRAILER, ArchiveReader, ArchiveWriter, manifest_digest, sealed_manifest


def forge(base: Path, dest: Path, repo: Path, new_pickle: bytes, *, manifest_changes: dict | None = None,
          replace_members: dict[str, bytes | None] | None = None, vouch: bool = True) -> Path:
    """Replace *base*'s pickle with *new_pickle*, recompute every digest and (with *vouch*) vouch for it.

    *replace_members* replaces (or, with None, drops) other members too: a forged tensor table, say.

    Vouching is what an attacker with push access to the team's remote can do: a snapshot commit with the
    recomputed trailers, on top of gitpack's snapshot branch (as a pushed save would be), holding the
    same tree.  So it is the gate, not a digest, that has to stop what the pickle then tries.
    """
    with ArchiveReader(base) as reader:
        manifest = dict(reader.manifest)
        members = {name: reader.read(name) for name in reader.members}
    members["pickle"] = new_pickle
    for name, data in (replace_members or {}).items():
        if data is None:
            members.pop(name, None)
        else:
            members[name] = data
    original_commit = manifest["commit"]
    for key in ("members", "payload_digest", "format", "commit"):
        manifest.pop(key)
    manifest.update(manifest_changes or {})
    writer = ArchiveWriter(dest)
    for name, data in members.items():
        writer.add(name, [data])
    digest = writer.payload_digest()
    commit = original_commit
    if vouch:
        message = audit.format_message(
            archive=dest.name, object_type=manifest["object"]["type"], digest=digest, params={}, head=None,
            extra={"Manifest": manifest_digest(sealed_manifest(manifest, writer.members))},
        )
        commit = push_snapshot(repo, manifest["tree"], message)
    writer.seal({**manifest, "commit": commit})
    writer.publish()
    return dest


def push_snapshot(repo: Path, tree: str, message: str) -> str:
    """A commit of *tree* with *message* on top of gitpack's snapshot branch: what a push to it would add."""
    tip = git(repo, "rev-parse", "refs/heads/gitpack")
    proc = subprocess.run(["git", "commit-tree", tree, "-p", tip, "-F", "-"], cwd=repo, input=message,
                          capture_output=True, text=True, check=True)
    commit = proc.stdout.strip()
    git(repo, "update-ref", "refs/heads/gitpack", commit, tip)
    return commit


def rewrite_manifest(src: Path, dest: Path, change) -> Path:
    """Copy archive *src* to *dest* with ``change(manifest)`` applied and the trailer's manifest digest
    recomputed (what a careful attacker does); returns *dest*."""
    data = src.read_bytes()
    offset, length, _, tail = TRAILER.unpack(data[-TRAILER.size:])
    manifest = json.loads(data[offset:offset + length])
    change(manifest)
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    dest.write_bytes(data[:offset] + blob + TRAILER.pack(offset, len(blob), hashlib.sha256(blob).digest(), tail))
    return dest

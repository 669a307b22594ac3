"""Portable archives: the snapshot's source travels inside, checked by git's own hashes.

A deploy server or a container has no repository, so ``export --portable``
embeds what the repository would have provided:

* ``source/commit``        the snapshot commit object, byte for byte;
* ``source/trees/<sha>``   every tree object of the snapshot, byte for byte;
* ``source/blobs/<sha>``   every file of the snapshot (the whole tree, so that
                           data files read through ``__file__`` are there too).

The archive's original members are copied unchanged, so the commit still
vouches for them: its ``Gitpack-Digest`` trailer must equal the payload digest
of the non-source members.  Before anything is imported, :func:`verified_source`
recomputes git's object id of the commit, of every tree and of every blob,
walking down from the commit's tree; one mismatch refuses the load.  The
verified objects then back an :class:`EmbeddedSourceTree`, the same
``SourceTree`` protocol the repository implements, so the normal lazy
materialisation and private namespaces are reused unchanged.

This proves integrity (nothing was altered or lost since export), not
authorship: whoever can rewrite the whole file can forge a consistent one.
A signed snapshot commit (``save(sign=True)``) carries its signature inside the
embedded commit object for those who need authorship.
"""

from __future__ import annotations

import json
import mmap
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArchiveError
from ..git import Repo, TreeEntry, git_object_id, parse_commit_object, parse_tree
from ..trailers import parse_trailers
from .format import manifest_digest, payload_digest
from .reader import ArchiveReader
from .writer import ArchiveWriter

SOURCE_PREFIX = "source/"
COMMIT_MEMBER = "source/commit"
ORIGINAL_MANIFEST = "source/manifest.json"
TREE_PREFIX = "source/trees/"
BLOB_PREFIX = "source/blobs/"
_SHA1 = re.compile(r"[0-9a-f]{40}")
_SYMLINK_MODE = "120000"


def is_portable(manifest: dict[str, Any]) -> bool:
    return isinstance(manifest.get("portable"), dict)


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    commit: str
    tree: str
    trees: int
    files: int
    size: int


def export(repo: Repo, archive: Path, dest: Path) -> ExportInfo:
    """Write *archive* plus its snapshot's source (commit, trees, files) to *dest*.

    The caller has checked that the repository holds the commit the archive
    records and that it vouches for the payload.  Members are copied in
    chunks and their digests recomputed on the way, so a bit flipped in transit
    fails the export rather than shipping.
    """
    with ArchiveReader(archive) as reader:
        manifest = reader.manifest
        if is_portable(manifest):
            raise ArchiveError(f"{archive} is already portable; copy it as it is")
        commit, tree = manifest["commit"], manifest["tree"]
        raw_commit = repo.read_object(commit)[1]
        trees: dict[str, bytes] = {}
        blobs: list[str] = []
        seen_blobs: set[str] = set()
        stack = [tree]
        while stack:
            sha = stack.pop()
            if sha in trees:
                continue
            kind, raw = repo.read_object(sha)
            trees[sha] = raw
            for entry in parse_tree(raw):
                if entry.kind == "tree":
                    stack.append(entry.sha)
                elif entry.kind == "blob" and entry.sha not in seen_blobs:
                    seen_blobs.add(entry.sha)
                    blobs.append(entry.sha)
        # The copy keeps the original's format: its member digests are what the commit vouches for.
        writer = ArchiveWriter(dest, version=reader.version)
        try:
            with open(reader.path, "rb") as fh:
                # The writer hashes and writes straight from the mapping: no copy of large members in memory.
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                for member in reader.members.values():
                    writer.add(member.name, [memoryview(mapped)[member.offset : member.offset + member.size]])
                try:
                    copied = writer.members  # waits until every copy is written and hashed
                finally:
                    try:
                        mapped.close()
                    except BufferError:
                        pass  # a view is still referenced somewhere; the mapping goes with it
            for saved, member in zip(reader.members.values(), copied, strict=True):
                if (saved.name, saved.size, saved.digest) != (member.name, member.size, member.digest):
                    raise ArchiveError(
                        f"{archive}: member {saved.name!r} does not match its digest; the archive is corrupt"
                    )
            original = writer.payload_digest()
            if original != manifest.get("payload_digest"):
                raise ArchiveError(f"{archive}: payload digest changed while exporting; the archive is corrupt")
            writer.add(ORIGINAL_MANIFEST, [json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()])
            writer.add(COMMIT_MEMBER, [raw_commit])
            for sha, raw in trees.items():
                writer.add(TREE_PREFIX + sha, [raw])
            for sha in blobs:
                writer.add(BLOB_PREFIX + sha, [repo.read_object(sha)[1]])
            new_manifest = {k: v for k, v in manifest.items() if k not in ("members", "payload_digest", "format")}
            new_manifest["portable"] = {
                "commit": commit, "tree": tree, "payload_digest": original,
                "objects": {"trees": len(trees), "blobs": len(blobs)},
            }
            path = writer.commit(new_manifest)
        except BaseException:
            writer.abort()
            raise
    return ExportInfo(path, commit, tree, len(trees), len(blobs), path.stat().st_size)


class EmbeddedSourceTree:
    """A snapshot tree served from a portable archive's verified objects (the ``SourceTree`` protocol)."""

    def __init__(self, tree: str, trees: dict[str, list[TreeEntry]], blobs: dict[str, bytes]):
        self.key = tree
        self._trees = trees
        self._blobs = blobs

    def list_dir(self, rel: str) -> dict[str, tuple[str, str]] | None:
        sha = self.key
        for part in [p for p in rel.split("/") if p]:
            entry = next((e for e in self._trees[sha] if e.name == part), None)
            if entry is None or entry.kind != "tree":
                return None
            sha = entry.sha
        out = {}
        for e in self._trees[sha]:
            if e.kind == "commit":
                continue  # submodule: not part of the snapshot's own code
            out[e.name] = ("tree" if e.kind == "tree" else "link" if e.mode == _SYMLINK_MODE else "blob", e.sha)
        return out

    def read(self, ref: str) -> bytes:
        return self._blobs[ref]


def verified_source(reader: ArchiveReader) -> EmbeddedSourceTree:
    """Check every embedded object against git's hashes and the commit's vouching; nothing is imported here."""
    manifest = reader.manifest
    info = manifest["portable"]
    where = reader.path

    def refuse(what: str) -> ArchiveError:
        return ArchiveError(
            f"{where}: {what}; the portable archive was tampered with or corrupted, refusing to load it"
        )

    commit, tree, digest = info.get("commit"), info.get("tree"), info.get("payload_digest")
    if not (isinstance(commit, str) and _SHA1.fullmatch(commit) and isinstance(tree, str) and _SHA1.fullmatch(tree)):
        raise refuse("it records no valid commit and tree")
    if manifest.get("commit") != commit or manifest.get("tree") != tree:
        raise refuse("its manifest and its embedded source name different commits")
    for member in (COMMIT_MEMBER, ORIGINAL_MANIFEST):
        if member not in reader.members:
            raise refuse(f"member {member} is missing")
    payload_members = [m for name, m in reader.members.items() if not name.startswith(SOURCE_PREFIX)]
    if payload_digest(payload_members) != digest:
        raise refuse("its payload does not match the digest recorded for it")
    raw_commit = reader.read(COMMIT_MEMBER)
    if git_object_id("commit", raw_commit) != commit:
        raise refuse(f"the embedded commit does not hash to {commit[:12]}")
    headers, message = parse_commit_object(raw_commit)
    if headers.get("tree", [None])[0] != tree:
        raise refuse(f"commit {commit[:12]} does not hold tree {tree[:12]}")
    trailers = parse_trailers(message)
    if trailers.get("digest") != digest:
        raise refuse(f"commit {commit[:12]} does not vouch for this payload")
    # The manifest as saved: the commit vouches for it, and the loader may use only what it says.
    try:
        original = json.loads(reader.read(ORIGINAL_MANIFEST))
    except ValueError:
        raise refuse("the embedded original manifest is not JSON") from None
    if not isinstance(original, dict) or original.get("payload_digest") != digest or original.get("commit") != commit:
        raise refuse("the embedded original manifest does not match the commit")
    if original.get("members") != [m.as_json() for m in payload_members]:
        raise refuse("the payload members differ from the ones saved")
    ignored = {"members", "payload_digest", "format", "portable"}
    for key in (set(original) | set(manifest)) - ignored:
        if original.get(key) != manifest.get(key):
            raise refuse(f"manifest field {key!r} differs from the one saved")
    if "manifest" in trailers and manifest_digest(original) != trailers["manifest"]:
        raise refuse(f"commit {commit[:12]} does not vouch for the saved manifest")
    trees: dict[str, list[TreeEntry]] = {}
    blobs: dict[str, bytes] = {}
    stack = [(tree, "")]
    while stack:
        sha, path = stack.pop()
        if sha in trees:
            continue
        if TREE_PREFIX + sha not in reader.members:
            raise refuse(f"directory {path or '.'} (tree {sha[:12]}) is missing")
        raw = reader.read(TREE_PREFIX + sha)
        if git_object_id("tree", raw) != sha:
            raise refuse(f"directory {path or '.'} does not hash to its tree {sha[:12]}")
        try:
            entries = parse_tree(raw)
        except (ValueError, IndexError):
            raise refuse(f"directory {path or '.'} is not a valid tree object") from None
        trees[sha] = entries
        for e in entries:
            child = f"{path}/{e.name}" if path else e.name
            if e.kind == "tree":
                stack.append((e.sha, child))
            elif e.kind == "blob" and e.sha not in blobs:
                if BLOB_PREFIX + e.sha not in reader.members:
                    raise refuse(f"file {child} is missing")
                data = reader.read(BLOB_PREFIX + e.sha)
                if git_object_id("blob", data) != e.sha:
                    raise refuse(f"file {child} does not match its git blob hash {e.sha[:12]}")
                blobs[e.sha] = data
    return EmbeddedSourceTree(tree, trees, blobs)

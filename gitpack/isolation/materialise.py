"""Materialising a snapshot's directories into the cache, lazily and safely under concurrent loads.

Files are written one directory at a time into a cache keyed by tree
(``$GITPACK_CACHE``, else ``$XDG_CACHE_HOME/gitpack``, else
``~/.cache/gitpack``): only the directories that hold a module actually
imported, each together with its data files and data-only subdirectories, so
``__file__``-relative reads work.  Directories that imports only pass through
(the import root, a package's parents) are listed, never written.  A listing
written last marks a directory complete, so a cache hit costs a stat and one
small read per directory, and no git process.  Symlinks are written only when
they resolve inside the snapshot.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from ..errors import GitpackError
from ..fsutil import TEMP_MARK, atomic_write, remove_stale, writing
from . import cache
from .sources import SourceTree

LISTING = ".gitpack-dir.json"  # written last: the directory's files are all there
NAMES = ".gitpack-names.json"  # only the directory's names, for resolving imports through it
CACHE_HINT = " (gitpack's load cache: set GITPACK_CACHE to a writable directory with room)"


def cache_root() -> Path:
    env = os.environ.get("GITPACK_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gitpack"


def _safe_name(name: str) -> bool:
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
            and name.lower() != ".git")


class Materializer:
    """Writes a tree's directories into the cache on demand; safe against concurrent loads."""

    def __init__(self, source: SourceTree, root: Path | None = None):
        self.source = source
        self.root = (root or cache_root() / "trees") / source.key
        self._listings: dict[str, dict | None] = {}
        self._names: dict[str, dict | None] = {}
        self._prefetched: dict[str, bytes] = {}  # blob -> bytes, for the directory being written
        self._lock = threading.RLock()
        cache.hold(self.root)  # in use while this process lives: a prune (gitpack.isolation.cache) keeps it

    def names(self, rel: str) -> dict | None:
        """``{"files": [...], "dirs": [...]}`` of a directory, *without* writing its files.

        Resolving an import walks directories (the import root, a package's
        parents) whose files the model may never use; they are listed, not
        materialised.  From memory, else from the directory's marker in the
        cache (a stat and a small read), else from the tree, and then kept in a
        names marker so that the next process needs no git at all.
        """
        with self._lock:
            if rel in self._names:
                return self._names[rel]
            found = _read_marker(self.path(rel) / LISTING) or _read_marker(self.path(rel) / NAMES)
            if found is None:
                entries = self.source.list_dir(rel)
                if entries is not None:
                    found = {
                        "files": sorted(n for n, (kind, _) in entries.items() if kind != "tree"),
                        "dirs": sorted(n for n, (kind, _) in entries.items() if kind == "tree"),
                    }
                    target = self.path(rel)
                    with writing(target, CACHE_HINT):
                        target.mkdir(parents=True, exist_ok=True)
                        atomic_write(target / NAMES, json.dumps(found).encode())
            self._names[rel] = found
            return found

    def path(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def listing(self, rel: str) -> dict | None:
        """``{"files": [...], "dirs": [...]}`` of a materialised directory, materialising it first."""
        with self._lock:
            if rel in self._listings:
                return self._listings[rel]
            listing = _read_marker(self.path(rel) / LISTING)
            if listing is None:
                with writing(self.path(rel), CACHE_HINT):
                    listing = self._materialise(rel)
            self._listings[rel] = listing
            return listing

    def _materialise(self, rel: str) -> dict | None:
        entries = self.source.list_dir(rel)
        if entries is None:
            return None
        target = self.path(rel)
        target.mkdir(parents=True, exist_ok=True)
        remove_stale(target, TEMP_MARK + "*")  # what a killed load left (a listing's temp file)
        files, dirs = [], []
        for name in entries:
            if not _safe_name(name) or name in (LISTING, NAMES):
                raise GitpackError(
                    f"snapshot {self.source.key[:12]} has an unsafe path {rel}/{name!r}; refusing to materialise it"
                )
        # Ask for the whole directory at once (files and subtrees): one round trip to git, not one per entry.
        read_many = getattr(self.source, "read_many", None)
        if read_many is not None:
            refs = [ref for kind, ref in entries.values() if kind != "link"]
            self._prefetched = dict(zip(refs, read_many(refs), strict=True))
        for name, (kind, ref) in sorted(entries.items()):
            if kind == "tree":
                dirs.append(name)
                child = f"{rel}/{name}" if rel else name
                sub = self.source.list_dir(child)
                if sub is not None and not any(n.endswith(".py") for n in sub):
                    self.listing(child)  # data-only directory: materialise with its parent
            else:
                files.append(name)
                self._write_entry(target, name, kind, ref, rel)
        self._prefetched = {}
        listing = {"files": files, "dirs": dirs}
        atomic_write(target / LISTING, json.dumps(listing).encode())
        cache.note_written()
        return listing

    def _write_entry(self, target: Path, name: str, kind: str, ref: str, rel: str) -> None:
        dest = target / name
        if kind == "link":
            link = self.source.read(ref).decode("utf-8", "surrogateescape")
            if not self._link_stays_inside(rel, link):
                return  # a link leading outside the snapshot is never materialised
            if not os.path.lexists(dest):
                try:
                    os.symlink(link, dest)
                except FileExistsError:
                    pass
            return
        data = self._prefetched.get(ref)
        _write_file(dest, data if data is not None else self.source.read(ref))

    def _link_stays_inside(self, rel: str, link: str, max_hops: int = 40) -> bool:
        """Resolve *link* (found in directory *rel*) through the snapshot's own tree, as the OS will.

        A lexical check is not enough: with ``d -> .`` in the tree, the link
        ``d/d/../../x`` normalises to ``x`` but the OS resolves it two levels
        *above* the snapshot (each ``d`` stays put, each ``..`` climbs).  So
        links met on the way are followed, and every ``..`` must stay inside.
        """
        if os.path.isabs(link) or "\0" in link:
            return False
        parts = [p for p in rel.split("/") if p]
        todo = link.split("/")
        hops = 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    return False
                parts.pop()
                continue
            entry = (self.source.list_dir("/".join(parts)) or {}).get(part)
            if entry is not None and entry[0] == "link":
                hops += 1
                if hops > max_hops:
                    return False
                link = self.source.read(entry[1]).decode("utf-8", "surrogateescape")
                if os.path.isabs(link) or "\0" in link:
                    return False
                todo = link.split("/") + todo
                continue
            parts.append(part)
        return True


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_file(dest: Path, data: bytes) -> None:
    """Write one snapshot file in place: no temp file and rename per file.

    Creating files is what materialisation costs, so each file is created
    once.  That is safe because nothing trusts a directory before its listing,
    written atomically after all of its files, exists; a crash leaves no
    listing, and the next load writes the directory again.  Concurrent
    writers write the same bytes at the same offsets (no truncation before
    writing), so they agree.  A symlink planted at *dest* is not followed.
    """
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], done)
        os.ftruncate(fd, len(view))
    finally:
        os.close(fd)



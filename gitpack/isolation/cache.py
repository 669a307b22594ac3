"""The cache's size: what is in it, what is in use, and pruning it without pulling a tree from under anyone.

The cache (:func:`cache_root`) holds snapshot trees materialised for loads
(``trees/<tree>``) and stored archives copied out of git (``store/<blob>.gitpack``).
Both are content-addressed, so removing an entry loses nothing: the next load
writes it again.  What must never happen is removing one while a process uses
it, since a loaded model keeps importing lazily and reading data files from
its tree for as long as it lives, and a load in progress is writing it.

So every process that uses an entry holds a shared ``flock`` on it (the
tree's directory, the archive file) for as long as it lives, taken before it
writes or reads anything there, and touches its mtime: the mtime is the
entry's last use, which orders least-recently-used.  Pruning takes an
exclusive lock without waiting: an entry it cannot lock is in use and is
kept.  A tree is renamed out of the way while locked, then deleted; a user
who locked the old directory just before notices (its inode is no longer
the path's) and takes the new one.

The cache keeps itself under ``gitpack.cacheMaxSize`` (default 5 GB): a load
that wrote to it drops least-recently-used entries not in use until it fits.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system: entries cannot be held, and are never pruned
    fcntl = None  # type: ignore[assignment]

DEFAULT_MAX_SIZE = 5 * 1000**3
CONFIG_KEY = "gitpack.cacheMaxSize"
TRASH_PREFIX = ".trash-"

_held: dict[str, int] = {}  # path -> fd of the shared lock this process holds on it
_lock = threading.Lock()
_wrote = False  # whether this process wrote to the cache since the cache last checked its size


@dataclass(frozen=True)
class Entry:
    """One cache entry: a materialised tree or a copied archive."""

    kind: str  # "tree" or "archive"
    path: Path
    size: int
    last_used: float  # mtime: touched by every use
    in_use: bool

    def as_json(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "size": self.size, "last_used": self.last_used,
                "in_use": self.in_use}


@dataclass
class Usage:
    """What :func:`usage` found."""

    root: Path
    entries: list[Entry] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def as_json(self) -> dict:
        return {"root": str(self.root), "size": self.size, "entries": [e.as_json() for e in self.entries]}


@dataclass
class Pruned:
    """What :func:`prune` removed and kept."""

    removed: list[Entry] = field(default_factory=list)
    kept_in_use: list[Entry] = field(default_factory=list)
    size_after: int = 0

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.removed)

    def as_json(self) -> dict:
        return {"removed": [e.as_json() for e in self.removed], "kept_in_use": [e.as_json() for e in self.kept_in_use],
                "freed": self.freed, "size_after": self.size_after}


# ----------------------------------------------------------------------------- using an entry
def hold(path: Path, *, directory: bool = True) -> bool:
    """Mark *path* (a tree directory, made if missing, or an archive file) in use by this process until it exits,
    and as just used.  Waits while a prune is removing it, then holds the new one.  False when it cannot (no
    ``flock`` here, a cache it may not write): the load goes on, unprotected from a concurrent prune."""
    try:
        return _hold(path, directory)
    except OSError:
        return False


def inside(path: Path) -> bool:
    """Whether *path* is a cache entry's (an archive read in place from the repository's Git LFS store is not)."""
    from .materialise import cache_root

    return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(cache_root())))


def _hold(path: Path, directory: bool) -> bool:
    key = str(path)
    with _lock:
        if key in _held:
            _touch(path)
            return True
        if fcntl is None:
            return False
        for _ in range(100):
            if directory:
                path.mkdir(parents=True, exist_ok=True)
            try:
                fd = _open_entry(path, directory)
            except FileNotFoundError:
                if directory:
                    continue
                return False  # an archive pruned before it was held: the caller finds it missing, copies it again
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _same_file(path, fd):
                _held[key] = fd
                _touch(path)
                return True
            os.close(fd)  # it was removed (renamed away) while we waited: hold the one at the path now
        return False


def _open_entry(path: Path, directory: bool) -> int:
    """A descriptor to lock an entry by (never inherited by a child process)."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    return os.open(path, flags)


def note_written() -> None:
    """This process wrote to the cache (a directory materialised): the next :func:`settle` checks its size."""
    global _wrote
    _wrote = True


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass  # another user's cache, read-only: its order is theirs to keep


# ----------------------------------------------------------------------------- measuring
def _tree_size(path: Path) -> int:
    total, stack = 0, [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for item in it:
                    try:
                        if item.is_dir(follow_symlinks=False):
                            stack.append(item.path)
                        else:
                            total += item.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _in_use(path: Path, directory: bool) -> bool:
    """Whether some process holds *path* (this one included): an exclusive lock cannot be had without waiting."""
    if fcntl is None:
        return True
    if str(path) in _held:
        return True
    try:
        fd = _open_entry(path, directory)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def usage(root: Path | None = None) -> Usage:
    """Every entry of the cache with its size, last use and whether a process is using it now."""
    if root is None:
        from .materialise import cache_root

        root = cache_root()
    out = Usage(root)
    for kind, folder in (("tree", root / "trees"), ("archive", root / "store")):
        try:
            items = sorted(os.scandir(folder), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for item in items:
            if item.name.startswith("."):
                continue  # trash being deleted, temp files being written
            path = Path(item.path)
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            directory = item.is_dir(follow_symlinks=False)
            if directory != (kind == "tree"):
                continue
            size = _tree_size(path) if directory else st.st_size
            out.entries.append(Entry(kind, path, size, st.st_mtime, _in_use(path, directory)))
    return out


# ----------------------------------------------------------------------------- pruning
def _remove(entry: Entry) -> bool:
    """Remove *entry* unless a process holds it (checked under an exclusive lock); True when it is gone."""
    if fcntl is None:
        return False
    directory = entry.kind == "tree"
    try:
        fd = _open_entry(entry.path, directory)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        if not _same_file(entry.path, fd):
            return False  # replaced since it was listed: that one is new
        if directory:
            trash = entry.path.with_name(f"{TRASH_PREFIX}{entry.path.name}-{os.getpid()}-{time.monotonic_ns()}")
            os.rename(entry.path, trash)
        else:
            os.unlink(entry.path)
    finally:
        os.close(fd)
    if directory:
        shutil.rmtree(trash, ignore_errors=True)
    return True


def _empty_trash(root: Path) -> None:
    """Trees a killed prune renamed away but never finished deleting."""
    try:
        items = list(os.scandir(root / "trees"))
    except OSError:
        return
    for item in items:
        if item.name.startswith(TRASH_PREFIX) and item.is_dir(follow_symlinks=False):
            shutil.rmtree(item.path, ignore_errors=True)


def prune(*, older_than: float | None = None, max_size: int | None = None, root: Path | None = None) -> Pruned:
    """Remove cache entries no process is using.

    With *older_than* (seconds), those not used for that long; with *max_size* (bytes), then the least recently
    used until the cache fits; with neither, every one not in use.  Entries in use are never removed (they are
    reported); removing one only costs the next load that needs it the time to write it again.
    """
    current = usage(root)
    _empty_trash(current.root)
    out = Pruned()
    entries = sorted(current.entries, key=lambda e: e.last_used)
    total = current.size
    now = time.time()
    for entry in entries:
        if older_than is None and max_size is None:
            wanted = True
        else:
            wanted = (older_than is not None and entry.last_used < now - older_than) or \
                (max_size is not None and total > max_size)
        if not wanted:
            continue
        if entry.in_use or not _remove(entry):
            out.kept_in_use.append(entry)
            continue
        out.removed.append(entry)
        total -= entry.size
    out.size_after = total
    return out


def settle(max_size: int | None = None, repo: Any = None) -> Pruned | None:
    """After a load: if this process wrote to the cache, keep it under *max_size* (default: the configured
    ``gitpack.cacheMaxSize``) by removing least-recently-used entries no one is using.  Never raises."""
    global _wrote
    if not _wrote:
        return None
    _wrote = False
    try:
        limit = max_size if max_size is not None else configured_max_size(repo)
        return prune(max_size=limit)
    except Exception:  # keeping the cache small must never fail the load that just worked
        return None


def configured_max_size(repo_path: Any = None) -> int:
    """``gitpack.cacheMaxSize`` as git sees it here (repository, user, system), else 5 GB; *repo_path* is a
    path or an open ``Repo``."""
    from ..errors import GitpackError
    from ..git import Repo
    from ..git.repo import config_all
    from ..sizes import setting

    try:
        with Repo.discover(repo_path) as repo:
            values = config_all(repo, CONFIG_KEY)
    except GitpackError:
        values = config_all(None, CONFIG_KEY)
    return setting(CONFIG_KEY, values[-1] if values else None, DEFAULT_MAX_SIZE)

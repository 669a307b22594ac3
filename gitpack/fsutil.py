"""Files a crash must never leave half-written or behind: owned temp names, atomic writes, directory fsync.

Every temp file gitpack makes (an archive being written, a private index, a
commit message, a cache listing) carries ``<pid>@<host>~`` in its name.  The
next save that looks in that directory removes the ones whose owner, a process
on this host, is gone; others (another host sharing the directory, a name with
no owner) only after an hour without writes.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskError, disk_advice

TEMP_MARK = ".gitpack-tmp-"  # in the name of every archive temp file
_HOST = re.sub(r"[^A-Za-z0-9.\-]", "_", socket.gethostname())[:64] or "host"
_OWNER = re.compile(r"(\d+)@([A-Za-z0-9.\-_]+)~")
STALE_SECONDS = 3600.0


def owner_tag() -> str:
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


def is_stale(path: Path, older_than: float = STALE_SECONDS) -> bool:
    """Whether a temp file was left by a process that is gone (see the module docstring)."""
    found = _OWNER.search(path.name)
    if found and found.group(2) == _HOST:
        pid = int(found.group(1))
        if pid != os.getpid() and not _process_alive(pid):
            return True
    try:
        return path.lstat().st_mtime < time.time() - older_than
    except OSError:
        return False


def remove_stale(directory: Path, pattern: str, older_than: float = STALE_SECONDS) -> int:
    """Remove the stale temp files (and directories) in *directory* whose names match the glob *pattern*;
    returns how many were removed."""
    import shutil

    try:
        entries = list(directory.glob(pattern))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        try:
            if is_stale(entry, older_than):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
                removed += 1
        except OSError:
            pass
    return removed


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EIO})


def disk_error(exc: OSError, path: str | os.PathLike, hint: str = "") -> DiskError:
    """One line for a failed write: the path, what the OS said, and what to do."""
    reason = exc.strerror or str(exc)
    advice = disk_advice(reason) or "check the disk and try again"
    return DiskError(f"cannot write {path}: {reason}; {advice}{hint}")


@contextmanager
def writing(path: str | os.PathLike, hint: str = "") -> Iterator[None]:
    """Turn a full disk, a read-only filesystem or a missing permission while writing under *path* into one
    :class:`~gitpack.errors.DiskError` line naming it (other errors pass through)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        named = exc.filename if exc.filename and TEMP_MARK.strip(".") not in str(exc.filename) else path
        raise disk_error(exc, named, hint) from None


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, racing other threads' file creation)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(dest: Path) -> int:
    """The mode a file written to *dest* should get: the replaced file's, else 0666 less the umask (as open())."""
    try:
        return dest.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


@contextmanager
def removed_on_failure(tmp: str | os.PathLike) -> Iterator[None]:
    """Remove the temp file *tmp* if the block fails (or is interrupted), then let the error go on: a write
    that does not finish leaves nothing behind, not even its temp file."""
    try:
        yield
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write(dest: Path, data: bytes) -> None:
    """Write *dest* whole or not at all: a temp file beside it, renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=".gitpack-tmp-" + owner_tag(), dir=str(dest.parent))
    with removed_on_failure(tmp):
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)


def fsync_dir(path: Path) -> None:
    """Make a rename in *path* durable (best effort: some filesystems refuse directory fsync)."""
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

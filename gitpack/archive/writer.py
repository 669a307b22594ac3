"""Writing an archive: members hashed and written straight from memory by worker threads, then sealed.

Until :meth:`ArchiveWriter.publish` nothing at the destination changes: the
archive is written to a temp file beside it (named with its owner, see
:mod:`gitpack.fsutil`), fsynced, and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import ArchiveError
from ..fsutil import TEMP_MARK, disk_error, file_mode, fsync_dir, owner_tag, remove_stale
from .format import (
    _MEMBER_NAME,
    CHUNK,
    DIGEST_KEY,
    FLUSH_EVERY,
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    TAIL_MAGIC,
    TRAILER,
    Member,
    align,
    hash_step,
    io_workers,
    new_hasher,
    payload_digest,
    sealed_manifest,
)


class DeferredBuffer:
    """A member's bytes that exist only once asked for, such as a device tensor's copy in host memory.

    The writer asks (:meth:`materialise`) on a worker thread right before
    hashing and writing them, so at most one such copy per worker exists at a
    time: saving a model from a GPU never holds a second copy of it in RAM.
    """

    nbytes: int

    def materialise(self):
        raise NotImplementedError


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

    *version* is the archive format to write: the current one, or 1 where an
    archive of that format is copied (``export --portable``) and its sha256
    digests must stay what its commit vouches for.
    """

    def __init__(self, dest: str | os.PathLike, *, workers: int | None = None, temp_dir: Path | None = None,
                 version: int = FORMAT_VERSION):
        if version not in DIGEST_KEY:
            raise ValueError(f"cannot write archive format {version}")
        self.version = version
        self.algorithm = DIGEST_KEY[version]
        # Through a symlink to its target, as open() and torch.save write (a rename would replace the link).
        self.dest = Path(os.path.realpath(dest))
        if self.dest.is_dir():
            raise ArchiveError(f"{self.dest} is a directory; give a file path for the archive")
        if os.path.lexists(self.dest) and not self.dest.is_file():
            raise ArchiveError(
                f"{self.dest} exists and is not a regular file (a device, socket or dangling link); give another path"
            )
        if not self.dest.parent.is_dir():
            raise ArchiveError(f"directory {self.dest.parent} does not exist; create it first")
        # *temp_dir* (same filesystem): where a half-written archive is out of sight (the repository's .git
        # when the destination is in its working tree: never in `git status`, `git add -A` or a snapshot).
        temp_dir = temp_dir or self.dest.parent
        remove_stale(temp_dir, ".*" + TEMP_MARK + "*")
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + self.dest.name + TEMP_MARK + owner_tag(), dir=str(temp_dir))
            os.fchmod(fd, file_mode(self.dest))
        except OSError as exc:
            raise disk_error(exc, self.dest.parent) from None
        self.temp_path = Path(tmp)
        self._fd: int | None = fd
        self._end = HEADER.size
        self._queued: list[tuple[str, int, int, Future]] = []
        self._members: list[Member] = []
        self._names: set[str] = set()
        self._sealed_at: int | None = None
        self._aborted = False
        try:
            _pwrite_all(fd, memoryview(HEADER.pack(MAGIC, version, 0)), 0)
        except OSError as exc:
            os.close(fd)
            self.temp_path.unlink()
            raise disk_error(exc, self.dest) from None
        self._pool = ThreadPoolExecutor(workers or io_workers(), thread_name_prefix="gitpack-write")
        self._flusher = _Flusher(fd)

    def add(self, name: str, buffers: Iterable) -> None:
        """Queue a member made of *buffers* (bytes-like, contiguous, or :class:`DeferredBuffer`) to be hashed and
        written, one after another: many small tensors are one member (see :mod:`gitpack.pickling.tensors`), so
        this costs one queued task per member, whatever it holds."""
        if not _MEMBER_NAME.fullmatch(name) or ".." in name.split("/"):
            raise ValueError(f"bad member name {name!r}")
        if name in self._names:
            raise ValueError(f"member {name!r} added twice")
        if self._sealed_at is not None:
            raise ValueError("archive is sealed; no more members can be added")
        views = [b if isinstance(b, DeferredBuffer) else memoryview(b).cast("B") for b in buffers]
        size = sum(v.nbytes for v in views)
        offset = align(self._end)
        self._end = offset + size
        self._names.add(name)
        self._queued.append((name, offset, size, self._pool.submit(self._hash_and_write, views, offset, size)))

    def _hash_and_write(self, views: list, offset: int, size: int) -> str:
        """Hash and write one member: large buffers chunk by chunk (each chunk hashed, then written while it is
        still in the cache), small ones (a pack of small tensors) gathered into one staging chunk first, so that
        20,000 biases cost a few writes and hash updates, not 20,000."""
        fd = self._open_fd  # abort() and publish() close it only after the workers finish
        h = new_hasher(self.algorithm, size)
        step = hash_step(self.algorithm, size)
        staged = bytearray()

        def put(chunk) -> None:
            nonlocal offset
            h.update(chunk)  # reads the chunk into the cache; the write below copies it from there
            _pwrite_all(fd, memoryview(chunk), offset)
            offset += len(chunk)
            self._flusher.wrote(len(chunk))

        for view in views:
            if self._aborted:
                return ""
            if isinstance(view, DeferredBuffer):
                expected = view.nbytes
                view = memoryview(view.materialise()).cast("B")
                if len(view) != expected:
                    raise ValueError(f"a deferred buffer promised {expected} bytes and gave {len(view)}")
            if len(view) < CHUNK:
                staged += view
                if len(staged) >= CHUNK:
                    put(staged)
                    staged = bytearray()
                continue
            if staged:
                put(staged)
                staged = bytearray()
            for i in range(0, len(view), step):
                if self._aborted:
                    return ""
                put(view[i : i + step])
            view = None  # a deferred copy is freed before the next one is made
        if staged:
            put(staged)
        return h.hexdigest()

    @property
    def members(self) -> list[Member]:
        """Every member added so far, in file order, with its digest (waits for queued writes)."""
        for name, offset, size, future in self._queued:
            try:
                digest = future.result()
            except OSError as exc:
                raise disk_error(exc, self.dest) from None
            self._members.append(Member(name, offset, size, digest, self.algorithm))
        self._queued.clear()
        return list(self._members)

    def payload_digest(self) -> str:
        return payload_digest(self.members)

    def seal(self, manifest: dict[str, Any]) -> None:
        """Write manifest and trailer after the members and fsync; may be called again to replace them."""
        manifest = sealed_manifest(manifest, self.members, self.version)
        blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        fd = self._open_fd
        if self._sealed_at is None:
            self._sealed_at = align(self._end)
        try:
            os.ftruncate(fd, self._sealed_at)
            tail = TRAILER.pack(self._sealed_at, len(blob), hashlib.sha256(blob).digest(), TAIL_MAGIC)
            _pwrite_all(fd, memoryview(blob + tail), self._sealed_at)
            self._flusher.stop()
            if self._flusher.error is not None:
                raise self._flusher.error
            os.fsync(fd)
        except OSError as exc:
            raise disk_error(exc, self.dest) from None

    @property
    def _open_fd(self) -> int:
        """The temp file's descriptor: set in __init__, None only once publish() or abort() closed it."""
        if self._fd is None:
            raise ValueError("archive is already published or aborted; nothing more can be written")
        return self._fd

    def publish(self) -> Path:
        """Atomically rename the sealed temp file over the destination."""
        if self._sealed_at is None:
            raise ValueError("seal the archive before publishing it")
        self._close()
        replaced = _open_replaced(self.dest)
        try:
            os.replace(self.temp_path, self.dest)
        except OSError as exc:
            raise disk_error(exc, self.dest) from None
        fsync_dir(self.dest.parent)
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

    def __enter__(self) -> ArchiveWriter:
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



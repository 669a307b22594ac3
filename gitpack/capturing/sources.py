"""Code as imported: the source of each of the user's modules, kept from the moment Python imports it.

A three-day run saves a checkpoint every hour while its author edits
``model.py``.  The objects in memory still run the code imported on day one;
the file on disk does not say what that was.  So once gitpack is imported
(before the model's modules), every module Python imports from a file outside
the standard library and site-packages has its source bytes kept here, and a
save pins those bytes into the snapshot wherever the file on disk has changed
since (:func:`imported_differences`).  The snapshot then holds exactly the
code that trained the model, and the save need not refuse it as stale.

What it costs the import: nothing read twice.  Where Python compiles the
source (no valid ``.pyc``), it hands the bytes to ``source_to_code`` and they
are kept from there.  Where a ``.pyc`` is valid Python never reads the source;
it only stats it (``path_stats``), and that stat is kept (a dict entry and a deque append, nothing that
wakes a thread mid-burst): a reader thread, started with gitpack,
reads the file once imports pause (50 ms), and keeps the bytes only if the file still has the
size and modification time Python validated the ``.pyc`` against (else that
module's source as imported is unknown, and a save that finds it edited
refuses as stale).  The script run as ``__main__`` is read by the
interpreter, not imported: it is read when gitpack is imported.  A save first
waits for the reader, then reads each recorded file once to compare.
``scripts/bench_imports.py`` measures both costs.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

_sources: dict[str, bytes] = {}  # absolute path as imported -> source bytes
_stats: dict[str, tuple[float, int]] = {}  # absolute path -> (mtime, size) Python saw at import
_lock = threading.Lock()
# Paths for the reader thread.  A deque, not a queue.Queue: an import only appends (atomic, no lock), and
# whoever drains holds _drain_lock, so a wait() that drains returns only once every read in flight is done.
_queue: deque[str] = deque()
_drain_lock = threading.Lock()
_reader: threading.Thread | None = None
_originals: dict[str, Callable[..., Any]] = {}
_skip: tuple[str, ...] | None = None  # path prefixes never recorded: libraries, gitpack itself, its cache


def install() -> None:
    """Start recording (idempotent; gitpack does it when imported)."""
    with _lock:
        if _originals:
            return
        loader = importlib.machinery.SourceFileLoader
        _originals["path_stats"] = loader.path_stats
        _originals["source_to_code"] = loader.source_to_code
        # The two calls every file import makes: one stats the source, the other compiles it when no .pyc will do.
        loader.path_stats = _path_stats  # type: ignore[method-assign]
        loader.source_to_code = _source_to_code  # type: ignore[method-assign]
    _skipped()  # now, not inside some later import
    os.register_at_fork(after_in_child=_after_fork)
    # Started now, blocked until there is something to read: starting a thread inside the user's first
    # import burst cost that burst most of a millisecond on a busy machine (scripts/bench_imports.py).
    _start_reader()
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if isinstance(main_file, str) and main_file.endswith(".py"):
        try:
            _path_stats(None, os.path.abspath(main_file))
        except OSError:
            pass


def _recorded(path: Any) -> bool:
    return isinstance(path, str) and path.endswith(".py") and _skip is not None and not path.startswith(_skip)


def _path_stats(self: Any, path: str) -> dict[str, Any]:
    global _last_put
    st = os.stat(path)
    try:
        if _recorded(path) and path not in _stats:
            # The cheapest bookkeeping that works: every import of the user's modules passes here.
            _stats[path] = (st.st_mtime, st.st_size)
            _last_put = time.monotonic()
            _queue.append(path)
            if _reader_asleep:  # only after seconds without imports: the one wake-up of a burst
                _wake.set()
            elif _reader is None:  # a forked child's first import
                _start_reader()
    except Exception:  # recording must never break an import
        pass
    return {"mtime": st.st_mtime, "size": st.st_size}


def _source_to_code(self: Any, data: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        if _recorded(path) and isinstance(data, (bytes, bytearray, memoryview)):
            with _lock:
                _sources[path] = bytes(data)  # exactly what is compiled
    except Exception:
        pass
    return _originals["source_to_code"](self, data, path, *args, **kwargs)


def _start_reader() -> None:
    global _reader
    if _reader is None or not _reader.is_alive():
        with _lock:
            if _reader is None or not _reader.is_alive():
                _reader = threading.Thread(target=_read_queued, name="gitpack-sources", daemon=True)
                _reader.start()


_QUIET_S = 0.05  # the reader reads once imports have paused this long: it never competes with an import burst
_IDLE_POLLS = 100  # polls with nothing queued (5 s) before the reader blocks until the next import wakes it
_last_put = 0.0
_wake = threading.Event()
_reader_asleep = False


def _read_queued() -> None:
    """Poll while imports may come (an import then costs an append, and wakes nothing); after a quiet spell,
    block until an import sets :data:`_wake`.  The flag is set before the queue is checked and the import
    appends before it reads the flag, so a path is never left unread with the reader asleep."""
    global _reader_asleep
    idle = 0
    while True:
        if idle >= _IDLE_POLLS:
            _reader_asleep = True
            if not _queue:
                _wake.wait()
            _wake.clear()
            _reader_asleep = False
            idle = 0
        time.sleep(_QUIET_S)
        if not _queue:
            idle += 1
        elif time.monotonic() - _last_put >= _QUIET_S:
            idle = 0
            _drain()


def _drain() -> None:
    """Read every queued file (in whichever thread asks: the reader, or a save that cannot wait for it)."""
    with _drain_lock:
        while True:
            try:
                path = _queue.popleft()
            except IndexError:
                return
            try:
                with _lock:
                    wanted = None if path in _sources else _stats.get(path)
                if wanted is not None:
                    with open(path, "rb") as fh:
                        data = fh.read()
                        st = os.fstat(fh.fileno())
                    if (st.st_mtime, st.st_size) == wanted:  # what Python validated its .pyc against
                        with _lock:
                            _sources.setdefault(path, data)
            except Exception:  # unreadable now: its source as imported stays unknown
                pass


def _after_fork() -> None:
    """A forked child (a DataLoader worker) has no reader thread: start afresh with what is still unread."""
    global _queue, _reader, _lock, _drain_lock, _wake, _reader_asleep
    _lock = threading.Lock()
    _drain_lock = threading.Lock()
    _reader = None
    _reader_asleep = False
    _queue = deque(p for p in _stats if p not in _sources)
    _wake = threading.Event()
    if _queue:
        _start_reader()


def wait() -> None:
    """Until every file recorded so far has been read: what is still queued is read here and now (and a read
    the reader thread has in flight is finished first: both drain under one lock)."""
    _drain()


def _skipped() -> tuple[str, ...]:
    """Path prefixes never recorded (libraries, gitpack itself, its cache of snapshots), as given and resolved."""
    global _skip
    from ..isolation import cache_root
    from .records import library_dirs

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    prefixes = [*library_dirs(), here, str(cache_root())]
    found = {os.path.join(variant(p.rstrip(os.sep)), "") for p in prefixes for variant in (os.path.abspath,
                                                                                               os.path.realpath)}
    _skip = tuple(sorted(found))
    return _skip


def imported_source(path: str | os.PathLike) -> bytes | None:
    """The source of *path* as it was imported in this process, or None when it was not recorded."""
    wait()
    with _lock:
        found = _sources.get(os.path.abspath(path))
        if found is None:
            real = os.path.realpath(path)
            found = next((b for p, b in _sources.items() if os.path.realpath(p) == real), None)
        return found


def imported_differences(root: Path) -> dict[str, bytes]:
    """``{path relative to *root*: source as imported}`` for every recorded file under *root* that differs on
    disk now (edited, or deleted, since it was imported).  A file is under *root* when the path Python imported
    it by is (the root itself may be given through a symlink)."""
    wait()
    prefixes = tuple({os.path.join(os.path.abspath(root), ""), os.path.join(os.path.realpath(root), "")})
    with _lock:
        recorded = [(p, b) for p, b in _sources.items() if p.startswith(prefixes)]
    out: dict[str, bytes] = {}
    for path, data in recorded:
        prefix = next(p for p in prefixes if path.startswith(p))
        rel = Path(path[len(prefix):]).as_posix()
        try:
            with open(path, "rb") as fh:
                now: bytes | None = fh.read()
        except OSError:
            now = None
        if now != data:
            out[rel] = data
    return out

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
it only stats it (``path_stats``), and that stat is kept: a reader thread
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
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_sources: dict[str, bytes] = {}  # absolute path as imported -> source bytes
_stats: dict[str, tuple[float, int]] = {}  # absolute path -> (mtime, size) Python saw at import
_lock = threading.Lock()
_queue: queue.Queue[str] = queue.Queue()  # paths for the reader thread
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
            with _lock:
                _stats[path] = (st.st_mtime, st.st_size)
            _last_put = time.monotonic()
            _queue.put(path)
            _pending.set()
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


_QUIET_S = 0.05  # the reader starts once imports have paused this long: it never competes with an import burst
_last_put = 0.0
_pending = threading.Event()


def _read_queued() -> None:
    while True:
        _pending.wait()
        while time.monotonic() - _last_put < _QUIET_S:
            time.sleep(_QUIET_S)
        _pending.clear()
        _drain()


def _drain() -> None:
    """Read every queued file (in whichever thread asks: the reader, or a save that cannot wait for it)."""
    while True:
        try:
            path = _queue.get_nowait()
        except queue.Empty:
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
        finally:
            _queue.task_done()


def _after_fork() -> None:
    """A forked child (a DataLoader worker) has no reader thread: start afresh with what is still unread."""
    global _queue, _reader, _lock, _pending
    _lock = threading.Lock()
    _reader = None
    _queue = queue.Queue()
    _pending = threading.Event()
    for path in [p for p in _stats if p not in _sources]:
        _queue.put(path)
    if not _queue.empty():
        _pending.set()
        _start_reader()


def wait() -> None:
    """Until every file recorded so far has been read: what is still queued is read here and now."""
    _drain()
    _queue.join()


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

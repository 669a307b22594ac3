"""Fault in a fresh read buffer's pages with one ``madvise`` before a member's bytes are copied into it.

A verified load of a large model spends more CPU on page faults than on hashing. Its storages are fresh
memory: a 404 MB model is about 98,000 pages of 4 KiB that the kernel must map and zero one fault at a time,
as ``pread`` copies into them. On the 2-core benchmark machine that is about 130 ms of CPU, more than BLAKE3
over the same bytes (about 100 ms). ``MADV_POPULATE_WRITE`` (Linux 5.14) maps the whole range in one call,
with no fault per page. Measured on that machine, 24 members of 16 MiB read and hashed on two worker threads
into fresh memory took a median of 110 ms with it (in windows of 1 MiB) and 134-138 ms without; one member
of 384 MiB on one thread, 204-207 ms against 232-238 (``scripts/bench.py`` gives the load's own figures).

Nothing else changes. The memory is still the allocator's and torch's, and no byte of it is written: the
call only maps pages (a reused page keeps its old bytes until the read overwrites them). Whether the kernel
knows the call is asked once, with an empty range; on a system without it nothing is ever advised. A call
that fails for one buffer (memory that cannot be populated, say, or none left) leaves its pages to be
faulted by the copy as before, which reports a real shortage itself, and the next buffer is advised again.

The reader advises a window of :data:`WINDOW` bytes at a time, just ahead of its copy, not a whole member:
pages zeroed long before the copy reaches them have left the cache by then (whole members took 117-120 ms
and 217-223 ms in the runs above), and a reader being closed would wait for a multi-gigabyte call.

Huge pages were tried and left out. ``MADV_HUGEPAGE`` made the same reads another 6% faster, but it stalled
one load for 0.9 s in memory compaction, and it marks the allocator's heap for the rest of the process.
"""

from __future__ import annotations

import mmap
import sys
from typing import Any

MADV_POPULATE_WRITE = 23  # <linux/mman.h>; Python's mmap module offers it only for its own mappings
WINDOW = 1 << 20  # bytes advised at a time, just ahead of the copy (256 KiB to 16 MiB tried: 1 MiB did best)
MIN_BYTES = 64 << 10  # below this the faults cost about what the call does
_PAGE = mmap.PAGESIZE
_madvise: Any = None  # libc's madvise, found and probed on first use; False where the kernel lacks the advice


def populate(buffer: memoryview) -> None:
    """Map every whole page of the writable *buffer* now, in one call; nothing where that is not supported,
    for small buffers, or for what is not one writable block of memory."""
    if buffer.nbytes < MIN_BYTES:
        return
    call = _madvise_call()
    if not call:
        return
    import ctypes

    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    except (TypeError, ValueError):  # read-only or strided: nothing to advise, the read copes
        return
    start = -(-address // _PAGE) * _PAGE  # madvise takes whole pages: the ones inside the buffer
    end = (address + buffer.nbytes) // _PAGE * _PAGE
    if end > start:
        call(start, end - start, MADV_POPULATE_WRITE)  # a failure leaves the pages to fault as they would have


def _madvise_call() -> Any:
    global _madvise
    if _madvise is None:
        _madvise = _probed_madvise()  # one assignment: a thread never sees a half-made answer
    return _madvise


def _probed_madvise() -> Any:
    """libc's madvise if the kernel knows MADV_POPULATE_WRITE, else False.  An empty range is the probe: the
    kernel checks the advice before the range, and an empty range is then done (0) with nothing touched."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).madvise  # ctypes releases the GIL while the kernel works
    except (OSError, AttributeError):
        return False
    call.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    call.restype = ctypes.c_int
    return call if call(0, 0, MADV_POPULATE_WRITE) == 0 else False

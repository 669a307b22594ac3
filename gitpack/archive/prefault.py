"""Fault in a fresh read buffer's pages with one ``madvise`` before a member's bytes are copied into it.

A verified load of a large model spends more CPU on page faults than on hashing. Its storages are fresh
memory: a 404 MB model is about 98,000 pages of 4 KiB that the kernel must map and zero one fault at a time,
as ``pread`` copies into them. On the 2-core benchmark machine that is about 130 ms of CPU, more than BLAKE3
over the same bytes (about 100 ms). ``MADV_POPULATE_WRITE`` (Linux 5.14) maps the whole range in one call,
with no fault per page. Measured on that machine, 24 members of 16 MiB read and hashed on two worker threads
into fresh memory took a median of 143 ms with it and 167 ms without (``scripts/bench.py`` gives the load's
own figures).

Nothing else changes. The memory is still the allocator's and torch's: the same pages, zero until the read
fills them. A kernel or system without the call answers EINVAL or ENOSYS once and is not asked again; any
other failure (say, no memory) leaves the pages to be faulted by the copy as before, which reports a real
shortage itself.

Huge pages were tried and left out. ``MADV_HUGEPAGE`` made the same reads another 6% faster, but it stalled
one load for 0.9 s in memory compaction, and it marks the allocator's heap for the rest of the process.
"""

from __future__ import annotations

import errno
import mmap
import sys
from typing import Any

MADV_POPULATE_WRITE = 23  # <linux/mman.h>; Python's mmap module offers it only for its own mappings
MIN_BYTES = 1 << 20  # below this the faults cost less than the call
_PAGE = mmap.PAGESIZE
_madvise: Any = None  # libc's madvise, found on first use; False where there is none to ask


def populate(buffer: memoryview) -> None:
    """Map every whole page of the writable *buffer* now, in one call (nothing on other systems or small ones)."""
    if buffer.nbytes < MIN_BYTES or buffer.readonly:
        return
    call = _madvise_call()
    if not call:
        return
    import ctypes

    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    except (TypeError, ValueError):  # not one writable block of memory: nothing to advise, the read copes
        return
    start = -(-address // _PAGE) * _PAGE  # madvise takes whole pages: the ones inside the buffer
    end = (address + buffer.nbytes) // _PAGE * _PAGE
    if end > start and call(start, end - start, MADV_POPULATE_WRITE) != 0:
        if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS):  # before Linux 5.14, or unmappable memory: stop asking
            _forget()


def _madvise_call() -> Any:
    global _madvise
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                call = ctypes.CDLL(None, use_errno=True).madvise  # releases the GIL while the kernel works
                call.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                call.restype = ctypes.c_int
                _madvise = call
            except (OSError, AttributeError):
                pass
    return _madvise


def _forget() -> None:
    global _madvise
    _madvise = False

"""Prefaulting a read buffer: its pages are mapped in one call, none of its bytes change, reads stay exact.

The kernel's own count of resident pages (``/proc/self/statm``) is the witness: a fresh anonymous mapping
costs no memory until its pages are touched, and ``populate`` is what touches them here.
"""

from __future__ import annotations

import mmap
import os
import sys

import pytest

from gitpack.archive import ArchiveReader, ArchiveWriter, prefault

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_WRITE is Linux's")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * mmap.PAGESIZE


def _fresh(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _grown_by_populate(size: int, item_format: str = "B") -> int:
    """Bytes that became resident when a fresh mapping of *size* bytes, seen as items of *item_format*, was
    populated."""
    region = _fresh(size)
    view = memoryview(region).cast(item_format)
    before = _resident_bytes()
    prefault.populate(view)
    grown = _resident_bytes() - before
    view.release()
    region.close()
    return grown


@linux_only
@pytest.mark.parametrize("item_format", ["B", "Q"])  # "Q": a length in 8-byte items, and all its bytes advised
def test_a_large_fresh_buffer_is_resident_after_populate(item_format):
    if not prefault._madvise_call():
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")
    size = 64 << 20
    grown = _grown_by_populate(size, item_format)
    assert grown >= size * 0.9, f"populate mapped {grown} of {size} bytes"


@linux_only
def test_a_small_buffer_is_left_to_fault_on_its_own():
    assert _grown_by_populate(prefault.MIN_BYTES // 2) < prefault.MIN_BYTES // 4


def test_populate_never_changes_a_byte():
    """Some advice discards pages (MADV_DONTNEED zeroes private ones); this one must only map them."""
    size = 4 * prefault.MIN_BYTES + 123
    data = bytearray(os.urandom(1 << 16) * (size >> 16)) + bytearray(size % (1 << 16))
    expected = bytes(data)
    prefault.populate(memoryview(data)[5:])  # an unaligned start: only the whole pages inside are advised
    assert data == expected


def test_a_read_only_buffer_is_refused_by_nothing_and_left_alone():
    data = bytes(2 * prefault.MIN_BYTES)
    prefault.populate(memoryview(data))  # the reader never passes one; nothing may fail if it did
    assert data == bytes(2 * prefault.MIN_BYTES)


def test_members_read_into_fresh_buffers_match_what_was_written(tmp_path):
    payload = os.urandom(1 << 20) * 3 + os.urandom(4097)
    writer = ArchiveWriter(tmp_path / "a.gitpack")
    writer.add("storages/0", [payload])
    writer.commit({"note": "prefault"})
    with ArchiveReader(tmp_path / "a.gitpack") as reader:
        region = _fresh(len(payload))
        reader.readinto_async("storages/0", region).result()
        assert region[:] == payload
        region.close()


def test_a_strided_buffer_is_left_alone():
    data = bytearray(4 * prefault.MIN_BYTES)
    every_other = memoryview(data)[::2]  # not one block of memory: there is no range to advise
    prefault.populate(every_other)
    assert data == bytearray(4 * prefault.MIN_BYTES)

"""Prefaulting a read buffer: its pages are mapped in one call, none of its bytes change, reads stay exact.

The kernel's own count of resident pages (``/proc/self/statm``) is the witness: a fresh anonymous mapping
costs no memory until its pages are touched, and ``populate`` is what touches them here.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

import pytest

from gitpack.archive import ArchiveReader, ArchiveWriter, prefault


@pytest.fixture(autouse=True)
def _probed_afresh(monkeypatch):
    """Each test starts from an unprobed module, so no earlier test's outcome decides whether it runs."""
    monkeypatch.setattr(prefault, "_madvise", None)


needs_populate = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not prefault._probed_madvise(),
    reason="MADV_POPULATE_WRITE is Linux's, from 5.14")


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


@needs_populate
@pytest.mark.parametrize("item_format", ["B", "Q"])  # "Q": a length in 8-byte items, and all its bytes advised
def test_a_large_fresh_buffer_is_resident_after_populate(item_format):
    size = 64 << 20
    grown = _grown_by_populate(size, item_format)
    assert grown >= size * 0.9, f"populate mapped {grown} of {size} bytes"


@needs_populate
def test_a_small_buffer_is_left_to_fault_on_its_own():
    assert _grown_by_populate(prefault.MIN_BYTES // 2) < prefault.MIN_BYTES // 4


@needs_populate
def test_a_buffer_the_kernel_cannot_populate_does_not_turn_populate_off():
    """madvise refuses read-only memory (EINVAL here, as for driver memory); the next buffer is advised all the
    same, and nothing is raised."""
    size = 4 << 20
    region = _fresh(size)
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(address, size, mmap.PROT_READ) == 0
    writable_view_of_read_only_memory = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
    prefault.populate(writable_view_of_read_only_memory)
    assert _grown_by_populate(64 << 20) >= (64 << 20) * 0.9
    writable_view_of_read_only_memory.release()
    libc.mprotect(address, size, mmap.PROT_READ | mmap.PROT_WRITE)
    region.close()


def test_populate_never_changes_a_byte():
    """Some advice discards pages (MADV_DONTNEED zeroes private ones); this one must only map them."""
    size = 4 * prefault.WINDOW + 123
    data = bytearray(os.urandom(1 << 16) * (size >> 16)) + bytearray(size % (1 << 16))
    expected = bytes(data)
    prefault.populate(memoryview(data)[5:])  # an unaligned start: only the whole pages inside are advised
    assert data == expected


@pytest.mark.parametrize("view", [
    lambda: memoryview(bytes(4 * prefault.MIN_BYTES)),  # read-only
    lambda: memoryview(bytearray(4 * prefault.MIN_BYTES))[::2],  # not one block of memory
], ids=["read-only", "strided"])
def test_what_cannot_be_advised_is_left_alone_without_an_error(view):
    buffer = view()
    before = bytes(buffer)
    prefault.populate(buffer)  # the reader never passes one; a load must not fail if it did
    assert bytes(buffer) == before


def test_members_read_into_fresh_buffers_match_what_was_written(tmp_path):
    """Several windows, the last one partial, and a member that ends inside a page."""
    payload = os.urandom(1 << 20) * (2 * prefault.WINDOW >> 20) + os.urandom(prefault.WINDOW // 2 + 4097)
    writer = ArchiveWriter(tmp_path / "a.gitpack")
    writer.add("storages/0", [payload])
    writer.commit({"note": "prefault"})
    with ArchiveReader(tmp_path / "a.gitpack") as reader:
        region = _fresh(len(payload))
        reader.readinto_async("storages/0", region).result()
        assert region[:] == payload
        region.close()


def test_every_byte_of_a_member_read_in_large_steps_is_advised(tmp_path, monkeypatch):
    """A member large enough for the threaded hasher is read 8 MiB a step; each step's pages are advised, not
    just the first window of it."""
    from gitpack.archive import format

    size = format.PARALLEL_HASH_BYTES + 12345
    writer = ArchiveWriter(tmp_path / "big.gitpack")
    writer.add("storages/0", [bytes(size)])
    writer.commit({"note": "prefault"})
    advised: list[int] = []  # bytes of each range the reader advised
    real = prefault.populate
    monkeypatch.setattr(prefault, "populate", lambda view: (advised.append(view.nbytes), real(view)))
    with ArchiveReader(tmp_path / "big.gitpack") as reader:
        region = _fresh(size)
        reader.readinto("storages/0", region)
        region.close()
    assert sum(advised) == size

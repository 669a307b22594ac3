"""Tensor storage out of band: raw, aligned bytes in the archive, never in the pickle stream.

Mirrors what ``torch.save`` does with its zip records, minus the zip: a storage
shared by many tensors (or views) is written once and is shared again after
load.  A storage of :data:`PACK_LIMIT` bytes or more is one archive member
(``storages/<n>``, key ``"<n>"``); smaller ones are *packed*, 64-byte aligned,
into members of about :data:`PACK_BYTES` (``storages/pack-<j>``, key
``"pack-<j>:<offset>"``), so a model of 20,000 biases is a handful of members,
digests, writes and reads rather than 20,000 of each.  A loaded packed storage
is a slice of its pack's memory (read and verified once), so the pack's memory
lives as long as any of its tensors does.  torch is imported only when a
storage is actually met.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from ..archive import DeferredBuffer
from ..archive.format import ALIGN, align
from ..errors import ArchiveError, GitpackError
from ..manifest import STORAGE_PREFIX
from .gcpause import gc_paused
from .tensortable import MEMBER_NUMBER, PACK_PREFIX, Row, TableBuilder, TensorTable, is_pack, view_fits

READAHEAD = 256 << 20  # bytes read ahead of the unpickler; bounds host staging for device loads
PACK_LIMIT = 1 << 20  # storages smaller than this share pack members
PACK_BYTES = 16 << 20  # a pack is closed once it holds this much: several packs read and hash in parallel
_KEY = re.compile(f"({MEMBER_NUMBER})|{PACK_PREFIX}({MEMBER_NUMBER}):(0|[1-9][0-9]{{0,15}})")
_ZEROS = memoryview(bytes(ALIGN))


def storage_address(key: Any) -> tuple[str, int | None] | None:
    """``(member name, offset in it)`` of a storage key; offset None for a storage that is a whole member;
    None for a malformed key."""
    m = _KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        return None
    if m[1] is not None:
        return STORAGE_PREFIX + key, None
    return f"{STORAGE_PREFIX}{PACK_PREFIX}{m[2]}", int(m[3])


_TORCH_DTYPES: dict[str, Any] = {}


def torch_dtype(name: Any) -> Any:
    """The torch dtype named *name*, from a fixed table: never ``getattr(torch, name)``, which for a name like
    ``_dynamo`` would import a torch subsystem (and write to the temp directory) on the pickle's say-so."""
    found = _TORCH_DTYPES.get(name) if type(name) is str else None
    if found is not None:
        return found
    import torch

    from .policy import TORCH_DTYPE_SIZES

    found = getattr(torch, name, None) if isinstance(name, str) and name in TORCH_DTYPE_SIZES else None
    if not isinstance(found, torch.dtype):
        raise GitpackError(f"archive declares an unknown tensor dtype {str(name)[:40]!r}; is this torch too old?")
    _TORCH_DTYPES[name] = found
    return found


def is_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def is_storage(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(obj, torch.storage.TypedStorage) or torch.is_storage(obj)


TENSOR_KIND = "tensor"


class _Pack:
    """Small storages laid out in one member, each at a 64-byte aligned offset."""

    __slots__ = ("name", "items", "size")

    def __init__(self, name: str):
        self.name = name
        self.items: list[tuple[int, Any]] = []  # (offset, storage)
        self.size = 0


_DTYPE_NAMES: dict[Any, str] = {}  # torch dtype -> its name: one str object each, so the pickle memoizes it


def dtype_name(dtype: Any) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


class StorageCollector:
    """Turns storages met while pickling into persistent ids, places them in members, remembers them for writing."""

    def __init__(self):
        self.storages: dict[str, Any] = {}  # key -> UntypedStorage
        self._keys: dict[int, str] = {}
        self._addresses: dict[str, tuple[str, int]] = {}  # key -> (member, where the storage starts in it)
        self._dtypes: dict[int, Any] = {}
        self._units: list[Any] = []  # in first-use order: a key (a whole member) or a _Pack
        self._pack: _Pack | None = None
        self._packs = 0
        self.table = TableBuilder()

    def persistent_id(self, obj: Any) -> tuple:
        import torch

        if isinstance(obj, torch.storage.TypedStorage):
            storage, dtype, numel = obj._untyped_storage, obj.dtype, obj._size()
        else:
            storage, dtype, numel = obj, torch.uint8, obj.nbytes()
        key = self._key(storage, dtype)
        return ("storage", dtype_name(dtype), key, _location(storage), numel)

    def _key(self, storage: Any, dtype: Any) -> str:
        ptr = storage.data_ptr()
        if ptr != 0 and storage.device.type != "meta":
            seen = self._dtypes.setdefault(ptr, dtype)
            if seen != dtype:
                raise GitpackError(
                    "two tensors view the same storage as different dtypes; save a .clone() of one of them"
                )
        key = self._keys.get(storage._cdata)
        if key is None:
            key = self._keys[storage._cdata] = self._place(storage)
            self.storages[key] = storage
        return key

    def _place(self, storage: Any) -> str:
        nbytes = storage.nbytes()
        if nbytes >= PACK_LIMIT or nbytes == 0 or storage.device.type == "meta":
            key = str(len(self._keys))
            self._units.append(key)
            self._addresses[key] = (STORAGE_PREFIX + key, 0)
            return key
        pack = self._pack
        if pack is None or align(pack.size) + nbytes > PACK_BYTES:
            pack = self._pack = _Pack(f"{PACK_PREFIX}{self._packs}")
            self._packs += 1
            self._units.append(pack)
        offset = align(pack.size)
        pack.items.append((offset, storage))
        pack.size = offset + nbytes
        key = f"{pack.name}:{offset}"
        self._addresses[key] = (STORAGE_PREFIX + pack.name, offset)
        return key

    def tensor_id(self, obj: Any) -> int | None:
        """A plain dense tensor or parameter as its row in the tensor table (:mod:`.tensortable`), or None to
        pickle it torch's way.

        One small int instead of torch's three nested calls (``_rebuild_parameter(_rebuild_tensor_v2(storage,
        ...), ...)`` with two OrderedDicts), so a model of 20,000 small parameters pickles, passes the trust gate
        and loads with one row per tensor.  Anything unusual (a subclass, extra attributes, hooks, a sparse,
        quantized, conjugate or named tensor, a non-leaf) goes torch's way.
        """
        import torch

        kind = "parameter" if type(obj) is torch.nn.Parameter else "tensor" if type(obj) is torch.Tensor else None
        if kind is None or obj.layout is not torch.strided or obj.is_quantized or obj.is_conj() or obj.is_neg() \
                or obj.__dict__ or obj._backward_hooks or not obj.is_leaf or obj.device.type == "meta" \
                or any(n is not None for n in getattr(obj, "names", None) or ()):
            return None
        storage = obj.untyped_storage()
        dtype = obj.dtype
        name, location, offset, size, stride = (dtype_name(dtype), _location(storage), obj.storage_offset(),
                                                tuple(obj.size()), obj.stride())
        if not self.table.accepts(name, location, offset, size, stride):
            return None  # before its storage is keyed: torch's way keys it as that tensor's dtype
        unit, byte_offset = self._addresses[self._key(storage, dtype)]
        return self.table.append(Row(unit, byte_offset, storage.nbytes() // dtype.itemsize, name, location, offset,
                                     size, stride, bool(obj.requires_grad), kind))

    def table_member(self) -> bytes | None:
        """The tensor table member's bytes, or None when no tensor became a row."""
        return self.table.encode() if len(self.table) else None

    def unit_sizes(self) -> dict[str, int]:
        """Bytes of every storage member, by name (what :meth:`members` writes)."""
        out = {}
        for unit in self._units:
            if isinstance(unit, _Pack):
                out[STORAGE_PREFIX + unit.name] = unit.size
            else:
                out[STORAGE_PREFIX + unit] = int(self.storages[unit].nbytes())
        return out

    def members(self):
        """``(member name, buffers)`` for every storage member, in the order the pickle first uses them: a whole
        storage as a view of CPU memory (no copy) or a deferred host copy of device memory that the archive writer
        makes only when it writes it; a pack as its storages with zero padding between them."""
        for unit in self._units:
            if isinstance(unit, _Pack):
                buffers: list = []
                end = 0
                for offset, storage in unit.items:
                    if offset > end:
                        buffers.append(_ZEROS[: offset - end])
                    buffers.extend(self._buffers_of(storage))
                    end = offset + storage.nbytes()
                yield STORAGE_PREFIX + unit.name, buffers
            else:
                yield STORAGE_PREFIX + unit, self._buffers_of(self.storages[unit])

    def buffers(self, key: str):
        """The bytes of storage *key*, as buffers to write (see :meth:`members`)."""
        return self._buffers_of(self.storages[key])

    @staticmethod
    def _buffers_of(storage: Any) -> list:
        if storage.device.type == "meta" or storage.nbytes() == 0:
            return []
        if storage.device.type != "cpu":
            return [_HostCopy(storage)]
        return [_bytes_of(storage)]


class _HostCopy(DeferredBuffer):
    def __init__(self, storage):
        self.storage = storage
        self.nbytes = storage.nbytes()

    def materialise(self):
        return _bytes_of(self.storage.cpu())


def _bytes_of(storage) -> memoryview:
    """The memory of a CPU storage as a writable byte view, with no copy and no numpy.

    The view keeps *storage* alive (the ctypes array it is taken from holds it): a device tensor's host
    copy, made by :meth:`_HostCopy.materialise` and referenced by nothing else, would otherwise be freed
    while the archive writer still hashes and writes it (found on a GPU: a member's digest that did not
    match its bytes).
    """
    import ctypes

    size = storage.nbytes()
    if size == 0:
        return memoryview(bytearray())
    array = (ctypes.c_ubyte * size).from_address(storage.data_ptr())
    array._gitpack_owner = storage
    return memoryview(array).cast("B")


def _location(storage) -> str:
    device = storage.device
    return "cpu" if device.type == "cpu" else str(device)


class StorageLoader:
    """Rebuilds storages from archive members, once per key, honouring ``map_location`` like torch.

    A normal load reads each member straight into the memory of its final CPU
    storage (no intermediate copy; a packed storage is a slice of its pack's)
    and checks its digest before the storage is handed to the unpickler.  The
    unpickler asks for storages in file order, so the members after the one it
    waits for are already being read and hashed on the archive's worker threads
    (up to *readahead* bytes ahead), one core each.  With ``mmap=True`` the whole archive is mapped once (copy-on-write)
    and every storage is a slice of that mapping: nothing is read or hashed.
    """

    def __init__(self, reader, map_location=None, mmap: bool = False, readahead: int = READAHEAD):
        self.reader = reader
        self.map_location = map_location
        self.mmap = mmap
        self.readahead = readahead
        self._loaded: dict[tuple[str, int | None], Any] = {}  # (member, offset in a pack) -> storage
        self.table: TensorTable | None = None  # format 3: the archive's tensor table (see use_table)
        self._rows: list[Any] = []  # format 3: the tensor of each row, made on first use
        self._row_storages: list[tuple[Row, Any, Any] | None] = []  # format 3: each row decoded, with its storage
        self._taken: dict[str, int] = {}  # member -> bytes of the distinct storages read from it so far
        self._whole_file: Any = None  # with mmap: one torch storage mapping the whole archive, made on first use
        self._order = [m for name, m in reader.members.items() if name.startswith(STORAGE_PREFIX)]
        self._next = 0  # index in _order of the next member to schedule
        self._scheduled: dict[str, tuple[Any, Any, int]] = {}  # member name -> (storage, future, size)
        self._ready: dict[str, Any] = {}  # member name -> its verified storage (packs are sliced again and again)
        self._ahead = 0  # bytes scheduled and not yet handed out
        if not mmap and self._order and self._target("cpu") != "meta":
            # Start reading now: the pickle is scanned and unpickled while the first bytes arrive.
            self._schedule_through(None)

    def load(self, pid: tuple) -> Any:
        """The typed storage a format-2 ``('storage', ...)`` persistent id stands for."""
        import torch

        _, dtype_name, key, location, numel = pid
        dtype = torch_dtype(dtype_name)
        return torch.storage.TypedStorage(wrap_storage=self._storage(dtype, self._address(key), location, numel),
                                          dtype=dtype, _internal=True)

    def _address(self, key: Any) -> tuple[str, int | None]:
        address = storage_address(key)
        if address is None:
            raise ArchiveError(f"{self.reader.path}: a storage key {str(key)[:40]!r} is malformed; "
                               "the archive is corrupt")
        return address

    def _storage(self, dtype: Any, address: tuple[str, int | None], location: Any, numel: Any) -> Any:
        """The untyped storage at *address*, ``(member, offset in a pack or None)`` (read and verified once, then
        shared by every tensor that names it)."""
        import torch

        if type(numel) is not int or numel < 0:
            raise ArchiveError(f"{self.reader.path}: a storage has a malformed size; the archive is corrupt")
        location = str(location)
        storage = self._loaded.get(address)
        if storage is None:
            nbytes = numel * dtype.itemsize
            target = self._target(location)
            if location == "meta" or target == "meta":
                storage = torch.UntypedStorage(nbytes, device="meta")  # shape only: nothing to read
            else:
                storage = self._restore(self._read(address, nbytes), location, target)
            self._loaded[address] = storage
        return storage

    def tensor(self, pid: tuple) -> Any:
        """The tensor a format-2 ``('tensor', ...)`` persistent id stands for (its storage read and checked)."""
        _, dtype_name, key, location, numel, offset, size, stride, requires_grad, kind = pid
        dtype = torch_dtype(dtype_name)
        storage = self._storage(dtype, self._address(key), location, numel)
        return self._view(storage, dtype, offset, size, stride, requires_grad, kind)

    # ---------------------------------------------------------------- format 3: the tensor table
    def use_table(self, table: TensorTable) -> None:
        """Serve the rows of *table* as the pickle asks for them, once its rows pass :meth:`TensorTable.problem`
        (the gate's verdict, checked here too: a trusted load skips the policy, never the archive's structure)."""
        problem = table.problem()
        if problem:
            raise ArchiveError(f"{self.reader.path}: {problem}; the archive is corrupt")
        self.table = table
        self._rows = [None] * table.rows
        self._row_storages = [None] * table.rows

    def row_tensor(self, index: Any) -> Any:
        """The tensor of row *index*: one object per row, so a tensor shared at save is shared again."""
        rows = self._rows
        if type(index) is not int or not 0 <= index < len(rows):
            raise ArchiveError(f"{self.reader.path}: the pickle names a tensor row its tensor table of {len(rows)} "
                               "rows does not have; the archive is corrupt")
        found = rows[index]
        if found is None:
            row, dtype, storage = self._row_storage(index)
            found = rows[index] = self._view(storage, dtype, row.offset, row.size, row.stride, row.requires_grad,
                                             row.kind)
        return found

    def _row_storage(self, index: int) -> tuple[Row, Any, Any]:
        """Row *index* decoded, its torch dtype, and its storage (read and verified once)."""
        found = self._row_storages[index]
        if found is None:
            assert self.table is not None  # rows are only served after use_table
            row = self.table.row(index)
            dtype = torch_dtype(row.dtype)
            found = self._row_storages[index] = (
                row, dtype, self._storage(dtype, self._unit_address(row), row.location, row.numel))
        return found

    def read_table(self) -> None:
        """Read (and so verify) the storage of every row before unpickling starts; each row is decoded here once,
        and the unpickler makes its tensor from what this kept."""
        with gc_paused():  # tens of thousands of rows: nothing for the cyclic collector to find
            for index in range(self.table.rows if self.table is not None else 0):
                self._row_storage(index)

    @staticmethod
    def _unit_address(row: Row) -> tuple[str, int | None]:
        return row.unit, row.byte_offset if is_pack(row.unit) else None

    def _view(self, storage: Any, dtype: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
              kind: Any) -> Any:
        import torch

        if not view_fits(storage.nbytes(), offset, size, stride, dtype.itemsize):
            raise ArchiveError(f"{self.reader.path}: a tensor view lies beyond its storage; the archive is corrupt")
        try:
            tensor = torch.empty((0,), dtype=dtype, device=storage.device).set_(storage, offset, size, stride)
        except RuntimeError as exc:
            first_line = str(exc).splitlines()[0][:120]
            raise ArchiveError(f"{self.reader.path}: a tensor does not fit its storage ({first_line}); "
                               "the archive is corrupt") from None
        if kind == "parameter":
            return torch.nn.Parameter(tensor, requires_grad=requires_grad)
        if requires_grad:
            tensor.requires_grad_(True)
        return tensor

    def _read(self, address: tuple[str, int | None], nbytes: int):
        import torch

        name, offset = address
        member = self.reader.member(name)
        if offset is None and member.size != nbytes:
            raise ArchiveError(f"{self.reader.path}: storage {name} holds {member.size} bytes, "
                               f"its tensors need {nbytes}; the archive is corrupt")
        if offset is not None and (offset < 0 or offset % ALIGN or offset + nbytes > member.size):
            raise ArchiveError(f"{self.reader.path}: packed storage {name}:{offset} lies outside its member; "
                               "the archive is corrupt")
        # Distinct storages never overlap, so together they fit their member: else each overlapping one would be
        # copied on its own to a map_location device (a small pack standing for gigabytes of GPU memory).
        taken = self._taken[name] = self._taken.get(name, 0) + nbytes
        if taken > member.size:
            raise ArchiveError(f"{self.reader.path}: storages in {name} overlap; the archive is corrupt")
        start = offset or 0
        if self.mmap:
            if self._whole_file is None:
                self._whole_file = torch.UntypedStorage.from_file(
                    str(self.reader.path), shared=False, nbytes=self.reader.size
                )
            return self._whole_file[member.offset + start : member.offset + start + nbytes]
        whole = self._ready.get(name)
        if whole is None:
            self._schedule_through(name)
            whole, future, size = self._scheduled.pop(name)
            self._ahead -= size
            future.result()  # raises ArchiveError when the bytes do not match their digest
            self._ready[name] = whole
        return whole if offset is None else whole[start : start + nbytes]

    def _schedule_through(self, name: str | None) -> None:
        """Start reading members in file order until *name* (if any) is started and the readahead is full."""
        import torch

        while self._next < len(self._order):
            if (name is None or name in self._scheduled) and self._ahead >= self.readahead:
                return
            member = self._order[self._next]
            self._next += 1
            flat = torch.empty(member.size, dtype=torch.uint8)
            future = self.reader.readinto_async(member.name, _bytes_of(flat.untyped_storage()))
            self._scheduled[member.name] = (flat.untyped_storage(), future, member.size)
            self._ahead += member.size
        if name is not None and name not in self._scheduled:
            raise ArchiveError(f"{self.reader.path}: storage member {name!r} is not in the archive; it is corrupt")

    def _target(self, location: str) -> str | None:
        """Where *location*'s storages go, as torch reads ``map_location``; None for a callable."""
        ml = self.map_location
        if callable(ml):
            return None
        if isinstance(ml, dict):
            return str(ml.get(location, location))
        return location if ml is None else str(ml)

    def _restore(self, storage, location: str, target: str | None):
        """*storage*, read from the archive, where *target* (``_target(location)``) says it goes."""
        if callable(self.map_location):
            result = self.map_location(storage, location)
            if result is not None:
                return result
            return move_storage(storage, location, location)
        assert target is not None  # None only for a callable map_location, handled above
        return move_storage(storage, target, location)


def move_storage(storage, target: str, saved_at: str):
    import torch

    if storage.device.type == "meta":
        return storage
    if target == "cpu":  # nearly every load: no device string to parse, once per storage
        return storage
    try:
        device = torch.device(target)
    except RuntimeError:
        raise GitpackError(f"map_location names an unknown device {target!r}; use e.g. 'cpu' or 'cuda:0'") from None
    if device.type == "cpu":
        return storage
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GitpackError(
            f"tensors are to be loaded onto {target} (saved on {saved_at}) but CUDA is not available here; "
            "load with map_location='cpu'"
        )
    try:
        return storage.to(device=device)
    except (RuntimeError, AssertionError) as exc:
        raise GitpackError(
            f"cannot move a tensor saved on {saved_at} to {target}: {exc}; load with map_location='cpu'"
        ) from None


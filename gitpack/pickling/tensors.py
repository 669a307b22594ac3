"""Tensor storage out of band: raw, aligned bytes in the archive, never in the pickle stream.

Mirrors what ``torch.save`` does with its zip records, minus the zip: each
storage becomes one archive member, keyed so that a storage shared by many
tensors (or views) is written once and is shared again after load.  torch is
imported only when a storage is actually met.
"""

from __future__ import annotations

import sys
from typing import Any

from ..archive import DeferredBuffer
from ..errors import ArchiveError, GitpackError

STORAGE_PREFIX = "storages/"
READAHEAD = 256 << 20  # bytes read ahead of the unpickler; bounds host staging for device loads


def torch_dtype(name: Any) -> Any:
    """The torch dtype named *name*, from a fixed table: never ``getattr(torch, name)``, which for a name like
    ``_dynamo`` would import a torch subsystem (and write to the temp directory) on the pickle's say-so."""
    import torch

    from .policy import TORCH_DTYPE_SIZES

    found = getattr(torch, name, None) if isinstance(name, str) and name in TORCH_DTYPE_SIZES else None
    if not isinstance(found, torch.dtype):
        raise GitpackError(f"archive declares an unknown tensor dtype {str(name)[:40]!r}; is this torch too old?")
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
_PLAIN_TENSOR_KINDS = ("tensor", "parameter")


class StorageCollector:
    """Turns storages met while pickling into persistent ids, and remembers them for writing."""

    def __init__(self):
        self.storages: dict[str, Any] = {}  # key -> UntypedStorage
        self._keys: dict[int, str] = {}
        self._dtypes: dict[int, Any] = {}

    def persistent_id(self, obj: Any) -> tuple:
        import torch

        if isinstance(obj, torch.storage.TypedStorage):
            storage, dtype, numel = obj._untyped_storage, obj.dtype, obj._size()
        else:
            storage, dtype, numel = obj, torch.uint8, obj.nbytes()
        if storage.device.type != "meta" and storage.data_ptr() != 0:
            seen = self._dtypes.setdefault(storage.data_ptr(), dtype)
            if seen != dtype:
                raise GitpackError(
                    "two tensors view the same storage as different dtypes; save a .clone() of one of them"
                )
        key = self._keys.setdefault(storage._cdata, str(len(self._keys)))
        self.storages[key] = storage
        return ("storage", str(dtype).removeprefix("torch."), key, _location(storage), numel)

    def tensor_id(self, obj: Any) -> tuple | None:
        """A plain dense tensor or parameter as one persistent id, or None to pickle it torch's way.

        ``('tensor', dtype, storage key, location, storage numel, offset, size, stride, requires_grad, kind)``:
        one persistent id instead of torch's three nested calls (``_rebuild_parameter(_rebuild_tensor_v2(
        storage, ...), ...)`` with two OrderedDicts), so a model of 20,000 small parameters pickles, passes
        the trust gate and loads with one constant tuple per tensor.  Anything unusual (a subclass, extra
        attributes, hooks, a sparse, quantized, conjugate or named tensor, a non-leaf) goes torch's way.
        """
        import torch

        kind = "parameter" if type(obj) is torch.nn.Parameter else "tensor" if type(obj) is torch.Tensor else None
        if kind is None or obj.layout is not torch.strided or obj.is_quantized or obj.is_conj() or obj.is_neg() \
                or obj.__dict__ or obj._backward_hooks or not obj.is_leaf or obj.device.type == "meta" \
                or any(n is not None for n in getattr(obj, "names", None) or ()):
            return None
        storage = obj.untyped_storage()
        _, dtype, key, location, numel = self.persistent_id(torch.storage.TypedStorage(
            wrap_storage=storage, dtype=obj.dtype, _internal=True))
        return (TENSOR_KIND, dtype, key, location, numel, obj.storage_offset(), tuple(obj.size()), tuple(obj.stride()),
                bool(obj.requires_grad), kind)

    def buffers(self, key: str):
        """The bytes of storage *key*, as buffers to write: a view of CPU memory (no copy), or for
        a device storage a deferred host copy that the archive writer makes only when it writes it."""
        storage = self.storages[key]
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

    The view does not own the memory: callers keep *storage* alive while they use it
    (the collector holds every storage it hands out; the loader holds the storage it
    reads into).
    """
    import ctypes

    size = storage.nbytes()
    if size == 0:
        return memoryview(bytearray())
    return memoryview((ctypes.c_ubyte * size).from_address(storage.data_ptr())).cast("B")


def _location(storage) -> str:
    device = storage.device
    return "cpu" if device.type == "cpu" else str(device)


class StorageLoader:
    """Rebuilds storages from archive members, once per key, honouring ``map_location`` like torch.

    A normal load reads each member straight into the memory of its final CPU
    storage (no intermediate copy) and checks its digest before the storage is
    handed to the unpickler.  The unpickler asks for storages in file order, so
    the members after the one it waits for are already being read and hashed
    on the archive's worker threads (up to *readahead* bytes ahead), one core
    each.  With ``mmap=True`` the whole archive is mapped once (copy-on-write)
    and every storage is a slice of that mapping: nothing is read or hashed.
    """

    def __init__(self, reader, map_location=None, mmap: bool = False, readahead: int = READAHEAD):
        self.reader = reader
        self.map_location = map_location
        self.mmap = mmap
        self.readahead = readahead
        self._loaded: dict[str, Any] = {}
        self._whole_file: Any = None  # with mmap: one torch storage mapping the whole archive, made on first use
        self._order = [m for name, m in reader.members.items() if name.startswith(STORAGE_PREFIX)]
        self._next = 0  # index in _order of the next member to schedule
        self._scheduled: dict[str, tuple[Any, Any, int]] = {}  # member name -> (storage, future, size)
        self._ahead = 0  # bytes scheduled and not yet handed out
        if not mmap and self._order and self._target("cpu") != "meta":
            # Start reading now: the pickle is scanned and unpickled while the first bytes arrive.
            self._schedule_through(None)

    def load(self, pid: tuple) -> Any:
        import torch

        _, dtype_name, key, location, numel = pid
        dtype = torch_dtype(dtype_name)
        if type(numel) is not int or numel < 0:
            raise ArchiveError(f"{self.reader.path}: a storage has a malformed size; the archive is corrupt")
        key, location = str(key), str(location)
        storage = self._loaded.get(key)
        if storage is None:
            nbytes = numel * dtype.itemsize
            if location == "meta" or self._target(location) == "meta":
                storage = torch.UntypedStorage(nbytes, device="meta")  # shape only: nothing to read
            else:
                storage = self._restore(self._read(key, nbytes), location)
            self._loaded[key] = storage
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)

    def tensor(self, pid: tuple) -> Any:
        """The tensor a :meth:`StorageCollector.tensor_id` persistent id stands for (its storage read and checked)."""
        import torch

        _, dtype_name, key, location, numel, offset, size, stride, requires_grad, kind = pid
        typed = self.load(("storage", dtype_name, key, location, numel))
        storage = typed._untyped_storage
        from .guards import view_fits

        if not view_fits(storage.nbytes(), offset, size, stride, typed.dtype.itemsize):
            raise ArchiveError(f"{self.reader.path}: a tensor view lies beyond its storage; the archive is corrupt")
        try:
            tensor = torch.empty((0,), dtype=typed.dtype, device=storage.device).set_(storage, offset, size, stride)
        except RuntimeError as exc:
            first_line = str(exc).splitlines()[0][:120]
            raise ArchiveError(f"{self.reader.path}: a tensor does not fit its storage ({first_line}); "
                               "the archive is corrupt") from None
        if kind == "parameter":
            return torch.nn.Parameter(tensor, requires_grad=requires_grad)
        if requires_grad:
            tensor.requires_grad_(True)
        return tensor

    def _read(self, key: str, nbytes: int):
        import torch

        member = self.reader.member(STORAGE_PREFIX + key)
        if member.size != nbytes:
            raise ArchiveError(f"{self.reader.path}: storage {key} holds {member.size} bytes, "
                               f"its tensors need {nbytes}; the archive is corrupt")
        if self.mmap:
            if self._whole_file is None:
                self._whole_file = torch.UntypedStorage.from_file(
                    str(self.reader.path), shared=False, nbytes=self.reader.size
                )
            return self._whole_file[member.offset : member.offset + member.size]
        self._schedule_through(member.name)
        storage, future, size = self._scheduled.pop(member.name)
        self._ahead -= size
        future.result()  # raises ArchiveError when the bytes do not match their digest
        return storage

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
            raise ArchiveError(f"{self.reader.path}: storage member {name!r} is used twice; the archive is corrupt")

    def _target(self, location: str) -> str | None:
        """Where *location*'s storages go, as torch reads ``map_location``; None for a callable."""
        ml = self.map_location
        if callable(ml):
            return None
        if isinstance(ml, dict):
            return str(ml.get(location, location))
        return location if ml is None else str(ml)

    def _restore(self, storage, location: str):
        if callable(self.map_location):
            result = self.map_location(storage, location)
            if result is not None:
                return result
            return move_storage(storage, location, location)
        target = self._target(location)
        assert target is not None  # None only for a callable map_location, handled above
        return move_storage(storage, target, location)


def move_storage(storage, target: str, saved_at: str):
    import torch

    if storage.device.type == "meta":
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


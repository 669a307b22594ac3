"""Tensor storage out of band: raw, aligned bytes in the archive, never in the pickle stream.

Mirrors what ``torch.save`` does with its zip records, minus the zip: each
storage becomes one archive member, keyed so that a storage shared by many
tensors (or views) is written once and is shared again after load.  torch is
imported only when a storage is actually met.
"""

from __future__ import annotations

import sys
from typing import Any

from .errors import GitpackError

STORAGE_PREFIX = "storages/"


def is_storage(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(obj, torch.storage.TypedStorage) or torch.is_storage(obj)


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
                raise GitpackError("two tensors view the same storage as different dtypes; save a .clone() of one of them")
        key = self._keys.setdefault(storage._cdata, str(len(self._keys)))
        self.storages[key] = storage
        return ("storage", str(dtype).removeprefix("torch."), key, _location(storage), numel)

    def buffers(self, key: str):
        """The bytes of storage *key*, as buffers to write; one CUDA storage at a time is copied to host."""
        import torch

        storage = self.storages[key]
        if storage.device.type == "meta" or storage.nbytes() == 0:
            return []
        if storage.device.type != "cpu":
            storage = storage.cpu()
        flat = torch.empty(0, dtype=torch.uint8)
        flat.set_(storage)
        return [flat.numpy()]


def _location(storage) -> str:
    device = storage.device
    return "cpu" if device.type == "cpu" else str(device)


class StorageLoader:
    """Rebuilds storages from archive members, once per key, honouring ``map_location`` like torch."""

    def __init__(self, reader, map_location=None, mmap: bool = False):
        self.reader = reader
        self.map_location = map_location
        self.mmap = mmap
        self._loaded: dict[str, Any] = {}
        self._whole_file = None

    def load(self, pid: tuple) -> Any:
        import torch

        _, dtype_name, key, location, numel = pid
        dtype = getattr(torch, str(dtype_name), None)
        if not isinstance(dtype, torch.dtype):
            raise GitpackError(f"archive declares an unknown tensor dtype {dtype_name!r}; is this torch too old?")
        storage = self._loaded.get(key)
        if storage is None:
            storage = self._restore(self._read(str(key), location), str(location))
            self._loaded[key] = storage
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)

    def _read(self, key: str, location: str):
        import torch

        member = self.reader.member(STORAGE_PREFIX + key)
        if location == "meta":
            return torch.UntypedStorage(member.size, device="meta")
        if self.mmap:
            if self._whole_file is None:
                self._whole_file = torch.UntypedStorage.from_file(str(self.reader.path), shared=False, nbytes=self.reader.size)
            return self._whole_file[member.offset : member.offset + member.size]
        flat = torch.empty(member.size, dtype=torch.uint8)
        self.reader.readinto(member.name, flat.numpy())
        return flat.untyped_storage()

    def _restore(self, storage, location: str):
        target: Any = location
        ml = self.map_location
        if callable(ml):
            result = ml(storage, location)
            if result is not None:
                return result
        elif isinstance(ml, dict):
            target = ml.get(location, location)
        elif ml is not None:
            target = str(ml)
        return move_storage(storage, str(target), location)


def move_storage(storage, target: str, saved_at: str):
    import torch

    if target in ("cpu", "meta") or storage.device.type == "meta":
        return storage
    device = torch.device(target)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GitpackError(
            f"a tensor was saved on {saved_at} but CUDA is not available here; load with map_location='cpu'"
        )
    return storage.to(device=device)


"""Tensors out of band, bit-exact and shared; mmap loading that really maps; integrity without a tax.

Real torch tensors, real archives in real git repositories, real subprocesses for
the start-up checks.  Nothing here measures time (the benchmark does that:
``scripts/bench.py``).  About 10 s.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import git, gitpack_cli, run_python

import gitpack
from gitpack.archive import ArchiveReader
from gitpack.errors import ArchiveError, GitpackError


@pytest.fixture
def code_repo(repo: Path) -> Path:
    """A repository with one committed file, so saves have a HEAD to record."""
    (repo / "README.md").write_text("tensors\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def save(obj, repo: Path, name: str = "t.gitpack") -> Path:
    path = repo.parent / name  # outside the working tree: nothing to exclude
    gitpack.save(obj, path, repo=repo)
    return path


def load(path: Path, repo: Path, **kwargs):
    return gitpack.load(path, repo=repo, **kwargs)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape, strides, offset and bytes (NaN payloads and -0.0 included)."""
    if (a.dtype, a.shape, a.stride(), a.storage_offset()) != (b.dtype, b.shape, b.stride(), b.storage_offset()):
        return False
    sa, sb = a.untyped_storage(), b.untyped_storage()
    return sa.nbytes() == sb.nbytes() and bytes(sa) == bytes(sb)


def random_tensor(dtype: torch.dtype, shape=(7, 5), seed=0) -> torch.Tensor:
    """Random *bit patterns* of dtype: every NaN payload, denormal and sign a float can carry."""
    gen = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape))
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    raw = torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape)


ALL_DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16,
    torch.complex64, torch.complex128,
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
] + [getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64") if hasattr(torch, name)]


def test_every_dtype_round_trips_bit_exact(code_repo):
    tensors = {str(dtype): random_tensor(dtype, seed=i) for i, dtype in enumerate(ALL_DTYPES)}
    tensors["scalar"] = torch.tensor(3.5, dtype=torch.bfloat16)
    tensors["empty"] = torch.empty(0, 3)
    tensors["param"] = torch.nn.Parameter(torch.randn(4, 4))
    path = save(tensors, code_repo)

    loaded = load(path, code_repo)
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert same_bits(loaded[key], value), key
    assert isinstance(loaded["param"], torch.nn.Parameter) and loaded["param"].requires_grad
    # Tensor bytes live in members of their own, not in the pickle.
    with ArchiveReader(path) as reader:
        assert reader.member("pickle").size < sum(t.untyped_storage().nbytes() for t in tensors.values())


def test_non_contiguous_tensors_and_views_keep_layout_and_values(code_repo):
    base = random_tensor(torch.float32, (6, 8), seed=1)
    tensors = {
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "offset": base[3:, 2:],
        "expanded": torch.arange(4.0).expand(3, 4),  # stride 0
        "channels_last": random_tensor(torch.bfloat16, (2, 3, 4, 5), seed=2).contiguous(memory_format=torch.channels_last),
        "narrowed_bf16": random_tensor(torch.bfloat16, (10, 10), seed=3)[2:7, ::3],
    }
    loaded = load(save(tensors, code_repo), code_repo)
    for key, value in tensors.items():
        got = loaded[key]
        assert got.stride() == value.stride() and got.storage_offset() == value.storage_offset(), key
        assert torch.equal(got.view(-1).view(torch.uint8) if got.is_contiguous() else got.contiguous().view(torch.uint8),
                           value.view(-1).view(torch.uint8) if value.is_contiguous() else value.contiguous().view(torch.uint8)), key
    assert loaded["channels_last"].is_contiguous(memory_format=torch.channels_last)


def test_a_storage_shared_by_many_tensors_is_written_once_and_shared_after_load(code_repo):
    base = torch.arange(100.0)
    encoder = torch.nn.Linear(8, 8)
    decoder = torch.nn.Linear(8, 8)
    decoder.weight = encoder.weight  # tied weights
    obj = {
        "base": base,
        "same_tensor_again": base,
        "slice": base[10:20],
        "matrix": base.view(10, 10),
        "transposed": base.view(10, 10).t(),
        "encoder": encoder,
        "decoder": decoder,
    }
    path = save(obj, code_repo)
    manifest = gitpack.inspect(path)
    # base (+ its views) and the Linear weights/biases: 1 + 3 storages, each written once: small storages
    # share one pack member, each at a 64-byte aligned offset (400 + 256 + 32 + 32 bytes -> 448 + 256 + 64 + 32).
    assert manifest["tensors"]["storages"] == 4
    storage_members = [m for m in manifest["members"] if m["name"].startswith("storages/")]
    assert [(m["name"], m["size"]) for m in storage_members] == [("storages/pack-0", 800)]

    loaded = load(path, code_repo)
    ptr = loaded["base"].untyped_storage().data_ptr()
    for key in ("slice", "matrix", "transposed"):
        assert loaded[key].untyped_storage().data_ptr() == ptr, key
    assert loaded["same_tensor_again"] is loaded["base"]
    assert loaded["decoder"].weight is loaded["encoder"].weight
    loaded["base"][15] = -1.0  # a write through one tensor is seen through every view
    assert loaded["slice"][5].item() == -1.0 and loaded["matrix"][1, 5].item() == -1.0


def test_two_dtypes_viewing_one_storage_is_refused_with_advice(code_repo):
    base = torch.zeros(8)
    with pytest.raises(GitpackError, match="clone"):
        save({"f": base, "i": base.view(torch.int32)}, code_repo)


def test_numpy_arrays_travel_out_of_band_and_come_back_writable(code_repo):
    rng = np.random.default_rng(0)
    arrays = {
        "f64": rng.standard_normal((64, 32)),
        "i32": np.arange(1000, dtype=np.int32),
        "fortran": np.asfortranarray(rng.standard_normal((16, 8))),
        "sliced": np.arange(100.0)[::3],
        "structured": np.zeros(4, dtype=[("a", "<i4"), ("b", "<f8")]),
    }
    path = save(arrays, code_repo)
    manifest = gitpack.inspect(path)
    assert manifest["tensors"]["buffers"] >= 3
    with ArchiveReader(path) as reader:
        assert reader.member("pickle").size < arrays["f64"].nbytes  # the big arrays are not in the pickle

    loaded = load(path, code_repo)
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype and np.array_equal(loaded[key], value), key
    assert loaded["f64"].flags.writeable
    loaded["f64"][0, 0] = 42.0


@pytest.mark.parametrize("where", ["str", "device", "dict", "callable"])
def test_map_location_works_like_torch(code_repo, where):
    tensors = {"a": torch.randn(5, 3), "b": torch.arange(6)}
    path = save(tensors, code_repo)
    seen = []

    def to_cpu(storage, location):
        seen.append((location, storage.device.type))
        return storage

    map_location = {"str": "cpu", "device": torch.device("cpu"), "dict": {"cpu": "cpu"}, "callable": to_cpu}[where]
    loaded = load(path, code_repo, map_location=map_location)
    for key, value in tensors.items():
        assert same_bits(loaded[key], value) and loaded[key].device.type == "cpu"
    if where == "callable":
        assert seen == [("cpu", "cpu"), ("cpu", "cpu")]


def test_map_location_meta_reads_nothing_and_keeps_shapes(code_repo):
    tensors = {"w": torch.randn(64, 32), "v": torch.arange(5)}
    path = save(tensors, code_repo)
    # Corrupt the real tensor's bytes: a meta load must not even read them.
    member = next(m for m in gitpack.inspect(path)["members"] if m["name"].startswith("storages/") and m["size"])
    with open(path, "r+b") as fh:
        fh.seek(member["offset"])
        fh.write(b"\xff" * 16)
    loaded = load(path, code_repo, map_location="meta")
    assert loaded["w"].device.type == "meta" and loaded["w"].shape == (64, 32)
    assert loaded["v"].device.type == "meta" and loaded["v"].shape == (5,) and loaded["v"].dtype == torch.int64


def test_unknown_map_location_is_one_clear_error(code_repo):
    path = save({"a": torch.ones(2)}, code_repo)
    with pytest.raises(GitpackError, match="map_location|CUDA|device"):
        load(path, code_repo, map_location="nosuchdevice:0")


def _mappings_of(path: Path) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == str(path.resolve()):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_mmap_load_maps_the_archive_instead_of_reading_it(code_repo):
    weights = {"w": torch.randn(256, 256), "b": torch.randn(256)}
    path = save(weights, code_repo)
    loaded = load(path, code_repo, mmap=True)
    assert torch.equal(loaded["w"], weights["w"]) and torch.equal(loaded["b"], weights["b"])

    # The tensor's memory lies inside a mapping of the archive file itself.
    ranges = _mappings_of(path)
    ptr = loaded["w"].untyped_storage().data_ptr()
    assert any(start <= ptr < end for start, end in ranges), ranges

    # And it is that file's page: a change written to the file shows through the tensor.
    member = gitpack.inspect(path)["members"]
    w_member = next(m for m in member if m["name"] == "storages/pack-0")  # w is packed first, at offset 0
    with open(path, "r+b") as fh:
        fh.seek(w_member["offset"])
        fh.write(np.float32(1234.5).tobytes())
    assert loaded["w"].view(-1)[0].item() == 1234.5

    # The mapping outlives the loader: the tensor stays valid after everything else is gone.
    import gc

    gc.collect()
    assert loaded["w"].view(-1)[1].item() == weights["w"].view(-1)[1].item()


def _corrupt_one_storage_byte(path: Path) -> None:
    manifest = gitpack.inspect(path)
    member = max((m for m in manifest["members"] if m["name"].startswith("storages/")), key=lambda m: m["size"])
    with open(path, "r+b") as fh:
        fh.seek(member["offset"] + member["size"] // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_a_flipped_tensor_byte_is_caught_on_a_normal_load(code_repo):
    tensors = {f"t{i}": torch.randn(128, 128) for i in range(6)}
    path = save(tensors, code_repo)
    _corrupt_one_storage_byte(path)
    threads_before = {t.ident for t in threading.enumerate()}
    with pytest.raises(ArchiveError, match="does not match its digest"):
        load(path, code_repo)
    # No reader thread is left behind by the failed load.
    leftover = [t for t in threading.enumerate() if t.ident not in threads_before and t.name.startswith("gitpack-")]
    assert leftover == []
    # mmap defers tensor verification (documented): the load succeeds; `gitpack verify` would catch it.
    assert re.search(r"mmap=True.*\*?not\*?\s+checked", gitpack.load.__doc__, re.S)
    loaded = load(path, code_repo, mmap=True)
    assert sum(not torch.equal(loaded[k], tensors[k]) for k in tensors) == 1


def test_a_corrupt_pickle_is_caught_before_unpickling_even_with_mmap(code_repo):
    path = save({"a": torch.ones(3)}, code_repo)
    pickle_member = next(m for m in gitpack.inspect(path)["members"] if m["name"] == "pickle")
    with open(path, "r+b") as fh:
        fh.seek(pickle_member["offset"] + 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x20]))
    for mmap in (False, True):
        with pytest.raises(ArchiveError, match="digest"):
            load(path, code_repo, mmap=mmap)


def test_an_archive_saved_and_loaded_many_members_at_once_stays_in_file_order(code_repo):
    """Members are written by several threads at once; the layout must still be the member table's."""
    tensors = {f"t{i:02d}": random_tensor(torch.float32, (17 + i, 33), seed=i) for i in range(40)}
    path = save(tensors, code_repo)
    members = gitpack.inspect(path)["members"]
    offsets = [m["offset"] for m in members]
    assert offsets == sorted(offsets) and all(o % 64 == 0 for o in offsets)
    loaded = load(path, code_repo)
    assert all(same_bits(loaded[k], v) for k, v in tensors.items())


INSPECT_NO_TORCH = """
import sys, gitpack
gitpack.inspect(sys.argv[1])
list(gitpack.log(repo=sys.argv[2]))
print("TORCH", "torch" in sys.modules)
"""


def test_inspect_and_log_never_import_torch(code_repo):
    path = save({"a": torch.ones(3)}, code_repo)
    proc = run_python(code_repo, INSPECT_NO_TORCH, str(path), str(code_repo))
    assert proc.returncode == 0, proc.stderr
    assert "TORCH False" in proc.stdout
    for args in (["inspect", str(path)], ["inspect", "--json", str(path)], ["log"], ["--help"]):
        proc = gitpack_cli(code_repo, *args, env={"PYTHONPROFILEIMPORTTIME": "1"})
        assert proc.returncode == 0, (args, proc.stderr)
        imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
        assert imported and not [m for m in imported if m == "torch" or m.startswith("torch.")], args
    manifest = json.loads(gitpack_cli(code_repo, "inspect", "--json", str(path)).stdout)
    assert manifest["tensors"]["storages"] == 1


def test_cpu_storages_are_written_from_their_own_memory(code_repo):
    """Save never copies a CPU tensor's bytes: what the writer gets is a view of the storage itself."""
    from gitpack.pickling.tensors import StorageCollector

    t = torch.randn(1000)
    collector = StorageCollector()
    pid = collector.persistent_id(t.untyped_storage())
    (view,) = collector.buffers(pid[2])
    import ctypes

    assert ctypes.addressof(ctypes.c_ubyte.from_buffer(view)) == t.untyped_storage().data_ptr()
    assert len(view) == t.untyped_storage().nbytes()


def test_deferred_buffers_are_made_on_the_workers_a_few_at_a_time(tmp_path):
    """Device storages reach host memory one per worker at a time, never all at once."""
    import weakref

    from gitpack.archive import ArchiveWriter, DeferredBuffer
    from gitpack.archive.format import io_workers

    alive, most, threads = [0], [0], set()
    lock = threading.Lock()

    class Copy(DeferredBuffer):
        def __init__(self, i):
            self.i, self.nbytes = i, (1 << 20) + i

        def materialise(self):
            data = np.full(self.nbytes, self.i % 251, dtype=np.uint8)
            with lock:
                alive[0] += 1
                most[0] = max(most[0], alive[0])
                threads.add(threading.current_thread().name)
            weakref.finalize(data, lambda: alive.__setitem__(0, alive[0] - 1))
            return data

    writer = ArchiveWriter(tmp_path / "a.gitpack")
    for i in range(24):
        writer.add(f"storages/{i}", [Copy(i)])
    writer.commit({"note": "deferred"})
    assert 1 <= most[0] <= io_workers()
    assert threads and all(name.startswith("gitpack-write") for name in threads)
    with ArchiveReader(tmp_path / "a.gitpack") as reader:
        for i in range(24):
            assert reader.read(f"storages/{i}") == bytes([i % 251]) * ((1 << 20) + i)


def test_small_storages_share_a_few_pack_members_and_stay_independent_after_load(code_repo, monkeypatch):
    """20,000 biases are not 20,000 members: storages under PACK_LIMIT go into packs of about PACK_BYTES."""
    from gitpack.pickling import tensors as tensor_module

    monkeypatch.setattr(tensor_module, "PACK_BYTES", 64 << 10)  # small packs, so several are made
    small = [random_tensor(torch.float32, (7 + k % 5, 3), seed=k) for k in range(600)]
    big = random_tensor(torch.float32, (512, 600), seed=9)  # 1.2 MB: a member of its own
    obj = {"small": small, "big": big, "view": small[3][1:], "int": torch.arange(5), "empty": torch.zeros(0)}
    path = save(obj, code_repo)
    manifest = gitpack.inspect(path)
    names = [m["name"] for m in manifest["members"] if m["name"].startswith("storages/")]
    packs = [n for n in names if n.startswith("storages/pack-")]
    assert manifest["tensors"]["storages"] == 603
    assert 2 <= len(packs) <= 8 and len(names) == len(packs) + 2  # the big one and the empty one stand alone
    assert all(m["size"] <= 64 << 10 for m in manifest["members"] if m["name"] in packs)

    loaded = load(path, code_repo)
    assert all(same_bits(a, b) for a, b in zip(loaded["small"], small, strict=True))
    assert same_bits(loaded["big"], big) and same_bits(loaded["int"], obj["int"]) and loaded["empty"].numel() == 0
    assert loaded["view"].untyped_storage().data_ptr() == loaded["small"][3].untyped_storage().data_ptr()
    # Each storage is its own: the exact size, 64-byte aligned, and a write stays inside it.
    first, second = loaded["small"][0], loaded["small"][1]
    assert first.untyped_storage().nbytes() == small[0].untyped_storage().nbytes()
    assert first.untyped_storage().data_ptr() % 64 == 0
    second_before = second.clone()
    first.fill_(7.0)
    assert torch.equal(second, second_before)
    # mmap loads slice the same packs out of the mapped file.
    mapped = load(path, code_repo, mmap=True)
    assert all(same_bits(a, b) for a, b in zip(mapped["small"], small, strict=True))


def _forge_tensor_key(code_repo: Path, tmp_path: Path, key: str, numel: int = 16) -> Path:
    """An archive whose pickle names one tensor at storage *key*, every digest recomputed and vouched for."""
    import io
    import pickle

    from forging import forge

    base = save({"t": torch.ones(16)}, code_repo)
    pid = ("tensor", "float32", key, "cpu", numel, 0, (numel,), (1,), False, "tensor")

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return pid if obj == "TENSOR" else None

    out = io.BytesIO()
    Pickler(out, protocol=5).dump({"t": "TENSOR"})
    return forge(base, tmp_path / "forged.gitpack", code_repo, out.getvalue())


@pytest.mark.parametrize("key,why", [
    ("pack-0:1024", "outside its member"),  # the pack holds 64 bytes
    ("pack-0:32", "outside its member"),  # not 64-byte aligned
    ("pack-7:0", "missing"),  # no such pack
    ("pack-0:-64", "malformed"), ("../pickle", "malformed"), ("0x10", "malformed"),
])
def test_a_forged_storage_key_is_refused_before_anything_is_unpickled(code_repo, tmp_path, key, why):
    forged = _forge_tensor_key(code_repo, tmp_path, key)
    with pytest.raises(ArchiveError, match=why):
        load(forged, code_repo)
    # The well-formed key of the same forged archive loads: the refusal is the key's.
    assert torch.equal(load(_forge_tensor_key(code_repo, tmp_path, "pack-0:0"), code_repo)["t"], torch.ones(16))


def test_a_host_copy_stays_alive_while_the_writer_uses_its_bytes():
    """A device tensor's host copy is referenced only by the view the writer hashes and writes: the view must keep
    it alive (a GPU save once wrote bytes that no longer matched their digest)."""
    import gc

    from gitpack.pickling.tensors import _bytes_of

    view = _bytes_of(torch.full((1024,), 3, dtype=torch.int32).untyped_storage())  # nothing else holds it
    gc.collect()
    others = [torch.full((1024,), 7, dtype=torch.int32) for _ in range(64)]  # would reuse freed memory
    assert bytes(view) == bytes(torch.full((1024,), 3, dtype=torch.int32).untyped_storage())
    assert len(others) == 64

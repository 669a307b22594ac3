"""The tensor table (format 3): rows round-trip, a malformed header is refused, and the bulk check is exact.

The bulk check (:meth:`TensorTable.problem`) runs in torch's 64-bit integers, where a product can wrap.  So it
is held, over thousands of forged rows, to a plain reference in Python's unbounded ints, and a row built to
wrap a naive sum to a small extent is refused.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from conftest import gitpack_cli
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gitpack.errors import ArchiveError
from gitpack.pickling.policy import TORCH_DTYPE_SIZES
from gitpack.pickling.tensortable import LIMIT, MAX_RANK, Row, TableBuilder, TensorTable

UNITS = {"storages/pack-0": 4096, "storages/1": 800}


def raw_table(rows: list[list[int]], rank: int, *, units=("storages/pack-0", "storages/1"), dtypes=("float32",),
              locations=("cpu",), header: dict | None = None, itemsize: int = 8) -> bytes:
    """A table as bytes, written independently of gitpack's encoder (as a forger would)."""
    text = json.dumps(header if header is not None else
                      {"rows": len(rows), "rank": rank, "itemsize": itemsize, "units": list(units),
                       "dtypes": list(dtypes), "locations": list(locations)}).encode()
    text += b" " * (-len(text) % 8)
    values = [v for row in rows for v in row]
    return struct.pack("<Q", len(text)) + text + b"".join(v.to_bytes(itemsize, "little", signed=True) for v in values)


def parsed(rows: list[list[int]], rank: int, **kw) -> TensorTable:
    return TensorTable.parse(raw_table(rows, rank, **kw), UNITS)


def row(*, unit=0, boff=0, numel=16, dtype=0, loc=0, offset=0, rg=0, kind=0, size=(4,), stride=(1,), rank=1):
    pad = rank - len(size)
    return [unit, boff, numel, dtype, loc, offset, rg, kind, len(size), *size, *(1,) * pad, *stride, *(0,) * pad]


# ----------------------------------------------------------------------------- round trip
def test_rows_round_trip_through_the_member_bytes():
    builder = TableBuilder()
    written = [
        Row("storages/pack-0", 0, 16, "float32", "cpu", 0, (4, 4), (4, 1), True, "parameter"),
        Row("storages/pack-0", 64, 3, "float16", "cpu", 1, (2,), (1,), False, "tensor"),
        Row("storages/1", 0, 100, "int64", "cuda:0", 0, (), (), False, "tensor"),  # a 0-d tensor
        Row("storages/1", 0, 100, "int64", "cuda:0", 5, (3, 1, 2), (1, 40, 10), False, "tensor"),  # non-contiguous
    ]
    assert [builder.add(r) for r in written] == [0, 1, 2, 3]
    table = TensorTable.parse(builder.encode(), UNITS)
    assert (table.rows, table.rank, table.units, table.dtypes) == (4, 3, ("storages/pack-0", "storages/1"),
                                                                 ("float32", "float16", "int64"))
    assert [table.row(i) for i in range(4)] == written
    assert table.problem() is None


def test_rows_take_4_bytes_a_value_unless_one_needs_8():
    fits = Row("storages/1", 0, 200, "float32", "cpu", 0, (200,), (1,), False, "tensor")
    wide = Row("storages/1", 0, 200, "float32", "cpu", 2**31, (1,), (1,), False, "tensor")  # an offset past 31 bits
    for row_written, itemsize in ((fits, 4), (wide, 8)):
        builder = TableBuilder()
        builder.add(row_written)
        raw = builder.encode()
        (length,) = struct.unpack_from("<Q", raw)
        assert json.loads(raw[8:8 + length])["itemsize"] == itemsize
        assert len(raw) - 8 - length == 11 * itemsize  # 9 columns, one size, one stride
        table = TensorTable.parse(raw, UNITS)
        assert table.row(0) == row_written
    assert table.problem() == "tensor table row 0: a view beyond its storage (torch would grow the storage)"


def test_what_does_not_fit_a_row_is_left_to_torch():
    builder = TableBuilder()
    assert builder.add(Row("storages/1", 0, 1, "float32", "cpu", 0, (1,), (LIMIT + 1,), False, "tensor")) is None
    assert builder.add(Row("storages/1", 0, 1, "float32", "cpu", 0, (1,) * (MAX_RANK + 1), (0,) * (MAX_RANK + 1),
                           False, "tensor")) is None
    assert len(builder) == 0


# ----------------------------------------------------------------------------- a malformed header
@pytest.mark.parametrize("change, fragment", [
    (lambda raw: raw[:5], "truncated"),
    (lambda raw: struct.pack("<Q", 1 << 40) + raw[8:], "header length"),
    (lambda raw: struct.pack("<Q", 8) + b"not json" + raw[16:], "not JSON"),
    (lambda raw: raw[:-8], "rows do not fill it"),
    (lambda raw: raw + bytes(8), "rows do not fill it"),
    (lambda raw: struct.pack("<Q", 200_000) + b"[" * 200_000, "not JSON"),  # deep enough to crash json.loads
])
def test_a_malformed_table_is_refused_before_any_row_is_read(change, fragment):
    raw = raw_table([row(), row()], 1)
    with pytest.raises(ArchiveError, match=fragment):
        TensorTable.parse(change(raw), UNITS)


@pytest.mark.parametrize("header, fragment", [
    ({"rows": 0, "rank": 0, "itemsize": 8, "units": [], "dtypes": [], "locations": [], "more": 1}, "header fields"),
    ({"rows": 0, "rank": MAX_RANK + 1, "itemsize": 8, "units": [], "dtypes": [], "locations": []}, "rows or rank"),
    ({"rows": True, "rank": 0, "itemsize": 8, "units": [], "dtypes": [], "locations": []}, "rows or rank"),
    ({"rows": 0, "rank": 0, "itemsize": 8, "units": ["pickle"], "dtypes": [], "locations": []}, "not a storage member"),
    ({"rows": 0, "rank": 0, "itemsize": 8, "units": ["storages/9"], "dtypes": [], "locations": []}, "not a storage member"),
    ({"rows": 0, "rank": 0, "itemsize": 8, "units": [], "dtypes": ["_dynamo"], "locations": []}, "unknown dtype"),
    ({"rows": 0, "rank": 0, "itemsize": 8, "units": [], "dtypes": [], "locations": ["cpu\n"]}, "malformed location"),
    ({"rows": 0, "rank": 0, "itemsize": 8, "units": [], "dtypes": [], "locations": ["cuda:\u0663"]}, "malformed location"),  # a digit
    ({"rows": 0, "rank": 0, "itemsize": 8, "units": [], "dtypes": ["float32", "float32"], "locations": []}, "name list"),
    ({"rows": 0, "rank": 0, "itemsize": 2, "units": [], "dtypes": [], "locations": []}, "itemsize"),
    ({"rows": 0, "rank": 0, "itemsize": 4.0, "units": [], "dtypes": [], "locations": []}, "itemsize"),
    ({"rows": 0, "rank": 0, "units": [], "dtypes": [], "locations": []}, "header fields"),
])
def test_a_header_naming_what_the_archive_lacks_is_refused(header, fragment):
    with pytest.raises(ArchiveError, match=fragment):
        TensorTable.parse(raw_table([], 0, header=header), UNITS)


# ----------------------------------------------------------------------------- the bulk check
def reference(table: TensorTable) -> bool:
    """Whether every row is acceptable, one row at a time in Python's unbounded ints."""
    w, rank = table.width, table.rank
    storages: dict[tuple[int, int], set[int]] = {}
    for i in range(table.rows):
        unit, boff, numel, dtype, loc, offset, rg, kind, ndim = table.data[i * w:i * w + 9]
        sizes = list(table.data[i * w + 9:i * w + 9 + rank])
        strides = list(table.data[i * w + 9 + rank:i * w + w])
        if not (0 <= unit < len(table.units) and 0 <= dtype < len(table.dtypes) and 0 <= loc < len(table.locations)
                and rg in (0, 1) and kind in (0, 1) and 0 <= ndim <= rank):
            return False
        if any(not 0 <= v <= LIMIT for v in [boff, numel, offset, *sizes, *strides]):
            return False
        if any(sizes[d] != 1 or strides[d] != 0 for d in range(ndim, rank)):
            return False
        empty = any(s == 0 for s in sizes)
        extent = 0 if empty else 1 + sum((s - 1) * t for s, t in zip(sizes, strides, strict=True))
        if offset + extent > numel:
            return False
        nbytes = numel * TORCH_DTYPE_SIZES[table.dtypes[dtype]]
        packed = table.units[unit].startswith("storages/pack-")
        if boff + nbytes > table.unit_sizes[unit] or (packed and boff % 64) or \
                (not packed and (boff != 0 or nbytes != table.unit_sizes[unit])):
            return False
        storages.setdefault((unit, boff), set()).add(nbytes)
    if any(len(sizes) > 1 for sizes in storages.values()):
        return False  # one storage, two sizes
    spans = sorted((unit, boff, sizes.pop()) for (unit, boff), sizes in storages.items())
    return all(a[0] != b[0] or a[1] + a[2] <= b[1] for a, b in zip(spans, spans[1:], strict=False))


_EDGE = st.sampled_from([0, 1, 2, 3, 4, 15, 16, 17, 63, 64, 800, 2**17 + 1, 2**31, 2**47, LIMIT, LIMIT + 1, 2**62,
                         2**63 - 1, -1, -(2**63)])


@st.composite
def forged_rows(draw):
    """Tables of 1 to 6 rows: half plausible (small views in the pack or the whole member, so the view and storage
    rules are reached), half any values, edges included (so the range rules and 64-bit wraps are)."""
    rank = draw(st.integers(0, 3))
    value = st.one_of(st.integers(0, 40), _EDGE)
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        ndim = draw(st.integers(0, rank))
        sizes = [draw(st.integers(0, 6)) for _ in range(ndim)] + [1] * (rank - ndim)
        strides = [draw(st.integers(0, 8)) for _ in range(ndim)] + [0] * (rank - ndim)
        if draw(st.booleans()):
            dtype = draw(st.integers(0, 1))
            unit, boff, numel = draw(st.one_of(
                st.tuples(st.just(0), st.sampled_from([0, 64, 128, 192]), st.integers(0, 40)),
                st.just((1, 0, 200 if dtype == 0 else 400))))
            rows.append([unit, boff, numel, dtype, 0, draw(st.integers(0, 20)), draw(st.integers(0, 1)),
                         draw(st.integers(0, 1)), ndim, *sizes, *strides])
            continue
        ndim = draw(st.one_of(st.just(ndim), _EDGE))
        sizes = [draw(st.one_of(st.just(x), _EDGE)) for x in sizes]
        strides = [draw(st.one_of(st.just(x), _EDGE)) for x in strides]
        rows.append([draw(st.one_of(st.integers(0, 1), _EDGE)), draw(st.one_of(st.sampled_from([0, 64, 128]), value)),
                     draw(value), draw(st.one_of(st.integers(0, 1), _EDGE)), draw(st.one_of(st.just(0), _EDGE)),
                     draw(value), draw(st.one_of(st.integers(0, 1), _EDGE)), draw(st.one_of(st.integers(0, 1), _EDGE)),
                     ndim, *sizes, *strides])
    return rows, rank, draw(st.booleans())  # 4-byte ints when every value fits


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forged_rows())
def test_the_bulk_check_agrees_with_a_row_by_row_reference(case):
    rows, rank, narrow = case
    fits = all(-(2**31) <= v < 2**31 for row in rows for v in row)
    table = parsed(rows, rank, dtypes=("float32", "float16"), itemsize=4 if narrow and fits else 8)
    accepted = reference(table)
    event("accepted" if accepted else "refused")
    assert (table.problem() is None) == accepted, rows


def test_a_view_built_to_wrap_a_64_bit_sum_is_refused():
    """(2**17) * 2**47 is 2**64: in int64 it wraps to 0, so a naive sum would call a 2**64-item view 1 item."""
    table = parsed([row(numel=4, size=(2**17 + 1,), stride=(2**47,))], 1)
    assert (((2**17) * 2**47) % 2**64) == 0
    assert table.problem() == "tensor table row 0: a view beyond its storage (torch would grow the storage)"
    assert not reference(table)


@pytest.mark.parametrize("forged, fragment", [
    (row(size=(17,)), "a view beyond its storage"),
    (row(offset=13), "a view beyond its storage"),
    (row(size=(0,), offset=17), "a view beyond its storage"),  # empty, but its offset is past the end
    (row(numel=2000), "a storage that is not where its member holds one"),
    (row(boff=4096), "a storage that is not where its member holds one"),  # aligned, but past the pack's end
    (row(boff=72), "a storage that is not where its member holds one"),  # a pack's storages start aligned
    (row(unit=1, numel=100), "a storage that is not where its member holds one"),  # a whole member: all of it
    (row(unit=1, numel=100, boff=64), "a storage that is not where its member holds one"),
    (row(boff=0, numel=8, size=(4,)), "a storage that overlaps another"),  # row 0's storage, with another size
    (row(boff=0 + 32, numel=8, size=(4,)), "not where its member holds one"),
    (row(boff=64, numel=16), None),  # the next aligned place: fine
    (row(unit=1, numel=200, size=(4,)), None),  # the whole member, all 800 bytes: fine
    (row(dtype=1), "a value out of range"),
    (row(unit=2), "a value out of range"),
    (row(kind=2), "a value out of range"),
    (row(rg=-1), "a value out of range"),
    (row(size=(4, 5), stride=(1, 0), rank=2)[:8] + [1, 4, 5, 1, 0], "past its number of dimensions"),
])
def test_each_kind_of_bad_row_is_named(forged, fragment):
    rank = (len(forged) - 9) // 2
    table = parsed([row(rank=rank, size=(4,) + (1,) * (rank - 1), stride=(1,) + (0,) * (rank - 1)), forged], rank)
    problem = table.problem()
    if fragment is None:
        assert problem is None and reference(table)
        return
    assert problem is not None and problem.startswith("tensor table row 1: ") and fragment in problem, problem
    assert not reference(table)


def test_an_empty_view_and_a_zero_dimensional_tensor_are_fine():
    table = parsed([row(size=(0, 9), stride=(99, 1), rank=2, numel=0), row(size=(), stride=(), rank=2, offset=15,
                                                                          boff=64)], 2)
    assert table.problem() is None and reference(table)


# ----------------------------------------------------------------------------- the table as a save writes it
def test_every_plain_tensor_is_a_row_and_loads_as_it_was_saved(repo):
    """Views, a transposed view, a 0-d tensor, frozen and trainable parameters, dtypes: rows, shared as saved."""
    import gitpack
    from gitpack.archive import ArchiveReader

    base = torch.arange(12.0).reshape(3, 4)
    obj = {"base": base, "t": base.t(), "row": base[1], "tail": base.flatten()[5:], "scalar": torch.tensor(7),
           "w": torch.nn.Parameter(torch.ones(2, 2)), "frozen": torch.nn.Parameter(torch.zeros(3), requires_grad=False),
           "half": torch.ones(3, dtype=torch.float16), "flags": torch.tensor([True, False]),
           "grad": torch.ones(2).requires_grad_()}
    obj["again"] = obj["w"]
    gitpack.save(obj, repo / "t.gitpack", repo=repo)
    with ArchiveReader(repo / "t.gitpack") as reader:
        table = TensorTable.parse(reader.read("tensors"), {n: m.size for n, m in reader.members.items()})
        assert b"tensor" not in reader.read("pickle")  # no format-2 tensor ids: rows only
    assert table.rows == 10  # "again" is "w": one row, named twice
    back = gitpack.load(repo / "t.gitpack", repo=repo)
    for key, value in obj.items():
        assert type(back[key]) is type(value) and back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value) and back[key].stride() == value.stride(), key
        assert back[key].requires_grad == value.requires_grad, key
    assert back["again"] is back["w"]
    pointer = back["base"].untyped_storage().data_ptr()
    assert all(back[k].untyped_storage().data_ptr() == pointer for k in ("t", "row", "tail"))
    assert back["tail"].storage_offset() == 5

    scan = gitpack.api.scan(repo / "t.gitpack", repo=repo)
    assert scan.safe and scan.tensor_rows == 10 and scan.as_json()["tensor_rows"] == 10
    assert not [p for p in scan.persistent_ids if p.kind == "tensor"]
    shown = gitpack_cli(repo, "scan", "t.gitpack")
    assert shown.returncode == 0 and "0 globals (0 refused), 10 tensors in the tensor table, 0 tensor and storage ids" in shown.stdout, shown.stdout


def test_a_tensor_whose_stride_does_not_fit_a_row_is_saved_torch_s_way(repo):
    import gitpack
    from gitpack.archive import ArchiveReader

    odd = torch.ones(1).as_strided((1,), (LIMIT + 8,))  # a size-1 dimension may have any stride
    plain = torch.arange(6.0)
    gitpack.save({"odd": odd, "plain": plain}, repo / "odd.gitpack", repo=repo)
    with ArchiveReader(repo / "odd.gitpack") as reader:
        assert b"_rebuild_tensor_v2" in reader.read("pickle")  # the odd one went torch's way
        assert TensorTable.parse(reader.read("tensors"), {n: m.size for n, m in reader.members.items()}).rows == 1
    back = gitpack.load(repo / "odd.gitpack", repo=repo)
    assert back["odd"].stride() == (LIMIT + 8,) and back["odd"].tolist() == [1.0]
    assert torch.equal(back["plain"], plain)


def test_a_tensor_of_a_dtype_the_policy_does_not_know_is_saved_torch_s_way(repo):
    """A row names only dtypes and devices a load can check; anything newer goes torch's way, as before format 3."""
    import gitpack
    from gitpack.archive import ArchiveReader

    dtype = getattr(torch, "float8_e8m0fnu", None) or getattr(torch, "uint4", None)
    if dtype is None:
        pytest.skip("this torch has no dtype outside gitpack's table")
    gitpack.save({"x": torch.zeros(4, dtype=dtype), "y": torch.ones(2)}, repo / "new.gitpack", repo=repo)
    with ArchiveReader(repo / "new.gitpack") as reader:
        table = TensorTable.parse(reader.read("tensors"), {n: m.size for n, m in reader.members.items()})
    assert table.rows == 1 and table.dtypes == ("float32",)


def test_overlapping_storages_of_a_format_2_archive_are_refused_by_the_loader(repo):
    """Format 2 named storages by key, one at a time: the loader itself refuses distinct storages that together
    need more bytes than their member holds (each would be copied on its own to a map_location device)."""
    import gitpack
    from gitpack.archive import ArchiveReader
    from gitpack.pickling.tensors import StorageLoader

    gitpack.save({"a": torch.ones(16), "b": torch.ones(16)}, repo / "two.gitpack", repo=repo)  # one pack, 128 bytes
    with ArchiveReader(repo / "two.gitpack") as reader:
        assert reader.member("storages/pack-0").size == 128
        loader = StorageLoader(reader)
        loader.load(("storage", "float32", "pack-0:0", "cpu", 16))
        loader.load(("storage", "float32", "pack-0:64", "cpu", 16))  # the honest pair: 128 bytes
        loader = StorageLoader(reader)
        loader.load(("storage", "float32", "pack-0:0", "cpu", 32))  # all 128 bytes, as one storage
        with pytest.raises(ArchiveError, match="storages in storages/pack-0 overlap"):
            loader.load(("storage", "float32", "pack-0:64", "cpu", 16))  # 64 of them again, as another

"""The tensor table (archive format 3): every plain tensor of a pickle as one row of integers, checked at once.

Format 2 wrote each plain tensor as a persistent id of ten Python values
(:mod:`.tensorids`).  The pickle then spelled out, memoized and re-read all of
them, and the trust gate checked them one by one in Python: on a model of
10,000 ``Linear`` layers, 20,000 ids were about half of the gate's time and
half of the pickle's bytes.  Format 3 writes each plain tensor as a small int,
its row in this table.  The pickle carries ``BININT`` and ``BINPERSID`` for a
tensor, the gate answers a row with a range check, and all rows are checked
together, before the dry run, with a handful of vector operations.

The member ``tensors`` holds a little-endian u64 (the length of a JSON header),
the header, space padding to 8 bytes, then ``rows`` rows of ``9 + 2 * rank``
little-endian integers of ``itemsize`` bytes (4 when every value fits 31 bits,
as in nearly every table; else 8)::

    unit byte_offset numel dtype location offset requires_grad kind ndim size[rank] stride[rank]

*unit* indexes the header's ``units`` (storage members), *dtype*, *location*
and *kind* its ``dtypes``, ``locations`` and :data:`KINDS`.  *byte_offset* is
where the storage starts in its unit, *numel* its size in items of *dtype*;
*offset*, *size* and *stride* are the view, padded past *ndim* with size 1 and
stride 0.  A row holds only integers, so the type confusions a tuple invites
(``True`` for ``1``, ``8.0`` for ``8``) cannot happen here.

Every value must lie in ``[0, LIMIT]``.  That bound makes the view check exact
in 64-bit arithmetic: a term ``(size - 1) * stride`` is compared as
``size - 1 <= numel // stride`` before it is ever multiplied, so no sum can
wrap.  The pickler writes torch's way (not a row) any tensor outside it, or of
a dtype or device the load policy does not know.

Storages are judged as well as views: rows that share a storage agree on its
size, a packed storage starts on a 64-byte boundary, a whole-member storage is
its whole member, and no two storages overlap.  Overlapping storages are
harmless on the CPU (each is a slice of one buffer) but each is copied on its
own to a ``map_location`` device: without the check, a 1 MiB pack could stand
for gigabytes of GPU memory.
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
import re
import struct
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..archive.format import ALIGN
from ..errors import ArchiveError
from ..manifest import STORAGE_PREFIX
from ..textsafe import loads_bounded
from .policy import TORCH_DTYPE_SIZES
from .verdicts import LOCATION

MEMBER = "tensors"
KINDS = ("tensor", "parameter")  # what load makes of a row: a plain tensor or an nn.Parameter
LIMIT = 1 << 48  # every value of a row is at most this (256 TB of one-byte items)
MAX_RANK = 64
UNIT, BYTE_OFFSET, NUMEL, DTYPE, LOCATION_COLUMN, OFFSET, REQUIRES_GRAD, KIND, NDIM = range(9)
FIXED_COLUMNS = 9
_LENGTH = struct.Struct("<Q")
MAX_HEADER = 16 << 20
# A storage member: a whole one (``storages/<n>``) or a pack of small storages (``storages/pack-<n>``); the
# storage keys of format 2 (:func:`gitpack.pickling.tensors.storage_address`) are built from the same parts.
PACK_PREFIX = "pack-"
MEMBER_NUMBER = "0|[1-9][0-9]{0,8}"
_UNIT = re.compile(re.escape(STORAGE_PREFIX) + f"(?:{MEMBER_NUMBER}|({PACK_PREFIX})(?:{MEMBER_NUMBER}))")


@functools.lru_cache(maxsize=4096)  # asked once per tensor at load; a model has a few units
def is_pack(unit: str) -> bool:
    """Whether storage member *unit* is a pack (its storages start at 64-byte aligned offsets) or one storage."""
    m = _UNIT.fullmatch(unit)
    return m is not None and m[1] is not None


class Row(NamedTuple):
    """One tensor of the table, as load builds it (a named tuple: cheap to make, and load makes one per tensor)."""

    unit: str  # the storage member
    byte_offset: int  # where the storage starts in it
    numel: int  # the storage's size, in items of dtype
    dtype: str
    location: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool
    kind: str


def view_fits(nbytes: int, offset: int, size, stride, itemsize: int) -> bool:
    """Whether a strided view lies inside *nbytes* of storage (else torch's ``set_`` grows the storage)."""
    # Not strict: the gate compares the lengths first; a trusted load (no gate) leaves a mismatch for torch to report.
    # (C iterators: load calls this for each of a model's tens of thousands of tensors)
    extent = 0 if 0 in size else 1 + sum(map(operator.mul, map(operator.sub, size, itertools.repeat(1)), stride))
    return (offset + extent) * itemsize <= nbytes


class TableBuilder:
    """The rows a save collects, one per distinct plain tensor, in the order the pickler meets them."""

    def __init__(self) -> None:
        self._rows: list[tuple] = []
        self._dtypes: dict[str, int] = {}
        self._locations: dict[str, int] = {}
        self._units: dict[str, int] = {}
        self._rank = 0

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def accepts(dtype: str, location: str, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
        """Whether a tensor of this dtype, device and view can be a row (else it is pickled torch's way)."""
        return (len(size) <= MAX_RANK and dtype in TORCH_DTYPE_SIZES and LOCATION.fullmatch(location) is not None
                and all(0 <= v <= LIMIT for v in (offset, *size, *stride)))

    def add(self, row: Row) -> int | None:
        """The row number of *row*, or None when it does not fit the table (pickle that tensor torch's way)."""
        if not self.accepts(row.dtype, row.location, row.offset, row.size, row.stride):
            return None
        return self.append(row)

    def append(self, row: Row) -> int | None:
        """:meth:`add` for a row whose dtype, device and view :meth:`accepts` has passed already (the pickler asks
        first, before it keys the storage: once per tensor is enough on a save's hot path)."""
        if row.kind not in KINDS or not 0 <= row.byte_offset <= LIMIT or not 0 <= row.numel <= LIMIT:
            return None
        unit = self._units.setdefault(row.unit, len(self._units))
        dtype = self._dtypes.setdefault(row.dtype, len(self._dtypes))
        location = self._locations.setdefault(row.location, len(self._locations))
        self._rank = max(self._rank, len(row.size))
        self._rows.append((unit, row.byte_offset, row.numel, dtype, location, row.offset, int(row.requires_grad),
                           KINDS.index(row.kind), row.size, row.stride))
        return len(self._rows) - 1

    def encode(self) -> bytes:
        """The member's bytes."""
        rank = self._rank
        out = array(_TYPECODES[8])
        for *fixed, size, stride in self._rows:
            pad = rank - len(size)
            out.extend(fixed)
            out.append(len(size))
            out.extend(size)
            out.extend((1,) * pad)
            out.extend(stride)
            out.extend((0,) * pad)
        if out and max(out) <= _INT32_MAX:  # nearly every table: half the bytes
            out = array(_TYPECODES[4], out)
        header = json.dumps({"rows": len(self._rows), "rank": rank, "itemsize": out.itemsize,
                             "units": list(self._units), "dtypes": list(self._dtypes),
                             "locations": list(self._locations)}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        rows = out.tobytes() if _LITTLE else _swapped(out)
        return _LENGTH.pack(len(header)) + header + rows


_LITTLE = struct.pack("=q", 1) == struct.pack("<q", 1)
_TYPECODES = {array(code).itemsize: code for code in "qli"}  # array typecodes by size: 8 and 4 bytes
_INT32_MAX = 2**31 - 1
_SERIAL = 32768  # elements torch handles in one thread (its parallel grain size): see TensorTable._judge


def _swapped(values: array) -> bytes:
    copy = array("q", values)
    copy.byteswap()
    return copy.tobytes()


@dataclass(frozen=True)
class TensorTable:
    """A parsed tensor table: its header checked, its rows not yet (see :meth:`problem`)."""

    units: tuple[str, ...]
    unit_sizes: tuple[int, ...]  # bytes of each unit member
    dtypes: tuple[str, ...]
    locations: tuple[str, ...]
    rank: int
    rows: int
    data: array  # rows * width int64, in row order

    @property
    def width(self) -> int:
        return FIXED_COLUMNS + 2 * self.rank

    @classmethod
    def parse(cls, raw: bytes, member_sizes: Mapping[str, int], where: str = "archive") -> TensorTable:
        """The table in member bytes *raw*; *member_sizes* are the archive's members (name -> bytes).

        Raises ArchiveError for a malformed header or a length that does not match it; the rows' values are
        judged by :meth:`problem`, which the trust gate runs.
        """
        def bad(what: str) -> ArchiveError:
            return ArchiveError(f"{where}: the tensor table is malformed ({what}); the archive is corrupt")

        if len(raw) < _LENGTH.size:
            raise bad("truncated")
        (length,) = _LENGTH.unpack_from(raw)
        if length > MAX_HEADER or length % 8 or _LENGTH.size + length > len(raw):
            raise bad("header length")
        try:
            header = loads_bounded(bytes(raw[_LENGTH.size:_LENGTH.size + length]).decode(), max_depth=4)
        except (UnicodeDecodeError, ValueError):
            raise bad("header is not JSON") from None
        if not isinstance(header, dict) or set(header) != {"rows", "rank", "itemsize", "units", "dtypes", "locations"}:
            raise bad("header fields")
        rows, rank, itemsize = header["rows"], header["rank"], header["itemsize"]
        if type(itemsize) is not int or itemsize not in _TYPECODES:
            raise bad("itemsize")
        units, dtypes, locations = header["units"], header["dtypes"], header["locations"]
        if type(rows) is not int or type(rank) is not int or not 0 <= rank <= MAX_RANK or rows < 0:
            raise bad("rows or rank")
        for names in (units, dtypes, locations):
            if not isinstance(names, list) or not all(type(n) is str for n in names) or len(set(names)) != len(names):
                raise bad("a name list")
        if not all(_UNIT.fullmatch(n) and n in member_sizes for n in units):
            raise bad("a unit that is not a storage member of the archive")
        if not all(d in TORCH_DTYPE_SIZES for d in dtypes):
            raise bad("an unknown dtype")
        if not all(LOCATION.fullmatch(loc) for loc in locations):
            raise bad("a malformed location")
        body = memoryview(raw)[_LENGTH.size + length:]
        if len(body) != rows * (FIXED_COLUMNS + 2 * rank) * itemsize:
            raise bad("its rows do not fill it")
        data = array(_TYPECODES[itemsize])
        data.frombytes(body)
        if not _LITTLE:
            data.byteswap()
        return cls(tuple(units), tuple(member_sizes[n] for n in units), tuple(dtypes), tuple(locations), rank, rows,
                   data)

    def row(self, index: int) -> Row:
        """Row *index*, which must be in ``range(rows)``, of a table :meth:`problem` passed (its codes index the
        name lists: a negative one would wrap)."""
        if not 0 <= index < self.rows:
            raise IndexError(f"tensor row {index} of {self.rows}")
        w, rank = self.width, self.rank
        unit, byte_offset, numel, dtype, location, offset, requires_grad, kind, ndim, *view = \
            self.data[index * w:(index + 1) * w].tolist()
        return Row(self.units[unit], byte_offset, numel, self.dtypes[dtype], self.locations[location], offset,
                   tuple(view[:ndim]), tuple(view[rank:rank + ndim]), requires_grad == 1, KINDS[kind])

    def problem(self) -> str | None:
        """Why the table is refused (its first bad row), or None; judged once per table.

        Every code must name an entry of its list, every view must lie inside its storage (else torch's ``set_``
        grows the storage: bytes nobody wrote, memory the archive sizes), and every storage must be where the
        module docstring says.  It is :func:`view_fits`, which load applies to each tensor
        again, for all rows together in torch's vector operations: a table of 20,000 rows takes about a
        millisecond, where a Python loop took ten.
        """
        found = self.__dict__.get("_problem", self)
        if found is self:
            found = self._judge() if self.rows else None
            object.__setattr__(self, "_problem", found)  # frozen: a verdict computed once, never changed
        return found

    def _judge(self) -> str | None:
        import torch

        table = torch.frombuffer(self.data, dtype={4: torch.int32, 8: torch.int64}[self.data.itemsize])
        table = table.view(self.rows, self.width)
        # One column of at most _SERIAL rows per operation: torch runs a larger one on its thread pool, whose threads
        # then wait for the cores the archive's hashing threads hold (20,000 rows on 2 cores: 3.4 ms with one
        # thread, 7 to 90 ms with two).
        storages = []
        for first in range(0, self.rows, _SERIAL):
            columns = [table[first:first + _SERIAL, c].to(torch.int64) for c in range(self.width)]  # 64-bit math
            problem = self._judge_rows(columns, first)
            if problem:
                return problem
            storages.append(columns)
        return self._judge_storages(*(torch.cat([c[i] for c in storages]) for i in (UNIT, BYTE_OFFSET, NUMEL, DTYPE)))

    def _judge_rows(self, columns: list[Any], first: int) -> str | None:
        """The rows whose columns are *columns* (row *first* onwards): codes in range, views inside storages."""
        import torch

        rank = self.rank
        limits = [len(self.units) - 1, LIMIT, LIMIT, len(self.dtypes) - 1, len(self.locations) - 1, LIMIT, 1,
                  len(KINDS) - 1, rank] + [LIMIT] * (2 * rank)
        bad = torch.zeros(len(columns[0]), dtype=torch.bool)
        for column, limit in zip(columns, limits, strict=True):
            bad |= (column < 0) | (column > limit)
        if bool(bad.any()):
            return _row_refused(bad, "a value out of range", first)
        ndim, numel, offset = columns[NDIM], columns[NUMEL], columns[OFFSET]
        sizes, strides = columns[FIXED_COLUMNS:FIXED_COLUMNS + rank], columns[FIXED_COLUMNS + rank:]
        for d in range(rank):
            bad |= (ndim <= d) & ((sizes[d] != 1) | (strides[d] != 0))
        if bool(bad.any()):
            return _row_refused(bad, "sizes or strides past its number of dimensions", first)
        nonempty = torch.ones(len(bad), dtype=torch.bool)
        for d in range(rank):
            nonempty &= sizes[d] > 0
            # Each term (size - 1) * stride is at most numel, so the sum cannot wrap; checked before it is multiplied.
            bad |= (sizes[d] > 1) & (strides[d] > 0) & (sizes[d] - 1 > numel // strides[d].clamp(min=1))
        bad &= nonempty
        if not bool(bad.any()):
            extent = torch.ones(len(bad), dtype=torch.int64)
            for d in range(rank):
                extent += (sizes[d] - 1) * strides[d]
            bad = torch.where(nonempty, offset + extent, offset) > numel
        if bool(bad.any()):
            return _row_refused(bad, "a view beyond its storage (torch would grow the storage)", first)
        return None

    def _judge_storages(self, unit: Any, start: Any, numel: Any, dtype: Any) -> str | None:
        """Each storage inside its unit, where its unit says (see the module docstring), none overlapping."""
        import torch

        # (index_select, not tensor[index]: advanced indexing took 7 ms for 20,000 rows here, index_select 9 us)
        nbytes = numel * torch.tensor([TORCH_DTYPE_SIZES[d] for d in self.dtypes]).index_select(0, dtype)
        unit_size = torch.tensor(self.unit_sizes, dtype=torch.int64).index_select(0, unit)
        packed = torch.tensor([is_pack(u) for u in self.units]).index_select(0, unit)
        bad = (start + nbytes > unit_size) | (packed & (start % ALIGN != 0)) | \
            (~packed & ((start != 0) | (nbytes != unit_size)))
        if bool(bad.any()):
            return _row_refused(bad, "a storage that is not where its member holds one")
        # Sorted by (unit, start): rows naming one storage agree on its size, and each storage ends before the next.
        order = torch.sort(start, stable=True).indices
        order = order.index_select(0, torch.sort(unit.index_select(0, order), stable=True).indices)
        u, b, n = (column.index_select(0, order) for column in (unit, start, nbytes))
        same_unit = u[1:] == u[:-1]
        same_storage = same_unit & (b[1:] == b[:-1])
        bad_pairs = (same_storage & (n[1:] != n[:-1])) | (same_unit & ~same_storage & (b[1:] < b[:-1] + n[:-1]))
        if bool(bad_pairs.any()):
            bad = torch.zeros(self.rows, dtype=torch.bool)
            bad[order[1:][bad_pairs]] = True
            return _row_refused(bad, "a storage that overlaps another")
        return None


def _row_refused(bad: Any, what: str, first: int = 0) -> str:
    """The refusal naming the first row *bad* marks (counted from row *first*) and how many more it marks."""
    row = first + int(bad.nonzero()[0, 0])
    count = int(bad.sum())
    more = f" (and {count - 1} more)" if count > 1 else ""
    return f"tensor table row {row}: {what}{more}"



def from_archive(reader: Any) -> TensorTable | None:
    """The tensor table of the archive open in *reader* (its digest checked), or None when it has none (formats
    before 3 never have one: a ``tensors`` member there is not read)."""
    if reader.version < 3 or MEMBER not in reader.members:
        return None
    sizes = {name: member.size for name, member in reader.members.items()}
    return TensorTable.parse(reader.read(MEMBER), sizes, str(reader.path))

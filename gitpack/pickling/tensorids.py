"""Tensor persistent ids of format-2 archives: the check the gate made tens of thousands of times.

Format 2's pickler wrote every plain tensor as one persistent id, ``("tensor",
dtype, key, location, numel, offset, size, stride, requires_grad, kind)``,
which load turns into a view of a storage read from the archive.  Format 3
writes a row number instead (:mod:`.tensortable`); such archives still load,
and a forged pickle may still hold these ids, so they are still checked.  Every field
must be of its exact type (``1 == True == 1.0``: nothing is compared before its
type is checked), and the view must lie inside its storage: else torch's
``set_`` grows the storage (bytes nobody wrote, memory the pickle sizes).

A model of 10,000 layers names 20,000 tensors, and the gate must cost a
fraction of the unpickling it guards, so :func:`problem` is one pass with no
allocation (about half a microsecond here).  Judging the ids all at once
afterwards, column by column with C iterators, measured slower: transposing
them alone cost as much.
"""

from __future__ import annotations

from .policy import TORCH_DTYPE_SIZES
from .tensortable import KINDS
from .verdicts import LOCATION, short

KIND = "tensor"
_KINDS = frozenset(KINDS)  # what load makes of it: a plain tensor or an nn.Parameter
_DTYPES = frozenset(TORCH_DTYPE_SIZES)
_LOCATIONS_SEEN: set[str] = set()  # device names already matched: "cpu", "cuda:0" (most tensors name one of a few)


def problem(pid: tuple) -> str | None:
    """Why a tensor id is refused, or None (the tensor's dtype is its storage's: sizes count in its items)."""
    _, dtype, key, location, numel, offset, size, stride, requires_grad, what = pid
    if (type(dtype) is str and type(key) is str and type(location) is str and type(numel) is int
            and type(offset) is int and type(size) is tuple and type(stride) is tuple and type(requires_grad) is bool
            and type(what) is str and what in _KINDS and dtype in _DTYPES and numel >= 0 and offset >= 0
            and len(size) == len(stride) and (location in _LOCATIONS_SEEN or _location_ok(location))):
        extent, empty = 1, False
        for d, s in zip(size, stride, strict=True):
            if type(d) is not int or type(s) is not int or d < 0 or s < 0:
                break
            if d == 0:
                empty = True
            else:
                extent += (d - 1) * s
        else:  # every dimension is a non-negative int
            if offset + (0 if empty else extent) <= numel:
                return None
            return "a tensor reference with a view beyond its storage (torch would grow the storage)"
    return f"malformed tensor reference {short(repr(pid))}"


def _location_ok(location: str) -> bool:
    if location in _LOCATIONS_SEEN:
        return True
    if not LOCATION.fullmatch(location):
        return False
    if len(_LOCATIONS_SEEN) < 64:
        _LOCATIONS_SEEN.add(location)
    return True

"""The gate's vocabulary: a :class:`Verdict`, and predicates on what the dry run recorded.

What :mod:`.calls`, :mod:`.states` and :mod:`.classchecks` have in common:
whether a dry-run value is plain data, a shape, one of the archive's storages,
a numpy dtype the pickle built safely, a callable the policy admits as a
value.  The values come from :mod:`.standins` (never real objects).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .policy import CLASS, TORCH_DTYPE_SIZES, TRUSTED, VALUE, VALUE_TYPE
from .standins import Deferred, Ref, made_of, ref_of

DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
QUALNAME = re.compile(r"^(<lambda>|[A-Za-z_][A-Za-z0-9_]*)(\.(<locals>|<lambda>|[A-Za-z_][A-Za-z0-9_]*))*$")
# numpy dtype codes that hold plain bytes: never object ('O') or void/structured ('V') types
# (a void 'V' code is raw bytes; its fields, set by BUILD, are checked to be plain dtypes too)
SAFE_DTYPE = re.compile(r"^[<>|=]?([?bBhHiIlLqQpPefdgFDG]|[iufcb][1248]|c16|f16|c32|[SUaV]\d{0,9}|[mM]8(\[\w+\])?)$")
DTYPE_OBJECT_FLAGS = 0x01 | 0x02 | 0x04  # numpy's NPY_ITEM_REFCOUNT, NPY_LIST_PICKLE, NPY_ITEM_IS_POINTER
PLAIN = (type(None), bool, int, float, complex, str, bytes)
CONTAINERS = (list, tuple, dict, set, frozenset)
CALLABLE_KINDS = ("function", "partial", "method")  # what an object the pickle builds is when it can be called
TENSOR_RECONSTRUCTORS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"}
SHORT = 120


@dataclass
class Verdict:
    problem: str | None = None
    deferred: list[Deferred] = field(default_factory=list)
    result: Ref | None = None  # a reconstructor that returns a class: what the dry run continues with
    kind: str = "instance"  # what a call returns: "instance", "tensor", "ndarray", "dtype", "function", ...
    cls: Ref | None = None  # the class of what a call returns, when it is not the callee


# The common answer (allowed, nothing deferred), shared rather than built for each of a pickle's calls: no
# caller changes a verdict it did not make (and an item appended here could only add a check, never drop one).
ALLOWED = Verdict()


def refuse(problem: str) -> Verdict:
    return Verdict(problem)


def short(text: Any, limit: int = SHORT) -> str:
    """*text* for a message: ASCII (anything else escaped, so a pickle's names cannot drive a terminal) and at
    most *limit* characters."""
    text = str(text).encode("ascii", "backslashreplace").decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_dunder(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("__") and key.endswith("__")


def plain(value: Any) -> bool:
    return type(value) in PLAIN


def plain_or_container(value: Any) -> bool:
    return type(value) in PLAIN or type(value) in CONTAINERS


def callable_value(value: Any) -> bool:
    """A function, class or bound callable the policy admits as a value (calling it is not done here)."""
    ref = ref_of(value)
    if ref is not None:
        return ref.kind in ("function", "class", "legacy", "result") or \
            (ref.kind == "global" and ref.category in (VALUE, CLASS, VALUE_TYPE, TRUSTED))
    made = made_of(value)
    return made is not None and made.kind in CALLABLE_KINDS


def is_storage_ref(value: Any) -> bool:
    ref = ref_of(value)
    return ref is not None and ref.kind == "storage"


def is_shape(value: Any) -> bool:
    if type(value) in (tuple, list):
        for d in value:  # a loop, not all(generator): called for every tensor a pickle names
            if type(d) is not int or d < 0:
                return False
        return True
    made = made_of(value)
    return made is not None and made.cls is not None and made.cls.dotted == "torch.Size"


def safe_dtype(value: Any) -> bool:
    """A numpy dtype built by this pickle from a plain code (never object or structured), its state already set."""
    made = made_of(value)
    return made is not None and made.kind == "dtype" and made.built


LOCATION = re.compile(r"[a-z][a-z0-9_]{0,15}(:[0-9]{1,4})?")  # a storage's device as torch writes it: cpu, cuda:0
_CODE = re.compile(r"[<>|=]?(?P<char>[a-zA-Z?])(?P<size>\d*)(\[\w+\])?")
_CHAR_SIZES = {"?": 1, "b": 1, "B": 1, "h": 2, "H": 2, "i": 4, "I": 4, "l": 8, "L": 8, "q": 8, "Q": 8, "p": 8, "P": 8,
               "e": 2, "f": 4, "d": 8, "g": 16, "F": 8, "D": 16, "G": 32, "M": 8, "m": 8}


def dtype_itemsize(value: Any) -> int | None:
    """The item size of a numpy dtype the pickle built from a code (``'f8'``: 8, ``'U3'``: 12, ``'V12'``: 12);
    0 for a flexible code without a size, None when *value* is not such a dtype."""
    made = made_of(value)
    if made is None or made.kind != "dtype" or not made.args or type(made.args[0]) is not str:
        return None
    m = _CODE.fullmatch(made.args[0])
    if m is None:
        return None
    char, size = m["char"], int(m["size"]) if m["size"] else None
    if size is None:
        return _CHAR_SIZES.get(char, 0)
    return size * 4 if char == "U" else size


def tensor_fits(numel: int, storage_dtype: str, offset: int, size: tuple, stride: tuple, tensor_dtype: str) -> bool:
    """Whether a view (offset, size, stride in items of *tensor_dtype*) lies inside a storage of *numel* items of
    *storage_dtype*: else torch's ``set_`` would grow the storage (bytes nobody wrote, memory the pickle sizes)."""
    item, storage_item = TORCH_DTYPE_SIZES.get(tensor_dtype), TORCH_DTYPE_SIZES.get(storage_dtype)
    if item is None or storage_item is None or len(size) != len(stride):
        return False
    extent = 1
    for d, s in zip(size, stride, strict=True):
        if d == 0:
            extent = 0
            break
        extent += (d - 1) * s
    return (offset + extent) * item <= numel * storage_item


NEVER_CALLABLE = frozenset(PLAIN + (dict, tuple, set, frozenset))


def value_kind(value: Any) -> str:
    """What a state value is, as far as the class checks care: ``callable`` (a function, class, partial or
    method the pickle names or builds), ``str-lists`` (a list of lists of str), or ``data``."""
    if type(value) in NEVER_CALLABLE:  # most attribute values: no stand-in is ever of these exact types
        return "data"
    made = made_of(value)
    if made is not None:  # an object the pickle built: callable only if it was built as a function
        return "callable" if made.kind in CALLABLE_KINDS else "data"
    if callable_value(value):
        return "callable"
    if type(value) is list and value and all(type(v) is list and v and all(type(x) is str for x in v) for v in value):
        return "str-lists"
    return "data"


_GOOD_KEYS: set[str] = set()  # attribute names already found plain (a model's modules share a few dozen)


def _good_key(key: Any) -> bool:
    if type(key) is str and key in _GOOD_KEYS:
        return True
    if not isinstance(key, str) or is_dunder(key) or not key.isidentifier():
        return False
    if type(key) is str and len(_GOOD_KEYS) < 4096 and len(key) <= 128:
        _GOOD_KEYS.add(key)
    return True


def state_items(state: Any) -> tuple[tuple[str, str], ...] | None:
    """``(key, value kind)`` for every attribute a dict or ``(dict, slots)`` state sets (:func:`value_kind`),
    sorted by key; None when it is not that shape or a key is not a plain, non-dunder name.  Slot state must
    name slots: the class checks refuse it on anything else.  (The gate asks once per class and keys for
    states of plain data: :func:`gitpack.pickling.states.check_state`.)"""
    parts = state if type(state) is tuple and len(state) == 2 else (state,)
    items: dict[str, str] = {}
    for i, part in enumerate(parts):
        if part is None and len(parts) == 2:
            continue
        if type(part) is not dict:
            return None
        slots = i == 1 and len(parts) == 2
        good, never_callable = _GOOD_KEYS, NEVER_CALLABLE
        for key, value in part.items():
            if not (type(key) is str and key in good) and not _good_key(key):
                return None
            kind = "data" if type(value) in never_callable else value_kind(value)
            items[key] = ("slot-" + kind) if slots else kind
    return tuple(sorted(items.items()))


def state_keys(state: Any) -> tuple[str, ...] | None:
    """The attribute names a dict or ``(dict, slots)`` state sets; None when it is not that shape or a key is
    not a plain, non-dunder name."""
    parts = state if type(state) is tuple and len(state) == 2 else (state,)
    keys: list[str] = []
    for part in parts:
        if part is None and len(parts) == 2:
            continue
        if type(part) is not dict:
            return None
        for key in part:
            if not isinstance(key, str) or is_dunder(key) or not key.isidentifier():
                return None
            keys.append(key)
    return tuple(sorted(set(keys)))

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

from .policy import CLASS, TRUSTED, VALUE, VALUE_TYPE
from .standins import Deferred, Ref, made_of, ref_of

DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
QUALNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.(<locals>|<lambda>|[A-Za-z_][A-Za-z0-9_]*))*$")
# numpy dtype codes that hold plain bytes: never object ('O') or void/structured ('V') types
# (a void 'V' code is raw bytes; its fields, set by BUILD, are checked to be plain dtypes too)
SAFE_DTYPE = re.compile(r"^[<>|=]?([?bBhHiIlLqQpPefdgFDG]|[iufcb][1248]|c16|f16|c32|[SUaV]\d{0,9}|[mM]8(\[\w+\])?)$")
DTYPE_OBJECT_FLAGS = 0x01 | 0x02 | 0x04  # numpy's NPY_ITEM_REFCOUNT, NPY_LIST_PICKLE, NPY_ITEM_IS_POINTER
PLAIN = (type(None), bool, int, float, complex, str, bytes)
CONTAINERS = (list, tuple, dict, set, frozenset)
TENSOR_RECONSTRUCTORS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"}
SHORT = 120


@dataclass
class Verdict:
    problem: str | None = None
    deferred: list[Deferred] = field(default_factory=list)
    result: Ref | None = None  # a reconstructor that returns a class: what the dry run continues with
    kind: str = "instance"  # what a call returns: "instance", "tensor", "ndarray", "dtype", "function", ...
    cls: Ref | None = None  # the class of what a call returns, when it is not the callee


def refuse(problem: str) -> Verdict:
    return Verdict(problem)


def short(text: str) -> str:
    text = str(text).encode("ascii", "backslashreplace").decode()
    return text if len(text) <= SHORT else text[: SHORT - 3] + "..."


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
    return made is not None and made.kind in ("function", "partial", "method")


def is_storage_ref(value: Any) -> bool:
    ref = ref_of(value)
    return ref is not None and ref.kind == "storage"


def is_shape(value: Any) -> bool:
    if type(value) in (tuple, list):
        return all(type(d) is int and d >= 0 for d in value)
    made = made_of(value)
    return made is not None and made.cls is not None and made.cls.dotted == "torch.Size"


def safe_dtype(value: Any) -> bool:
    """A numpy dtype built by this pickle from a plain code (never object or structured), its state already set."""
    made = made_of(value)
    return made is not None and made.kind == "dtype" and made.built


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

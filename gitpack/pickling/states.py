"""What state an object may be given (BUILD) and what it may be filled with (SETITEM, APPEND, ADD).

State only ever goes on objects the pickle built, once, before the object is
handed to anything else (:mod:`.gate` checks that order); here, its shape:
plain attribute names that do not replace a method (checked against the class
by :mod:`.classchecks`), and the exact shapes of numpy dtypes and arrays,
``io.BytesIO``, ``functools.partial`` and the sentencepiece processor (model
bytes, never a path).  Only dict-, list- and deque-like values and snapshot
classes may be filled with items.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .policy import CLASS, TRUSTED
from .standins import Buffer, Deferred, Made, ref_of
from .verdicts import (
    DTYPE_OBJECT_FLAGS,
    Verdict,
    callable_value,
    is_shape,
    plain,
    refuse,
    safe_dtype,
    short,
    state_keys,
)


# ----------------------------------------------------------------------------- state (BUILD)
def check_state(trace: Any, made: Made, state: Any) -> Verdict:
    """Judge one BUILD on an object the pickle built."""
    cls = made.cls
    if made.kind in ("tensor", "function", "value", "method") or cls is None:
        return refuse(f"BUILD on the {made.kind} returned by {short(made.callee.dotted)}")
    if cls.kind == "global" and cls.category == TRUSTED:
        return Verdict()
    special = _STATES.get(cls.dotted)
    if special is not None:
        return special(made, state)
    if cls.kind in ("class", "legacy") or (cls.kind == "global" and cls.category == CLASS):
        keys = state_keys(state)
        if keys is None:
            if cls.kind in ("class", "legacy"):
                return Verdict(deferred=[Deferred("custom-state", cls)])
            return refuse(f"state of {short(cls.dotted)} that is not plain attribute data (a dict of names)")
        return Verdict(deferred=[Deferred("state", cls, keys)] if keys else [])
    return refuse(f"BUILD on {short(cls.dotted)}, which takes no state")


def _dtype_state(made: Made, state: Any) -> Verdict:
    """``(3|4, byteorder, subdtype, names, fields, elsize, alignment, flags[, metadata])``: fields and sub-arrays
    only of plain dtypes built before (never an object field: its bytes would be read as pointers)."""
    ok = type(state) is tuple and len(state) in (8, 9) and state[0] in (3, 4) and state[1] in ("<", ">", "|", "=") \
        and all(type(x) is int for x in state[5:8]) and not state[7] & DTYPE_OBJECT_FLAGS
    if ok:
        sub, names, fields = state[2], state[3], state[4]
        ok = sub is None or (type(sub) is tuple and len(sub) == 2 and safe_dtype(sub[0]) and is_shape(sub[1]))
        ok = ok and (names is None) == (fields is None)
        if ok and names is not None:
            ok = type(names) is tuple and type(fields) is dict and set(names) == set(fields) and all(
                type(f) is tuple and 2 <= len(f) <= 3 and safe_dtype(f[0]) and type(f[1]) is int and f[1] >= 0
                and (len(f) == 2 or f[2] is None or type(f[2]) is str) for f in fields.values())
    if ok and len(state) == 9:
        meta = state[8]
        ok = meta is None or (type(meta) is tuple and len(meta) == 2 and (meta[0] is None or type(meta[0]) is dict)
                              and type(meta[1]) is tuple and all(plain(x) for x in meta[1]))
    return Verdict() if ok else refuse("numpy dtype state with object items, or fields and sub-arrays that are not plain "
                                    "dtypes")


def _ndarray_state(made: Made, state: Any) -> Verdict:
    ok = made.kind == "ndarray" and type(state) is tuple and len(state) == 5 and type(state[0]) is int \
        and is_shape(state[1]) and safe_dtype(state[2]) and type(state[3]) is bool \
        and type(state[4]) in (bytes, bytearray, Buffer)
    return Verdict() if ok else refuse("numpy array state that is not raw bytes of a plain dtype")


def _bytesio_state(made: Made, state: Any) -> Verdict:
    ok = type(state) is tuple and len(state) == 3 and type(state[0]) in (bytes, bytearray) \
        and type(state[1]) is int and state[1] >= 0 and (state[2] is None or state_keys(state[2]) is not None)
    return Verdict() if ok else refuse("io.BytesIO state that is not its bytes and a position")


_SPM_OPTIONS = re.compile(r"^_[a-z_]+$")


def _builtin_type(value: Any) -> bool:
    """``int``, ``str`` and the like, named as a global or returned by dill's ``_load_type``."""
    ref = ref_of(value)
    return ref is not None and ref.kind in ("global", "result") and ref.module == "builtins" and ref.category is not None


def _sentencepiece_state(made: Made, state: Any) -> Verdict:
    """The serialized model proto (bytes), never a path: the processor would open whatever it names."""
    if type(state) is bytes:
        return Verdict()
    if type(state) is dict and type(state.get("model_proto")) is bytes and all(
            k == "model_proto" or (isinstance(k, str) and _SPM_OPTIONS.match(k) and
                                   (plain(v) or _builtin_type(v)))
            for k, v in state.items()):
        return Verdict()
    return refuse("sentencepiece state other than a serialized model proto and its options")


def _partial_state(made: Made, state: Any) -> Verdict:
    ok = type(state) is tuple and len(state) == 4 and callable_value(state[0]) and type(state[1]) is tuple \
        and (state[2] is None or type(state[2]) is dict) and (state[3] is None or state_keys(state[3]) is not None)
    return Verdict() if ok else refuse("functools.partial state with something other than an allowed callable")


def _attribute_state(made: Made, state: Any) -> Verdict:
    """Plain attributes on a dict-like value (``state_dict()``'s OrderedDict carries ``_metadata``)."""
    keys = state_keys(state)
    if keys is None:
        return refuse(f"state of {short(made.cls.dotted if made.cls else '?')} that is not plain attribute data")
    return Verdict(deferred=[Deferred("state", made.cls, keys)] if keys and made.cls else [])


def _no_state(made: Made, state: Any) -> Verdict:
    return refuse(f"BUILD on a {short(made.cls.dotted if made.cls else '?')} (torch's pickles never set one's state)")


_STATES: dict[str, Callable[[Made, Any], Verdict]] = {
    "numpy.dtype": _dtype_state,
    "numpy.ndarray": _ndarray_state,
    "_io.BytesIO": _bytesio_state,
    "io.BytesIO": _bytesio_state,
    "sentencepiece.SentencePieceProcessor": _sentencepiece_state,
    "functools.partial": _partial_state,
    "collections.OrderedDict": _attribute_state,
    "collections.Counter": _attribute_state,
    "collections.defaultdict": _attribute_state,
    "torch.Tensor": _no_state,
    "torch.nn.parameter.Parameter": _no_state,
    "torch.nn.parameter.Buffer": _no_state,
}


# ----------------------------------------------------------------------------- fills (SETITEM, APPEND, ADD)
_FILLABLE = {
    "collections.OrderedDict": {"setitem"}, "collections.defaultdict": {"setitem"}, "collections.Counter": {"setitem"},
    "builtins.dict": {"setitem"}, "collections.deque": {"append", "extend"}, "builtins.list": {"append", "extend"},
    "builtins.set": {"add"},
}


def check_mutation(trace: Any, made: Made, how: str) -> Verdict:
    cls = made.cls
    if cls is None or made.kind != "instance":
        return refuse(f"fills the {made.kind} returned by {short(made.callee.dotted)} with items")
    if cls.kind in ("class", "legacy") or (cls.kind == "global" and cls.category == TRUSTED):
        return Verdict()
    if how in _FILLABLE.get(cls.dotted, ()):
        return Verdict()
    return refuse(f"fills {short(cls.dotted)} with items ({how})")



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

from collections.abc import Callable
from typing import Any

from .policy import CLASS, TRUSTED
from .standins import Buffer, Deferred, Made, ValueStandIn, ref_of
from .verdicts import (
    ALLOWED,
    DTYPE_OBJECT_FLAGS,
    NEVER_CALLABLE,
    Verdict,
    callable_value,
    dtype_itemsize,
    is_shape,
    plain,
    refuse,
    safe_dtype,
    short,
    state_items,
    state_keys,
)

# ----------------------------------------------------------------------------- state (BUILD)
# What a state value's type alone says is data (value_kind): an object the pickle built is data unless it was
# built as a function, which the trace counts (callables_built); a list is looked into (str-lists)
_DATA_VALUES = frozenset(NEVER_CALLABLE) | {Made, ValueStandIn}


def check_state(trace: Any, made: Made, state: Any) -> Verdict:
    """Judge one BUILD on an object the pickle built."""
    cls = made.cls
    if made.kind in ("tensor", "function", "value", "method") or cls is None:
        return refuse(f"BUILD on the {made.kind} returned by {short(made.callee.dotted)}")
    if cls.kind == "global" and cls.category == TRUSTED:
        return Verdict()
    if cls.kind == "global" and cls.refused:
        return Verdict()  # the refused global is reported already; its state is judged once it is allowed
    special = _STATES.get(cls.dotted)
    if special is not None:
        return special(made, state)
    if cls.kind in ("class", "legacy") or (cls.kind == "global" and cls.category == CLASS):
        # A model's layers give a few states thousands of times, and the gate must cost a fraction of the
        # unpickling: a state whose values are all data (no object the pickle built is callable yet) is
        # decided by its class and keys, checked once.  Exact: a tuple equal to one of only str keys holds
        # only those str.
        seen = trace.states_checked
        key = None
        if type(state) is dict and not trace.callables_built and _DATA_VALUES.issuperset(map(type, state.values())):
            key = (cls, tuple(state))
            if key in seen:
                return ALLOWED
        items = state_items(state)
        if items is None:
            if cls.kind in ("class", "legacy"):
                return Verdict(deferred=[Deferred("custom-state", cls)])
            return refuse(f"state of {short(cls.dotted)} that is not plain attribute data (a dict of names)")
        if key is not None:
            seen.add(key)
        return Verdict(deferred=[Deferred("state", cls, items)])
    return refuse(f"BUILD on {short(cls.dotted)}, which takes no state")


def _dtype_state(made: Made, state: Any) -> Verdict:
    """``(3|4, byteorder, subdtype, names, fields, elsize, alignment, flags[, metadata])``: fields and sub-arrays
    only of plain dtypes built before (never an object field: its bytes would be read as pointers), and sizes
    that add up (a sub-array larger than its item made numpy read far past an 8-byte buffer: SIGSEGV)."""
    ok = type(state) is tuple and len(state) in (8, 9) and state[0] in (3, 4) and state[1] in ("<", ">", "|", "=") \
        and all(type(x) is int for x in state[5:8]) and not state[7] & DTYPE_OBJECT_FLAGS
    if ok:
        code_size = dtype_itemsize(made)
        elsize = state[5]
        size = elsize if elsize > 0 else code_size
        ok = code_size is not None and (elsize == -1 or elsize > 0) and (not code_size or elsize in (-1, code_size))
        sub, names, fields = state[2], state[3], state[4]
        if ok and sub is not None:
            base = dtype_itemsize(sub[0]) if type(sub) is tuple and len(sub) == 2 and safe_dtype(sub[0]) else None
            count = _product(sub[1]) if type(sub) is tuple and len(sub) == 2 and is_shape(sub[1]) else None
            ok = base is not None and base != 0 and count is not None and base * count == size
        ok = ok and (names is None) == (fields is None)
        if ok and names is not None:
            ok = (type(names) is tuple and type(fields) is dict and set(names) == set(fields)
                  and size is not None and size != 0 and all(_field_fits(f, size) for f in fields.values()))
    if ok and len(state) == 9:
        meta = state[8]
        ok = meta is None or (type(meta) is tuple and len(meta) == 2 and (meta[0] is None or type(meta[0]) is dict)
                              and type(meta[1]) is tuple and all(plain(x) for x in meta[1]))
    return Verdict() if ok else refuse("numpy dtype state with object items, or fields and sub-arrays that are not "
                                       "plain dtypes or do not fit its item size")


def _field_fits(field: Any, size: int) -> bool:
    """A dtype field ``(dtype, offset[, title])``: a plain dtype built before, inside an item of *size* bytes."""
    if not (type(field) is tuple and 2 <= len(field) <= 3 and safe_dtype(field[0]) and type(field[1]) is int
            and field[1] >= 0):
        return False
    itemsize = dtype_itemsize(field[0])
    return (itemsize is not None and itemsize != 0 and field[1] + itemsize <= size
            and (len(field) == 2 or field[2] is None or type(field[2]) is str))


def _product(shape: tuple) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _ndarray_state(made: Made, state: Any) -> Verdict:
    ok = made.kind == "ndarray" and type(state) is tuple and len(state) == 5 and type(state[0]) is int \
        and is_shape(state[1]) and safe_dtype(state[2]) and type(state[3]) is bool \
        and type(state[4]) in (bytes, bytearray, Buffer)
    return Verdict() if ok else refuse("numpy array state that is not raw bytes of a plain dtype")


def _bytesio_state(made: Made, state: Any) -> Verdict:
    """``(bytes, position, attributes)``: the attributes are checked like any state (BytesIO keeps the dict)."""
    items = state_items(state[2]) if type(state) is tuple and len(state) == 3 and state[2] is not None else ()
    ok = type(state) is tuple and len(state) == 3 and type(state[0]) in (bytes, bytearray) \
        and type(state[1]) is int and state[1] >= 0 and items is not None
    if not ok:
        return refuse("io.BytesIO state that is not its bytes and a position")
    return Verdict(deferred=[Deferred("state", made.cls, items)] if items and made.cls else [])


# What SentencePieceProcessor.__getstate__ writes (sentencepiece 0.2): its options, never a method's name.
_SPM_OPTIONS = frozenset({"_return_type", "_add_bos", "_add_eos", "_reverse", "_emit_unk_piece", "_enable_sampling",
                          "_nbest_size", "_alpha", "_num_threads", "_out_type"})


def _builtin_type(value: Any) -> bool:
    """``int``, ``str`` and the like, named as a global or returned by dill's ``_load_type``."""
    ref = ref_of(value)
    return (ref is not None and ref.kind in ("global", "result") and ref.module == "builtins"
            and ref.category is not None)


def _sentencepiece_state(made: Made, state: Any) -> Verdict:
    """The serialized model proto (bytes), never a path: the processor would open whatever it names."""
    if type(state) is bytes:
        return Verdict()
    if type(state) is dict and type(state.get("model_proto")) is bytes and all(
            k == "model_proto" or (k in _SPM_OPTIONS and (plain(v) or _builtin_type(v))) for k, v in state.items()):
        return Verdict()
    return refuse("sentencepiece state other than a serialized model proto and its options")


def _partial_state(made: Made, state: Any) -> Verdict:
    ok = type(state) is tuple and len(state) == 4 and callable_value(state[0]) and type(state[1]) is tuple \
        and (state[2] is None or type(state[2]) is dict) and (state[3] is None or state_keys(state[3]) is not None)
    return Verdict() if ok else refuse("functools.partial state with something other than an allowed callable")


def _attribute_state(made: Made, state: Any) -> Verdict:
    """Plain attributes on a dict-like value (``state_dict()``'s OrderedDict carries ``_metadata``); never slot
    state (a defaultdict's ``default_factory`` is a slot: it would run on every missing key)."""
    items = state_items(state if type(state) is dict else None)
    if items is None:
        return refuse(f"state of {short(made.cls.dotted if made.cls else '?')} other than plain instance attributes")
    return Verdict(deferred=[Deferred("state", made.cls, items)] if items and made.cls else [])


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
    if cls.kind == "global" and cls.refused:
        return Verdict()  # reported already, as for state
    if how in _FILLABLE.get(cls.dotted, ()):
        return Verdict()
    return refuse(f"fills {short(cls.dotted)} with items ({how})")



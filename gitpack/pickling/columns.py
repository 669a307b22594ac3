"""Large plain containers as a few constants: a 300,000-word vocabulary as two strings, not 1.2 M opcodes.

An NLP model's vocabulary (``{"word": 17, ...}`` and its inverse list) is the
biggest object graph most checkpoints hold.  Pickled item by item, it is a
million small opcodes that every load must walk: the trust gate's byte pass
(:mod:`gitpack.pickling.opcodes`) costs about 0.15 us each, more than the C unpickler
spends on them.  So lists and dicts of at least :data:`MIN_ITEMS` items whose
keys and values are all ``str``, ``int`` or ``float`` (exact types) travel as a
persistent id holding one constant per column: strings joined by NUL (or, when
a string holds NUL, with their lengths), numbers as packed 64-bit arrays.
Decoding is ``str.split`` and ``array.frombytes``: C speed, and bounded by the
constants' own size.  Order is kept; shared references to the container stay
shared; the strings inside are not shared with other parts of the graph.
"""

from __future__ import annotations

from array import array
from typing import Any

MIN_ITEMS = 4096
KIND = "columns"
_SEP = "\0"
_CODES = {int: "q", float: "d"}


def encode(obj: list | dict) -> tuple | None:
    """The persistent id for *obj*, or None when it is not a large plain container (pickle it as usual)."""
    if type(obj) is list:
        column = _column(obj)
        return None if column is None else (KIND, "list", column)
    if type(obj) is dict:
        keys = _column(list(obj))
        values = _column(list(obj.values())) if keys is not None else None
        return None if values is None else (KIND, "dict", keys, values)
    return None


def _column(items: list) -> tuple | None:
    kinds = set(map(type, items))
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind is str:
        joined = _SEP.join(items)
        if joined.count(_SEP) == len(items) - 1:
            return ("str", joined)
        return ("str-lengths", "".join(items), array("q", map(len, items)).tobytes())
    code = _CODES.get(kind)
    if code is None:
        return None
    try:
        return (kind.__name__, array(code, items).tobytes())
    except OverflowError:  # an int beyond 64 bits
        return None


def is_valid(pid: Any) -> bool:
    """Whether *pid* is a well-formed columns id: constants of the expected types only (checked before load)."""
    if not (type(pid) is tuple and len(pid) in (3, 4) and pid[0] == KIND):
        return False
    if pid[1] == "list":
        return len(pid) == 3 and _valid_column(pid[2])
    return pid[1] == "dict" and len(pid) == 4 and _valid_column(pid[2]) and _valid_column(pid[3])


def _valid_column(column: Any) -> bool:
    if type(column) is not tuple or not column:
        return False
    kind = column[0]
    if kind == "str":
        return len(column) == 2 and type(column[1]) is str
    if kind == "str-lengths":
        return len(column) == 3 and type(column[1]) is str and type(column[2]) is bytes and len(column[2]) % 8 == 0
    return kind in ("int", "float") and len(column) == 2 and type(column[1]) is bytes and len(column[1]) % 8 == 0


def decode(pid: tuple) -> list | dict:
    """The container a valid columns id stands for (:func:`is_valid` first)."""
    if pid[1] == "list":
        return _decode(pid[2])
    keys, values = _decode(pid[2]), _decode(pid[3])
    if len(keys) != len(values):
        raise ValueError("a columns dict whose keys and values differ in number")
    return dict(zip(keys, values, strict=True))


def _decode(column: tuple) -> list:
    kind = column[0]
    if kind == "str":
        return column[1].split(_SEP)
    if kind == "str-lengths":
        lengths = array("q")
        lengths.frombytes(column[2])
        text, out, pos = column[1], [], 0
        if any(n < 0 for n in lengths) or sum(lengths) != len(text):
            raise ValueError("a columns string whose lengths do not add up")
        for n in lengths:
            out.append(text[pos:pos + n])
            pos += n
        return out
    numbers = array(_CODES[int] if kind == "int" else _CODES[float])
    numbers.frombytes(column[1])
    return numbers.tolist()

"""The byte pass's regex fast path decides exactly what the opcode-by-opcode walk decides.

``opcodes.check`` skips runs of length-only opcodes with a regex; everything it refuses (memo indices beyond
the writes so far, too many big ints, INST/OBJ/PERSID/EXT, bytes after STOP, truncation, unknown opcodes)
is still decided by the exact walk.  Each pickle here goes through both, the fast path and the walk alone
(the run regex replaced by one that never matches), and the results must be identical: the same opcode
count and refusals, or the same error at the same byte.  Without a count (``count=False``, what load runs,
which tokenizes skipped runs only at a memo write by index) the decision must be the same too.
"""

from __future__ import annotations

import collections
import datetime
import pickle
import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pickle_asm import MARK, PROTO, STOP, i, s

from gitpack.pickling import opcodes

NEVER = re.compile(b"")  # matches the empty string: every opcode takes the walk


def both(data: bytes) -> tuple[object, object]:
    """The fast path's and the walk's outcomes; the fast path without a count (what load runs) must decide the
    same (the same refusals, the same error at the same byte), only the count left out."""
    def outcome(count=True):
        try:
            return opcodes.check(data, count=count)
        except opcodes.OpcodeError as exc:
            return ("error", str(exc))

    fast = outcome()
    assert outcome(count=False) == (fast if fast[0] == "error" else (None, fast[1]))
    saved = opcodes._RUN
    opcodes._RUN = NEVER
    try:
        walked = outcome()
    finally:
        opcodes._RUN = saved
    return fast, walked


SAMPLES = [
    {"vocab": {f"w{k}": k for k in range(3000)}, "itos": [f"w{k}" for k in range(3000)]},
    [1, -1, 255, 256, 65535, 65536, 2**31 - 1, -(2**31), 2**31, 2**64, -(2**100), 1.5, float("inf"), None, True],
    ("x" * 63, "y" * 64, "z" * 65, "é" * 40, b"b" * 10, b"c" * 300, bytearray(b"zz"), "long" * 100),
    collections.OrderedDict(a=1, b=[{}, set(), frozenset({1})]),
    datetime.datetime(2024, 1, 2, 3, 4, 5),
    [[k, str(k), (k, k)] for k in range(500)],
]


@pytest.mark.parametrize("protocol", range(0, 6))
@pytest.mark.parametrize("index", range(len(SAMPLES)))
def test_real_pickles_of_every_protocol_get_the_same_verdict(protocol, index):
    data = pickle.dumps(SAMPLES[index], protocol=protocol)
    fast, walked = both(data)
    assert fast == walked
    assert fast[0] > 0  # a count, not an error


MEMOIZED_RUN = PROTO + MARK + (s("k") + b"\x94") * 300 + b"l"  # 300 memo writes inside one fast run


@pytest.mark.parametrize("data,error", [
    # A memo index checked against MEMOIZEs the regex skipped: 300 were written, so 300 is fine, 301 is not.
    (MEMOIZED_RUN + b"r" + struct.pack("<I", 300) + STOP, None),
    (MEMOIZED_RUN + b"r" + struct.pack("<I", 301) + STOP, "memo index 301"),
    (MEMOIZED_RUN + b"r" + struct.pack("<I", 2**29) + STOP, "memo index 536870912"),
    (PROTO + b"q\x05" + STOP, "memo index 5"),
    # Big ints counted one by one even between long fast runs.
    (PROTO + MARK + (i(7) + i(2**70) + b"0") * (opcodes.MAX_BIG_INTS + 1) + b"1" + b"N" + STOP, "more than"),
    (PROTO + b"N" + STOP + b"N", "bytes after STOP"),
    (PROTO + MARK + s("a" * 64) + s("b" * 65) + b"\x8c\x20abc", "argument runs past the end"),
    (PROTO + b"N" * 1000, "no STOP"),
    (PROTO + b"N\xff" + STOP, "unknown opcode 0xff"),
    (PROTO + MARK + b"i__main__\nX\n" + STOP, None),  # INST: refused as unwanted, not an error
], ids=["memo-300", "memo-301", "memo-2**29", "binput-5", "big-ints", "after-stop", "short-past-end", "no-stop",
        "unknown", "inst"])
def test_crafted_pickles_get_the_same_verdict(data, error):
    fast, walked = both(data)
    assert fast == walked
    if error is None:
        assert fast[0] != "error"
    else:
        assert fast[0] == "error" and error in fast[1]


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_pickles_get_the_same_verdict(data):
    base = pickle.dumps(SAMPLES[data.draw(st.integers(0, len(SAMPLES) - 1))], protocol=data.draw(st.integers(2, 5)))
    mutated = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6))):
        how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, len(mutated) - 1))
        if how == "flip":
            mutated[pos] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del mutated[pos:pos + data.draw(st.integers(1, 16))]
        else:
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        if not mutated:
            mutated = bytearray(b"N")
    fast, walked = both(bytes(mutated))
    assert fast == walked

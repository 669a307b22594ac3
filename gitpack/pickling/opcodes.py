"""A byte-level pass over a pickle that bounds what CPython's C unpickler may do before it runs.

The trust gate (:mod:`gitpack.pickling.gate`) runs the C unpickler itself over the pickle,
with every global replaced by an inert stand-in.  That is exact and fast, but
one thing the C unpickler does happens before any hook of ours is reached:
``PUT``/``BINPUT``/``LONG_BINPUT`` with index *n* make it grow its memo table to
*2n* entries at once.  A 12-byte pickle asking for index 2**29 costs 8 GiB of
RAM and half a minute (measured here).  So this pass, which only decodes
argument lengths (no stack, no values), refuses first:

* memo indices beyond the number of memo writes so far (a pickler assigns them
  in order, so no honest pickle ever does that);
* anything after ``STOP``, unknown opcodes, arguments running past the end.

It also bounds the integers outside 32 bits (``LONG1``, ``LONG4``, text
``INT``/``LONG``) to :data:`MAX_BIG_INTS`: CPython hashes ints without a
secret, so 60,000 multiples of ``2**61 - 1`` all hash to 0 and make a set or
dict of them quadratic (a 720 KB pickle took 21 s in the dry run alone).
Honest pickles hold few (gitpack's own pickles pack long number lists into
one constant).

It also names the opcodes gitpack's pickles never contain and that only widen
the attack surface (``INST``/``OBJ``: protocol 0/1 class calls, ``PERSID``:
text persistent ids, ``EXT1/2/4``: the copyreg extension registry).  Those are
harmless in the dry run, so the gate refuses them but still dry-runs the
pickle, to report everything else it would do.
"""

from __future__ import annotations

import pickletools
import re

_ARG_NONE, _ARG_FIXED, _ARG_PREFIXED, _ARG_LINE, _ARG_TWO_LINES = range(5)

# pickletools' marker for a length-prefixed argument -> how many bytes hold the length
_LENGTH_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                  pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}

# opcode byte -> (how its argument is encoded, a length)
_TABLE: dict[int, tuple[int, int]] = {}
for _op in pickletools.opcodes:
    _code = ord(_op.code)
    _arg = _op.arg
    if _arg is None:
        _TABLE[_code] = (_ARG_NONE, 0)
    elif _arg.n >= 0:
        _TABLE[_code] = (_ARG_FIXED, _arg.n)
    elif _arg.n == pickletools.UP_TO_NEWLINE:
        _TABLE[_code] = (_ARG_TWO_LINES if _arg.name == "stringnl_noescape_pair" else _ARG_LINE, 0)
    else:  # length-prefixed: 1, 4 or 8 bytes of length, then that many bytes
        _TABLE[_code] = (_ARG_PREFIXED, _LENGTH_PREFIX[_arg.n])

_REFUSED = {ord("i"): "INST", ord("o"): "OBJ", ord("P"): "PERSID", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4"}
_MEMO_WRITE = {ord("p"), ord("q"), ord("r")}  # PUT, BINPUT, LONG_BINPUT
_MEMOIZE = 0x94
_STOP = ord(".")
_BIG_INTS = {ord("I"), ord("L"), 0x8A, 0x8B}  # INT, LONG, LONG1, LONG4: ints beyond BININT's 32 bits
MAX_BIG_INTS = 10_000
_COMMONEST = (ord("h"), ord("K"))  # BINGET, BININT1: a model pickle's commonest opcodes after MEMOIZE
_SHORT = 64  # short strings up to this length are skipped by the regex; longer ones by one step of the walk




def _fast_pattern() -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """Regexes for runs of the opcodes this pass has nothing to check but their length: no argument, a fixed-size
    one, or a 1-byte length and at most :data:`_SHORT` bytes.  Memo writes by index, big ints, refused opcodes,
    ``STOP``, line arguments and long strings are left to the exact walk in :func:`check`.  The second regex
    tokenizes a run the same way, to count it; ``MEMOIZE`` (counted: a later ``PUT`` index is checked against
    it) is its one group."""
    plain, fixed, short = [], [], []
    for code, (how, n) in sorted(_TABLE.items(), key=lambda item: (item[0] not in _COMMONEST, item[0])):
        if code in _REFUSED or code in _MEMO_WRITE or code in _BIG_INTS or code in (_STOP, _MEMOIZE):
            continue
        op = re.escape(bytes([code]))
        if how == _ARG_NONE:
            plain.append(op)
        elif how == _ARG_FIXED:
            fixed.append(op + b".{%d}" % n)
        elif how == _ARG_PREFIXED and n == 1:
            lengths = b"|".join(re.escape(bytes([k])) + (b".{%d}" % k if k else b"") for k in range(_SHORT + 1))
            short.append(op + b"(?:" + lengths + b")")
    # sre tries the branches in order (their first bytes differ, so the order never changes a match): the
    # commonest first
    commonest = len([code for code in _COMMONEST if _TABLE[code][0] == _ARG_FIXED])
    others = b"|".join(fixed[:commonest] + [b"[" + b"".join(plain) + b"]"] + fixed[commonest:] + short)
    # The run is possessive and has no group: sre then matches it about 8 times faster (no backtracking state).
    run = re.compile(b"(?:\x94|" + others + b")*+", re.DOTALL)
    return run, re.compile(b"(\x94)|" + others, re.DOTALL)


class OpcodeError(ValueError):
    """The pickle is malformed or uses an opcode the gate does not admit; the message says which and where."""


def check(data: bytes | bytearray | memoryview, *, count: bool = True) -> tuple[int | None, list[str]]:
    """Walk *data*'s opcodes once; raise :class:`OpcodeError` on anything the C unpickler must not see.

    Returns the number of opcodes (None with ``count=False``) and the
    refused-but-harmless opcodes found (``"INST at byte 12"``).  Runs of
    opcodes with nothing to check but their length (most of a pickle: marks,
    tuples, small ints, short strings, memo gets, ``MEMOIZE``) are skipped by a
    regex, at C speed; the Python walk below takes the rest one by one.  Such a
    run is tokenized (to count its opcodes and ``MEMOIZE`` writes) only when a
    count is needed: at a memo write by index, and at ``STOP`` when *count* is
    set.  The decision never depends on *count*; a load skips the count (a
    quarter of the gate's time on a 10,000-module pickle), ``scan`` reports it.
    """
    data = bytes(data) if not isinstance(data, bytes) else data
    table = _TABLE
    end = len(data)
    pos = 0
    seen = 0  # opcodes counted so far (runs the regex skipped are counted only when a count is needed)
    memo_writes = 0
    big_ints = 0
    unwanted: list[str] = []
    run = _RUN
    spans: list[tuple[int, int]] = []  # runs skipped and not counted yet: counted only when a count is needed

    def tally() -> None:
        nonlocal seen, memo_writes
        for first, stop in spans:
            tokens = _TOKEN.findall(data, first, stop)
            seen += len(tokens)
            memo_writes += len(tokens) - tokens.count(b"")
        spans.clear()

    while pos < end:
        skipped = run.match(data, pos)  # a run of zero opcodes matches too
        stop = skipped.end() if skipped is not None else pos
        if stop > pos:
            spans.append((pos, stop))
            pos = stop
            if pos >= end:
                break
        op = data[pos]
        start = pos
        pos += 1
        seen += 1
        kind = table.get(op)
        if kind is None:
            raise OpcodeError(f"unknown opcode {op:#04x} at byte {start}")
        how, n = kind
        if how == _ARG_FIXED:
            arg_at = pos
            pos += n
        elif how == _ARG_PREFIXED:
            if pos + n > end:
                raise OpcodeError(f"truncated length at byte {start}")
            pos += n + int.from_bytes(data[pos:pos + n], "little")
            arg_at = -1
        elif how == _ARG_LINE:
            newline = data.find(b"\n", pos)
            if newline < 0:
                raise OpcodeError(f"unterminated argument at byte {start}")
            arg_at = pos
            pos = newline + 1
        elif how == _ARG_TWO_LINES:
            newline = data.find(b"\n", data.find(b"\n", pos) + 1)
            if newline < 0 or data.find(b"\n", pos) < 0:
                raise OpcodeError(f"unterminated argument at byte {start}")
            pos = newline + 1
            arg_at = -1
        else:
            arg_at = -1
        if pos > end:
            raise OpcodeError(f"argument runs past the end at byte {start}")
        if op in _REFUSED:
            unwanted.append(f"{_REFUSED[op]} at byte {start}")
        if op in _BIG_INTS:
            big_ints += 1
            if big_ints > MAX_BIG_INTS:
                raise OpcodeError(f"more than {MAX_BIG_INTS} integers outside 32 bits (at byte {start}): "
                                  "a hash-collision flood would make the unpickler quadratic")
        if op == _MEMOIZE:
            memo_writes += 1
        elif op in _MEMO_WRITE:
            tally()  # the MEMOIZEs skipped so far count as memo writes
            raw = data[arg_at:pos]
            try:
                index = int(raw) if op == ord("p") else int.from_bytes(raw, "little")
            except ValueError:
                raise OpcodeError(f"malformed memo index at byte {start}") from None
            if index > memo_writes:
                raise OpcodeError(
                    f"memo index {index} at byte {start} is beyond the {memo_writes} values memoized so far"
                )
            memo_writes += 1
        elif op == _STOP:
            if pos != end:
                raise OpcodeError(f"{end - pos} bytes after STOP")
            if not count:
                return None, unwanted
            tally()
            return seen, unwanted
    raise OpcodeError("the pickle has no STOP opcode (truncated)")


_RUN, _TOKEN = _fast_pattern()

"""A tiny pickle assembler for forged archives: each function returns the opcodes that push one value.

Writing attacks as opcodes (rather than through a pickler) makes every test say exactly what the pickle
does: which global it names, what it calls with which arguments, what state it sets on what.
"""

from __future__ import annotations

import struct

PROTO = b"\x80\x04"
STOP = b"."
MARK = b"("


def s(text: str) -> bytes:
    """A str constant."""
    raw = text.encode("utf-8", "surrogatepass")
    return b"\x8c" + bytes([len(raw)]) + raw if len(raw) < 256 else b"X" + struct.pack("<I", len(raw)) + raw


def b(data: bytes) -> bytes:
    """A bytes constant."""
    return b"B" + struct.pack("<I", len(data)) + data


def i(value: int) -> bytes:
    """An int constant."""
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


NONE = b"N"
TRUE = b"\x88"
FALSE = b"\x89"


def glob(module: str, name: str) -> bytes:
    """A global (STACK_GLOBAL)."""
    return s(module) + s(name) + b"\x93"


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + b"t"


def lst(*items: bytes) -> bytes:
    return b"]" + (MARK + b"".join(items) + b"e" if items else b"")


def dct(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}" + (MARK + b"".join(k + v for k, v in pairs) + b"u" if pairs else b"")


def call(callable_ops: bytes, *args: bytes) -> bytes:
    """REDUCE: callable(*args)."""
    return callable_ops + tup(*args) + b"R"


def new(cls_ops: bytes, *args: bytes) -> bytes:
    """NEWOBJ: cls.__new__(cls, *args)."""
    return cls_ops + tup(*args) + b"\x81"


def build(target_ops: bytes, state_ops: bytes) -> bytes:
    """BUILD: set *state* on what *target_ops* pushes; leaves the target on the stack."""
    return target_ops + state_ops + b"b"


def pid(*parts: bytes) -> bytes:
    """A persistent id (BINPERSID) of a tuple of the given items."""
    return tup(*parts) + b"Q"


def snapshot_class(module: str, qualname: str) -> bytes:
    return pid(s("class"), s(module), s(qualname))


def snapshot_function(module: str, qualname: str) -> bytes:
    return pid(s("function"), s(module), s(qualname))


def snapshot_module(module: str) -> bytes:
    return pid(s("module"), s(module))


def memo_put(index: int) -> bytes:
    """LONG_BINPUT of the stack's top at *index*."""
    return b"r" + struct.pack("<I", index)


def program(*ops: bytes) -> bytes:
    """A whole pickle: the protocol header, *ops* (which must leave one value), STOP."""
    return PROTO + b"".join(ops) + STOP

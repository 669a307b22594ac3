"""Text from archives and commits, made safe to print.

Everything a manifest or a commit message says is written by whoever made the
archive or pushed the commit.  Before any of it reaches a terminal (``inspect``,
``log``, ``diff``, ``textconv``, error messages), control characters are shown
escaped instead of being interpreted: C0 controls, DEL, the C1 range, the bidi
overrides and isolates (U+202A-U+202E, U+2066-U+2069: "Trojan Source") and lone
surrogates (undecodable bytes, which could not even be written to stdout).

:func:`line` is for one-line fields, where even a newline is escaped;
:func:`block` is for multi-line text such as a code diff, which keeps tab,
newline and CRLF line ends.  Escapes look like Python's (``\\x1b``,
``\\u202e``); an undecodable byte read with ``surrogateescape`` shows as
``\\xNN``.  The result is idempotent: escaping escaped text changes nothing.

:func:`prune` bounds the nesting depth of a JSON value without recursion, so
renderers (and Python's own recursive JSON encoder) never see more than a
fixed depth of attacker-controlled nesting.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64
DEEP = "<nested deeper than {depth} levels>"

_BIDI = "\u202a-\u202e\u2066-\u2069"
_ALWAYS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f" + _BIDI + "\ud800-\udfff"
# One-line fields: also tab, newline, carriage return and the Unicode line/paragraph separators.
_LINE = re.compile(f"[{_ALWAYS}\t\n\r\u2028\u2029]")
# Multi-line text: tab, newline and a CR that ends a line (CRLF) stay; a lone CR could overwrite the line.
_BLOCK = re.compile(f"[{_ALWAYS}]|\r(?!\n)")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, decoded with surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _shorten(text: str, limit: int | None) -> str:
    if limit is not None and len(text) > limit:
        return text[: max(0, limit - 3)] + "..."
    return text


def line(text: Any, limit: int | None = None) -> str:
    """*text* (anything; not a str: its ``str()``) as one printable line, at most about *limit* characters."""
    if not isinstance(text, str):
        text = str(text)
    return _LINE.sub(_escape, _shorten(text, limit))


def block(text: Any) -> str:
    """Multi-line *text* with every control character but tab, newline and CRLF shown escaped."""
    if not isinstance(text, str):
        text = str(text)
    return _BLOCK.sub(_escape, text)


def prune(value: Any, max_depth: int = MAX_DEPTH, max_str: int | None = None) -> Any:
    """A copy of JSON *value* with containers nested deeper than *max_depth* replaced by a placeholder string.

    Iterative, so any depth is fine.  Tuples are copied as lists; with
    *max_str*, longer strings are cut (keys too).
    """
    def leaf(v: Any) -> Any:
        if max_str is not None and isinstance(v, str) and len(v) > max_str:
            return v[: max(0, max_str - 3)] + "..."
        return v

    if not isinstance(value, (dict, list, tuple)):
        return leaf(value)
    if max_depth < 1:
        return DEEP.format(depth=max_depth)
    root: Any = {} if isinstance(value, dict) else []
    stack = [(value, root, 1)]
    while stack:
        src, dst, depth = stack.pop()
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for key, item in items:
            if isinstance(item, (dict, list, tuple)):
                if depth >= max_depth:
                    new: Any = DEEP.format(depth=max_depth)
                else:
                    new = {} if isinstance(item, dict) else []
                    stack.append((item, new, depth + 1))
            else:
                new = leaf(item)
            if isinstance(dst, dict):
                dst[leaf(key) if isinstance(key, str) else key] = new
            else:
                dst.append(new)
    return root


def depth(value: Any) -> int:
    """How deeply *value*'s containers nest (0 for a scalar), computed without recursion."""
    best = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            best = max(best, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            best = max(best, level)
            stack.extend((v, level + 1) for v in item)
    return best


def json_value(value: Any, limit: int | None = 200, max_depth: int = 16) -> str:
    """A JSON value as one printable line.

    Nesting bounded, long text cut (no limit: None), control characters escaped.
    """
    pruned = prune(value, max_depth, max_str=limit)
    try:
        text = json.dumps(pruned, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):  # keys JSON cannot write, a value whose str() fails
        text = f"<{type(value).__name__} that cannot be shown as JSON>"
    return line(text, limit)


_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def json_depth_exceeds(text: str, max_depth: int) -> bool:
    """Whether JSON *text* nests arrays/objects deeper than *max_depth*, decided in one pass without parsing."""
    level = 0
    for ch in _BRACKETS.findall(_JSON_STRING.sub("", text)):
        if ch in "[{":
            level += 1
            if level > max_depth:
                return True
        else:
            level -= 1
    return False


def loads_bounded(text: str, max_depth: int = 200) -> Any:
    """``json.loads`` that refuses (ValueError) text nested deeper than *max_depth* instead of recursing into it."""
    if json_depth_exceeds(text, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None

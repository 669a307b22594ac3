"""The commit message gitpack writes for every save, and how it is read back: trailers, and JSON in them.

Each save's commit message has a human summary, the parameters as an indented
block (so plain ``git log gitpack`` shows them), and git trailers that scripts
parse (``git log --format=%(trailers)``), with the parameters as one-line JSON
in ``Gitpack-Params``.  Only the message's trailer block counts as trailers:
a ``Gitpack-Digest:`` line in the middle of a body is text.  JSON read back
from a commit is depth-bounded (commits can come from anyone who can push).
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import textsafe

TRAILER_PREFIX = "Gitpack-"
# JSON read from commit messages (Gitpack-Params, Gitpack-Capture) nests at most this deep; deeper is not read.
MAX_JSON_DEPTH = 200
# A trailer line as git reads one: a token of letters, digits and '-', a colon, the value.
_TRAILER_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)")


def _flatten(params: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(params, dict) and params:
        out = []
        for key, value in params.items():
            out += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, params)]


def format_message(*, archive: str, object_type: str, digest: str, params: dict, head: str | None,
                   message: str | None = None, extra: dict[str, str] | None = None) -> str:
    lines = [f"gitpack save: {archive} ({object_type})", ""]
    if message:
        lines += [message.strip(), ""]
    if params:
        lines.append("Parameters:")
        for key, value in _flatten(params):
            lines.append(f"    {key} = {json.dumps(value, default=str)}")
        lines.append("")
    trailers = {
        "Archive": archive,
        "Object": object_type,
        "Digest": digest,
        "Head": head or "none",
        "Params": json.dumps(params, sort_keys=True, separators=(",", ":"), default=str),
    }
    trailers.update(extra or {})
    # One line each, or the block would stop being a trailer block (an archive name may hold a newline).
    lines += [f"{TRAILER_PREFIX}{k}: {' '.join(str(v).splitlines())}" for k, v in trailers.items()]
    return "\n".join(lines) + "\n"


def _blank(text: str) -> bool:
    """git's blank line: only ASCII whitespace (``str.strip`` would also drop \\x1c-\\x1f and U+2028)."""
    return not text.strip(" \t\v\f\r")


def trailer_block(message: str) -> list[tuple[str, str]]:
    """The trailers of a commit message as git reads them: ``(key, value)`` of each line of the trailer block.

    The trailer block is the message's last paragraph (blank-line separated),
    never its first (the subject), and only when *every* line of it is a
    ``Key: value`` trailer.  Lines are split on newlines only, as git does:
    ``str.splitlines`` would also split on \\x1c-\\x1e, \\x85 and U+2028, which
    a body could use to smuggle a "line" in.
    """
    lines = message.split("\n")
    while lines and _blank(lines[-1]):
        lines.pop()
    blank = [i for i, text in enumerate(lines) if _blank(text)]
    first_content = next((i for i, text in enumerate(lines) if not _blank(text)), None)
    if first_content is None:
        return []
    # The subject paragraph ends at the first blank line after the first line with content.
    after_subject = [i for i in blank if i > first_content]
    if not after_subject:
        return []  # one paragraph: the subject, which is never trailers
    block = lines[blank[-1] + 1:]
    out = []
    for text in block:
        m = _TRAILER_LINE.fullmatch(text.rstrip("\r"))
        if m is None:
            return []  # not every line is a trailer: this paragraph is body text
        out.append((m.group(1), m.group(2).strip(" \t")))
    return out


def parse_trailers(message: str) -> dict[str, str]:
    """The ``Gitpack-*`` trailers of a commit message, keys without the prefix, lower-cased.

    Only the trailer block counts (see :func:`trailer_block`): a
    ``Gitpack-Digest:`` line in the middle of a body is text, not a trailer.
    """
    out = {}
    for key, value in trailer_block(message):
        if key.startswith(TRAILER_PREFIX):
            out[key[len(TRAILER_PREFIX):].lower()] = value
    return out


def parse_json(text: str | None, default: Any = None, max_depth: int = MAX_JSON_DEPTH) -> tuple[Any, str | None]:
    """JSON from a commit message: ``(value, None)``, or ``(default, why it was not read)``.

    Nesting deeper than *max_depth* is refused before parsing (a 100,000-deep
    value would otherwise overflow the parser's recursion).
    """
    if text is None:
        return default, None
    try:
        return textsafe.loads_bounded(text, max_depth), None
    except ValueError as exc:
        reason = str(exc) if "nested" in str(exc) else "not valid JSON"
        return default, reason

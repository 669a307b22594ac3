"""The audit trail: snapshot commit messages that people and scripts can both read.

Each save's commit message has a human summary, the parameters as an indented
block (so plain ``git log gitpack`` shows them), and git trailers that scripts
parse (``git log --format=%(trailers)`` or :func:`parse_message`), with the
parameters as one-line JSON in ``Gitpack-Params``.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import textsafe
from .errors import ArchiveError, MissingCommitError

TRAILER_PREFIX = "Gitpack-"
# JSON read from commit messages (Gitpack-Params, Gitpack-Capture) nests at most this deep; deeper is not read.
MAX_JSON_DEPTH = 200
# A trailer line as git reads one: a token of letters, digits and '-', a colon, the value.
_TRAILER_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)")
_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


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


@dataclass
class LogEntry:
    commit: str
    date: str
    archive: str
    object_type: str
    digest: str
    head: str | None
    params: dict
    subject: str
    trailers: dict[str, str] = field(default_factory=dict)
    params_note: str | None = None  # why the Gitpack-Params trailer was not read, when it was not

    def as_json(self) -> dict:
        return {
            "commit": self.commit, "date": self.date, "archive": self.archive, "object": self.object_type,
            "digest": self.digest, "head": self.head, "params": self.params, "subject": self.subject,
            "trailers": self.trailers, "params_note": self.params_note,
        }

    def capture(self) -> dict[str, Any] | None:
        """The capture tree of the ``Gitpack-Capture`` trailer (None when absent, unreadable or too deep)."""
        tree, _ = parse_json(self.trailers.get("capture"))
        return tree if isinstance(tree, dict) else None

    def shown_params(self) -> dict[str, Any]:
        """What a one-line log shows: the explicit parameters, else the root object's own captured arguments."""
        if self.params:
            return self.params
        objects = (self.capture() or {}).get("objects")
        if not isinstance(objects, dict) or not objects:
            return {}
        entry = objects.get("$") or next(iter(objects.values()))
        args = entry.get("args") if isinstance(entry, dict) else None
        if not isinstance(args, dict):
            return {}
        return {k: v for k, v in args.items() if not (isinstance(v, dict) and "$ref" in v)}


def require_snapshot_commit(repo, manifest: dict[str, Any], path) -> str:
    """The archive's snapshot commit, which must be in *repo*; else say how to fetch it."""
    commit = manifest.get("commit")
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ArchiveError(f"{path}: manifest records no valid commit; the archive is corrupt")
    if repo.object_type(commit) != "commit":
        remote = manifest.get("remote_url")
        remote = textsafe.line(remote, 200) if isinstance(remote, str) and remote else "the repository it was saved in"
        branch = manifest.get("branch")
        branch = textsafe.line(branch, 200) if isinstance(branch, str) and branch else "refs/heads/gitpack"
        raise MissingCommitError(
            f"snapshot commit {commit} of {textsafe.line(path)} is not in {repo.root}; fetch it from {remote} "
            f"(`gitpack pull` or `git fetch origin {branch}`)"
        )
    return commit


def parse_commit_object(raw: bytes) -> tuple[dict[str, list[str]], str]:
    """Headers (tree, parent, gpgsig, ...) and message of a raw commit object."""
    text = raw.decode("utf-8", "replace")
    head, _, message = text.partition("\n\n")
    headers: dict[str, list[str]] = {}
    key = None
    for line in head.splitlines():
        if line.startswith(" ") and key:
            headers[key][-1] += "\n" + line[1:]
            continue
        key, _, value = line.partition(" ")
        headers.setdefault(key, []).append(value)
    return headers, message


def iso_date(raw: str) -> str:
    """git's ``--date=raw`` (``1700000000 +0100``) as ISO 8601 with offset, like ``%cI``.

    Read here rather than by git (``%cI``): git prints ``%cI`` literally for a
    date it cannot parse and stops the whole log for some offsets.  A date
    that makes no sense becomes the epoch, an offset out of range UTC.
    """
    stamp, _, zone = raw.strip().partition(" ")
    offset = _dt.timezone.utc
    m = re.fullmatch(r"([+-])(\d\d)(\d\d)", zone)
    if m and int(m[2]) < 24 and int(m[3]) < 60:
        delta = _dt.timedelta(hours=int(m[2]), minutes=int(m[3]))
        offset = _dt.timezone(-delta if m[1] == "-" else delta)
    try:
        when = _dt.datetime.fromtimestamp(int(stamp), offset)
    except (ValueError, OverflowError, OSError):
        when = _dt.datetime.fromtimestamp(0, _dt.timezone.utc)
    return when.isoformat(timespec="seconds")


def log(repo, branch_ref: str, limit: int | None = None) -> list[LogEntry]:
    """The saves recorded on the snapshot branch, newest first (first-parent history only).

    ``git log -z`` with NUL-separated fields: a commit message cannot hold a
    NUL (git stops at one), so one commit is always exactly one entry,
    whatever bytes its message holds.
    """
    if repo.rev_parse(branch_ref) is None:
        return []
    args = ["log", "--first-parent", "-z", "--date=raw", "--format=%H%x00%cd%x00%B", branch_ref, "--"]
    if limit:
        args.insert(1, f"-n{limit}")
    fields = repo.git(*args, strip=False, binary=True).decode("utf-8", "surrogateescape").split("\0")
    entries = []
    for i in range(0, len(fields) - 2, 3):
        commit, date, body = fields[i:i + 3]
        if not _SHA.fullmatch(commit):
            continue  # cannot happen with git's output; never guess
        t = parse_trailers(body)
        if "digest" not in t:
            continue
        params, note = parse_json(t.get("params"), default={})
        if not isinstance(params, dict):
            params, note = {}, f"not an object but {type(params).__name__}"
        entries.append(LogEntry(commit, iso_date(date), t.get("archive", ""), t.get("object", ""), t.get("digest", ""),
                                None if t.get("head") in (None, "none") else t["head"], params,
                                body.split("\n", 1)[0], t, note))
    return entries

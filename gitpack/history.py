"""The audit log: the saves on gitpack's snapshot branch, read from git without unpickling anything.

``gitpack log`` walks the branch's first-parent history (each save's second
parent is the user's HEAD) with NUL-separated fields, so one commit is always
one entry whatever its message holds.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any

from . import textsafe
from .errors import ArchiveError, MissingCommitError
from .trailers import parse_json, parse_trailers

_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


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
    fields = repo.git(*args, strip=False).split("\0")
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


def saves(repo, branch_ref: str, limit: int | None = None) -> list[LogEntry]:
    """The saves of the snapshot branch, newest first, with the ones ``gitpack pull`` merged in from other clones."""
    from .snapshot.branch import merged_in_tips

    entries = log(repo, branch_ref, limit)
    merged = merged_in_tips(repo, branch_ref)
    if merged:
        by_commit = {e.commit: e for e in entries}
        for tip in merged:
            for e in log(repo, tip, limit):
                by_commit.setdefault(e.commit, e)
        entries = list(by_commit.values())
        entries.sort(key=lambda e: _dt.datetime.fromisoformat(e.date), reverse=True)
        entries = entries[:limit] if limit else entries
    return entries

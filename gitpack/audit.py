"""The audit trail: snapshot commit messages that people and scripts can both read.

Each save's commit message has a human summary, the parameters as an indented
block (so plain ``git log gitpack`` shows them), and git trailers that scripts
parse (``git log --format=%(trailers)`` or :func:`parse_message`), with the
parameters as one-line JSON in ``Gitpack-Params``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ArchiveError, MissingCommitError

TRAILER_PREFIX = "Gitpack-"


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
    lines += [f"{TRAILER_PREFIX}{k}: {v}" for k, v in trailers.items()]
    return "\n".join(lines) + "\n"


def parse_trailers(message: str) -> dict[str, str]:
    """The ``Gitpack-*`` trailers of a commit message, keys without the prefix, lower-cased."""
    out = {}
    for line in message.splitlines():
        if line.startswith(TRAILER_PREFIX) and ": " in line:
            key, _, value = line.partition(": ")
            out[key[len(TRAILER_PREFIX):].lower()] = value.strip()
    return out


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

    def as_json(self) -> dict:
        return {
            "commit": self.commit, "date": self.date, "archive": self.archive, "object": self.object_type,
            "digest": self.digest, "head": self.head, "params": self.params, "subject": self.subject,
            "trailers": self.trailers,
        }


def require_snapshot_commit(repo, manifest: dict[str, Any], path) -> str:
    """The archive's snapshot commit, which must be in *repo*; else say how to fetch it."""
    commit = manifest.get("commit")
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ArchiveError(f"{path}: manifest records no valid commit; the archive is corrupt")
    if repo.object_type(commit) != "commit":
        remote = manifest.get("remote_url") or "the repository it was saved in"
        raise MissingCommitError(
            f"snapshot commit {commit} of {path} is not in {repo.root}; fetch it from {remote} "
            f"(`gitpack pull` or `git fetch origin {manifest.get('branch', 'refs/heads/gitpack')}`)"
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


def log(repo, branch_ref: str, limit: int | None = None) -> list[LogEntry]:
    """The saves recorded on the snapshot branch, newest first (first-parent history only)."""
    if repo.rev_parse(branch_ref) is None:
        return []
    args = ["log", "--first-parent", "--format=%H%x1f%cI%x1f%B%x1e", branch_ref]
    if limit:
        args.insert(1, f"-n{limit}")
    entries = []
    for record in repo.git(*args).split("\x1e"):
        record = record.strip("\n")
        if not record:
            continue
        commit, date, body = record.split("\x1f", 2)
        t = parse_trailers(body)
        if "digest" not in t:
            continue
        try:
            params = json.loads(t.get("params", "{}"))
        except ValueError:
            params = {}
        entries.append(LogEntry(commit, date, t.get("archive", ""), t.get("object", ""), t.get("digest", ""),
                                None if t.get("head") in (None, "none") else t["head"], params,
                                body.splitlines()[0] if body else "", t))
    return entries

"""The audit log: the saves on gitpack's snapshot branch, read from git without unpickling anything.

``gitpack log`` walks the branch's first-parent history (each save's second
parent is the user's HEAD) with NUL-separated fields, so one commit is always
one entry whatever its message holds.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from typing import Any

from . import textsafe
from .errors import ArchiveError, GitpackError, MissingCommitError
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
        raise MissingCommitError(f"snapshot commit {commit} of {textsafe.line(path)} is not in {repo.root}; "
                                 f"{where_to_fetch(repo, manifest)}")
    return commit


LS_REMOTE_SECONDS = 15.0  # per remote: an unreachable host must not hold an error message for minutes
MAX_REMOTES = 8


def where_to_fetch(repo, manifest: dict[str, Any]) -> str:
    """Which of this clone's remotes has the snapshot branch (``git ls-remote``), to pull the commit from; or
    that none does, and where the archive says it was saved.

    Only the clone's own remotes are asked: the manifest's ``remote_url`` is the archive's say-so and is shown,
    never contacted.  The branch name it records is used only when it is a plain branch name.
    """
    import time

    from .git import DEFAULT_BRANCH, branch_ref, plain_branch, runner

    recorded = manifest.get("branch")
    ours = branch_ref(repo.config("gitpack.branch") or DEFAULT_BRANCH)
    branches = [b for b in dict.fromkeys([plain_branch(recorded), plain_branch(ours)]) if b is not None]
    url = manifest.get("remote_url")
    saved_in = f"it was saved in {textsafe.line(url, 200)}" if isinstance(url, str) and url else \
        "the archive does not say which repository it was saved in"
    remotes = [r for r in repo.git("remote").splitlines() if r.strip()]
    if not remotes:
        return (f"this clone has no remotes ({saved_in}): add that repository (git remote add NAME URL) and fetch "
                "the commit with `gitpack pull NAME`")
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}
    env = {k: v for k, v in env.items() if k not in os.environ}  # the user's own settings win
    started = [(name, runner.start(["ls-remote", "--heads", name, *branches], cwd=repo.root, env=env))
               for name in remotes[:MAX_REMOTES] if branches]
    having, unanswered = [], []
    deadline = time.monotonic() + LS_REMOTE_SECONDS
    for name, proc in started:  # all asked at once, so one deadline bounds the wait for every remote
        if not proc.exits_within(deadline - time.monotonic()):
            proc.popen.kill()
            unanswered.append(name)
        try:
            out = proc.finish().decode("utf-8", "replace")
        except GitpackError:
            if name not in unanswered:
                unanswered.append(name)
            continue
        found = [line.split("\t", 1)[1] for line in out.splitlines() if "\t" in line]
        if found:
            having.append((name, found[0]))
    asked = ", ".join(textsafe.line(r, 60) for r in remotes[:MAX_REMOTES])
    if having:
        name, ref = having[0]
        others = f" (also: {', '.join(textsafe.line(n, 60) for n, _ in having[1:])})" if len(having) > 1 else ""
        return (f"remote {textsafe.line(name, 60)} has the snapshot branch {textsafe.line(ref, 200)}{others}: fetch it "
                f"with `gitpack pull {textsafe.line(name, 60)}` (if the save was pushed there; {saved_in})")
    silent = f" ({', '.join(unanswered)} did not answer)" if unanswered else ""
    wanted = ", ".join(branches) or "a snapshot branch"
    return (f"none of this clone's remotes ({asked}) has {wanted}{silent}; {saved_in}: add that repository as a "
            "remote and fetch the commit with `gitpack pull NAME`, or `gitpack push` from the clone that saved it")


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

"""Sharing through any git remote: the snapshot branch and the artifact refs, and nothing else.

``pull`` fetches ``refs/heads/<snapshot branch>`` and ``refs/gitpack/*`` into
remote-tracking refs of gitpack's own (``refs/gitpack-remotes/<remote>/...``),
then *integrates* them into the local refs:

* the snapshot branch fast-forwards, or gets a merge commit whose parents are
  both tips (tagged ``Gitpack-Merge:``), so every save on either side stays
  reachable and ``gitpack log`` shows both histories;
* versions are merged by the rule "the remote's numbering wins for versions it
  already has; versions only this clone has keep their number when it is free
  and are renumbered above the highest otherwise" -- a version is its version
  commit, so renumbering moves a ref and rewrites nothing, and each renumbering
  is reported in one line;
* aliases: whichever side moved since the last sync wins; when both moved, the
  remote's wins and the note says so.  ``latest`` follows the newest version
  whenever the merge brought new versions.

Every pull (and the fetch inside every push) also reports the commits it brings
in that were not reachable here before -- code from whoever can push to the
remote -- each with the paths it changes against its first parent
(:class:`Incoming`), so new code is seen before anything is loaded from it.

``push`` is pull + integrate + ``git push --atomic`` in which every updated ref
carries an explicit ``--force-with-lease=<ref>:<value we integrated>``: the
remote only moves from the state we merged, so nobody's saves are ever
overwritten.  When someone pushed in between, the lease fails, and push simply
integrates again and retries.  A remote that refuses the push (a hook, a
permission) or cannot be reached is one clear error, and nothing local is lost.
The Git LFS objects of the versions a push publishes go first
(:mod:`gitpack.lfspush`), so a remote never holds a pointer without its bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from . import lfspush, progress
from .artifacts import (
    ARCHIVE_ENTRY,
    LATEST,
    Store,
    alias_ref,
    split_store_ref,
    version_number,
    version_ref,
)
from .errors import GitError, StoreError
from .git import DEFAULT_BRANCH, Repo, branch_ref, runner
from .snapshot.branch import MERGE_TRAILER
from .trailers import parse_trailers

TRACKING = "refs/gitpack-remotes/"
MAX_ATTEMPTS = 10
_PROGRESS_LINE = re.compile(r"^(?:remote: )?([A-Z][A-Za-z ]+):\s+(\d+)%")
# Rejections that mean "the remote moved since we fetched": integrate again and retry.  git itself
# rejects ("[rejected]") on a failed lease; the server ("[remote rejected]") when a concurrent push
# took a ref lock or moved a ref between its advertisement and our update.
_MOVED_CLIENT_SIDE = re.compile(r"stale info|fetch first|non-fast-forward|already exists|atomic push failed")
_MOVED_SERVER_SIDE = re.compile(r"lock|failed to update ref|incorrect old value|but expected|transaction failed")


class RemoteError(StoreError):
    """A remote cannot be reached, or refused what gitpack pushed."""


@dataclass(frozen=True)
class Remote:
    """A remote as git is given it (name or URL), how messages name it, and its tracking namespace."""

    argument: str
    label: str
    key: str

    @property
    def tracking(self) -> str:
        return f"{TRACKING}{self.key}/"

    def tracking_ref(self, ref: str) -> str:
        """The tracking ref for remote ref *ref* (``refs/heads/x`` or ``refs/gitpack/...``)."""
        if ref.startswith("refs/heads/"):
            return self.tracking + "heads/" + ref[len("refs/heads/"):]
        return self.tracking + "gitpack/" + ref[len("refs/gitpack/"):]

    def remote_ref(self, tracking_ref: str) -> str:
        rest = tracking_ref[len(self.tracking):]
        kind, _, tail = rest.partition("/")
        return f"refs/heads/{tail}" if kind == "heads" else f"refs/gitpack/{tail}"


@dataclass(frozen=True)
class Incoming:
    """A commit a pull brought in: what kind it is and the paths it changes against its first parent.

    *kind* is ``snapshot`` (its trailers vouch for an archive: code a load may
    run), ``merge`` (gitpack's merge of two histories) or ``commit`` (any
    other commit, such as the HEAD a save was taken from).  *changes* are
    ``(status, path, old path or None)`` from ``git diff-tree -M``; *parent*
    is None for a root commit (then every path is new).
    """

    commit: str
    kind: str
    parent: str | None
    changes: tuple[tuple[str, str, str | None], ...]

    @property
    def paths(self) -> list[str]:
        return [path for _, path, _ in self.changes]

    def as_json(self) -> dict:
        return {"commit": self.commit, "kind": self.kind, "parent": self.parent,
                "changes": [{"status": st, "path": p, **({"old_path": o} if o is not None else {})}
                            for st, p, o in self.changes]}


@dataclass
class SyncReport:
    """What a pull or push did, as lines a person can read, and the commits it brought in."""

    remote: str
    notes: list[str] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)
    incoming: list[Incoming] = field(default_factory=list)
    incoming_left_out: int = 0  # new commits beyond MAX_INCOMING, counted but not diffed

    def as_json(self) -> dict:
        return {"remote": self.remote, "notes": self.notes, "pushed": self.pushed,
                "incoming": [i.as_json() for i in self.incoming], "incoming_left_out": self.incoming_left_out}


def _redact(url: str) -> str:
    """A URL without its password, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
    return url


def resolve_remote(repo: Repo, remote: str | None = None) -> Remote:
    """The remote to use: *remote* (a name or URL), else the branch's upstream, else ``origin``."""
    if remote:
        url = repo.config(f"remote.{remote}.url")
        if url:
            key = remote if re.fullmatch(r"[A-Za-z0-9_.\-]+", remote) and ".." not in remote else _url_key(remote)
            return Remote(remote, f"{remote} ({_redact(url)})", key)
        if "://" in remote or ":" in remote or os.path.isdir(remote):
            return Remote(remote, _redact(remote), _url_key(remote))
        raise RemoteError(f"no remote named {remote!r}; `git remote -v` lists them, or pass a URL")
    name = repo.branch_remote()
    if not name or name == "." or not repo.config(f"remote.{name}.url"):
        name = "origin" if repo.config("remote.origin.url") else None
    if name is None:
        raise RemoteError(
            "no remote to use: the current branch has no upstream and there is no 'origin'; "
            "pass one (`gitpack push REMOTE`) or `git remote add origin URL`"
        )
    return resolve_remote(repo, name)


def _url_key(url: str) -> str:
    return "url-" + hashlib.sha1(url.encode()).hexdigest()[:12]


def snapshot_branch(repo: Repo) -> str:
    return branch_ref(repo.config("gitpack.branch") or DEFAULT_BRANCH)


# ------------------------------------------------------------------ running git over the network
@dataclass
class _Result:
    returncode: int
    stdout: str
    messages: list[str]  # stderr lines that are not progress


def _network(repo: Repo, args: list[str], description: str, *, bar: bool = True) -> _Result:
    """Run a network git command; on a terminal, its phases drive one rich bar."""
    show = bar and progress.wanted(None)
    env = runner.network_env()  # runner.start adds it to the environment
    cmd = list(args)
    for verb in ("fetch", "push"):
        if show and verb in cmd:
            cmd.insert(cmd.index(verb) + 1, "--progress")
    proc = runner.start(cmd, cwd=repo.root, env=env)
    stdout, stderr = proc.stdout, proc.stderr
    # runner.start pipes both as binary buffered streams: read1 returns whatever git has written so far
    assert stdout is not None and isinstance(stderr, io.BufferedReader)
    out_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: out_chunks.append(stdout.read()), daemon=True)
    reader.start()
    messages: list[str] = []
    with progress.Bar(description, 100, unit="percent", force=show) as phases:
        pending = b""
        while chunk := stderr.read1(65536):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for raw in lines:
                _take_line(raw.decode(errors="replace"), messages, phases, description)
        if pending:
            _take_line(pending.decode(errors="replace"), messages, phases, description)
    returncode = proc.wait()
    reader.join()
    return _Result(returncode, b"".join(out_chunks).decode(errors="replace"), messages)


def _take_line(line: str, messages: list[str], bar: progress.Bar, description: str) -> None:
    line = line.strip()
    if not line:
        return
    m = _PROGRESS_LINE.match(line)
    if m:
        bar.update(completed=int(m[2]), description=f"{description}: {m[1].lower()}")
        return
    messages.append(line)


def _failure_detail(result: _Result) -> str:
    """git's last ``fatal:``/``error:`` line with the lines that continue it, as one line."""
    for i in range(len(result.messages) - 1, -1, -1):
        line = result.messages[i]
        if line.startswith(("fatal:", "error:")):
            return " ".join([line.split(":", 1)[1].strip(), *result.messages[i + 1:]]).strip()
    return result.messages[-1] if result.messages else f"git exited with status {result.returncode}"


# ------------------------------------------------------------------ fetch + integrate
def _advertised(repo: Repo, remote: Remote, branch: str) -> dict[str, str]:
    result = _network(repo, ["ls-remote", remote.argument, branch, "refs/gitpack/*"], f"contacting {remote.argument}",
                      bar=False)
    if result.returncode != 0:
        raise RemoteError(
            f"cannot reach {remote.label}: {_failure_detail(result)}; check that the server is up and the URL is right "
            "(nothing was changed)"
        )
    refs = {}
    for line in result.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        if ref == branch or split_store_ref(ref):
            refs[ref] = sha
    return refs


def _tracked(repo: Repo, remote: Remote) -> dict[str, str]:
    """``{remote ref: sha}`` as last fetched or pushed."""
    return {remote.remote_ref(ref): sha for ref, sha in Store(repo).refs(remote.tracking.rstrip("/")).items()}


def _fetch(repo: Repo, remote: Remote, branch: str) -> dict[str, str]:
    """Bring the remote's gitpack refs and their objects into the tracking refs; returns the base before."""
    base = _tracked(repo, remote)
    advertised = _advertised(repo, remote, branch)
    if advertised != base:
        refspecs = [f"+refs/gitpack/*:{remote.tracking}gitpack/*"]
        if branch in advertised:
            refspecs.append(f"+{branch}:{remote.tracking_ref(branch)}")
        result = _network(
            repo,
            ["-c", "core.logAllRefUpdates=false", "fetch", "--prune", "--no-tags", "--no-write-fetch-head",
             "--no-recurse-submodules", "--no-auto-gc", remote.argument, *refspecs],
            f"pulling from {remote.argument}",
        )
        if result.returncode != 0:
            raise RemoteError(f"cannot fetch from {remote.label}: {_failure_detail(result)}; nothing was changed here")
        if branch not in advertised and branch in base:
            repo.git("update-ref", "-d", remote.tracking_ref(branch))
    return base


MAX_INCOMING = 200  # new commits diffed and reported one by one; more are counted
_HEX = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


def _name_status(raw: bytes) -> tuple[tuple[str, str, str | None], ...]:
    """``--name-status -z`` output as (status, path, old path)."""
    fields = raw.decode("utf-8", "surrogateescape").split("\0")
    out: list[tuple[str, str, str | None]] = []
    i = 0
    while i < len(fields) - 1 and fields[i]:
        status = fields[i]
        if status[:1] in ("R", "C") and i + 2 < len(fields):
            out.append((status, fields[i + 2], fields[i + 1]))
            i += 3
        else:
            out.append((status, fields[i + 1], None))
            i += 2
    return tuple(out)


def incoming_commits(repo: Repo, remote: Remote, branch: str) -> tuple[list[Incoming], int]:
    """Commits the fetched tracking refs hold that no ref of this clone reached before; oldest first.

    Run after the fetch and before the integration (which makes them
    reachable).  Artifact version commits (a tree holding only the archive)
    are not listed: the snapshot they name is; nor are commits that change no
    path and vouch for no archive (the snapshot branch's empty root, gitpack's
    merges).  Returns the first
    MAX_INCOMING commits with their changed paths, and how many more there were.
    """
    tips = list(Store(repo).refs(remote.tracking.rstrip("/")).values())
    if not tips:
        return [], 0
    # Known here: every ref but gitpack's tracking refs and the remote-tracking copies of the snapshot branch
    # (a fetch from a named remote updates refs/remotes/<remote>/<branch> too, and so may a plain `git fetch`).
    short = branch.removeprefix("refs/heads/")
    out = repo.git("log", "-z", "--topo-order", "--reverse", "--format=%H%x00%P%x00%B", *sorted(set(tips)),
                   "--not", f"--exclude={TRACKING}*", f"--exclude=refs/remotes/*/{short}", "--all", "--",
                   strip=False, binary=True)
    fields = out.decode("utf-8", "surrogateescape").split("\0")
    found: list[Incoming] = []
    left_out = 0
    for i in range(0, len(fields) - 2, 3):
        commit, parents, body = fields[i], fields[i + 1].split(), fields[i + 2]
        if not _HEX.fullmatch(commit):
            continue
        trailers = parse_trailers(body)
        if "artifact" in trailers and "snapshot" in trailers and _only_archive(repo, commit):
            continue
        if len(found) >= MAX_INCOMING:
            left_out += 1
            continue
        parent = parents[0] if parents else None
        args = ["diff-tree", "-r", "-M", "--name-status", "-z", "--no-commit-id"]
        args += [parent, commit] if parent else ["--root", commit]
        changes = _name_status(repo.git(*args, "--", strip=False, binary=True))
        kind = "snapshot" if "digest" in trailers else "merge" if "merge" in trailers else "commit"
        if changes or kind == "snapshot":  # an empty commit (the branch's root, a merge) brings no code
            found.append(Incoming(commit, kind, parent, changes))
    return found, left_out


def _only_archive(repo: Repo, commit: str) -> bool:
    """Whether *commit*'s tree is a stored artifact's: the one archive blob and nothing else."""
    entries = repo.git("ls-tree", "-z", commit, strip=False, binary=True).split(b"\0")
    entries = [e for e in entries if e]
    return len(entries) == 1 and entries[0].split(b"\t", 1)[-1] == ARCHIVE_ENTRY.encode() and b" blob " in entries[0]


def merge_versions(local: dict[int, str], remote: dict[int, str]) -> tuple[dict[int, str], list[tuple[int, int]]]:
    """Merge two ``{number: version commit}`` maps; returns the result and the (old, new) renumberings.

    The remote's numbering wins for the versions it has; a version only this
    clone has keeps its number when free, and goes above the highest otherwise.
    """
    final = dict(remote)
    where_remote = {sha: n for n, sha in remote.items()}
    moves: list[tuple[int, int]] = []
    clashes = []
    for n, sha in sorted(local.items()):
        if sha in where_remote:
            if where_remote[sha] != n:
                moves.append((n, where_remote[sha]))
            continue
        if n in final:
            clashes.append((n, sha))
        else:
            final[n] = sha
    for n, sha in clashes:
        new = max(final) + 1
        final[new] = sha
        moves.append((n, new))
    return final, moves


def _is_ancestor(repo: Repo, a: str, b: str) -> bool:
    try:
        repo.git("merge-base", "--is-ancestor", a, b)
        return True
    except GitError:
        return False


def _integrate(repo: Repo, remote: Remote, branch: str, base: dict[str, str]) -> list[str]:
    """Merge the tracking refs into the local ones in one ref transaction; the notes say what changed."""
    store = Store(repo)
    theirs = _tracked(repo, remote)
    ours = {**store.refs(branch), **store.refs("refs/gitpack")}
    ops: list[tuple[str, str | None, str | None]] = []  # (ref, new or None to delete, old or None if absent)
    notes: list[str] = []
    name = remote.argument

    # The snapshot branch: fast-forward, or a merge commit with both tips as parents.
    their_tip, our_tip = theirs.get(branch), ours.get(branch)
    if their_tip and their_tip != our_tip:
        short = branch.removeprefix("refs/heads/")
        if our_tip is None or _is_ancestor(repo, our_tip, their_tip):
            ops.append((branch, their_tip, our_tip))
            notes.append(f"snapshot branch {short}: took {name}'s saves")
        elif not _is_ancestor(repo, their_tip, our_tip):
            tree = repo.git("rev-parse", f"{our_tip}^{{tree}}")
            message = f"gitpack merge: saves from {name}\n\n{MERGE_TRAILER}: {their_tip}\n"
            merge = repo.commit_tree([tree, "-p", our_tip, "-p", their_tip, "-m", message])
            ops.append((branch, merge, our_tip))
            notes.append(f"snapshot branch {short}: merged {name}'s saves with this clone's (merge {merge[:12]})")

    # Versions, name by name.
    def by_name(refs: dict[str, str], kind: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for ref, sha in refs.items():
            parts = split_store_ref(ref)
            if parts and parts[0] == kind:
                out.setdefault(parts[1], {})[parts[2]] = sha
        return out

    def numbered(entries: dict[str, str]) -> dict[int, str]:
        return {n: sha for sel, sha in entries.items() if (n := version_number(sel)) is not None}

    our_versions, their_versions = by_name(ours, "artifacts"), by_name(theirs, "artifacts")
    newest: dict[str, str] = {}
    changed_names: set[str] = set()
    for art in sorted(set(our_versions) | set(their_versions)):
        local, remote_map = numbered(our_versions.get(art, {})), numbered(their_versions.get(art, {}))
        final, moves = merge_versions(local, remote_map)
        new_from_remote = sorted(n for n, sha in remote_map.items() if sha not in local.values())
        if new_from_remote:
            notes.append(f"{art}: got {', '.join(f'v{n}' for n in new_from_remote)} from {name}")
        for old, new in moves:
            if old in remote_map and remote_map[old] != local[old]:
                notes.append(f"{art}: your v{old} is now {art}@v{new} ({name} already had a different v{old})")
            else:
                notes.append(f"{art}: your v{old} is now {art}@v{new} (its number on {name})")
        if new_from_remote or moves:
            changed_names.add(art)
        for n, sha in final.items():
            ref = version_ref(art, n)
            if ours.get(ref) != sha:
                ops.append((ref, sha, ours.get(ref)))
        for n, sha in local.items():
            if n not in final:
                ops.append((version_ref(art, n), None, sha))
        if final:
            newest[art] = final[max(final)]

    # Aliases: the side that moved since the last sync wins; both moved -> the remote's.
    our_aliases, their_aliases = by_name(ours, "aliases"), by_name(theirs, "aliases")
    base_aliases = by_name(base, "aliases")
    for art in sorted(set(our_aliases) | set(their_aliases) | set(newest)):
        mine, yours, before = our_aliases.get(art, {}), their_aliases.get(art, {}), base_aliases.get(art, {})
        for alias in sorted(set(mine) | set(yours) | ({LATEST} if art in newest else set())):
            ref = alias_ref(art, alias)
            l_sha, r_sha, b_sha = mine.get(alias), yours.get(alias), before.get(alias)
            if alias == LATEST and art in changed_names:
                want = newest[art]
            elif r_sha is None or r_sha == l_sha:
                continue
            elif l_sha is None or l_sha == b_sha:
                want = r_sha
            elif r_sha == b_sha:
                continue  # only we moved it: the push publishes it
            else:
                want = r_sha
                notes.append(f"{art}@{alias}: moved both here and on {name}; "
                             f"kept {name}'s (move it again with `gitpack alias`)")
            if want != l_sha:
                ops.append((ref, want, l_sha))

    if ops:
        try:
            repo.update_refs(ops)
        except GitError:
            raise RemoteError(
                "the local store changed while merging (a save running meanwhile?); run the command again"
            ) from None
    return notes


def pull(repo: Repo, remote: str | None = None) -> SyncReport:
    """Fetch the remote's snapshot branch and artifacts and merge them into this clone's."""
    target = resolve_remote(repo, remote)
    branch = snapshot_branch(repo)
    base = _fetch(repo, target, branch)
    incoming, left_out = incoming_commits(repo, target, branch)
    return SyncReport(
        target.label, _integrate(repo, target, branch, base), incoming=incoming, incoming_left_out=left_out
    )


# ------------------------------------------------------------------ push
def _outgoing(repo: Repo, remote: Remote, branch: str) -> list[tuple[str, str, str | None]]:
    """(ref, local sha, remote sha we integrated or None) for every gitpack ref the remote lacks or differs in."""
    store = Store(repo)
    theirs = _tracked(repo, remote)
    ours = {**store.refs(branch), **store.refs("refs/gitpack")}
    return [(ref, sha, theirs.get(ref)) for ref, sha in sorted(ours.items())
            if (ref == branch or split_store_ref(ref)) and theirs.get(ref) != sha]


def _try_push(repo: Repo, remote: Remote, updates: list[tuple[str, str, str | None]], atomic: bool) -> tuple[str, str]:
    """("ok"|"retry"|"refused"|"unsupported"|"error", detail)."""
    args = ["push", "--porcelain", "--no-follow-tags"]
    if atomic:
        args.append("--atomic")
    args += [f"--force-with-lease={ref}:{old or ''}" for ref, _, old in updates]
    args += [remote.argument] + [f"{new}:{ref}" for ref, new, _ in updates]
    result = _network(repo, args, f"pushing to {remote.argument}")
    rejected = []  # "[rejected] (stale info)", "[remote rejected] (pre-receive hook declined)", ...
    for line in result.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] == "!":
            rejected.append(parts[2])
    if result.returncode == 0 and not rejected:
        return "ok", ""
    if not rejected:
        detail = _failure_detail(result)
        if atomic and "atomic" in detail:
            return "unsupported", detail
        return "error", detail
    remote_said = [m[len("remote:"):].strip() for m in result.messages if m.startswith("remote:")]
    remote_said = [m for m in remote_said if m and not _PROGRESS_LINE.match("remote: " + m)]
    # In an atomic push one failing ref makes every other one fail too; the first kind says why.
    real = [r for r in rejected if "atomic push failed" not in r and "atomic transaction failed" not in r] or rejected

    def moved(r: str) -> bool:
        if r.startswith("[remote rejected]"):
            return bool(_MOVED_SERVER_SIDE.search(r))
        return r.startswith("[rejected]") and bool(_MOVED_CLIENT_SIDE.search(r))

    reason = "; ".join(sorted(set(real)))
    if all(moved(r) for r in real):
        return "retry", reason
    if any(r.startswith("[remote rejected]") and "non-fast-forward" in r for r in real):
        reason += (" - the remote denies non-fast-forward updates (receive.denyNonFastForwards), "
                   "which moving an alias needs")
    return "refused", reason + (": " + " / ".join(remote_said) if remote_said else "")


def push(repo: Repo, remote: str | None = None) -> SyncReport:
    """Integrate the remote's saves, then publish this clone's, never overwriting anyone's."""
    target = resolve_remote(repo, remote)
    branch = snapshot_branch(repo)
    report = SyncReport(target.label)
    atomic = True
    last = ""
    for attempt in range(MAX_ATTEMPTS):
        base = _fetch(repo, target, branch)
        incoming, left_out = incoming_commits(repo, target, branch)
        report.incoming += incoming
        report.incoming_left_out += left_out
        report.notes += _integrate(repo, target, branch, base)
        updates = _outgoing(repo, target, branch)
        if not updates:
            return report
        moved = lfspush.move_into_lfs(repo, updates, TRACKING)
        if moved:
            report.notes += moved
            updates = _outgoing(repo, target, branch)
        uploaded = lfspush.upload(repo, target, updates)
        outcome, detail = _try_push(repo, target, updates, atomic)
        if outcome == "unsupported":
            atomic = False
            outcome, detail = _try_push(repo, target, updates, atomic)
        if outcome == "ok":
            repo.git("-c", "core.logAllRefUpdates=false", "update-ref", "--stdin",
                     input="".join(f"update {target.tracking_ref(ref)} {new}\n" for ref, new, _ in updates).encode())
            report.pushed = [ref for ref, _, _ in updates]
            report.notes += uploaded
            return report
        if outcome == "refused":
            raise RemoteError(
                f"{target.label} refused the push ({detail}); nothing was pushed and every save is kept here - "
                "fix what the remote objects to, then `gitpack push` again" + lfspush.refusal_advice(repo, updates)
            )
        if outcome == "error":
            raise RemoteError(
                f"cannot push to {target.label}: {detail}; nothing was lost here, `gitpack push` again later"
            )
        last = detail
        report.notes.append(f"{target.argument} changed while pushing ({detail}); merging again")
        time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))  # someone pushed meanwhile: merge again
    raise RemoteError(
        f"{target.label} kept changing while pushing ({last}); nothing was lost, run `gitpack push` again"
    )

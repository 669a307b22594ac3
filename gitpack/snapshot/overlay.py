"""The fast snapshot: HEAD's tree with only what ``git status`` reports rewritten, no index written.

``git status`` (read-only, its stat cache skipping unchanged files) says which
paths differ from HEAD; only those are hashed (one ``git hash-object``) and
only the directories holding them are rewritten (one ``git mktree --batch``)
on top of HEAD's tree.  A save costs about one ``git status`` plus a constant
handful of small git processes, whatever the size of the repository.  Where
that could differ from ``git add -A``, :class:`NeedsIndex` sends the caller to
:mod:`.index`.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from ..errors import GitError
from ..fsutil import TEMP_MARK
from ..git import Repo, runner
from ..git.objects import NeedsIndex, TreeWriter
from .exclude import Limits, left_out
from .status import READ_ONLY, STATUS_ARGS, branch_headers
from .tree import SnapshotTree, temp_prefix


def _index_entry(mode: str, sha: str | None) -> tuple[str, str] | None:
    """A path's staged entry, ``(mode, sha)``; None when the index does not have it (mode 000000: untracked)."""
    return None if mode == "000000" or sha is None else (mode, sha)


def write_overlay(repo: Repo, limits: Limits) -> SnapshotTree:
    """The working tree as a tree: HEAD's tree with only the paths ``git status`` reports rewritten.

    Raises :class:`NeedsIndex` where that could differ from ``git add -A`` (a changed submodule, a
    merge conflict, line-ending conversion, an unusual file type, a name plumbing would misread).
    """
    status_proc = repo.start(*STATUS_ARGS, env=READ_ONLY)
    listing = repo.start("ls-files", "-z", "--", "*.gitpack", ".gitattributes", "*/.gitattributes", env=READ_ONLY)
    # While status runs: the configuration, and HEAD's commit and tree through the long-lived cat-file.
    try:
        if (repo.config("core.autocrlf") or "false").lower() not in ("false", "no", "off", "0"):
            raise NeedsIndex("core.autocrlf converts line endings depending on the index")
        if (repo.config("core.symlinks") or "true").lower() in ("false", "no", "off", "0"):
            raise NeedsIndex("core.symlinks=false")
        early_head = repo.commit_and_tree("HEAD")
    finally:
        status = status_proc.finish().decode("utf-8", "surrogateescape")
    tracked = [p for p in listing.finish().decode("utf-8", "surrogateescape").split("\0") if p]
    head, head_branch = branch_headers(status)
    records = []
    for record in status.split("\0"):
        kind = record[:2]
        if kind in ("1 ", "? "):
            records.append(record)
        elif record and kind != "# ":
            raise NeedsIndex(f"status record {record[:2]!r}")  # unmerged paths, renames
    if head is None:
        base_tree = None
    elif early_head is not None and early_head[0] == head:
        base_tree = early_head[1]
    else:
        moved = repo.commit_and_tree(head)  # HEAD moved while status ran
        if moved is None:  # status just named this commit: only a broken repository loses it
            raise GitError(f"commit {head}, HEAD according to git status, is missing from {repo.root}")
        base_tree = moved[1]

    filemode = (repo.config("core.filemode") or "true").lower() not in ("false", "no", "off", "0")
    changed: list[str] = []
    warnings: list[str] = []
    excluded: list[tuple[str, str]] = []
    changes: dict[str, tuple[str, str] | None] = {}  # path -> (mode, sha) or None to drop it
    from_worktree: dict[str, str] = {}  # path -> mode, for files to hash
    links: list[str] = []
    attribute_files = [p for p in tracked if p.rpartition("/")[2] == ".gitattributes"]
    entries: list[tuple[str, str, str, str | None, str | None]] = []  # path, xy, index mode and sha, worktree mode
    for record in records:
        if record[0] == "?":
            path = record[2:]
            if path.endswith("/"):
                # An untracked nested repository: git cannot snapshot into it.
                warnings.append(f"{path} is a nested git repository and is not captured")
                continue
            entries.append((path, "??", "000000", None, None))
        else:
            fields = record.split(" ", 8)
            if len(fields) != 9 or fields[2] != "N...":
                raise NeedsIndex("a submodule changed")  # git add decides its gitlink
            entries.append((fields[8], fields[1], fields[4], fields[7], fields[5]))
    reasons = left_out(repo.root, [(e[0], e[1] == "??") for e in entries if TEMP_MARK not in os.path.basename(e[0])],
                       limits)
    for path, xy, mode_index, sha_index, mode_worktree in entries:
        if "\n" in path or path.startswith('"'):
            raise NeedsIndex("a path git's line-based plumbing would misread")
        changed.append(path)
        if path.rpartition("/")[2] == ".gitattributes":
            attribute_files.append(path)
        if TEMP_MARK in os.path.basename(path):
            # Another save's archive, still being written: never snapshot, nothing to report.
            changes[path] = _index_entry(mode_index, sha_index)
            continue
        reason = reasons.get(path)
        if reason:
            excluded.append((path, reason))
            changes[path] = None
            continue
        worktree_state = xy[1]
        if worktree_state == ".":  # the worktree matches the index: take the staged entry
            changes[path] = _index_entry(mode_index, sha_index)
        elif worktree_state == "D":
            changes[path] = None
        else:
            try:
                st = os.lstat(repo.root / path)
            except (FileNotFoundError, NotADirectoryError):
                changes[path] = None  # gone since status: git add would drop it too
                continue
            if stat.S_ISLNK(st.st_mode):
                links.append(path)
                from_worktree[path] = "120000"
            elif stat.S_ISREG(st.st_mode):
                if mode_worktree in ("100644", "100755"):
                    from_worktree[path] = mode_worktree
                else:
                    from_worktree[path] = "100755" if filemode and st.st_mode & 0o100 else "100644"
            else:
                raise NeedsIndex(f"{path} is neither a file nor a symlink")
    for path in tracked:
        if path.endswith(".gitpack") and path not in changes:
            # Committed archives stay out too, however they are named.
            excluded.append((path, "gitpack archive"))
            changes[path] = None
    regular = [p for p in from_worktree if from_worktree[p] != "120000"]
    if regular and may_convert_line_endings(repo, attribute_files):
        for path in regular:
            with open(repo.root / path, "rb") as fh:
                if b"\r" in fh.read():
                    raise NeedsIndex("line endings that git add may keep or convert")
    shas = hash_files(repo, regular, filters=True) + hash_links(repo, links)
    for path, sha in zip(regular + links, shas, strict=True):
        changes[path] = (from_worktree[path], sha)
    tree = apply_changes(repo, base_tree, changes)
    repo.head_branch_seen = (head_branch,)
    return SnapshotTree(tree, head, head_branch, bool(changed), excluded, warnings)


def may_convert_line_endings(repo: Repo, attribute_files: list[str]) -> bool:
    """Whether any attribute could ask git to convert line endings (text, eol, crlf)."""
    candidates = [repo.root / p for p in attribute_files] + [repo.common_dir / "info" / "attributes"]
    configured = repo.config("core.attributesfile")
    if configured:
        candidates.append(Path(os.path.expanduser(configured)))
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        candidates.append(Path(xdg) / "git" / "attributes")
    for candidate in candidates:
        try:
            text = candidate.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            for token in line.split()[1:]:
                if token.split("=", 1)[0] in ("text", "eol", "crlf"):
                    return True
    return False


def hash_files(repo: Repo, paths: list[str], *, filters: bool) -> list[str]:
    """Write *paths* (relative to the root, or absolute) as blobs with one ``git hash-object``."""
    if not paths:
        return []
    fd, list_file = tempfile.mkstemp(prefix=temp_prefix("paths"), dir=str(repo.git_dir))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"".join(os.fsencode(p) + b"\n" for p in paths))
        args = ["hash-object", "-w", "--stdin-paths"] + ([] if filters else ["--no-filters"])
        with open(list_file, "rb") as stdin:
            out = runner.run(args, cwd=repo.root, stdin=stdin).text
    finally:
        os.unlink(list_file)
    shas = out.split()
    if len(shas) != len(paths):
        raise GitError(f"git hash-object returned {len(shas)} ids for {len(paths)} files")
    return shas


def hash_links(repo: Repo, links: list[str]) -> list[str]:
    """Symlinks are blobs of their target's text, never of what they point to."""
    return hash_bytes(repo, [os.fsencode(os.readlink(repo.root / link)) for link in links])


def hash_bytes(repo: Repo, contents: list[bytes]) -> list[str]:
    """Write each of *contents* as a blob, unfiltered, with one ``git hash-object`` (through temp files in .git)."""
    if not contents:
        return []
    temp = tempfile.mkdtemp(prefix=temp_prefix("blobs"), dir=str(repo.git_dir))
    try:
        files = []
        for i, data in enumerate(contents):
            target = os.path.join(temp, str(i))
            with open(target, "wb") as fh:
                fh.write(data)
            files.append(target)
        return hash_files(repo, files, filters=False)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def apply_changes(repo: Repo, base_tree: str | None, changes: dict[str, tuple[str, str] | None]) -> str:
    """*base_tree* with *changes* applied: only the directories on a changed path are rewritten."""
    files: dict[str, dict[str, tuple[str, str] | None]] = {}
    subdirs: dict[str, set[str]] = {}
    for path, entry in changes.items():
        directory, _, name = path.rpartition("/")
        files.setdefault(directory, {})[name] = entry
        while directory:
            parent, _, child = directory.rpartition("/")
            subdirs.setdefault(parent, set()).add(child)
            directory = parent
    if not changes and base_tree is not None:
        return base_tree
    for attempt in range(runner.GC_RACE_RETRIES):
        writer = TreeWriter(repo.root)
        try:
            tree = _rewrite(repo, "", base_tree, files, subdirs, writer)
            return tree if tree is not None else writer.write({})
        except runner.GitFailed as exc:
            if not runner.gc_race(exc.stderr) or attempt == runner.GC_RACE_RETRIES - 1:
                raise  # not a race with a concurrent gc (see runner.GC_RACES): a real failure
            runner.gc_pause(attempt)
        finally:
            writer.close()
    raise AssertionError("unreachable")


def _rewrite(repo: Repo, directory, base_sha, files, subdirs, writer) -> str | None:
    entries: dict[str, tuple[str, str, str]] = {}  # name -> (mode, kind, sha)
    if base_sha is not None:
        for e in repo.read_tree(base_sha):
            entries[e.name] = ("040000" if e.kind == "tree" else e.mode, e.kind, e.sha)
    original = dict(entries)
    for name, entry in files.get(directory, {}).items():
        if entry is None:
            entries.pop(name, None)
        else:
            mode, sha = entry
            entries[name] = (mode, "commit" if mode == "160000" else "blob", sha)
    for child in sorted(subdirs.get(directory, ())):
        before = original.get(child)
        sub = _rewrite(repo,
            f"{directory}/{child}" if directory else child,
            before[2] if before is not None and before[1] == "tree" else None,
            files, subdirs, writer,
        )
        if sub is None:
            if entries.get(child, ("", "tree"))[1] == "tree":
                entries.pop(child, None)
        elif child in files.get(directory, {}) and files[directory][child] is not None:
            raise NeedsIndex(f"{child} is both a file and a directory")
        else:
            entries[child] = ("040000", "tree", sub)
    if not entries:
        return None
    if entries == original:
        return base_sha
    return writer.write(entries)


"""Git snapshotting: turn the working tree into a commit on gitpack's branch.

The user's HEAD, index, working tree, stash and reflogs are never touched: the
snapshot is built in a *copy* of the user's index (so git's stat cache skips
unchanged files), only the paths ``git status`` reports are re-added, and the
branch ref moves with a compare-and-swap that retries when another save won the
race.  All git work goes through GitPython's command wrapper, plus one
long-lived ``git cat-file --batch`` for reading objects.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import git as gitpython
from git.exc import GitCommandError

from .archive import MAGIC as ARCHIVE_MAGIC, TEMP_MARK, is_stale_temp, temp_owner_tag
from .errors import GitError, NotARepoError

DEFAULT_BRANCH = "gitpack"
START_MESSAGE = "gitpack: start of the snapshot branch"  # the root commit of every snapshot branch gitpack starts
DEFAULT_SIZE_CAP = 10 * 1000 * 1000
ZERO_SHA = "0" * 40
_TEMP_PREFIX = "gitpack-tmp-"
_STALE_TEMP_SECONDS = 3600


@dataclass(frozen=True)
class SnapshotTree:
    """The working tree written as a git tree, plus where it came from."""

    tree: str
    head: str | None
    head_branch: str | None
    dirty: bool
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    submodule_warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TreeEntry:
    mode: str
    kind: str  # "blob", "tree" or "commit"
    sha: str
    name: str


class _NeedsIndex(Exception):
    """The overlay snapshot cannot promise to match ``git add -A`` here; use an index."""


class _CatFile:
    """One long-lived ``git cat-file --batch`` that takes many requests at once.

    Asking for the objects of a whole directory in one write costs one round
    trip to git instead of one per object (each of which waits for git to be
    scheduled: on a busy machine that dominates materialisation).
    """

    BATCH = 256  # requests per write: always far below a pipe's buffer, so writing never blocks on git

    def __init__(self, git):
        self._git = git
        self._proc = None
        self._lock = threading.Lock()

    def read(self, names: list[str], *, with_names: bool = False) -> list:
        """For each name, (type, bytes), or (sha, type, bytes) *with_names*; None for a missing object."""
        for name in names:
            if not name or "\n" in name:
                raise GitError(f"malformed object name {name!r}")
        out: list = []
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._git.execute(["git", "cat-file", "--batch"], as_process=True, istream=subprocess.PIPE)
            stdin, stdout = self._proc.stdin, self._proc.stdout
            try:
                for start in range(0, len(names), self.BATCH):
                    batch = names[start : start + self.BATCH]
                    stdin.write(b"".join(name.encode("utf-8", "surrogateescape") + b"\n" for name in batch))
                    stdin.flush()
                    for _ in batch:
                        header = stdout.readline().split()
                        if len(header) != 3:
                            if not header:
                                raise GitError("git cat-file stopped answering")
                            out.append(None)  # "<name> missing" or "<name> ambiguous"
                            continue
                        size = int(header[2])
                        data = stdout.read(size)
                        stdout.read(1)
                        kind = header[1].decode()
                        out.append((header[0].decode(), kind, data) if with_names else (kind, data))
            except (OSError, ValueError):
                self.close()
                raise GitError("git cat-file stopped answering") from None
        return out

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()
                proc.wait()
            except (OSError, GitCommandError):
                pass


class _TreeWriter:
    """One ``git mktree --batch`` for every tree of a snapshot, written bottom-up."""

    def __init__(self, repo: "Repo"):
        self._proc = repo._git.execute(["git", "mktree", "--batch"], as_process=True, istream=subprocess.PIPE)

    def write(self, entries: dict[str, tuple[str, str, str]]) -> str:
        lines = []
        for name, (mode, kind, sha) in entries.items():
            if "\n" in name or name.startswith('"'):
                raise _NeedsIndex("a name mktree would misread")
            lines.append(f"{mode} {kind} {sha}\t".encode() + os.fsencode(name) + b"\n")
        self._proc.stdin.write(b"".join(lines) + b"\n")
        self._proc.stdin.flush()
        sha = self._proc.stdout.readline().strip().decode()
        if not sha:
            raise GitError("git mktree failed: " + (self._proc.stderr.read().decode(errors="replace").strip() or "no tree written"))
        return sha

    def close(self) -> None:
        try:
            self._proc.stdin.close()
            self._proc.wait()
        except (OSError, GitCommandError):
            pass


class Repo:
    """A git working tree, driven through the git binary."""

    def __init__(self, root: Path, git_dir: Path, common_dir: Path):
        self.root = root
        self.git_dir = git_dir
        self.common_dir = common_dir
        self._git = gitpython.Git(str(root))
        self._tree_cache: dict[str, list[TreeEntry]] = {}
        self._cat = _CatFile(self._git)
        self._config: dict[str, str] | None = None
        self._head_branch_seen: tuple[str | None] | None = None  # HEAD's branch as the last snapshot saw it

    # ---------------------------------------------------------------- discovery
    @classmethod
    def discover(cls, path: str | os.PathLike | None = None) -> "Repo":
        """The repository containing *path* (default: the current directory), as git finds it."""
        start = Path(path) if path is not None else Path.cwd()
        try:
            out = gitpython.Git(str(start)).execute(
                ["git", "rev-parse", "--show-toplevel", "--absolute-git-dir", "--git-common-dir"],
                stdout_as_string=True,
            )
        except GitCommandError:
            raise NotARepoError(
                f"{start} is not inside a git working tree; run gitpack from a git repository (or `git init` one)"
            ) from None
        except (FileNotFoundError, NotADirectoryError):
            raise NotARepoError(f"{start} does not exist; run gitpack from a git repository") from None
        lines = out.splitlines()
        if len(lines) < 3 or not lines[0]:
            raise NotARepoError(f"{start} is not inside a git working tree (bare repository?); run gitpack from a checkout")
        root = Path(lines[0])
        common = Path(lines[2])
        if not common.is_absolute():
            common = (root / common).resolve()
        return cls(root, Path(lines[1]), common)

    # ------------------------------------------------------------------ plumbing
    def git(self, *args: str, env: dict[str, str] | None = None, strip: bool = True, binary: bool = False):
        """Run one git command in this repository; raise :class:`GitError` on failure."""
        if args and args[0] == "config" and not _CONFIG_READS.intersection(args):
            self._config = None  # it may be about to change
        full_env = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        try:
            return self._git.execute(
                ["git", *args],
                env=full_env,
                stdout_as_string=not binary,
                strip_newline_in_stdout=strip,
            )
        except GitCommandError as exc:
            # GitPython wraps stderr as "\n  stderr: '...\n'": the last line can be a lone quote.
            lines = [line.strip().removeprefix("stderr: ").strip("' ") for line in (exc.stderr or "").splitlines()]
            lines = [line for line in lines if line]
            detail = lines[-1] if lines else f"exit status {exc.status}"
            raise GitError(f"git {args[0]} failed: {detail}") from None

    def _start(self, *args: str, env: dict[str, str] | None = None):
        """Start one git command without waiting for it; :meth:`_finish` collects its output."""
        full_env = dict(os.environ)
        full_env.update(env or {})
        return self._git.execute(["git", *args], env=full_env, as_process=True)

    def _finish(self, proc, what: str) -> str:
        out = proc.stdout.read()
        try:
            proc.wait()
        except GitCommandError as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            lines = stderr.strip().splitlines()
            raise GitError(f"git {what} failed: {lines[-1].strip() if lines else f'exit status {exc.status}'}") from None
        return out.decode("utf-8", "surrogateescape")

    def rev_parse(self, rev: str) -> str | None:
        """The full sha of *rev*, or None when it does not exist."""
        try:
            return self.git("rev-parse", "--verify", "-q", rev + "^{object}") or None
        except GitError:
            return None

    def _resolve_commit(self, rev: str) -> str | None:
        """The commit *rev* names, via the persistent ``cat-file --batch``; None when it names none."""
        try:
            found = self._commit_and_tree(rev)
        except GitError:
            return self.rev_parse(rev)  # a tag or another object: let rev-parse say what it is
        return found[0] if found else None

    def object_type(self, sha: str) -> str | None:
        """'commit', 'tree', 'blob' or None for a missing object, through the persistent cat-file."""
        try:
            _, kind, _ = self._git.get_object_header(sha)
            return kind.decode() if isinstance(kind, bytes) else kind
        except (ValueError, GitCommandError):
            return None

    def read_object(self, sha: str) -> tuple[str, bytes]:
        """(type, bytes) of an object, through one long-lived ``git cat-file --batch``."""
        return self.read_objects([sha])[0]

    def read_objects(self, names: list[str]) -> list[tuple[str, bytes]]:
        """(type, bytes) of many objects, asked for at once: one round trip to git, not one per object."""
        found = self._cat.read(names)
        for name, item in zip(names, found):
            if item is None:
                raise GitError(f"object {name} is missing from {self.root}; fetch it (`gitpack pull`)")
        return found  # type: ignore[return-value]

    def read_tree(self, sha: str) -> list[TreeEntry]:
        """The entries of one tree object, parsed from its raw form (cached: trees are immutable)."""
        cached = self._tree_cache.get(sha)
        if cached is not None:
            return cached
        kind, data = self.read_object(sha)
        if kind != "tree":
            raise GitError(f"{sha} is a {kind}, not a tree")
        entries = parse_tree(data)
        self._tree_cache[sha] = entries
        return entries

    def config(self, key: str) -> str | None:
        """What ``git config --get KEY`` says (the last value wins), or None.

        All of the configuration is read by one ``git config --list`` the first
        time, so a save asks git once however many settings it consults.
        """
        if self._config is None:
            try:
                listing = self.git("config", "-z", "--list", strip=False)
            except GitError:
                listing = ""
            values: dict[str, str] = {}
            for record in listing.split("\0"):
                name, _, value = record.partition("\n")
                if name:
                    values[_config_key(name)] = value
            self._config = values
        return self._config.get(_config_key(key)) or None

    def close(self) -> None:
        self._cat.close()
        self._git.clear_cache()

    def __enter__(self) -> "Repo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ snapshot
    def write_snapshot_tree(self, *, size_cap: int = DEFAULT_SIZE_CAP, exclude: set[str] = frozenset()) -> SnapshotTree:
        """Write the working tree (tracked, modified and untracked-not-ignored) as a tree object.

        The user's index is only read.  ``git status`` (its stat cache skips
        unchanged files) says which paths differ from HEAD; only those are
        hashed (``git hash-object``) and only the directories holding them are
        rewritten (``git mktree``) on top of HEAD's tree.  So a save costs about
        one ``git status`` plus a constant handful of small git processes,
        whatever the size of the repository, and no index file is written.
        Where that could differ from ``git add -A`` (submodules, merge
        conflicts, end-of-line conversion, unusual file types) the tree is built
        in a private copy of the user's index instead.
        """
        self.cleanup_stale_temp_files()
        try:
            return self._snapshot_overlay(size_cap, exclude)
        except _NeedsIndex:
            return self._snapshot_via_index(size_cap, exclude)

    def _snapshot_overlay(self, size_cap: int, exclude: set[str]) -> SnapshotTree:
        read_only = {"GIT_OPTIONAL_LOCKS": "0"}  # status must not even refresh the user's index
        status_proc = self._start(
            "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all", "--no-renames",
            "--ignore-submodules=none", env=read_only,
        )
        listing = self._start("ls-files", "-z", "--", "*.gitpack", ".gitattributes", "*/.gitattributes", env=read_only)
        # While status runs: the configuration, and HEAD's commit and tree through the long-lived cat-file.
        try:
            if (self.config("core.autocrlf") or "false").lower() not in ("false", "no", "off", "0"):
                raise _NeedsIndex("core.autocrlf converts line endings depending on the index")
            if (self.config("core.symlinks") or "true").lower() in ("false", "no", "off", "0"):
                raise _NeedsIndex("core.symlinks=false")
            early_head = self._commit_and_tree("HEAD")
        finally:
            status = self._finish(status_proc, "status")
        tracked = [p for p in self._finish(listing, "ls-files").split("\0") if p]
        head, head_branch = _status_branch(status)
        records = []
        for record in status.split("\0"):
            kind = record[:2]
            if kind in ("1 ", "? "):
                records.append(record)
            elif record and kind != "# ":
                raise _NeedsIndex(f"status record {record[:2]!r}")  # unmerged paths, renames
        if head is None:
            base_tree = None
        elif early_head is not None and early_head[0] == head:
            base_tree = early_head[1]
        else:
            base_tree = self._commit_and_tree(head)[1]  # HEAD moved while status ran

        filemode = (self.config("core.filemode") or "true").lower() not in ("false", "no", "off", "0")
        changed: list[str] = []
        warnings: list[str] = []
        excluded: list[tuple[str, str]] = []
        changes: dict[str, tuple[str, str] | None] = {}  # path -> (mode, sha) or None to drop it
        from_worktree: dict[str, str] = {}  # path -> mode, for files to hash
        links: list[str] = []
        attribute_files = [p for p in tracked if p.rpartition("/")[2] == ".gitattributes"]
        for record in records:
            if record[0] == "?":
                path = record[2:]
                if path.endswith("/"):
                    # An untracked nested repository: git cannot snapshot into it.
                    warnings.append(f"{path} is a nested git repository and is not captured")
                    continue
                xy, mode_index, sha_index, mode_worktree = "??", "000000", None, None
            else:
                fields = record.split(" ", 8)
                if len(fields) != 9 or fields[2] != "N...":
                    raise _NeedsIndex("a submodule changed")  # git add decides its gitlink
                xy, mode_worktree, sha_index, path = fields[1], fields[5], fields[7], fields[8]
                mode_index = fields[4]
            if "\n" in path or path.startswith('"'):
                raise _NeedsIndex("a path git's line-based plumbing would misread")
            changed.append(path)
            if path.rpartition("/")[2] == ".gitattributes":
                attribute_files.append(path)
            if TEMP_MARK in os.path.basename(path):
                # Another save's archive, still being written: never snapshot, nothing to report.
                changes[path] = None if mode_index == "000000" else (mode_index, sha_index)
                continue
            reason = self._exclusion_reason(path, size_cap, exclude)
            if reason:
                excluded.append((path, reason))
                changes[path] = None
                continue
            worktree_state = xy[1]
            if worktree_state == ".":  # the worktree matches the index: take the staged entry
                changes[path] = None if mode_index == "000000" else (mode_index, sha_index)
            elif worktree_state == "D":
                changes[path] = None
            else:
                try:
                    st = os.lstat(self.root / path)
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
                    raise _NeedsIndex(f"{path} is neither a file nor a symlink")
        for path in tracked:
            if path.endswith(".gitpack") and path not in changes:
                # Committed archives stay out too, however they are named.
                excluded.append((path, "gitpack archive"))
                changes[path] = None
        regular = [p for p in from_worktree if from_worktree[p] != "120000"]
        if regular and self._may_convert_line_endings(attribute_files):
            for path in regular:
                with open(self.root / path, "rb") as fh:
                    if b"\r" in fh.read():
                        raise _NeedsIndex("line endings that git add may keep or convert")
        shas = self._hash_files(regular, filters=True) + self._hash_links(links)
        for path, sha in zip(regular + links, shas):
            changes[path] = (from_worktree[path], sha)
        tree = self._overlay(base_tree, changes)
        self._head_branch_seen = (head_branch,)
        return SnapshotTree(tree, head, head_branch, bool(changed), excluded, warnings)

    def _commit_and_tree(self, rev: str) -> tuple[str, str] | None:
        """(commit, its tree) for *rev* through the persistent ``cat-file --batch``; None when unborn."""
        found = self._cat.read([rev], with_names=True)[0]
        if found is None:
            return None
        sha, kind, data = found
        if kind != "commit" or not data.startswith(b"tree "):
            raise GitError(f"{rev} is a {kind}, not a commit")
        return sha, data[5 : data.index(b"\n")].decode()

    def _may_convert_line_endings(self, attribute_files: list[str]) -> bool:
        """Whether any attribute could ask git to convert line endings (text, eol, crlf)."""
        candidates = [self.root / p for p in attribute_files] + [self.common_dir / "info" / "attributes"]
        configured = self.config("core.attributesfile")
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

    def _hash_files(self, paths: list[str], *, filters: bool) -> list[str]:
        """Write *paths* (relative to the root, or absolute) as blobs with one ``git hash-object``."""
        if not paths:
            return []
        fd, list_file = tempfile.mkstemp(prefix=_temp_prefix("paths"), dir=str(self.git_dir))
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"".join(os.fsencode(p) + b"\n" for p in paths))
            args = ["hash-object", "-w", "--stdin-paths"] + ([] if filters else ["--no-filters"])
            with open(list_file, "rb") as stdin:
                out = self._git.execute(["git", *args], istream=stdin)
        except GitCommandError as exc:
            lines = str(exc.stderr or "").strip().splitlines()
            raise GitError(f"git hash-object failed: {lines[-1].strip() if lines else exc.status}") from None
        finally:
            os.unlink(list_file)
        shas = out.split()
        if len(shas) != len(paths):
            raise GitError(f"git hash-object returned {len(shas)} ids for {len(paths)} files")
        return shas

    def _hash_links(self, links: list[str]) -> list[str]:
        """Symlinks are blobs of their target's text, never of what they point to."""
        if not links:
            return []
        temp = tempfile.mkdtemp(prefix=_temp_prefix("links"), dir=str(self.git_dir))
        try:
            files = []
            for i, link in enumerate(links):
                target = os.path.join(temp, str(i))
                with open(target, "wb") as fh:
                    fh.write(os.fsencode(os.readlink(self.root / link)))
                files.append(target)
            return self._hash_files(files, filters=False)
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def _overlay(self, base_tree: str | None, changes: dict[str, tuple[str, str] | None]) -> str:
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
        writer = _TreeWriter(self)
        try:
            tree = self._rewrite("", base_tree, files, subdirs, writer)
            return tree if tree is not None else writer.write({})
        finally:
            writer.close()

    def _rewrite(self, directory, base_sha, files, subdirs, writer) -> str | None:
        entries: dict[str, tuple[str, str, str]] = {}  # name -> (mode, kind, sha)
        if base_sha is not None:
            for e in self.read_tree(base_sha):
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
            sub = self._rewrite(
                f"{directory}/{child}" if directory else child,
                before[2] if before is not None and before[1] == "tree" else None,
                files, subdirs, writer,
            )
            if sub is None:
                if entries.get(child, ("", "tree"))[1] == "tree":
                    entries.pop(child, None)
            elif child in files.get(directory, {}) and files[directory][child] is not None:
                raise _NeedsIndex(f"{child} is both a file and a directory")
            else:
                entries[child] = ("040000", "tree", sub)
        if not entries:
            return None
        if entries == original:
            return base_sha
        return writer.write(entries)

    def _snapshot_via_index(self, size_cap: int, exclude: set[str]) -> SnapshotTree:
        """The general way: ``git add`` the changed paths in a private copy of the user's index."""
        user_index = self.git_dir / "index"
        fd, temp_index = tempfile.mkstemp(prefix=_temp_prefix("index"), dir=str(self.git_dir))
        os.close(fd)
        try:
            try:
                shutil.copy2(user_index, temp_index)  # keep its mtime: git's racy-clean check depends on it
            except FileNotFoundError:
                os.unlink(temp_index)  # git creates it; an empty file is not a valid index
            env = {"GIT_INDEX_FILE": temp_index, "GIT_LITERAL_PATHSPECS": "1"}
            # A constant handful of git processes, whatever the repo's size: ls-files runs
            # beside status, and status (porcelain v2) also reports HEAD and its branch.
            archives_listing = self._start("ls-files", "-z", "--", "*.gitpack", env={"GIT_INDEX_FILE": temp_index})
            status = self.git(
                "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all", "--no-renames",
                "--ignore-submodules=none",
                env=env, strip=False,
            )
            changed, submodule_warnings, head, head_branch = _parse_status(status)
            settled = _staged_only(status)
            dirty = bool(changed)
            to_add: list[str] = []
            excluded: list[tuple[str, str]] = []
            for path in changed:
                if TEMP_MARK in os.path.basename(path):
                    continue  # another save's archive, still being written: never snapshot, nothing to report
                reason = self._exclusion_reason(path, size_cap, exclude)
                if reason:
                    excluded.append((path, reason))
                elif path not in settled:
                    to_add.append(path)
            # Committed archives stay out too, however they are named.
            tracked_archives = [p for p in self._finish(archives_listing, "ls-files").split("\0") if p and p not in changed]
            if to_add:
                self._run_with_pathspec_file(["add", "-A", "--force"], to_add, env)
            removals = [p for p, _ in excluded] + tracked_archives
            if removals:
                self._run_with_pathspec_file(["rm", "--cached", "-q", "--ignore-unmatch", "-r"], removals, env)
            excluded += [(p, "gitpack archive") for p in tracked_archives]
            tree = self.git("write-tree", env=env)
        finally:
            try:
                os.unlink(temp_index)
            except FileNotFoundError:
                pass
        self._head_branch_seen = (head_branch,)
        return SnapshotTree(tree, head, head_branch, dirty, excluded, submodule_warnings)

    def _exclusion_reason(self, path: str, size_cap: int, exclude: set[str]) -> str | None:
        full = self.root / path
        if path in exclude:
            return "gitpack archive"
        try:
            st = full.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None  # deleted: staging the deletion is what we want
        if not full.is_file() or full.is_symlink():
            return None
        if st.st_size > size_cap:
            return f"larger than the size cap ({st.st_size} > {size_cap} bytes)"
        if st.st_size >= len(ARCHIVE_MAGIC):
            with open(full, "rb") as fh:
                if fh.read(len(ARCHIVE_MAGIC)) == ARCHIVE_MAGIC:
                    return "gitpack archive"
        return None

    def _run_with_pathspec_file(self, args: list[str], paths: list[str], env: dict[str, str]) -> None:
        fd, spec = tempfile.mkstemp(prefix=_temp_prefix("spec"), dir=str(self.git_dir))
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"\0".join(os.fsencode(p) for p in paths) + b"\0")
            self.git(*args, f"--pathspec-from-file={spec}", "--pathspec-file-nul", env=env)
        finally:
            os.unlink(spec)

    def commit_snapshot(
        self,
        tree: str,
        message: str,
        *,
        branch: str = DEFAULT_BRANCH,
        head: str | None = None,
        sign: bool = False,
        before_update: Callable[[str], None] | None = None,
        max_attempts: int = 200,
    ) -> str:
        """Commit *tree* on top of *branch* and move the branch with compare-and-swap.

        The first parent is the branch's previous tip (so the branch is the
        audit log); the second is the user's HEAD at save time.  When another
        save moved the branch meanwhile, the commit is rebuilt on the new tip.
        *before_update* runs with each new commit before the ref may move (the
        archive records the commit, so it is sealed there).
        """
        ref = branch_ref(branch)
        fd, msg_file = tempfile.mkstemp(prefix=_temp_prefix("msg"), dir=str(self.git_dir))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(message)
        try:
            for attempt in range(max_attempts):
                # First try: the tip through the long-lived cat-file (a save has it running
                # already); retries ask a fresh rev-parse.  update-ref's compare-and-swap
                # guards against a stale answer either way.
                tip = self._resolve_commit(ref) if attempt == 0 else self.rev_parse(ref)
                args = ["commit-tree", tree]
                for parent in (tip or self._branch_root(), head):
                    if parent:
                        args += ["-p", parent]
                if sign:
                    args.append("-S")
                args += ["-F", msg_file]
                commit = self._commit_tree(args)
                if before_update is not None:
                    before_update(commit)
                try:
                    # No reflog for gitpack's own branch: the branch itself is the log,
                    # and the user's reflogs must stay exactly as they were.
                    self.git("-c", "core.logAllRefUpdates=false", "update-ref", ref, commit, tip or ZERO_SHA)
                    return commit
                except GitError:
                    if self.rev_parse(ref) == tip and not self._ref_locked(ref):
                        raise  # not a lost race: a real failure to report
                    time.sleep(min(0.2, 0.002 * (attempt + 1)) * random.random())
            raise GitError(f"could not move {ref}: other saves kept winning the race; try again")
        finally:
            os.unlink(msg_file)

    def _ref_locked(self, ref: str) -> bool:
        return (self.common_dir / (ref + ".lock")).exists() or (self.common_dir / "packed-refs.lock").exists()

    def _branch_root(self) -> str:
        """A parentless, empty commit to start the snapshot branch.

        With it every save has the same shape: first parent the previous save,
        second parent the user's HEAD, so ``git log --first-parent gitpack``
        walks saves only and ``<save>^2`` is always the HEAD it was taken from.
        """
        empty_index = os.path.join(str(self.git_dir), f"{_temp_prefix('empty')}{random.random()}")
        empty_tree = self.git("write-tree", env={"GIT_INDEX_FILE": empty_index})
        try:
            os.unlink(empty_index)
        except FileNotFoundError:
            pass
        return self._commit_tree(["commit-tree", empty_tree, "-m", START_MESSAGE])

    def _commit_tree(self, args: list[str]) -> str:
        try:
            return self.git(*args)
        except GitError as exc:
            if "tell me who you are" in str(exc) or "empty ident" in str(exc) or "unable to auto-detect" in str(exc):
                return self.git("-c", "user.name=gitpack", "-c", "user.email=gitpack@localhost", *args)
            raise

    def cleanup_stale_temp_files(self) -> None:
        """Remove temp indexes (and git's locks on them) and message files left by saves that crashed.

        Each name carries its owner's pid and host, so a dead owner's files go at
        once; others only after an hour without writes (:func:`is_stale_temp`).
        """
        for entry in self.git_dir.glob(_TEMP_PREFIX + "*"):
            try:
                if is_stale_temp(entry, _STALE_TEMP_SECONDS):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
            except OSError:
                pass

    # ------------------------------------------------------------------ queries
    def remote_url(self) -> str | None:
        remote = "origin"
        if self_branch := self.config_branch_remote():
            remote = self_branch
        return self.config(f"remote.{remote}.url")

    def config_branch_remote(self) -> str | None:
        if self._head_branch_seen is not None:  # the snapshot's status already said (a save asks no more)
            full = self._head_branch_seen[0]
            branch = full.removeprefix("refs/heads/") if full else None
            return self.config(f"branch.{branch}.remote") if branch else None
        try:
            branch = self.git("symbolic-ref", "-q", "--short", "HEAD")
        except GitError:
            return None
        return self.config(f"branch.{branch}.remote") if branch else None


_CONFIG_READS = frozenset({"--get", "--get-all", "--get-regexp", "--get-urlmatch", "--list", "-l"})


def _config_key(key: str) -> str:
    """Section and variable names are case-insensitive, a subsection is not."""
    section, _, rest = key.partition(".")
    subsection, dot, variable = rest.rpartition(".")
    return f"{section.lower()}.{subsection}{dot}{variable.lower()}"


def _temp_prefix(kind: str) -> str:
    return f"{_TEMP_PREFIX}{kind}-{temp_owner_tag()}"


def branch_ref(branch: str) -> str:
    return branch if branch.startswith("refs/") else f"refs/heads/{branch}"


def parse_tree(data: bytes) -> list[TreeEntry]:
    """Parse a raw git tree object: ``<mode> <name>\\0<20-byte sha>`` repeated."""
    entries = []
    i = 0
    n = len(data)
    while i < n:
        sp = data.index(b" ", i)
        nul = data.index(b"\0", sp)
        mode = data[i:sp].decode()
        name = os.fsdecode(data[sp + 1 : nul])
        sha = data[nul + 1 : nul + 21].hex()
        kind = "tree" if mode == "40000" else "commit" if mode == "160000" else "blob"
        entries.append(TreeEntry(mode, kind, sha, name))
        i = nul + 21
    return entries


def _staged_only(out: str) -> set[str]:
    """Paths whose worktree matches the index: nothing to add (``git rm``'d ones would even fail)."""
    settled, untracked = set(), set()
    for record in out.split("\0"):
        if record.startswith("1 ") and record[3] == ".":
            settled.add(record.split(" ", 8)[8])
        elif record.startswith("? "):
            untracked.add(record[2:])  # `git rm --cached` leaves a path both deleted and untracked
    return settled - untracked


def _status_branch(out: str) -> tuple[str | None, str | None]:
    """HEAD's commit (None when unborn) and branch ref (None when detached) from porcelain v2 ``--branch`` headers."""
    head = head_branch = None
    for record in out.split("\0"):
        if not record.startswith("# "):
            if record:
                break  # headers come first
            continue
        key, _, value = record[2:].partition(" ")
        if key == "branch.oid" and value != "(initial)":
            head = value
        elif key == "branch.head" and value != "(detached)":
            head_branch = "refs/heads/" + value
    return head, head_branch


def _parse_status(out: str) -> tuple[list[str], list[str], str | None, str | None]:
    """From ``git status --porcelain=v2 --branch -z``: the paths that differ from HEAD or the index
    (modified, staged, deleted, unmerged, untracked), warnings about nested repositories, HEAD's
    commit (None when unborn) and HEAD's branch as a full ref (None when detached)."""
    changed: list[str] = []
    warnings: list[str] = []
    head, head_branch = _status_branch(out)
    for record in out.split("\0"):
        kind = record[:2]
        if kind == "1 ":
            fields = record.split(" ", 8)
            changed.append(fields[8])
            sub = fields[2]  # "N..." for a file, "S<c><m><u>" for a submodule
            if sub.startswith("S") and (sub[2] == "M" or sub[3] == "U"):
                what = " and ".join(w for w, on in (("modified", sub[2] == "M"), ("untracked", sub[3] == "U")) if on)
                warnings.append(
                    f"submodule {fields[8]} has {what} files that cannot be captured (the snapshot records only its "
                    "commit); commit them in the submodule and save again"
                )
        elif kind == "u ":
            changed.append(record.split(" ", 10)[10])
        elif kind == "2 ":  # not produced with --no-renames; the path comes first, then the old one
            changed.append(record.split(" ", 9)[9])
        elif kind == "? ":
            path = record[2:]
            if path.endswith("/"):
                # An untracked nested repository: git cannot snapshot into it.
                warnings.append(f"{path} is a nested git repository and is not captured")
                continue
            changed.append(path)
    return changed, warnings, head, head_branch

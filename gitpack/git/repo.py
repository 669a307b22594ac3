"""A git working tree, as gitpack drives it: discovery, configuration, refs and objects.

Everything here is plumbing over :mod:`gitpack.git.runner` (the only place that
starts processes) and one :class:`~gitpack.git.objects.ObjectReader` per
repository.  Configuration is read once per ``Repo`` (``git config --list``),
so a save asks git once however many settings it consults.  Refs that must
move together move in one ``update-ref --stdin`` transaction.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import CwdGoneError, GitError, GitpackError, NotARepoError, RepoRefusedError
from ..fsutil import STALE_SECONDS, remove_stale
from . import runner
from .objects import ObjectReader, TreeEntry, parse_tree

DEFAULT_BRANCH = "gitpack"
START_MESSAGE = "gitpack: start of the snapshot branch"  # the root commit of every snapshot branch gitpack starts
ZERO_SHA = "0" * 40
_CONFIG_READS = frozenset({"--get", "--get-all", "--get-regexp", "--get-urlmatch", "--list", "-l"})


class RefUpdateFailed(runner.GitFailed):
    """git refused a ref transaction: nothing moved (a lost race, a locked ref, a full or read-only disk)."""


class Repo:
    """A git working tree, driven through the git binary."""

    def __init__(self, root: Path, git_dir: Path, common_dir: Path):
        self.root = root
        self.git_dir = git_dir
        self.common_dir = common_dir
        self._trees: dict[str, list[TreeEntry]] = {}
        self._objects = ObjectReader(root)
        self._config: dict[str, list[str]] | None = None  # every value of every key, read once
        self.head_branch_seen: tuple[str | None] | None = None  # HEAD's branch as the last snapshot saw it

    # ---------------------------------------------------------------- discovery
    @classmethod
    def discover(cls, path: str | os.PathLike | Repo | None = None) -> Repo:
        """The repository containing *path* (default: the current directory), as git finds it.

        Given a :class:`Repo` already open (a pipeline that found it once and passes it down), a borrowed
        view of it: the same object reader and settings, no new git process, and a ``close`` that leaves
        them open for their owner.
        """
        if isinstance(path, Repo):
            path._config_values()  # read now, so that the owner and every view share one copy
            view = copy.copy(path)
            view._borrowed = True
            return view
        try:
            start = Path(path) if path is not None else Path.cwd()
        except FileNotFoundError:
            raise CwdGoneError("the current directory no longer exists (was it deleted?); cd into a git working tree"
                               ) from None
        if not start.is_dir():
            raise NotARepoError(f"{start} does not exist; run gitpack from a git repository")
        result = runner.run(["rev-parse", "--show-toplevel", "--absolute-git-dir", "--git-common-dir"], cwd=start,
                            check=False)
        lines = result.text.splitlines()
        if result.returncode != 0:
            detail = runner.failure_detail(result.stderr.decode("utf-8", "replace"))
            if "safe.directory" in detail or "dubious ownership" in detail:
                raise RepoRefusedError(f"git refuses {start}: {detail}")
            if "bare repository" in detail or "must be run in a work tree" in detail:
                raise NotARepoError(f"{start} is inside a bare repository and gitpack needs a working tree; "
                                    "run it in a clone with one (`git clone`)")
            raise NotARepoError(
                f"{start} is not inside a git working tree; run gitpack from a git repository (or `git init` one)"
            )
        if len(lines) < 3 or not lines[0]:
            raise NotARepoError(
                f"{start} is not inside a git working tree (bare repository?); run gitpack from a checkout"
            )
        root = Path(lines[0])
        common = Path(lines[2])
        if not common.is_absolute():
            common = (root / common).resolve()
        return cls(root, Path(lines[1]), common)

    # ---------------------------------------------------------------- running git
    def git(self, *args: str, env: dict[str, str] | None = None, strip: bool = True, input: bytes | None = None,
            binary: bool = False) -> Any:
        """Run one git command in this repository and return its output (``bytes`` when *binary*, else text);
        raise :class:`GitError` on failure."""
        if args and args[0] == "config" and not _CONFIG_READS.intersection(args):
            self._config = None  # it may be about to change
        result = runner.run(args, cwd=self.root, env=env, input=input)
        if binary:
            return result.stdout.rstrip(b"\n") if strip else result.stdout
        return result.text.rstrip("\n") if strip else result.text

    def start(self, *args: str, env: dict[str, str] | None = None, stdin: bool = False) -> runner.Process:
        """Start one git command in this repository without waiting (:meth:`runner.Process.finish` collects it)."""
        return runner.start(args, cwd=self.root, env=env, stdin=stdin)

    # ---------------------------------------------------------------- objects
    def rev_parse(self, rev: str) -> str | None:
        """The full sha of *rev*, or None when it does not exist."""
        result = runner.run(["rev-parse", "--verify", "-q", rev + "^{object}"], cwd=self.root, check=False)
        return result.text.strip() or None if result.returncode == 0 else None

    def object_info(self, name: str) -> tuple[str, str, int] | None:
        """(sha, type, size) of what *name* (an object or a ref) names, through the long-lived object reader,
        without reading it; None when it names nothing."""
        return self._objects.info([name])[0]

    def object_type(self, name: str) -> str | None:
        """'commit', 'tree', 'blob' or None for a missing object, through the long-lived object reader."""
        found = self.object_info(name)
        return found[1] if found else None

    def fresh_object_type(self, name: str) -> str | None:
        """Like :meth:`object_type`, from a new ``git cat-file -t``: for the rare check that must not trust a cache."""
        result = runner.run(["cat-file", "-t", name], cwd=self.root, check=False)
        return result.text.strip() or None if result.returncode == 0 else None

    def object_size(self, name: str) -> int | None:
        found = self.object_info(name)
        return found[2] if found else None

    def read_object(self, name: str) -> tuple[str, bytes]:
        """(type, bytes) of an object."""
        return self.read_objects([name])[0]

    def read_objects(self, names: list[str]) -> list[tuple[str, bytes]]:
        """(type, bytes) of many objects, asked for at once: one round trip to git, not one per object."""
        found = self._objects.contents(names)
        for name, item in zip(names, found, strict=True):
            if item is None:
                raise GitError(f"object {name} is missing from {self.root}; fetch it (`gitpack pull`)")
        return found

    def read_tree(self, sha: str) -> list[TreeEntry]:
        """The entries of one tree object (cached: trees are immutable)."""
        cached = self._trees.get(sha)
        if cached is not None:
            return cached
        kind, data = self.read_object(sha)
        if kind != "tree":
            raise GitError(f"{sha} is a {kind}, not a tree")
        entries = parse_tree(data)
        self._trees[sha] = entries
        return entries

    def remember_tree(self, sha: str, data: bytes) -> None:
        """Keep a tree read elsewhere (a batched read) for :meth:`read_tree`."""
        self._trees.setdefault(sha, parse_tree(data))

    def knows_tree(self, sha: str) -> bool:
        return sha in self._trees

    def commit_and_tree(self, rev: str) -> tuple[str, str] | None:
        """(commit, its tree) for *rev* through the object reader; None when *rev* names nothing (unborn HEAD)."""
        found = self._objects.contents([rev], with_names=True)[0]
        if found is None:
            return None
        sha, kind, data = found
        if kind != "commit" or not data.startswith(b"tree "):
            raise GitError(f"{rev} is a {kind}, not a commit")
        return sha, data[5:data.index(b"\n")].decode()

    def resolve_commit(self, rev: str) -> str | None:
        """The commit *rev* names, through the object reader; None when it names none."""
        try:
            found = self.commit_and_tree(rev)
        except GitError:
            return self.rev_parse(rev)  # a tag or another object: let rev-parse say what it is
        return found[0] if found else None

    def commit_tree(self, args: Sequence[str]) -> str:
        """``git commit-tree ARGS``; with a fallback identity when the user has none configured."""
        try:
            return self.git("commit-tree", *args)
        except GitError as exc:
            if "tell me who you are" in str(exc) or "empty ident" in str(exc) or "unable to auto-detect" in str(exc):
                return self.git("-c", "user.name=gitpack", "-c", "user.email=gitpack@localhost", "commit-tree", *args)
            raise

    # ---------------------------------------------------------------- refs
    def update_refs(self, updates: Sequence[tuple[str, str | None, str | None]],
                    decide: Callable[[], None] | None = None) -> None:
        """Move several refs in one transaction: each ``(ref, new or None to delete, expected old or None)``.

        ``git update-ref --stdin`` with start/prepare/commit: either every ref moves or none does.  The
        ``prepare`` (every ref locked, every old value checked) is read back before ``commit`` is written,
        and ``commit`` is written only once gitpack has decided (*decide*, if given, runs in between and
        may raise to abort).  A gitpack killed before that closes git's stdin by dying, and git aborts a
        transaction whose input ends early: no child outlives the decision to move a ref.  No reflog is
        written.  Raises :class:`RefUpdateFailed` when git refuses (a lost race, a locked ref, a full disk).
        """
        lines = ["start"]
        for ref, new, old in updates:
            if new is None:
                lines.append(f"delete {ref} {old or ''}".rstrip())
            else:
                lines.append(f"update {ref} {new} {old or ZERO_SHA}")
        lines.append("prepare")
        args = ["-c", "core.logAllRefUpdates=false", "update-ref", "--stdin"]
        proc = runner.start(args, cwd=self.root, stdin=True)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(("\n".join(lines) + "\n").encode())
                proc.stdin.flush()
                prepared = [proc.stdout.readline() for _ in range(2)] == [b"start: ok\n", b"prepare: ok\n"]
            except OSError:
                prepared = False
            if not prepared:
                proc.finish()  # stdin closes, so git aborts; it said why on stderr
                raise RefUpdateFailed(args, 1, "fatal: the ref transaction was not prepared", self.root)
            if decide is not None:
                decide()
            proc.finish(b"commit\n")
        except runner.GitFailed as exc:
            raise RefUpdateFailed(args, exc.returncode, exc.stderr, self.root) from None
        finally:
            proc.close()  # on an error before `commit`: stdin closes, git aborts and exits

    def refs(self, prefix: str) -> dict[str, str]:
        """``{refname: sha}`` under *prefix* (a ref path, matched up to a slash)."""
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)", prefix)
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    # ---------------------------------------------------------------- configuration
    def config(self, key: str) -> str | None:
        """What ``git config --get KEY`` says (the last value wins), or None; read once per ``Repo``."""
        values = self._config_values()
        found = values.get(_config_key(key))
        return (found[-1] or None) if found else None

    def config_all(self, key: str) -> list[str]:
        """Every value of a multi-valued setting (``git config --get-all``), in order."""
        return list(self._config_values().get(_config_key(key), []))

    def _config_values(self) -> dict[str, list[str]]:
        if self._config is None:
            result = runner.run(["config", "-z", "--list"], cwd=self.root, check=False)
            values: dict[str, list[str]] = {}
            for record in result.text.split("\0"):
                name, _, value = record.partition("\n")
                if name:
                    values.setdefault(_config_key(name), []).append(value)
            self._config = values
        return self._config

    def is_partial_clone(self) -> bool:
        """Whether objects may be missing on purpose, promised by a remote (``git clone --filter``)."""
        return bool(self.config("extensions.partialclone")) or any(
            key.startswith("remote.") and key.endswith(".promisor") and values[-1].lower() in ("true", "1", "yes", "on")
            for key, values in self._config_values().items() if values
        )

    def remote_url(self) -> str | None:
        remote = self.branch_remote() or "origin"
        return self.config(f"remote.{remote}.url")

    def branch_remote(self) -> str | None:
        """The remote of HEAD's branch (``branch.<name>.remote``), if any."""
        if self.head_branch_seen is not None:  # the snapshot's status already said (a save asks no more)
            full = self.head_branch_seen[0]
            branch = full.removeprefix("refs/heads/") if full else None
        else:
            result = runner.run(["symbolic-ref", "-q", "--short", "HEAD"], cwd=self.root, check=False)
            branch = result.text.strip() or None
        return self.config(f"branch.{branch}.remote") if branch else None

    def remove_stale_temp_objects(self, older_than: float = STALE_SECONDS) -> None:
        """git's ``tmp_obj_*`` (a loose object being written) and ``tmp_pack_*``/``tmp_idx_*`` files that a killed
        git left; only old ones, as a running git may be writing a young one right now."""
        objects = self.common_dir / "objects"
        remove_stale(objects, "tmp_obj_*", older_than)
        remove_stale(objects, "??/tmp_obj_*", older_than)
        remove_stale(objects / "pack", "tmp_*", older_than)

    # ---------------------------------------------------------------- lifetime
    _borrowed = False

    def close(self) -> None:
        if not self._borrowed:
            self._objects.close()

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def config_all(repo: Repo | None, key: str) -> list[str]:
    """Every value of setting *key* as git sees it: the repository's, the user's and the system's; with no
    repository (a load outside any), the user's and the system's."""
    if repo is not None:
        return repo.config_all(key)
    result = runner.run(["config", "--get-all", key], cwd=os.path.expanduser("~"), check=False)
    return result.text.splitlines() if result.returncode == 0 else []


@contextmanager
def lent(path: str | os.PathLike | Repo | None) -> Iterator[str | os.PathLike | Repo | None]:
    """The repository containing *path*, found once for a pipeline of steps that each take a ``repo``
    argument: they get it (as borrowed views, no git process each), or *path* itself when there is no
    repository, so each step still says what it needs."""
    try:
        found: Repo | None = Repo.discover(path)
    except GitpackError:
        found = None
    try:
        yield path if found is None else found
    finally:
        if found is not None:
            found.close()


def _config_key(key: str) -> str:
    """Section and variable names are case-insensitive, a subsection is not."""
    section, _, rest = key.partition(".")
    subsection, dot, variable = rest.rpartition(".")
    return f"{section.lower()}.{subsection}{dot}{variable.lower()}"


def branch_ref(branch: str) -> str:
    return branch if branch.startswith("refs/") else f"refs/heads/{branch}"


_COMPONENT = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}"
_PLAIN_BRANCH = re.compile(rf"refs/heads/(?!.*\.\.)(?:{_COMPONENT}/){{0,9}}{_COMPONENT}")


def plain_branch(name: object) -> str | None:
    """*name* when it is a local branch written plainly (``refs/heads/`` and plain path components), else None.

    For a branch an archive records, which anyone can forge: git would take ``refs/heads/main^2`` or
    ``refs/heads/main:big.bin`` as a revision and resolve it, so only a name is ever handed to git."""
    if isinstance(name, str) and _PLAIN_BRANCH.fullmatch(name) and not name.endswith(".lock"):
        return name
    return None

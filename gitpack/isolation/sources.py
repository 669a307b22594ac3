"""Where a snapshot's files come from: the repository's object database, or a portable archive's copy.

Both implement :class:`SourceTree`, so materialisation and the private
namespaces never care which.  Reads of the repository go through its
long-lived object reader, many objects per round trip.  :class:`FilteredSource`
wraps either so that files behind a clean/smudge filter (git-lfs, ``filter=``)
come out as a checkout writes them, never in their stored, clean form.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from ..errors import FilterError
from ..git import runner

_SYMLINK_MODE = "120000"


class SourceTree(Protocol):
    """Where a snapshot's files come from: a git repository, or an archive's embedded copy."""

    key: str

    def list_dir(self, rel: str) -> dict[str, tuple[str, str]] | None:
        """``{name: (kind, ref)}`` for a directory ('blob', 'link' or 'tree'), or None if absent."""

    def read(self, ref: str) -> bytes:
        """The bytes of one blob."""


class GitSourceTree:
    """A tree read through the repository's long-lived ``git cat-file --batch``."""

    def __init__(self, repo, tree: str):
        self.repo = repo
        self.key = tree
        self._trees: dict[str, str | None] = {"": tree}  # directory -> its tree's sha

    def _tree_of(self, rel: str) -> str | None:
        if rel in self._trees:
            return self._trees[rel]
        parent, _, name = rel.rpartition("/")
        parent_sha = self._tree_of(parent)
        sha = None
        if parent_sha is not None:
            entry = next((e for e in self.repo.read_tree(parent_sha) if e.name == name), None)
            sha = entry.sha if entry is not None and entry.kind == "tree" else None
        self._trees[rel] = sha
        return sha

    def list_dir(self, rel: str) -> dict[str, tuple[str, str]] | None:
        sha = self._tree_of("/".join(p for p in rel.split("/") if p))
        if sha is None:
            return None
        out = {}
        for e in self.repo.read_tree(sha):
            if e.kind == "commit":
                continue  # submodule: not part of the snapshot's own code
            kind = "tree" if e.kind == "tree" else "link" if e.mode == _SYMLINK_MODE else "blob"
            out[e.name] = (kind, e.sha)
        return out

    def read(self, ref: str) -> bytes:
        return self.repo.read_object(ref)[1]

    def read_many(self, refs: list[str]) -> list[bytes]:
        """Blobs' bytes, and subtrees remembered for :meth:`list_dir`, all in one request to git."""
        wanted = [r for r in refs if not self.repo.knows_tree(r)]
        out: dict[str, bytes] = {}
        for ref, (kind, data) in zip(wanted, self.repo.read_objects(wanted), strict=True):
            if kind == "tree":
                self.repo.remember_tree(ref, data)
            out[ref] = data
        return [out.get(r, b"") for r in refs]


FILTERED = "filtered:"  # the ref FilteredSource gives a file that goes through a filter (never a blob id)
_SYSTEM_ATTRIBUTES = Path("/etc/gitattributes")
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


class FilteredSource:
    """Any :class:`SourceTree`, with its files as a checkout writes them: through git's clean/smudge filters.

    A snapshot holds what ``git add`` stores, the *clean* form: an LFS pointer, rot13 text.  A checkout runs
    the smudge side (``filter.<driver>.smudge``/``.process``, git-lfs fetching objects it lacks), and so does
    this, through git itself (``cat-file --batch --filters``) with the attributes the *snapshot's own*
    ``.gitattributes`` files give (written into a scratch work tree, so the user's current checkout does not
    decide), plus ``info/attributes`` and the user's and system's.  Where the real content cannot be produced
    (no such driver configured, the filter fails, an LFS object nobody can provide, a portable archive outside
    a clone) it raises :class:`FilterError` naming the file and the filter; the clean form is never handed back
    in its place.  Nothing is spent when no attribute anywhere mentions a filter.
    """

    def __init__(self, inner: SourceTree, repo=None):
        self.inner = inner
        self.key = inner.key
        self.repo = repo  # where the filters run (None: no repository, so none can run)
        self._dirs: dict[str, dict[str, tuple[str, str]] | None] = {}
        self._filtered: dict[str, tuple[str, str, str]] = {}  # ref -> (blob, path, driver)
        self._outer: str | None = None  # attributes from outside the tree (info/, user, system)
        self._attributes: dict[str, bytes | None] = {}  # directory -> its .gitattributes, read once

    def list_dir(self, rel: str) -> dict[str, tuple[str, str]] | None:
        rel = "/".join(p for p in rel.split("/") if p)
        if rel not in self._dirs:
            entries = self.inner.list_dir(rel)
            drivers = self._drivers(rel, entries) if entries else {}
            if drivers:
                entries = dict(entries or {})
                for name, driver in drivers.items():
                    ref = f"{FILTERED}{len(self._filtered)}:{entries[name][1]}"
                    self._filtered[ref] = (entries[name][1], f"{rel}/{name}" if rel else name, driver)
                    entries[name] = ("blob", ref)
            self._dirs[rel] = entries
        return self._dirs[rel]

    def read(self, ref: str) -> bytes:
        return self.read_many([ref])[0]

    def read_many(self, refs: list[str]) -> list[bytes]:
        plain = [r for r in refs if r not in self._filtered]
        many = getattr(self.inner, "read_many", None)
        found = dict(zip(plain, many(plain) if many else [self.inner.read(r) for r in plain], strict=True))
        found.update(self._smudge([r for r in refs if r in self._filtered]))
        return [found[r] for r in refs]

    # ---------------------------------------------------------------- which files
    def _drivers(self, rel: str, entries: dict[str, tuple[str, str]]) -> dict[str, str]:
        """``{name: filter driver}`` of the files in directory *rel* that a filter attribute applies to."""
        attribute_files = self._attribute_files(rel)
        if "filter" not in self._outer_attributes() and not any(b"filter" in d for d in attribute_files.values()):
            return {}
        names = [n for n, (kind, _) in entries.items() if kind == "blob" and "\n" not in n]
        if not names:
            return {}
        with self._scratch(attribute_files) as (git_dir, work):
            paths = [f"{rel}/{n}" if rel else n for n in names]
            out = runner.run(["--git-dir", str(git_dir), "--work-tree", str(work), "check-attr", "-z", "--stdin",
                              "filter"], cwd=work, input=b"".join(os.fsencode(p) + b"\0" for p in paths)).stdout
        fields = out.split(b"\0")
        drivers = {}
        for i in range(0, len(fields) - 2, 3):
            path, value = os.fsdecode(fields[i]), os.fsdecode(fields[i + 2])
            if value not in ("unspecified", "unset", "set"):
                drivers[path.rpartition("/")[2]] = value
        return drivers

    def _attribute_files(self, rel: str) -> dict[str, bytes]:
        """The snapshot's ``.gitattributes`` that apply in *rel*: its own and its parents', by directory."""
        found = {}
        parts = rel.split("/") if rel else []
        for depth in range(len(parts) + 1):
            directory = "/".join(parts[:depth])
            if directory not in self._attributes:  # every directory below asks for its parents' again
                entry = (self.inner.list_dir(directory) or {}).get(".gitattributes")
                self._attributes[directory] = self.inner.read(entry[1]) if entry and entry[0] == "blob" else None
            data = self._attributes[directory]
            if data is not None:
                found[directory] = data
        return found

    def _outer_attributes(self) -> str:
        if self._outer is None:
            candidates = [_SYSTEM_ATTRIBUTES]
            if self.repo is not None:
                candidates.append(self.repo.common_dir / "info" / "attributes")
            configured = self.repo.config("core.attributesfile") if self.repo is not None else None
            xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
            candidates.append(Path(os.path.expanduser(configured)) if configured else Path(xdg) / "git" / "attributes")
            texts = []
            for candidate in candidates:
                try:
                    texts.append(candidate.read_text(errors="replace"))
                except OSError:
                    pass
            self._outer = "\n".join(texts)
        return self._outer

    @contextmanager
    def _scratch(self, attribute_files: dict[str, bytes]) -> Iterator[tuple[Path, Path]]:
        """A work tree holding only the snapshot's attribute files, and the git dir to run git in with it."""
        with tempfile.TemporaryDirectory(prefix="gitpack-attributes-") as temp:
            work = Path(temp) / "work"
            for directory, data in attribute_files.items():
                (work / directory).mkdir(parents=True, exist_ok=True)
                (work / directory / ".gitattributes").write_bytes(data)
            work.mkdir(exist_ok=True)
            if self.repo is not None:
                yield self.repo.git_dir, work
            else:  # no repository: an empty one, for the user's and the system's attributes and configuration
                runner.run(["init", "-q", "--bare", str(Path(temp) / "git")], cwd=temp)
                yield Path(temp) / "git", work

    # ---------------------------------------------------------------- the real content
    def _smudge(self, refs: list[str]) -> dict[str, bytes]:
        if not refs:
            return {}
        wanted = [self._filtered[r] for r in refs]
        for _, path, driver in wanted:
            self._require_driver(path, driver)
        drivers = sorted({driver for _, _, driver in wanted})
        required = [arg for d in drivers for arg in ("-c", f"filter.{d}.required=true")]
        directories = {path.rpartition("/")[0] for _, path, _ in wanted}
        attribute_files: dict[str, bytes] = {}
        for directory in directories:
            attribute_files.update(self._attribute_files(directory))
        assert self.repo is not None  # _require_driver refused otherwise
        out = {}
        with self._scratch(attribute_files) as (git_dir, work):
            # One `cat-file --filters` per file: `--batch --filters` (git 2.39) heads filtered content with the
            # stored size, so its output cannot be split.  Filtered files are few.
            for ref, (blob, path, driver) in zip(refs, wanted, strict=True):
                proc = runner.run(["--git-dir", str(git_dir), "--work-tree", str(work), *required, "cat-file",
                                   "--filters", f"--path={path}", blob], cwd=work, check=False,
                                  env={"GIT_LFS_SKIP_SMUDGE": "0"})
                reason = runner.failure_detail(proc.stderr.decode("utf-8", "replace"))
                pointer = proc.returncode == 0 and driver == "lfs" and proc.stdout.startswith(_LFS_POINTER)
                if pointer:
                    reason = "git-lfs handed back its pointer"
                if pointer or proc.returncode != 0:
                    raise FilterError(f"cannot produce {path} of snapshot {self.key[:12]} through the {driver!r} "
                                      f"filter ({reason}); {_advice(driver)}")
                out[ref] = proc.stdout
        return out

    def _require_driver(self, path: str, driver: str) -> None:
        if self.repo is None:
            raise FilterError(
                f"{path} of snapshot {self.key[:12]} is stored through the {driver!r} filter, and a portable archive "
                "holds only its clean form; load it in a clone that has the snapshot commit, with the filter set up"
            )
        if not (self.repo.config(f"filter.{driver}.smudge") or self.repo.config(f"filter.{driver}.process")):
            raise FilterError(
                f"{path} of snapshot {self.key[:12]} is stored through the {driver!r} filter, which is not configured "
                f"here (no filter.{driver}.smudge or .process), so its real content cannot be produced; "
                f"{_advice(driver)}"
            )


def _advice(driver: str) -> str:
    if driver == "lfs":
        return "install git-lfs (`git lfs install`) and make the object reachable (`git lfs fetch`), then load again"
    return f"set up the filter (git config filter.{driver}.smudge) as for a checkout, then load again"

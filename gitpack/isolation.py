"""Isolated import: run a snapshot's modules under a private name, beside everything else.

A snapshot with tree ``T`` gets the package ``__gitpack_<T[:12]>__``; its module
``mypkg.model`` lives in ``sys.modules`` as ``__gitpack_<T[:12]>__.mypkg.model``,
so the user's own ``mypkg`` is never replaced or read, and two snapshots run side
by side.  Snapshot modules get a private ``__builtins__`` whose ``__import__``
sends absolute imports of the snapshot's top-level names (at import time and
lazily inside functions) back into the same snapshot; relative imports work
unchanged because ``__package__`` already carries the private prefix.  Third-party
and stdlib imports resolve normally.

Files are materialised lazily, one directory at a time, into a cache keyed by
tree (``$GITPACK_CACHE``, else ``$XDG_CACHE_HOME/gitpack``, else
``~/.cache/gitpack``): only the directories that hold a module actually
imported, each together with its data files and data-only subdirectories, so
``__file__``-relative reads work.  Directories that imports only pass through
(the import root, a package's parents) are listed, never written.  A listing
written last marks a directory complete, so a cache hit costs a stat and one
small read per directory, and no git process.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Protocol

from .errors import GitpackError
from .gitrepo import parse_tree

PREFIX_FORMAT = "__gitpack_{}__"
LISTING = ".gitpack-dir.json"  # written last: the directory's files are all there
NAMES = ".gitpack-names.json"  # only the directory's names, for resolving imports through it
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
        wanted = [r for r in refs if r not in self.repo._tree_cache]
        out: dict[str, bytes] = {}
        for ref, (kind, data) in zip(wanted, self.repo.read_objects(wanted)):
            if kind == "tree":
                self.repo._tree_cache[ref] = parse_tree(data)
            out[ref] = data
        return [out.get(r, b"") for r in refs]


def cache_root() -> Path:
    env = os.environ.get("GITPACK_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gitpack"


def _safe_name(name: str) -> bool:
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
            and name.lower() != ".git")


class Materializer:
    """Writes a tree's directories into the cache on demand; safe against concurrent loads."""

    def __init__(self, source: SourceTree, root: Path | None = None):
        self.source = source
        self.root = (root or cache_root() / "trees") / source.key
        self._listings: dict[str, dict | None] = {}
        self._names: dict[str, dict | None] = {}
        self._prefetched: dict[str, bytes] = {}  # blob -> bytes, for the directory being written
        self._lock = threading.RLock()

    def names(self, rel: str) -> dict | None:
        """``{"files": [...], "dirs": [...]}`` of a directory, *without* writing its files.

        Resolving an import walks directories (the import root, a package's
        parents) whose files the model may never use; they are listed, not
        materialised.  From memory, else from the directory's marker in the
        cache (a stat and a small read), else from the tree, and then kept in a
        names marker so that the next process needs no git at all.
        """
        with self._lock:
            if rel in self._names:
                return self._names[rel]
            found = _read_marker(self.path(rel) / LISTING) or _read_marker(self.path(rel) / NAMES)
            if found is None:
                entries = self.source.list_dir(rel)
                if entries is not None:
                    found = {
                        "files": sorted(n for n, (kind, _) in entries.items() if kind != "tree"),
                        "dirs": sorted(n for n, (kind, _) in entries.items() if kind == "tree"),
                    }
                    target = self.path(rel)
                    target.mkdir(parents=True, exist_ok=True)
                    _atomic_write(target / NAMES, json.dumps(found).encode())
            self._names[rel] = found
            return found

    def path(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def listing(self, rel: str) -> dict | None:
        """``{"files": [...], "dirs": [...]}`` of a materialised directory, materialising it first."""
        with self._lock:
            if rel in self._listings:
                return self._listings[rel]
            listing = _read_marker(self.path(rel) / LISTING)
            if listing is None:
                listing = self._materialise(rel)
            self._listings[rel] = listing
            return listing

    def _materialise(self, rel: str) -> dict | None:
        entries = self.source.list_dir(rel)
        if entries is None:
            return None
        target = self.path(rel)
        target.mkdir(parents=True, exist_ok=True)
        files, dirs = [], []
        for name in entries:
            if not _safe_name(name) or name in (LISTING, NAMES):
                raise GitpackError(f"snapshot {self.source.key[:12]} has an unsafe path {rel}/{name!r}; refusing to materialise it")
        # Ask for the whole directory at once (files and subtrees): one round trip to git, not one per entry.
        read_many = getattr(self.source, "read_many", None)
        if read_many is not None:
            refs = [ref for kind, ref in entries.values() if kind != "link"]
            self._prefetched = dict(zip(refs, read_many(refs)))
        for name, (kind, ref) in sorted(entries.items()):
            if kind == "tree":
                dirs.append(name)
                child = f"{rel}/{name}" if rel else name
                sub = self.source.list_dir(child)
                if sub is not None and not any(n.endswith(".py") for n in sub):
                    self.listing(child)  # data-only directory: materialise with its parent
            else:
                files.append(name)
                self._write_entry(target, name, kind, ref, rel)
        self._prefetched = {}
        listing = {"files": files, "dirs": dirs}
        _atomic_write(target / LISTING, json.dumps(listing).encode())
        return listing

    def _write_entry(self, target: Path, name: str, kind: str, ref: str, rel: str) -> None:
        dest = target / name
        if kind == "link":
            link = self.source.read(ref).decode("utf-8", "surrogateescape")
            if not self._link_stays_inside(rel, link):
                return  # a link leading outside the snapshot is never materialised
            if not os.path.lexists(dest):
                try:
                    os.symlink(link, dest)
                except FileExistsError:
                    pass
            return
        data = self._prefetched.get(ref)
        _write_file(dest, data if data is not None else self.source.read(ref))

    def _link_stays_inside(self, rel: str, link: str, max_hops: int = 40) -> bool:
        """Resolve *link* (found in directory *rel*) through the snapshot's own tree, as the OS will.

        A lexical check is not enough: with ``d -> .`` in the tree, the link
        ``d/d/../../x`` normalises to ``x`` but the OS resolves it two levels
        *above* the snapshot (each ``d`` stays put, each ``..`` climbs).  So
        links met on the way are followed, and every ``..`` must stay inside.
        """
        if os.path.isabs(link) or "\0" in link:
            return False
        parts = [p for p in rel.split("/") if p]
        todo = link.split("/")
        hops = 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    return False
                parts.pop()
                continue
            entry = (self.source.list_dir("/".join(parts)) or {}).get(part)
            if entry is not None and entry[0] == "link":
                hops += 1
                if hops > max_hops:
                    return False
                link = self.source.read(entry[1]).decode("utf-8", "surrogateescape")
                if os.path.isabs(link) or "\0" in link:
                    return False
                todo = link.split("/") + todo
                continue
            parts.append(part)
        return True


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_file(dest: Path, data: bytes) -> None:
    """Write one snapshot file in place: no temp file and rename per file.

    Creating files is what materialisation costs, so each file is created
    once.  That is safe because nothing trusts a directory before its listing,
    written atomically after all of its files, exists; a crash leaves no
    listing, and the next load writes the directory again.  Concurrent
    writers write the same bytes at the same offsets (no truncation before
    writing), so they agree.  A symlink planted at *dest* is not followed.
    """
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], done)
        os.ftruncate(fd, len(view))
    finally:
        os.close(fd)


def _atomic_write(dest: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".gitpack-tmp-", dir=str(dest.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class SnapshotNamespace:
    """One snapshot's private import namespace."""

    def __init__(self, source: SourceTree, roots: list[str], known: dict[str, str] | None = None, cache: Path | None = None):
        self.key = source.key
        self.prefix = PREFIX_FORMAT.format(source.key[:12])
        self.roots = roots or [""]
        self.files = Materializer(source, cache)
        self.known = dict(known or {})  # canonical module name -> root it was found under at save time
        # Top-level names the snapshot may take over from installed packages: the ones the saved code itself
        # imported from the repository (a snapshot adding a root torch.py must not capture `import torch`).
        self.shadows_ok: set[str] = {name.partition(".")[0] for name in self.known}
        self.trusted = False  # a trusted load: any top-level name is the snapshot's if it has it
        self._origins: dict[str, tuple[str, str]] = {}  # private module name -> (directory in the tree, file name)
        self._tops: dict[str, str | None] = {}
        self._shadow_checked: set[str] = set()
        self._lock = threading.RLock()
        self.builtins = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import
        root_module = types.ModuleType(self.prefix, f"gitpack snapshot {self.key}")
        root_module.__path__ = []
        root_module.__package__ = self.prefix
        sys.modules[self.prefix] = root_module

    # -------------------------------------------------------------- name logic
    def root_of_top(self, top: str) -> str | None:
        """The import root holding top-level module or package *top*, or None if it is not snapshot code."""
        with self._lock:
            if top in self._tops:
                return self._tops[top]
            found = None
            preferred = [r for n, r in self.known.items() if n.partition(".")[0] == top]
            for root in preferred + [r for r in self.roots if r not in preferred]:
                listing = self.files.names(root)
                if listing is None:
                    continue
                if top + ".py" in listing["files"]:
                    found = root
                    break
                if top in listing["dirs"]:
                    sub = self.files.names(_join(root, top))
                    namespace_known = any(n.partition(".")[0] == top for n in self.known)
                    if sub and ("__init__.py" in sub["files"] or namespace_known or any(f.endswith(".py") for f in sub["files"])):
                        found = root
                        break
            self._tops[top] = found
            return found

    def owns(self, name: str) -> bool:
        return self.root_of_top(name.partition(".")[0]) is not None

    def private_name(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def import_module(self, name: str) -> types.ModuleType:
        """Import snapshot module *name* (its canonical, unprefixed name)."""
        if not self.owns(name):
            raise GitpackError(f"module {name!r} is not in snapshot {self.key[:12]}; the archive and the commit disagree")
        import importlib

        return importlib.import_module(self.private_name(name))

    def holds(self, module: types.ModuleType) -> bool:
        """Whether *module* is one of this snapshot's imported modules (the very object in ``sys.modules``)."""
        name = getattr(module, "__name__", None)
        return isinstance(name, str) and name.startswith(self.prefix + ".") and sys.modules.get(name) is module \
            and name in self._origins

    def source_of(self, private_name: str) -> tuple[str, bytes, str]:
        """(blob id, source bytes, file name for tracebacks) of an imported snapshot module, read from the git
        tree by its path there: never through the module's ``__file__`` or anything else an object can change."""
        directory, filename = self._origins[private_name]
        entry = (self.files.source.list_dir(directory) or {}).get(filename)
        if entry is None or entry[0] != "blob":
            raise GitpackError(f"{_join(directory, filename)} is not a file of snapshot {self.key[:12]}")
        return entry[1], self.files.source.read(entry[1]), str(self.files.path(directory) / filename)

    def _check_shadowing(self, top: str) -> None:
        """Refuse a snapshot top-level module that would capture imports of an installed package of that name,
        unless the saved code itself imported it from the repository (or the load is trusted)."""
        if top in self._shadow_checked or self.trusted or top in self.shadows_ok:
            return
        if _installed(top):
            from .errors import PolicyError

            raise PolicyError(
                f"snapshot {self.key[:12]} has a top-level {top!r} that would shadow the installed package {top!r} "
                "(the saved code did not import it from the repository); review the snapshot (`gitpack diff`) and "
                "load with --trust only if you trust it"
            )
        self._shadow_checked.add(top)

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name and self.owns(name):
            self._check_shadowing(name.partition(".")[0])
            module = _original_import(self.private_name(name), globals, locals, fromlist, 0)
            if not fromlist:
                return sys.modules[self.private_name(name.partition(".")[0])]
            return module
        return _original_import(name, globals, locals, fromlist, level)

    # ------------------------------------------------------------- finder part
    def find_spec(self, fullname: str):
        rel_name = fullname[len(self.prefix) + 1 :]
        parts = rel_name.split(".")
        root = self.root_of_top(parts[0])
        if root is None:
            return None
        directory = root
        for part in parts[:-1]:
            directory = _join(directory, part)
        # Only the directory that holds the module (or the package's own) is
        # materialised; the ones above it are only listed.
        listing = self.files.names(directory)
        if listing is None:
            return None
        last = parts[-1]
        if last in listing["dirs"]:
            pkg_dir = _join(directory, last)
            sub = self.files.listing(pkg_dir) or {"files": []}
            location = str(self.files.path(pkg_dir))
            if "__init__.py" in sub["files"]:
                self._origins[fullname] = (pkg_dir, "__init__.py")
                init = os.path.join(location, "__init__.py")
                loader = _SnapshotLoader(fullname, init, self)
                return importlib.util.spec_from_file_location(
                    fullname, init, loader=loader, submodule_search_locations=[location]
                )
            spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
            spec.submodule_search_locations = [location]
            return spec
        if last + ".py" in listing["files"]:
            self._origins[fullname] = (directory, last + ".py")
            self.files.listing(directory)
            path = str(self.files.path(directory) / (last + ".py"))
            return importlib.util.spec_from_file_location(fullname, path, loader=_SnapshotLoader(fullname, path, self))
        return None


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


_original_import = builtins.__import__


class _SnapshotLoader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname: str, path: str, namespace: SnapshotNamespace):
        super().__init__(fullname, path)
        self.namespace = namespace

    def exec_module(self, module: types.ModuleType) -> None:
        module.__builtins__ = self.namespace.builtins
        super().exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    """One finder on ``sys.meta_path`` for every snapshot namespace."""

    def __init__(self):
        self.namespaces: dict[str, SnapshotNamespace] = {}

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith("__gitpack_"):
            return None
        prefix, dot, _ = fullname.partition(".")
        ns = self.namespaces.get(prefix)
        if ns is None or not dot:
            return None
        return ns.find_spec(fullname)


_finder = _Finder()
_registry_lock = threading.Lock()


def namespace_for(source: SourceTree, roots: list[str], known: dict[str, str] | None = None, *,
                  imported: list[str] | None = None, trusted: bool = False) -> SnapshotNamespace:
    """The namespace of *source*'s tree, created once per process and reused.

    *imported*: top-level repo modules the saved code imported (may shadow installed packages);
    *trusted*: the caller trusts this tree's code (then any snapshot name may shadow)."""
    with _registry_lock:
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        prefix = PREFIX_FORMAT.format(source.key[:12])
        ns = _finder.namespaces.get(prefix)
        if ns is None:
            ns = SnapshotNamespace(source, roots, known)
            _finder.namespaces[prefix] = ns
        else:
            for name, root in (known or {}).items():
                ns.known.setdefault(name, root)
                ns.shadows_ok.add(name.partition(".")[0])
            for root in roots:
                if root not in ns.roots:
                    ns.roots.append(root)
        ns.shadows_ok.update(imported or ())
        ns.trusted = ns.trusted or trusted
        return ns


def shadowing(source: SourceTree, roots: list[str], allowed: set[str]) -> list[str]:
    """Top-level modules and packages of *source* (under its import *roots*) that would shadow an installed
    package of the same name and are not in *allowed*: what a load refuses when snapshot code imports them."""
    found = []
    for root in roots or [""]:
        listing = source.list_dir(root) or {}
        for name, (kind, _) in listing.items():
            top = name[:-3] if kind != "tree" and name.endswith(".py") else name if kind == "tree" else None
            if top and top.isidentifier() and top not in allowed and top not in found and _installed(top):
                found.append(top)
    return sorted(found)


def _installed(top: str) -> bool:
    """Whether *top* is a built-in module or one installed in the standard library or site-packages."""
    if top in sys.builtin_module_names:
        return True
    from .capturing import library_dirs

    dirs = library_dirs()
    paths = [p for p in sys.path if p and (os.path.realpath(p).rstrip(os.sep) + os.sep).startswith(dirs)]
    try:
        return importlib.machinery.PathFinder.find_spec(top, paths) is not None
    except (ImportError, ValueError):
        return False


def canonical_module_name(name: str) -> str:
    """Strip a snapshot prefix: ``__gitpack_abc__.pkg.mod`` -> ``pkg.mod``."""
    if name.startswith("__gitpack_"):
        return name.partition(".")[2]
    return name

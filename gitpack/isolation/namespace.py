"""One snapshot's private import namespace: its modules run beside the user's, importing each other.

Snapshot modules get a private ``__builtins__`` whose ``__import__`` sends
absolute imports of the snapshot's top-level names (at import time and lazily
inside functions) back into the same snapshot; relative imports work
unchanged because ``__package__`` already carries the private prefix
(:mod:`.mangling`).  Third-party and stdlib imports resolve normally, and a
snapshot module may not capture the import of an installed package of the
same name unless the load is trusted.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path

from ..errors import GitpackError
from .mangling import prefix_for
from .materialise import Materializer
from .sources import SourceTree


class SnapshotNamespace:
    """One snapshot's private import namespace."""

    def __init__(
        self, source: SourceTree, roots: list[str], known: dict[str, str] | None = None, cache: Path | None = None
    ):
        self.key = source.key
        self.prefix = prefix_for(source.key)
        self.roots = roots or [""]
        self.files = Materializer(source, cache)
        self.known = dict(known or {})  # canonical module name -> root it was found under at save time
        self.trusted = False  # a trusted load: a snapshot module may take over the name of an installed package
        self.scripts: set[str] = set()  # modules made of a script or notebook: only their definitions run
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
            return _root_of_top(self.files.names, self.roots, self.known, top, self._tops)

    def source_for(self, name: str) -> bytes | None:
        """The source of snapshot module *name* (canonical, unprefixed) as the import would find it, from the
        git tree, without importing or materialising anything; None when there is no such module."""
        found = locate(self.files.names, self.roots, self.known, name, self._tops)
        if found is None:
            return None
        entry = (self.files.source.list_dir(found[0]) or {}).get(found[1])
        return self.files.source.read(entry[1]) if entry is not None and entry[0] == "blob" else None

    def owns(self, name: str) -> bool:
        return self.root_of_top(name.partition(".")[0]) is not None

    def private_name(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def import_module(self, name: str) -> types.ModuleType:
        """Import snapshot module *name* (its canonical, unprefixed name)."""
        if not self.owns(name):
            raise GitpackError(
                f"module {name!r} is not in snapshot {self.key[:12]}; the archive and the commit disagree"
            )
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
        if top in self._shadow_checked or self.trusted:
            return
        if installed_elsewhere(top):
            from ..errors import PolicyError

            raise PolicyError(
                f"snapshot {self.key[:12]} has a top-level {top!r} that would shadow the installed package {top!r}; "
                "review the snapshot (`gitpack diff`) and load with --trust only if you trust it"
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


def locate(names: Callable[[str], dict | None], roots: list[str], known: dict[str, str], name: str,
           tops: dict[str, str | None] | None = None) -> tuple[str, str] | None:
    """Where snapshot module *name* lives, as the import system will find it: ``(directory, file)``, or None.

    *names* lists a directory of the tree (``{"files": [...], "dirs": [...]}``); nothing is imported or
    written.  The load's import (:meth:`SnapshotNamespace.find_spec`) and the gate's source checks use
    this one function, so what is checked is what gets imported.
    """
    parts = name.split(".")
    root = _root_of_top(names, roots, known, parts[0], tops)
    if root is None:
        return None
    directory = root
    for part in parts[:-1]:
        directory = _join(directory, part)
    listing = names(directory)
    if listing is None:
        return None
    last = parts[-1]
    if last in listing["dirs"]:
        sub = names(_join(directory, last)) or {"files": []}
        return (_join(directory, last), "__init__.py") if "__init__.py" in sub["files"] else None
    if last + ".py" in listing["files"]:
        return directory, last + ".py"
    return None


def _root_of_top(names: Callable[[str], dict | None], roots: list[str], known: dict[str, str], top: str,
                 tops: dict[str, str | None] | None) -> str | None:
    if tops is not None and top in tops:
        return tops[top]
    found = None
    preferred = [r for n, r in known.items() if n.partition(".")[0] == top]
    for root in preferred + [r for r in roots if r not in preferred]:
        listing = names(root)
        if listing is None:
            continue
        if top + ".py" in listing["files"]:
            found = root
            break
        if top in listing["dirs"]:
            sub = names(_join(root, top))
            namespace_known = any(n.partition(".")[0] == top for n in known)
            if sub and ("__init__.py" in sub["files"] or namespace_known
                        or any(f.endswith(".py") for f in sub["files"])):
                found = root
                break
    if tops is not None:
        tops[top] = found
    return found


def tree_names(source: SourceTree) -> Callable[[str], dict | None]:
    """A :func:`locate` lister reading *source* directly (git reads only: for ``scan``, which writes nothing)."""
    def names(rel: str) -> dict | None:
        entries = source.list_dir(rel)
        if entries is None:
            return None
        return {"files": sorted(n for n, (k, _) in entries.items() if k != "tree"),
                "dirs": sorted(n for n, (k, _) in entries.items() if k == "tree")}

    return names


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


_original_import = builtins.__import__


class _SnapshotLoader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname: str, path: str, namespace: SnapshotNamespace):
        super().__init__(fullname, path)
        self.namespace = namespace

    def exec_module(self, module: types.ModuleType) -> None:
        # The module's globals are its __dict__: the builtins its code sees (typeshed has no ModuleType.__builtins__).
        module.__dict__["__builtins__"] = self.namespace.builtins
        if self.name.partition(".")[2] in self.namespace.scripts:
            from .scripts import run_definitions

            run_definitions(module, self.get_data(self.path), self.path)
            return
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
                  trusted: bool = False, scripts: list[str] | None = None) -> SnapshotNamespace:
    """The namespace of *source*'s tree, created once per process and reused.

    *trusted*: the caller trusts this tree's code (then a snapshot module may shadow an installed package)."""
    with _registry_lock:
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        prefix = prefix_for(source.key)
        ns = _finder.namespaces.get(prefix)
        if ns is None:
            ns = SnapshotNamespace(source, roots, known)
            _finder.namespaces[prefix] = ns
        else:
            # The same tree (same content), read through this load's repository, which is open: the one an
            # earlier load lent was closed when that load returned, and reading through it would start a
            # git process nobody closes.
            ns.files.source = source
            for name, root in (known or {}).items():
                ns.known.setdefault(name, root)
            for root in roots:
                if root not in ns.roots:
                    ns.roots.append(root)
        ns.trusted = ns.trusted or trusted
        ns.scripts.update(scripts or ())
        return ns


def shadowing(source: SourceTree, roots: list[str]) -> list[str]:
    """Top-level modules and packages of *source* (under its import *roots*) that would shadow a package
    installed from elsewhere: what a load refuses (without ``--trust``) when snapshot code imports them."""
    found = []
    for root in roots or [""]:
        listing = source.list_dir(root) or {}
        for name, (kind, _) in listing.items():
            top = name[:-3] if kind != "tree" and name.endswith(".py") else name if kind == "tree" else None
            if top and top.isidentifier() and top not in found and installed_elsewhere(top):
                found.append(top)
    return sorted(found)


def installed_elsewhere(top: str) -> bool:
    """Whether *top* is a built-in or standard-library module, or a package installed from somewhere other than
    a local project directory (PyPI, a wheel).

    Derived from this environment, never from the archive: a snapshot's ``torch.py`` must not capture
    ``import torch`` whatever its manifest claims.  The user's own project installed with ``pip install .``
    (its ``direct_url.json`` names a local directory) is not "elsewhere": its snapshot copy may stand in.
    """
    if top in sys.builtin_module_names or top in getattr(sys, "stdlib_module_names", ()):
        return True
    from ..capturing.records import library_dirs

    dirs = library_dirs()
    paths = [p for p in sys.path if p and (os.path.realpath(p).rstrip(os.sep) + os.sep).startswith(dirs)]
    try:
        if importlib.machinery.PathFinder.find_spec(top, paths) is None:
            return False
    except (ImportError, ValueError):
        return False
    return not _from_local_directory(top)


_local_cache: dict[str, bool] = {}


def _from_local_directory(top: str) -> bool:
    """Whether every distribution providing *top* was installed from a local directory (PEP 610)."""
    if top not in _local_cache:
        import json
        from importlib import metadata

        dists = metadata.packages_distributions().get(top, [])
        local = bool(dists)
        for dist in dists:
            try:
                info = json.loads(metadata.distribution(dist).read_text("direct_url.json") or "{}")
            except (ValueError, metadata.PackageNotFoundError):
                info = {}
            url = info.get("url", "") if isinstance(info, dict) else ""
            local = local and isinstance(info, dict) and ("dir_info" in info or url.startswith("file:"))
        _local_cache[top] = local
    return _local_cache[top]

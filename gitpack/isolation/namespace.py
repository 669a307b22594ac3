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
from pathlib import Path

from ..errors import GitpackError
from .mangling import prefix_for
from .materialise import Materializer
from .sources import SourceTree


class SnapshotNamespace:
    """One snapshot's private import namespace."""

    def __init__(self, source: SourceTree, roots: list[str], known: dict[str, str] | None = None, cache: Path | None = None):
        self.key = source.key
        self.prefix = prefix_for(source.key)
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
            from ..errors import PolicyError

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
        prefix = prefix_for(source.key)
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
    from ..capturing.records import library_dirs

    dirs = library_dirs()
    paths = [p for p in sys.path if p and (os.path.realpath(p).rstrip(os.sep) + os.sep).startswith(dirs)]
    try:
        return importlib.machinery.PathFinder.find_spec(top, paths) is not None
    except (ImportError, ValueError):
        return False



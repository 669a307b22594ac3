"""Which modules are repository code, and their canonical name inside the snapshot.

A class lives in the repository when its module's file is a file of the
snapshot (in the working tree and not ignored); ``__main__`` gets the name its
file would be imported under, from the import roots, and is marked a *script*
(a load runs only its definitions).  Code typed into a notebook becomes a
module of its own (:mod:`.notebook`).  A module imported from outside the
working tree (site-packages, another clone) is the repository's when its file
is byte-identical to the working tree's copy, and is pinned from there;
otherwise it is third-party, and the save says loudly that the repository's
code of that name is not what ran.  A ``.venv`` inside the repo is third-party.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import PicklingError
from ..isolation import cache_root, canonical_module_name
from .notebook import ROOT as NOTEBOOK_ROOT
from .notebook import Notebook, from_session

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ModuleMap:
    """Which modules are repository code, and their canonical name inside the snapshot."""

    def __init__(self, repo_root: Path, in_snapshot: Callable[[str], bool], left_out: dict[str, str] | None = None):
        self.repo_root = Path(os.path.realpath(repo_root))
        self._in_snapshot = in_snapshot
        self._left_out = left_out or {}  # repo-relative path -> why the snapshot left it out
        self._cache_trees = Path(os.path.realpath(cache_root() / "trees"))
        self.roots = self._import_roots()
        self._names: dict[str, str | None] = {}
        self.used: dict[str, dict[str, str]] = {}  # canonical name -> {"path", "root"}
        self.by_value: list[str] = []
        self.scripts: set[str] = set()  # canonical names of modules made of a script or notebook
        self.unpinned: list[dict[str, str]] = []  # repo modules imported from elsewhere and not identical
        self.extra_files: dict[str, bytes] = {}  # files the snapshot gains (a notebook's cells)
        self.notebook: Notebook | None = None  # the session's cells as a module, once an object needs one
        self._notebook_tried = False

    def _import_roots(self) -> list[str]:
        roots = []
        for entry in sys.path:
            real = Path(os.path.realpath(entry or os.getcwd()))
            rel = self._relative(real)
            if rel is not None and rel not in roots:
                roots.append(rel)
        return roots

    def _relative(self, path: Path) -> str | None:
        """*path* relative to the repository (or to a snapshot tree in the cache), or None when outside both."""
        try:
            rel = path.relative_to(self.repo_root).as_posix()
            return "" if rel == "." else rel
        except ValueError:
            pass
        try:
            rel = path.relative_to(self._cache_trees).as_posix()
        except ValueError:
            return None
        parts = rel.split("/", 1)  # strip the tree key
        return parts[1] if len(parts) > 1 else ""

    def imported_tops(self) -> list[str]:
        """Top-level names of every module imported from this repository so far (``__main__`` as its file's stem).

        Recorded in the manifest (``imported``) for people; a load never takes it as permission to shadow an
        installed package (see :func:`gitpack.isolation.namespace.installed_elsewhere`).
        """
        root = str(self.repo_root) + os.sep
        tops = set()
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if not isinstance(file, str) or not os.path.realpath(file).startswith(root):
                continue
            rel = self._relative(Path(os.path.realpath(file)))
            if rel is None or not rel.endswith(".py") or not self._in_snapshot(rel):
                continue
            tops.add(Path(rel).stem if name in ("__main__", "__mp_main__") else name.partition(".")[0])
        return sorted(t for t in tops if _DOTTED.match(t))

    def canonical(self, module_name: str | None) -> str | None:
        """The snapshot module name for *module_name*, or None when it is not repo code."""
        if not module_name:
            return None
        if module_name in self._names:
            return self._names[module_name]
        name = self._resolve(module_name)
        self._names[module_name] = name
        return name

    def _resolve(self, module_name: str) -> str | None:
        module = sys.modules.get(module_name)
        file = getattr(module, "__file__", None) if module is not None else None
        if not file:
            return self._notebook_module() if module_name in ("__main__", "__mp_main__") else None
        rel = self._relative(Path(os.path.realpath(file)))
        if rel is None and file.endswith(".py"):
            return self._installed_copy(module_name, file)
        if rel is None or not rel.endswith(".py"):
            return None
        if rel in self._left_out:
            raise PicklingError(
                f"the object uses module {canonical_module_name(module_name)} ({rel}), which the snapshot left out "
                f"({self._left_out[rel]}); its code would not be pinned"
            )
        if not self._in_snapshot(rel):
            return None  # ignored by git (a .venv inside the repo, build output): third-party
        wanted = canonical_module_name(module_name)
        root = _root_from_name(rel, wanted)
        if root is not None:
            dotted = wanted
        else:  # __main__, or a module imported under a name its path does not spell: the import roots decide
            candidates = []
            for root in self.roots:
                if root and not rel.startswith(root + "/"):
                    continue
                inner = rel[len(root) + 1 :] if root else rel
                dotted = inner[:-3].replace("/", ".").removesuffix(".__init__")
                if dotted != "__init__":
                    candidates.append((dotted, root))
            if not candidates:
                parent = Path(rel).parent.as_posix()
                candidates.append((Path(rel).stem, "" if parent == "." else parent))
            dotted, root = candidates[0]
        if root not in self.roots:
            self.roots.append(root)
        self.used[dotted] = {"path": rel, "root": root}
        if module_name in ("__main__", "__mp_main__"):
            self.scripts.add(dotted)
        return dotted

    def _notebook_module(self) -> str | None:
        """The session's notebook module (see :mod:`.notebook`), made once; None outside IPython."""
        if not self._notebook_tried:
            self._notebook_tried = True
            self.notebook = from_session()
            if self.notebook is not None:
                if self.notebook.path:
                    inside = self._relative(Path(os.path.realpath(self.notebook.path)))
                    self.notebook.path = inside if inside else self.notebook.path
                self.extra_files[self.notebook.rel] = self.notebook.source
                self.used[self.notebook.name] = {"path": self.notebook.rel, "root": NOTEBOOK_ROOT}
                self.scripts.add(self.notebook.name)
                if NOTEBOOK_ROOT not in self.roots:
                    self.roots.append(NOTEBOOK_ROOT)
        return self.notebook.name if self.notebook is not None else None

    def has_source(self, obj: Any, module: str) -> bool:
        """Whether the snapshot module *module* holds the source of *obj* (always, but for code a notebook
        session made without a cell: ``exec`` of a string)."""
        if self.notebook is not None and module == self.notebook.name:
            return self.notebook.has_source(obj)
        return True

    def line(self, code: Any) -> int:
        """The line of *code* in its snapshot module (a notebook cell's lines move when cells are joined)."""
        if self.notebook is not None:
            return self.notebook.line(code.co_filename, code.co_firstlineno)
        return int(code.co_firstlineno)

    def _installed_copy(self, module_name: str, file: str) -> str | None:
        """A module imported from outside the working tree: the repository's own when its file is byte-identical
        to the working tree's copy (then pinned from there), else third-party, noted in :attr:`unpinned`."""
        tail = module_name.replace(".", "/") + ("/__init__.py" if os.path.basename(file) == "__init__.py" else ".py")
        for root in dict.fromkeys([*self.roots, "", "src"]):
            rel = f"{root}/{tail}" if root else tail
            if not self._in_snapshot(rel):
                continue
            try:
                same = Path(file).read_bytes() == (self.repo_root / rel).read_bytes()
            except OSError:
                same = False
            if not same:
                self.unpinned.append({"module": module_name, "file": file, "repository": rel})
                return None
            if root not in self.roots:
                self.roots.append(root)
            self.used[module_name] = {"path": rel, "root": root}
            return module_name
        return None


def _root_from_name(rel: str, dotted: str) -> str | None:
    """The import root that makes *rel* importable as *dotted* (``src`` for ``mypkg.model`` at
    ``src/mypkg/model.py``), or None when the path does not spell the name.

    This holds however the module was found (a ``sys.path`` entry, or an editable install's
    meta-path finder with no ``sys.path`` entry at all)."""
    if dotted == "__main__" or not dotted:
        return None
    stem = dotted.replace(".", "/")
    for tail in (stem + ".py", stem + "/__init__.py"):
        if rel == tail:
            return ""
        if rel.endswith("/" + tail):
            return rel[: -len(tail) - 1]
    return None



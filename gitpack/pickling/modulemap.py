"""Which modules are repository code, and their canonical name inside the snapshot.

A class lives in the repository when its module's file is a file of the
snapshot (in the working tree and not ignored); ``__main__`` gets the name its
file would be imported under, from the import roots.  A module from outside
the working tree (site-packages, a ``.venv``) is third-party.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import PicklingError
from ..isolation import cache_root, canonical_module_name

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
            return None
        rel = self._relative(Path(os.path.realpath(file)))
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
        return dotted


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



"""Pickling against a snapshot: repo code by reference, data by value, tensors out of band.

At save, every class, function and module that lives in the repository is
written as a *persistent id* naming its canonical module (``__main__`` becomes
the file's real module name) and qualname; lambdas and nested functions become
a reference to their code in the snapshot (module, qualname, line) plus their
closure and defaults as data.  The pickle therefore carries no bytecode for
repo code at all, and at load every such reference is resolved inside the
snapshot's private namespace, never through ``sys.modules``.

Only code defined outside any file (an interactive session) falls back to
dill's by-value pickling; the manifest says so, and loading it needs trust.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
import types
from pathlib import Path
from typing import Any, Callable

import dill

from .errors import GitpackError, PicklingError, PolicyError, UnpicklingError
from .isolation import canonical_module_name, cache_root
from . import columns
from .tensors import TENSOR_KIND, StorageCollector, is_storage, is_tensor

PROTOCOL = 5
_FUNCTION_TYPES = (types.FunctionType,)
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATOMS = frozenset({int, float, str, bytes, bool, type(None), bytearray, complex})
_CONTAINERS = frozenset({tuple, set, frozenset})


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

        A load lets exactly these (and the modules the object uses) take over an import of an installed package
        of the same name: the saved code itself imported them from the repository.
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
                f"({self._left_out[rel]}); its code would not be pinned: raise --size-cap or move what makes it large"
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


def _is_interactive(module_name: str | None) -> bool:
    module = sys.modules.get(module_name or "")
    return module is not None and module_name == "__main__" and not getattr(module, "__file__", None)


def _reachable(obj: Any) -> bool:
    """Whether *obj* is what its module exposes under its qualname."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    target: Any = module
    for part in getattr(obj, "__qualname__", "").split("."):
        if part == "<locals>":
            return False
        target = getattr(target, part, None)
        if target is None:
            return False
    return target is obj


class _NeedsDill(Exception):
    """The C pickler met code only dill can carry (defined in an interactive session): pickle with dill."""


class _References:
    """What both picklers share: which objects become persistent ids, and what the save learns on the way."""

    module_map: ModuleMap
    storages: StorageCollector
    by_value: bool  # this pickler may carry code by value (dill), else it hands such objects over

    def _setup(self, module_map: ModuleMap, storages: StorageCollector) -> None:
        self.module_map = module_map
        self.storages = storages
        self._pids: dict[int, tuple] = {}
        self._keep: list[Any] = []
        self.repo_objects: dict[str, Any] = {}  # "module:qualname" -> class or function used
        self.repo_instances: dict[int, Any] = {}  # id -> instance of a repo class met in the graph

    def persistent_id(self, obj: Any):  # called for every object: the common cases leave at once
        t = type(obj)
        if t in _ATOMS:
            return None
        if t is list or t is dict:
            if len(obj) < columns.MIN_ITEMS:
                return None
            cached = self._pids.get(id(obj))
            if cached is None:
                cached = columns.encode(obj)
                if cached is not None:
                    self._remember(obj, cached)
            return cached
        if t in _CONTAINERS:
            return None
        cached = self._pids.get(id(obj))
        if cached is not None:
            return cached
        pid = None
        if obj is _REBUILDER:
            return REBUILD_ID
        if isinstance(obj, type) or t in _FUNCTION_TYPES:
            module = self.module_map.canonical(getattr(obj, "__module__", None))
            if module is not None and _reachable(obj):
                pid = ("class" if isinstance(obj, type) else "function", module, obj.__qualname__)
                self.repo_objects[f"{module}:{obj.__qualname__}"] = obj
            elif _is_interactive(getattr(obj, "__module__", None)):
                if not self.by_value:
                    raise _NeedsDill(obj.__qualname__)
                self.module_map.by_value.append(obj.__qualname__)
        elif t is types.ModuleType:
            module = self.module_map.canonical(obj.__name__)
            if module is not None:
                pid = ("module", module)
        elif t.__module__ == "torch" and t.__name__ == "Tensor" or t.__name__ == "Parameter" and is_tensor(obj):
            pid = self.storages.tensor_id(obj)
        elif is_storage(obj):
            return self.storages.persistent_id(obj)
        elif self.module_map.canonical(getattr(t, "__module__", None)) is not None:
            self.repo_instances[id(obj)] = obj
        if pid is not None:
            self._remember(obj, pid)
        return pid

    def _remember(self, obj: Any, pid: tuple) -> None:
        # The same pid object each time: pickle memoizes it, so a shared object stays shared after load.
        self._pids[id(obj)] = pid
        self._keep.append(obj)

    def reducer_override(self, obj: Any):
        t = type(obj)
        if t in _FUNCTION_TYPES:
            module = self.module_map.canonical(getattr(obj, "__module__", None))
            if module is not None:
                self.repo_objects[f"{module}:{obj.__qualname__}"] = obj
                return _function_reduce(obj, sys.modules[obj.__module__])
        elif self.by_value and t.__module__ == "numpy" and t.__name__ == "ndarray" and not obj.dtype.hasobject:
            return obj.__reduce_ex__(PROTOCOL)  # dill overrides numpy's own: contiguous data out of band again
        return NotImplemented


class GitpackPickler(_References, pickle.Pickler):
    """CPython's C pickler with repo code by reference, tensors, storages and numpy buffers out of band."""

    by_value = False

    def __init__(self, file, module_map: ModuleMap, storages: StorageCollector, buffers: list):
        pickle.Pickler.__init__(self, file, protocol=PROTOCOL, buffer_callback=buffers.append)
        self._setup(module_map, storages)


class DillPickler(_References, dill.Pickler):
    """dill's pickler, only for objects holding code defined outside any file (an interactive session)."""

    by_value = True

    def __init__(self, file, module_map: ModuleMap, storages: StorageCollector, buffers: list):
        dill.Pickler.__init__(self, file, protocol=PROTOCOL, byref=False, recurse=False, buffer_callback=buffers.append)
        self._setup(module_map, storages)


_EMPTY_CELL = ("gitpack-empty-cell",)
REBUILD_ID = ("rebuild",)


class _RebuildToken:
    """Pickled as the persistent id ``('rebuild',)``: at load, gitpack's rebuilder bound to that load's snapshot.

    The rebuilder is never a global, so no pickle can name it by GLOBAL and call it
    outside a load; the trust gate checks every argument it is given.
    """

    def __call__(self, *args):  # pickle's save_reduce requires a callable; this one only ever gets pickled
        raise TypeError("gitpack's rebuild token is not called at save time")


_REBUILDER = _RebuildToken()


def _function_reduce(fn: types.FunctionType, module: types.ModuleType):
    """A repo function that is not reachable by name: a reference to its code plus its data."""
    closure = None
    if fn.__closure__ is not None:
        closure = []
        for cell in fn.__closure__:
            try:
                closure.append(cell.cell_contents)
            except ValueError:
                closure.append(_EMPTY_CELL)
        closure = tuple(closure)
    code = fn.__code__
    return (
        _REBUILDER,
        (module, fn.__qualname__, code.co_firstlineno, fn.__defaults__, fn.__kwdefaults__, closure, fn.__dict__ or None),
    )


def dump(obj: Any, module_map: ModuleMap) -> tuple[bytes, StorageCollector, list, Any]:
    """Pickle *obj* with the C pickler (dill only when it holds interactive code); return the pickle bytes,
    the storages and buffers to write out of band, and the pickler (what it learned about repo objects)."""
    try:
        return _dump(obj, module_map, GitpackPickler)
    except _NeedsDill:
        module_map.by_value.clear()
        return _dump(obj, module_map, DillPickler)


def _dump(obj: Any, module_map: ModuleMap, pickler_class: type) -> tuple[bytes, StorageCollector, list, Any]:
    storages = StorageCollector()
    buffers: list = []
    out = io.BytesIO()
    pickler = pickler_class(out, module_map, storages, buffers)
    try:
        pickler.dump(obj)
    except (GitpackError, _NeedsDill):
        raise
    except RecursionError:
        raise PicklingError("the object graph is too deep to pickle; raise sys.setrecursionlimit and retry") from None
    except Exception as exc:  # pickle raises many types here
        raise PicklingError(_explain(obj, exc)) from None
    return out.getvalue(), storages, buffers, pickler


def _explain(obj: Any, exc: Exception) -> str:
    what = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"cannot pickle {type(obj).__name__}: {what}; make that attribute picklable (or drop it) before saving"


class Resolver:
    """How one load turns what the pickle names into objects: the policy for globals, the snapshot for repo code.

    The trust gate resolves through it (to check classes) before the real
    unpickling does, so both see the very same objects.  Reconstructors come
    back wrapped by :mod:`gitpack.guards`, which check their arguments again at
    run time; gitpack's function rebuilder reads source only from the
    snapshot's git tree (:meth:`SnapshotNamespace.source_of`).
    """

    def __init__(self, namespace, policy, *, trust: bool = False, modules: frozenset[str] | None = None):
        from . import guards

        self.namespace = namespace
        self.policy = policy
        self.trust = trust
        self.modules = modules
        self._globals: dict[tuple[str, str], Any] = {}
        self._guards = guards
        self.rebuild = guards.Rebuilder(namespace)

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        found = self._globals.get(key)
        if found is None:
            if key == LEGACY_REBUILD:
                found = self.rebuild
            elif self.trust:
                found = _TRUSTED.find_class(module, name)
            else:
                found = self._guards.wrap(module, name, self.policy.find_class(module, name))
            self._globals[key] = found
        return found

    def snapshot(self, kind: str, module_name: str, qualname: str) -> Any:
        """A class or function *defined* in snapshot module *module_name*, never anything it merely imports.

        The qualname is walked inside the module, so without this check
        ``('pkg.model', 'os.system')`` would reach whatever ``pkg.model`` imported.
        """
        if not (_DOTTED.match(module_name) and _QUALNAME.match(qualname)):
            raise UnpicklingError(f"malformed snapshot reference {module_name[:60]!r}:{qualname[:60]!r} in archive; the archive is corrupt")
        self._check_recorded(module_name)
        module = self.namespace.import_module(module_name)
        obj: Any = module
        for part in qualname.split("."):
            obj = vars(obj).get(part) if isinstance(obj, (type, types.ModuleType)) else None
            if obj is None:
                raise UnpicklingError(f"{module_name}.{qualname} does not exist in the snapshot; the archive and commit disagree")
        defined_here = (isinstance(obj, type) or type(obj) in _FUNCTION_TYPES) and obj.__module__ == module.__name__ \
            and obj.__qualname__ == qualname
        if not defined_here or (kind == "class" and not isinstance(obj, type)) or \
                (kind == "function" and type(obj) not in _FUNCTION_TYPES):
            what = {"class": "a class", "function": "a function"}.get(kind, "a class or function")
            raise PolicyError(
                f"the archive asks for {module_name}.{qualname} as {what} defined in the snapshot's {module_name}, "
                "which it is not; refusing it"
            )
        return obj

    def module(self, module_name: str) -> types.ModuleType:
        if not _DOTTED.match(module_name):
            raise UnpicklingError(f"malformed snapshot module name {module_name[:60]!r} in archive; the archive is corrupt")
        self._check_recorded(module_name)
        return self.namespace.import_module(module_name)

    def _check_recorded(self, module_name: str) -> None:
        if self.modules is not None and module_name not in self.modules:
            raise PolicyError(f"the archive refers to snapshot module {module_name[:80]}, which its manifest does not "
                              "record as used; refusing to import it")

    def ref(self, ref) -> Any:
        """The real object behind a gate :class:`~gitpack.standins.Ref` (for the gate's class checks)."""
        if ref.kind == "global":
            return self.find_class(ref.module, ref.name)
        if ref.kind in ("class", "function", "legacy"):
            return self.snapshot(ref.kind, ref.module, ref.name)
        if ref.kind == "module":
            return self.module(ref.module)
        raise UnpicklingError(f"cannot resolve {ref.dotted}")


LEGACY_REBUILD = ("gitpack.pickling", "rebuild_function")  # gitpack 0.1 archives name the rebuilder as a global
_QUALNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.(<locals>|<lambda>|[A-Za-z_][A-Za-z0-9_]*))*$")


class _Loading:
    """What both unpicklers share: persistent ids resolve through the load's :class:`Resolver`."""

    resolver: Resolver
    storage_loader: Any

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or not isinstance(pid[0], str):
            raise UnpicklingError("malformed persistent id in archive; the archive is corrupt")
        kind = pid[0]
        if kind in ("class", "function", "global") and len(pid) == 3 and all(isinstance(p, str) for p in pid):
            return self.resolver.snapshot(kind, pid[1], pid[2])
        if kind == "module" and len(pid) == 2 and isinstance(pid[1], str):
            return self.resolver.module(pid[1])
        if kind == "storage" and len(pid) == 5 and self.storage_loader is not None:
            return self.storage_loader.load(pid)
        if kind in (TENSOR_KIND, columns.KIND):
            return self._shared(pid)
        if pid == REBUILD_ID:
            return self.resolver.rebuild
        raise UnpicklingError(f"unknown reference {str(pid)[:80]} in archive; the archive is corrupt or from a newer gitpack")

    def _shared(self, pid: tuple) -> Any:
        """Tensors and columns: one object per pid object, so what was shared at save is shared again."""
        cache = self.__dict__.setdefault("_by_pid", {})
        found = cache.get(id(pid))
        if found is not None:
            return found[1]
        if pid[0] == TENSOR_KIND:
            if self.storage_loader is None or len(pid) != 10:
                raise UnpicklingError("malformed tensor reference in archive; the archive is corrupt")
            obj = self.storage_loader.tensor(pid)
        else:
            if not columns.is_valid(pid):
                raise UnpicklingError("malformed columns in archive; the archive is corrupt")
            try:
                obj = columns.decode(pid)
            except ValueError as exc:
                raise UnpicklingError(f"malformed columns in archive ({exc}); the archive is corrupt") from None
        cache[id(pid)] = (pid, obj)
        return obj

    def find_class(self, module: str, name: str):
        return self.resolver.find_class(module, name)


class GitpackUnpickler(_Loading, pickle.Unpickler):
    """CPython's C unpickler, resolving through the load's :class:`Resolver` (the default, policy-checked load)."""

    def __init__(self, file, *, resolver: Resolver, storage_loader, buffers=None):
        super().__init__(file, buffers=buffers)
        self.resolver = resolver
        self.storage_loader = storage_loader


class TrustedUnpickler(_Loading, dill.Unpickler):
    """dill's unpickler, for archives the caller trusts (by-value code of interactive sessions)."""

    def __init__(self, file, *, resolver: Resolver, storage_loader, buffers=None):
        super().__init__(file, buffers=buffers)
        self.resolver = resolver
        self.storage_loader = storage_loader


def load(data: bytes, *, resolver: Resolver, storage_loader, buffers=None) -> Any:
    """Unpickle *data*; the caller has run the trust gate over it unless the load is trusted."""
    cls = TrustedUnpickler if resolver.trust else GitpackUnpickler
    unpickler = cls(io.BytesIO(data), resolver=resolver, storage_loader=storage_loader, buffers=buffers)
    try:
        return unpickler.load()
    except GitpackError:
        raise
    except RecursionError:
        raise UnpicklingError("the pickle is nested too deeply to load") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, ImportError) as exc:
        raise UnpicklingError(f"cannot unpickle the archive's payload: {exc}") from None
    except Exception as exc:  # torch, numpy and the snapshot's own __setstate__ raise their own types
        raise UnpicklingError(f"cannot unpickle the archive's payload: {type(exc).__name__}: {exc}") from exc


_TRUSTED = dill.Unpickler(io.BytesIO(b""))

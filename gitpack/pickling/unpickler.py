"""Unpickling against a snapshot: CPython's C unpickler, resolving everything through one :class:`Resolver`.

By the time this runs the trust gate (:mod:`.gate`) has judged every
construct of the pickle; the resolver then hands the real objects to the
real run: allowed globals through the policy (reconstructors wrapped by
:mod:`.guards`), repo classes, functions and modules from the snapshot's
private namespace, tensors and storages from the archive, and gitpack's
function rebuilder bound to this load's snapshot.
"""

from __future__ import annotations

import io
import pickle
import re
import types
from typing import Any

import dill

from ..errors import GitpackError, PolicyError, UnpicklingError
from . import columns, guards
from .gcpause import gc_paused
from .pickler import REBUILD_ID
from .tensors import TENSOR_KIND

_FUNCTION_TYPES = (types.FunctionType,)
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class Resolver:
    """How one load turns what the pickle names into objects: the policy for globals, the snapshot for repo code.

    The trust gate resolves through it (to check classes) before the real
    unpickling does, so both see the very same objects.  Reconstructors come
    back wrapped by :mod:`gitpack.pickling.guards`, which check their arguments again at
    run time; gitpack's function rebuilder reads source only from the
    snapshot's git tree (:meth:`SnapshotNamespace.source_of`).
    """

    def __init__(self, namespace, policy, *, trust: bool = False, modules: frozenset[str] | None = None):
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
            raise UnpicklingError(f"malformed snapshot reference {module_name[:60]!r}:{qualname[:60]!r} in archive; "
                                  "the archive is corrupt")
        self._check_recorded(module_name)
        module = self.namespace.import_module(module_name)
        obj: Any = module
        for part in qualname.split("."):
            obj = vars(obj).get(part) if isinstance(obj, (type, types.ModuleType)) else None
            if obj is None:
                raise UnpicklingError(
                    f"{module_name}.{qualname} does not exist in the snapshot; the archive and commit disagree"
                )
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
            raise UnpicklingError(
                f"malformed snapshot module name {module_name[:60]!r} in archive; the archive is corrupt"
            )
        self._check_recorded(module_name)
        return self.namespace.import_module(module_name)

    def _check_recorded(self, module_name: str) -> None:
        if self.modules is not None and module_name not in self.modules:
            raise PolicyError(f"the archive refers to snapshot module {module_name[:80]}, which its manifest does not "
                              "record as used; refusing to import it")

    def ref(self, ref) -> Any:
        """The real object behind a gate :class:`~gitpack.pickling.standins.Ref` (for the gate's class checks)."""
        if ref.kind == "global":
            return self.find_class(ref.module, ref.name)
        if ref.kind in ("class", "function", "legacy"):
            return self.snapshot(ref.kind, ref.module, ref.name)
        if ref.kind == "module":
            return self.module(ref.module)
        raise UnpicklingError(f"cannot resolve {ref.dotted}")


LEGACY_REBUILD = ("gitpack.pickling", "rebuild_function")  # gitpack 0.1 archives name the rebuilder as a global
_QUALNAME = re.compile(r"^(<lambda>|[A-Za-z_][A-Za-z0-9_]*)(\.(<locals>|<lambda>|[A-Za-z_][A-Za-z0-9_]*))*$")


class _Loading:
    """What both unpicklers share: persistent ids resolve through the load's :class:`Resolver`."""

    resolver: Resolver
    storage_loader: Any

    def persistent_load(self, pid):
        if type(pid) is int:  # format 3: a row of the tensor table, nearly every id of a model
            if self.storage_loader is None:
                raise UnpicklingError("the pickle names a tensor row but no tensors are loaded; the archive is corrupt")
            return self.storage_loader.row_tensor(pid)
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
        raise UnpicklingError(
            f"unknown reference {str(pid)[:80]} in archive; the archive is corrupt or from a newer gitpack"
        )

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
        with gc_paused():
            return unpickler.load()
    except GitpackError:
        raise
    except RecursionError:
        raise UnpicklingError("the pickle is nested too deeply to load") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            ImportError) as exc:
        raise UnpicklingError(f"cannot unpickle the archive's payload: {exc}") from None
    except Exception as exc:  # torch, numpy and the snapshot's own __setstate__ raise their own types
        raise UnpicklingError(f"cannot unpickle the archive's payload: {type(exc).__name__}: {exc}") from exc


_TRUSTED = dill.Unpickler(io.BytesIO(b""))

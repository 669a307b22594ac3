"""The load pipeline: prove the archive, judge its pickle, read its tensors, then unpickle against its snapshot.

1. :func:`gitpack.verify.open_verified`: the file, and the snapshot commit of gitpack's own that vouches
   for it (and its signature, when required).
2. The trust gate (:mod:`gitpack.pickling.gate`) dry-runs the pickle and refuses what the policy does not
   allow; nothing is imported yet.
3. Every tensor storage the pickle names is read into its final memory and checked against its digest.
   The reads start as soon as the archive's member table is validated, so they overlap steps 1 and 2;
   nothing read is handed to the unpickler before both have passed.
4. The snapshot's private namespace (:mod:`gitpack.isolation`) imports the modules the object uses, and
   the gate's class checks run against the real classes.
5. CPython's C unpickler runs, resolving through the load's :class:`~gitpack.pickling.unpickler.Resolver`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from . import allowlist, artifacts, sync
from .archive import ArchiveReader
from .errors import GitpackError, PolicyError, UnpicklingError
from .git import Repo
from .git.repo import lent
from .isolation import cache, namespace_for
from .manifest import BUFFER_PREFIX, PICKLE_MEMBER
from .pickling import gate, tensortable
from .pickling.policy import Policy
from .pickling.tensors import StorageLoader
from .pickling.unpickler import Resolver
from .pickling.unpickler import load as unpickle
from .verify import open_verified


def load(
    path: str | os.PathLike,
    *,
    map_location: Any = None,
    mmap: bool = False,
    trust: bool = False,
    allow: Iterable[tuple[str, str] | str] = (),
    require_signed: bool | None = None,
    repo: str | os.PathLike | None = None,
    fetch: bool = False,
    remote: str | None = None,
) -> Any:
    """Load an archive against its own snapshot's code, in an isolated namespace.

    Args:
        path: an archive file or a stored artifact, ``NAME``, ``NAME@v2`` or ``NAME@latest``
            (:mod:`gitpack.artifacts` documents how the two are told apart).
        map_location: where tensors go, as in ``torch.load`` (a device string, a dict, a callable, ``"meta"``).
        mmap: with ``mmap=True`` tensor data is mapped from the archive instead of read, and its digests are
            *not* checked at load (that would read every byte): run ``gitpack verify`` for that.
        trust: turn the policy off and admit by-value code: only for archives whose author you trust.
        allow: more globals the policy admits: ``"module:qualname"`` strings (or the dotted ``"module.qualname"``
            that ``gitpack scan`` prints) or ``(module, qualname)`` pairs, each trusted fully; or a package,
            ``"transformers"``, whose classes (not functions) load as torch's layers do: built empty, given plain
            attribute state.  ``git config --add gitpack.allow ENTRY`` (per repository, or ``--global``) adds
            entries to every load.
        require_signed: refuse unless the snapshot commit has a trusted signature (None: ``gitpack.requireSigned``).
        repo: the repository (default: the one containing the current directory).
        fetch: run ``gitpack pull`` (from *remote*, default the upstream or origin) first.
        remote: where *fetch* pulls from, and where an archive stored in Git LFS that this clone lacks is
            downloaded from (only that one object; default: the upstream, else origin).
    Returns:
        The object, running the code of the snapshot it was saved with.
    Example:
        >>> model = gitpack.load("model.gitpack")            # doctest: +SKIP
        >>> model = gitpack.load("clf@v2", map_location="cpu")  # doctest: +SKIP

    Everything is verified before anything is unpickled (:func:`gitpack.verify.open_verified`:
    the file, the commit that vouches for it, its signature when required), then the pickle passes the
    trust gate (:mod:`gitpack.pickling.gate`: every global, call, state and fill it would make), then every tensor
    storage it names is read and checked.  A portable archive loads with no repository at all, from its
    embedded, hash-verified source, but only with *trust* unless a clone here has its commit.
    """
    # The repository is found once and lent to every step (settings, the store, the vouching check): each
    # discovery would be a git process and a settings read of its own, and a load is a handful of them.
    with lent(repo) as here:
        return _load(path, here, map_location=map_location, mmap=mmap, trust=trust, allow=allow,
                     require_signed=require_signed, fetch=fetch, remote=remote)


def _load(path: str | os.PathLike, repo: str | os.PathLike | Repo | None, *, map_location: Any, mmap: bool,
          trust: bool, allow: Iterable[tuple[str, str] | str], require_signed: bool | None, fetch: bool,
          remote: str | None) -> Any:
    policy = Policy(allowlist.for_path(allow, repo))  # a malformed allow entry fails before anything is read
    if fetch:
        with Repo.discover(repo) as git_repo:
            sync.pull(git_repo, remote)
    path = _located(path, repo, remote)
    started: list[StorageLoader] = []

    def start_reading(reader: ArchiveReader) -> None:
        # Tensor bytes are read and hashed while git vouches for the archive and the gate runs: they are data,
        # handed to nothing until both have passed, and a refused archive's queued reads are cancelled.
        started.append(StorageLoader(reader, map_location=map_location, mmap=mmap))

    with open_verified(path, repo=repo, require_signed=require_signed, trust=trust, on_open=start_reading) as checked:
        plan = checked.plan
        if plan.by_value_code and not trust:
            raise PolicyError(
                f"{path} carries by-value code ({', '.join(plan.by_value_code[:3])}) defined outside any file; "
                "load it only if you trust its author (trust=True / --trust)"
            )
        data = checked.reader.read(PICKLE_MEMBER)
        modules = frozenset(plan.modules)
        table = tensortable.from_archive(checked.reader)
        storage_loader = started[0]
        if table is not None:  # a bad row is a corrupt archive, whatever the policy (--trust included)
            storage_loader.use_table(table)
        verdict = gate.trace(data, policy, modules=modules, buffers=plan.buffers, table=table)
        if not trust:
            verdict.raise_if_refused(str(path))
        buffers = [checked.reader.read_buffer(f"{BUFFER_PREFIX}{i}") for i in range(plan.buffers)]
        if not mmap:
            _read_storages_first(storage_loader, verdict.storages)  # every byte verified before any import
        known = {name: info.root for name, info in plan.modules.items()}
        namespace = namespace_for(checked.source, plan.roots, known, trusted=trust, scripts=plan.scripts)
        resolver = Resolver(namespace, policy, trust=trust, modules=None if trust else modules)
        if not trust:
            verdict.check_sources(namespace.source_for)  # from the git tree: nothing imported yet
            verdict.raise_if_refused(str(path))
            verdict.check_classes(resolver.ref)  # imports the snapshot modules that define what the pickle uses
            verdict.raise_if_refused(str(path))
        obj = unpickle(data, resolver=resolver, storage_loader=storage_loader, buffers=buffers)
    cache.settle(repo=repo)  # a load that wrote to the cache keeps it under gitpack.cacheMaxSize
    return obj


def _located(target: str | os.PathLike, repo: str | os.PathLike | Repo | None, remote: str | None) -> Any:
    """The archive file *target* means; a stored archive's copy in the cache is held in use (a concurrent
    ``gitpack cache prune`` keeps it), and copied again should a prune have taken it just before.  One in
    Git LFS is read in place from the repository's LFS store, which no prune touches."""
    for _ in range(3):
        path, version = artifacts.locate(target, repo=repo, remote=remote)
        if version is None or not cache.inside(path):
            return path
        cache.hold(path, directory=False)
        if path.exists():
            return path
    return path


def _read_storages_first(storage_loader: StorageLoader, storages: list[tuple]) -> None:
    """Read (and so verify) every tensor storage the pickle and the tensor table name before unpickling starts;
    the unpickler then finds them already loaded."""
    what = "the tensor table's storages"
    try:
        storage_loader.read_table()
        for pid in storages:
            what = f"tensor storage {str(pid[2])[:40]!r}"
            storage_loader.load(pid)
    except GitpackError:
        raise
    except Exception as exc:  # torch: a bad device string, a size that does not fit the dtype
        raise UnpicklingError(f"cannot load {what}: {type(exc).__name__}: {exc}") from exc



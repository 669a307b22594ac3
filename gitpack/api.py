"""gitpack's verbs: what the ``gitpack`` command and Python callers use.  Each is a few lines over a pipeline.

``save`` (:mod:`gitpack.save`) and ``load`` (:mod:`gitpack.load`) are the two
pipelines; ``verify`` shares load's one verification path
(:mod:`gitpack.verify`); the rest read manifests and git and never unpickle.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from . import allowlist, artifacts, gitsetup, history, sync
from . import repair as _repair
from ._version import __version__
from .archive import read_manifest
from .capturing import capture
from .compare import DiffReport
from .compare import compare as _compare
from .errors import ArchiveError, GitpackError
from .git import DEFAULT_BRANCH, Repo, branch_ref
from .git.repo import lent
from .load import load
from .save import SaveInfo, save
from .snapshot.branch import tip_of
from .verify import VerifyReport, open_verified, verify

__all__ = ["DiffReport", "SaveInfo", "VerifyReport", "__version__", "alias", "apply", "cache_prune", "cache_usage",
           "capture", "diff", "export", "init", "inspect", "list_artifacts", "load", "log", "pull", "push", "repair",
           "save", "scan", "source_of", "textconv", "verify"]


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """What an archive records, read without unpickling anything (and without importing torch).

    Args:
        path: an archive file, or a stored ``NAME[@VERSION]``.
    Returns:
        The manifest as JSON: commit, tree, parameters, capture tree, structure, environment, members.
    Example:
        >>> gitpack.inspect("model.gitpack")["params"]  # doctest: +SKIP
        {'lr': 0.0003}
    """
    return read_manifest(artifacts.locate(path)[0])


def diff(a: str | os.PathLike, b: str | os.PathLike | None = None, *, all_files: bool = False,
         repo: str | os.PathLike | None = None) -> DiffReport:
    """What differs between two saves (parameters, environment, code), or between a save and the working tree.

    Args:
        a, b: archive files or stored ``NAME[@VERSION]`` artifacts; without *b*, *a* is compared with the
            working tree and the current environment.
        all_files: code hunks of every file, not only the modules the objects use.
    Returns:
        A :class:`~gitpack.compare.DiffReport`.  Reads manifests and git only; nothing is unpickled.
    """
    path_a = artifacts.locate(a, repo=repo)[0]
    path_b = artifacts.locate(b, repo=repo)[0] if b is not None else None
    return _compare(path_a, path_b, all_files=all_files, repo=repo)


def scan(
    path: str | os.PathLike, *, allow: Iterable[tuple[str, str] | str] = (), repo: str | os.PathLike | None = None
):
    """Every global, persistent id, call and state the archive's pickle would make, judged by the trust gate.

    Read from a dry run of the pickle (:mod:`gitpack.pickling.gate`): nothing is unpickled and no snapshot
    code is imported or run, and no repository is needed.  Checks about snapshot classes are made from
    their source when the repository here has the snapshot, else reported as pending (load makes them).

    *allow* and ``git config gitpack.allow`` count as for a load here.

    Returns:
        A :class:`~gitpack.pickling.scanner.ScanReport`.
    """
    from .pickling.scanner import scan as scan_archive

    with lent(repo) as here:  # found once for the three steps
        path, _ = artifacts.locate(path, repo=here)
        return scan_archive(path, allow=allowlist.for_path(allow, here), repo=here)


def log(*, branch: str | None = None, repo: str | os.PathLike | None = None,
        limit: int | None = None) -> list[history.LogEntry]:
    """The saves recorded on the snapshot branch, newest first (with those ``gitpack pull`` merged in)."""
    with Repo.discover(repo) as git_repo:
        branch = branch or git_repo.config("gitpack.branch") or DEFAULT_BRANCH
        tip_of(git_repo, branch_ref(branch))  # a damaged branch is reported, not shown as an empty log
        return history.saves(git_repo, branch_ref(branch), limit)


def repair(*, branch: str | None = None, repo: str | os.PathLike | None = None) -> list[_repair.Repaired]:
    """Mend snapshot and artifact refs that point at missing or broken objects (after a racing
    ``git gc --prune=now``): each moves back to its newest intact snapshot or version, or is removed.

    Returns one :class:`~gitpack.repair.Repaired` per ref changed, saying what was lost; empty when all is well.
    """
    with Repo.discover(repo) as git_repo:
        return _repair.repair(git_repo, branch)


# ---------------------------------------------------------------------- the artifact store and sharing
def list_artifacts(name: str | None = None, *, repo: str | os.PathLike | None = None) -> list:
    """Every stored version (of *name*, or of all artifacts), by name, newest first."""
    with Repo.discover(repo) as git_repo:
        if name is not None:
            artifacts.validate_name(name)
        return artifacts.Store(git_repo).versions(name)


def alias(ref: str, alias_name: str, *, repo: str | os.PathLike | None = None):
    """Point ``NAME@ALIAS`` at the version *ref* names (``clf@v2`` -> ``prod``); returns that version."""
    with Repo.discover(repo) as git_repo:
        return artifacts.Store(git_repo).set_alias(ref, alias_name)


def pull(remote: str | None = None, *, repo: str | os.PathLike | None = None):
    """Fetch the snapshot branch and artifacts from *remote* (default: upstream, else origin) and merge them in."""
    with Repo.discover(repo) as git_repo:
        return sync.pull(git_repo, remote)


def push(remote: str | None = None, *, repo: str | os.PathLike | None = None):
    """Merge *remote*'s saves, then push the snapshot branch and artifacts, never overwriting anyone's."""
    with Repo.discover(repo) as git_repo:
        return sync.push(git_repo, remote)


def export(ref: str | os.PathLike, output: str | os.PathLike, *, portable: bool = False,
           repo: str | os.PathLike | None = None):
    """Write a stored artifact (or an archive file) to *output*; ``portable=True`` embeds its source too.

    The archive passes the same verification as `verify` first (every member hashed): a tampered archive is
    never exported.
    A portable archive loads where there is no repository at all.
    """
    import shutil
    from pathlib import Path

    from .archive import portable as portable_archive

    archive, _ = artifacts.locate(ref, repo=repo)
    if portable_archive.is_portable(read_manifest(archive)):
        raise ArchiveError(f"{ref} is already portable; copy it as it is")
    with open_verified(archive, repo=repo, every_member=True) as checked:
        dest = Path(output).absolute()
        if portable:
            assert checked.repo is not None
            return portable_archive.export(checked.repo, archive, dest).path
    if dest.is_dir() or not dest.parent.is_dir():
        raise ArchiveError(f"cannot write {dest}: give a file path in an existing directory")
    temp = dest.with_name(f".{dest.name}.gitpack-export-tmp")
    try:
        shutil.copyfile(archive, temp)
        os.replace(temp, dest)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ArchiveError(f"cannot write {dest}: {exc.strerror}; check the path and free space") from None
    return dest


def _apply_module(module: Any, value: Any) -> Any:
    """JSON in, a tensor, forward on a batch of one, JSON out (see :func:`apply`)."""
    import json

    import torch

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise GitpackError(f"--apply {value[:60]!r}: a torch module takes JSON, a number or nested lists "
                               "(token ids [101, 2023, 102], features [[0.5, 1.0]])") from None
    try:
        x = torch.tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise GitpackError(f"--apply input is not a tensor ({exc}); give a number or nested lists of equal "
                           "lengths") from None
    reference = next(iter(module.parameters()), None)
    if reference is None:
        reference = next(iter(module.buffers()), None)
    if reference is not None:
        x = x.to(device=reference.device, dtype=reference.dtype if x.is_floating_point() and
                 reference.is_floating_point() else x.dtype)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(x.unsqueeze(0))
    finally:
        module.train(was_training)
    return _jsonable_output(out, torch)


def _jsonable_output(value: Any, torch: Any, depth: int = 0) -> Any:
    """A module's output as JSON: tensors as lists without the batch dimension, containers recursively."""
    if depth > 32:
        return repr(value)[:200]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value[0] if value.dim() > 0 and value.shape[0] == 1 else value).tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable_output(v, torch, depth + 1) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable_output(v, torch, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)[:200]


# ---------------------------------------------------------------------- git integration and ergonomics
def init(*, lfs: bool = False, repo: str | os.PathLike | None = None) -> list[str]:
    """Set the repository up for archives: .gitattributes (binary, -delta, diff=gitpack) and git config;
    *lfs* also stores committed archives with Git LFS."""
    with Repo.discover(repo) as git_repo:
        return gitsetup.init(git_repo, use_lfs=lfs)


def textconv(path: str | os.PathLike) -> str:
    """An archive's manifest as stable text for ``git diff`` (never unpickles, never imports torch)."""
    return gitsetup.textconv(path)


def cache_usage():
    """What the load cache holds (materialised snapshot trees, copies of stored archives), by entry, with sizes,
    last use and whether a process is using each now; and the configured limit (``gitpack.cacheMaxSize``)."""
    from .isolation import cache

    return cache.usage(), cache.configured_max_size()


def cache_prune(*, older_than: float | None = None, max_size: int | None = None):
    """Remove load-cache entries no process is using: those unused for *older_than* seconds, then the least
    recently used until the cache fits *max_size* bytes; with neither, every entry not in use."""
    from .isolation import cache

    return cache.prune(older_than=older_than, max_size=max_size)


def source_of(obj: Any) -> str | None:
    """Where *obj*'s class comes from: its file inside the snapshot cache, if it is snapshot code."""
    module = sys.modules.get(type(obj).__module__)
    return getattr(module, "__file__", None)


def apply(obj: Any, value: Any) -> Any:
    """Run *obj* on one input, as ``gitpack load --apply`` does.

    An object with ``preprocess``, ``forward`` and ``postprocess`` (the seed models' convention) gets *value*
    as it is, and ``postprocess(forward(batch of one)[0])`` is returned.  Any other ``torch.nn.Module`` gets
    *value* as JSON (a number or nested lists; a string is parsed) turned into a tensor (integers stay int64,
    as token ids are; floats take the module's dtype), called in eval mode without gradients on a batch of
    one, and its output comes back as JSON: tensors as nested lists (the batch dimension dropped), tuples as
    lists, dict-like outputs (a transformers ``ModelOutput``) as objects.
    """
    if not all(callable(getattr(obj, m, None)) for m in ("preprocess", "forward", "postprocess")):
        torch_module = sys.modules.get("torch")
        if torch_module is not None and isinstance(obj, torch_module.nn.Module):
            return _apply_module(obj, value)
        missing = next(m for m in ("preprocess", "forward", "postprocess") if not callable(getattr(obj, m, None)))
        raise GitpackError(f"{type(obj).__name__} has no {missing}() method and is not a torch module, so --apply "
                           "cannot run it")
    x = obj.preprocess(value)
    if "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor):
        import torch

        with torch.no_grad():
            return obj.postprocess(obj.forward(x.unsqueeze(0))[0])
    return obj.postprocess(obj.forward([x])[0])

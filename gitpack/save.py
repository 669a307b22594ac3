"""The save pipeline: snapshot the working tree, pickle the object against it, write and vouch for the archive.

1. :mod:`gitpack.snapshot` writes the working tree as a tree (the user's index untouched).
2. :mod:`gitpack.pickling` pickles the object: repo code by reference into that tree, tensors and
   buffers out of band; the archive writer starts hashing and writing them at once.
3. While it does: the code in memory is checked against the snapshot (:mod:`gitpack.staleness`),
   the capture tree and structure summary are built, and the trust gate says what a default load
   would refuse (a warning now rather than a surprise at load).
4. The manifest (:mod:`gitpack.manifest`) and the commit message with its trailers are written;
   :mod:`gitpack.snapshot.branch` commits, seals the archive with the commit, and moves the branch by
   compare-and-swap, in one ref transaction with (given a name) the next stored version and ``latest``
   (:meth:`gitpack.artifacts.Store.version_updates`): the save's commit point.
5. With a path, the archive is then renamed into place.  On any error before the commit point nothing
   is published and no ref moves.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import allowlist, artifacts, environment, lfs, progress, signing, snapshot
from ._version import __version__
from .archive import ArchiveWriter, manifest_digest, sealed_manifest
from .capturing import build_tree, paused, sources, summary_lines
from .errors import GitError, GitpackError, GitpackWarning
from .fsutil import writing
from .git import DEFAULT_BRANCH, Repo, branch_ref
from .manifest import BUFFER_PREFIX, PICKLE_MEMBER, Manifest, ModuleInfo
from .pickling import tensortable
from .pickling.modulemap import ModuleMap
from .pickling.pickler import dump, original_of
from .pickling.policy import AllowList, Policy
from .staleness import find_stale, stale_error
from .structure import is_module, object_paths, summarize
from .trailers import format_message

if TYPE_CHECKING:
    from .pickling import gate


@dataclass(frozen=True)
class SaveInfo:
    """What a save produced: the archive, its snapshot commit and what was left out of the snapshot.

    ``path`` is None when the archive went only into the store; ``artifact``
    is then (or also) its stored version, e.g. ``clf@v3``.
    """

    path: Path | None
    commit: str
    tree: str
    digest: str
    branch: str
    object_type: str
    excluded: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    artifact: str | None = None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def object_type_name(obj: Any, module_map: ModuleMap | None = None) -> str:
    cls = type(obj)
    module = (module_map.canonical(cls.__module__) if module_map else None) or cls.__module__
    return f"{module}:{cls.__qualname__}"


def save(
    obj: Any,
    path: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    params: dict | None = None,
    message: str | None = None,
    branch: str | None = None,
    size_cap: int | None = None,
    sign: bool = False,
    repo: str | os.PathLike | None = None,
    allow_stale: bool = False,
    include: list[str] | tuple[str, ...] = (),
    untracked_budget: int | None = None,
) -> SaveInfo:
    """Snapshot the working tree onto gitpack's branch and write *obj* to the archive at *path*.

    The repository is the one containing the current directory (or *repo*).
    The user's HEAD, index, working tree, stash and reflogs are left exactly as
    they were; on any error no archive is written and the branch does not move.
    With *name*, the archive is also (or, with no *path*, only) stored in the
    repository as the next version of that artifact (see :mod:`gitpack.artifacts`).
    The constructor arguments captured by :func:`capture` (or inferred), a
    structure summary of every torch module, and the check that the code in
    memory is the code being snapshotted (refused with StaleCodeError unless
    *allow_stale*) all go into the manifest and the commit message.

    Tracked files are always snapshotted; untracked ones are bounded (:mod:`gitpack.snapshot.exclude`): none
    above *size_cap* (``gitpack.sizecap``, 10 MB), at most *untracked_budget* in all (``gitpack.untrackedBudget``,
    20 MB, the largest left out first), except the paths, directories or patterns in *include* (and
    ``gitpack.include``).  ``info.excluded`` says what was left out, with sizes, and a :class:`GitpackWarning`
    too.
    """
    if path is None and name is None:
        raise GitpackError("nothing to save to: give a path for the archive file (-o FILE), "
                           "a name to store it under (--name NAME), or both")
    if name is not None:
        artifacts.validate_name(name)
    params = _jsonable(params or {})
    with Repo.discover(repo) as git_repo:
        branch = branch or git_repo.config("gitpack.branch") or DEFAULT_BRANCH
        if name is not None:
            lfs.settings(git_repo)  # a malformed gitpack.lfs* fails here, before the snapshot branch moves
        # Store-only saves build the archive beside the object database and never publish the file.
        dest = Path(os.path.abspath(path)) if path is not None else git_repo.common_dir / f"{name}.gitpack"
        exclude = set()
        temp_dir = None
        try:
            exclude.add(dest.resolve().relative_to(git_repo.root.resolve()).as_posix())
            temp_dir = _hidden_temp_dir(git_repo, dest)
        except ValueError:
            pass
        writer = ArchiveWriter(dest, temp_dir=temp_dir)
        try:
            limits = snapshot.limits_from_config(git_repo, size_cap=size_cap, budget=untracked_budget,
                                                 include=_repo_relative(git_repo, include), exclude=exclude)
            with writing(git_repo.git_dir):  # a full or read-only .git: one line naming it
                snap = snapshot.write_tree(git_repo, limits)
            if not branch_ref(branch).startswith("refs/heads/") or branch_ref(branch) == snap.head_branch:
                checked_out = branch_ref(branch) == snap.head_branch
                what = "your checked-out branch" if checked_out else "a ref outside refs/heads"
                raise GitpackError(
                    f"--branch {branch} would move {what}; give gitpack a branch of its own (default: gitpack)"
                )
            # Modules edited since they were imported go into the snapshot as they were imported.
            as_imported = _code_as_imported(git_repo, snap.tree)
            tree = snapshot.pinned.pin_files(git_repo, snap.tree, as_imported)

            def in_snapshot(rel: str) -> bool:
                return git_repo.object_type(f"{tree}:{rel}") == "blob"

            module_map = ModuleMap(git_repo.root, in_snapshot, left_out=dict(snap.excluded))

            def snapshot_source(rel: str) -> bytes | None:
                spec = f"{tree}:{rel}"
                return git_repo.read_object(spec)[1] if git_repo.object_type(spec) == "blob" else None

            with paused():  # gitpack's own work need not pass through the capture hook
                data, storages, buffers, pickler = dump(obj, module_map)
            tree = snapshot.pinned.pin_files(git_repo, tree, module_map.extra_files)  # a notebook's cells
            storage_bytes = sum(int(s.nbytes()) for s in storages.storages.values())
            tensor_bytes = storage_bytes + sum(b.raw().nbytes for b in buffers)
            with progress.Bar(f"saving {name or dest.name}", len(data) + tensor_bytes) as bar:
                # Queue every member first: the writer's threads hash and write them while the checks below run.
                writer.add(PICKLE_MEMBER, [data])
                table_bytes = storages.table_member()
                if table_bytes is not None:  # every plain tensor, one row each (format 3)
                    writer.add(tensortable.MEMBER, [table_bytes])
                for member, member_buffers in storages.members():  # small storages share pack members
                    writer.add(member, member_buffers)
                for i, buf in enumerate(buffers):
                    writer.add(f"{BUFFER_PREFIX}{i}", [buf.raw()])
                with paused():
                    stale = find_stale(pickler.repo_objects, module_map, snapshot_source)
                    if stale and not allow_stale:
                        files = [(module_map.used.get(st.module) or {}).get("path") for st in stale]
                        raise stale_error(stale, unrecorded=any(  # a notebook's cells are not files
                            f and (git_repo.root / f).exists() and sources.imported_source(git_repo.root / f) is None
                            for f in files))
                    instances = pickler.repo_instances
                    paths = object_paths(original_of(obj), lambda o: id(o) in instances or is_module(o))
                    captured = build_tree(instances, paths, module_map)
                    structure = summarize(paths, module_map)
                not_pinned = [f"{u['module']} is imported from {u['file']}, not from this repository "
                              f"({u['repository']} differs); its code is not pinned" for u in module_map.unpinned]
                table = None if table_bytes is None else tensortable.TensorTable.parse(
                    table_bytes, storages.unit_sizes(), dest.name)
                verdict = _policy_trace(data, module_map.used, len(buffers), table, allowlist.merged((), git_repo))
                refused = _policy_warnings(verdict)
                warnings = list(snap.submodule_warnings) + not_pinned + refused
                libraries = environment.distributions_of(r.module or "" for r in verdict.globals)
                environment_description = environment.describe(libraries)
                remote_url = git_repo.remote_url()
                sign = signing.wants_signing(git_repo, sign)
                bar.update(completed=sum(m.size for m in writer.members))  # waits for the queued writes
            digest = writer.payload_digest()
            type_name = object_type_name(original_of(obj), module_map)
            manifest = Manifest(
                gitpack=__version__, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                tree=tree, branch=branch_ref(branch), head=snap.head, head_branch=snap.head_branch,
                dirty=snap.dirty, remote_url=remote_url, object_type=type_name, params=params, message=message,
                capture=captured, structure=structure, allow_stale=bool(allow_stale),
                stale_code=[s.as_json() for s in stale],
                environment=environment_description,
                modules={n: ModuleInfo(u["path"], u["root"]) for n, u in module_map.used.items()},
                imported=module_map.imported_tops(),
                # Only roots the snapshot holds: a .venv's site-packages on sys.path is third-party.
                roots=[r for r in module_map.roots if r == "" or git_repo.object_type(f"{tree}:{r}") == "tree"],
                by_value_code=module_map.by_value, excluded=[list(e) for e in snap.excluded],
                storages=len(storages.storages), buffers=len(buffers),
                scripts=sorted(module_map.scripts), pinned=sorted(as_imported), unpinned=module_map.unpinned,
                compiled=pickler.compiled, notebook=module_map.notebook.describe() if module_map.notebook else None,
            ).to_json()
            # The commit vouches for the whole manifest too (all of it but the commit field itself).
            vouched = {"Manifest": manifest_digest(sealed_manifest(manifest, writer.members))}
            trailers = {**vouched, "Artifact": name} if name else dict(vouched)
            trailers.update(_capture_trailers(captured, stale))
            archive_label = dest.name
            if path is None:
                assert name is not None  # a save without a path has a name (checked on entry)
                archive_label = name  # store-only: the commit names the artifact, not its temporary file
            text = format_message(
                archive=archive_label, object_type=type_name, digest=digest, params=params, head=snap.head,
                message=_message_with_notes(message, captured, sorted(as_imported), module_map.unpinned),
                extra=trailers,
            )

            def seal(commit: str) -> None:
                writer.seal({**manifest, "commit": commit})

            stored: list[int] = []  # the version number the last attempt claimed

            def store_version(commit: str) -> list:
                """The stored version's refs, moved in one transaction with the branch (see artifacts)."""
                assert name is not None
                number, updates = store.version_updates(name, writer.temp_path, snapshot=commit, digest=digest,
                                                        object_type=type_name, params=params)
                stored[:] = [number]
                return updates

            store = artifacts.Store(git_repo)
            try:
                with writing(git_repo.git_dir):
                    commit = snapshot.branch.commit(git_repo, tree, text, branch=branch, head=snap.head,
                                                    sign=sign, before_update=seal,
                                                    more_refs=store_version if name else None)
            except GitError as exc:
                if sign and "commit-tree" in str(exc):
                    raise signing.explain_signing_failure(exc) from None
                raise
            version = store.resolve(artifacts.Reference(name, f"v{stored[0]}")) if name is not None else None
            if path is not None:
                writer.publish()
            else:
                writer.abort()  # the sealed bytes now live in the object database
        except BaseException:
            writer.abort()
            raise
        for warning in not_pinned + refused + _left_out_warning(snap.excluded):  # (the CLI prints these itself)
            _warnings.warn(warning, GitpackWarning, stacklevel=2)
        return SaveInfo(dest if path is not None else None, commit, tree, digest, branch_ref(branch), type_name,
                        list(snap.excluded), warnings, version.label if version else None)


CAPTURE_TRAILER_LIMIT = 16_000


def _hidden_temp_dir(repo: Repo, dest: Path) -> Path | None:
    """Where an archive bound for *dest* inside the working tree is written until it is complete: the
    repository's .git (out of ``git status``, ``git add -A`` and any snapshot, even if a crash leaves it), when
    that is on the same filesystem, so the final rename stays atomic."""
    try:
        same = os.stat(repo.git_dir).st_dev == os.stat(dest.resolve().parent).st_dev
    except OSError:
        return None
    return repo.git_dir if same else None


def _repo_relative(repo: Repo, include: list[str] | tuple[str, ...]) -> list[str]:
    """``--include`` entries as paths from the repository root: an existing path as given (from the current
    directory), anything else (a pattern) as written."""
    out = []
    for entry in include:
        full = Path(os.path.abspath(entry))
        try:
            out.append(full.resolve().relative_to(repo.root.resolve()).as_posix() if full.exists() else entry)
        except ValueError:
            raise GitpackError(f"--include {entry} is outside the repository {repo.root}; give a path inside it")
    return out


def _left_out_warning(excluded: list[tuple[str, str]]) -> list[str]:
    """One line for the untracked files a save left out by size (never for archives, which always stay out)."""
    from .snapshot.exclude import is_size_exclusion

    paths = [p for p, why in excluded if is_size_exclusion(why)]
    if not paths:
        return []
    shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return [f"left {len(paths)} untracked file(s) out of the snapshot by size: {shown}; info.excluded says why; "
            "include=[PATH] (or git config --add gitpack.include PATH) takes one anyway"]


def _policy_trace(data: bytes, modules: dict, buffers: int, table: tensortable.TensorTable | None,
                  allowed: AllowList) -> gate.Trace:
    """The trust gate's dry run of the pickle just written, under the policy a load here would use."""
    from .pickling import gate

    return gate.trace(data, Policy(allowed), modules=list(modules), buffers=buffers, table=table)


def _policy_warnings(found: gate.Trace) -> list[str]:
    """What the default load policy would refuse in this pickle, said at save time rather than at load: every
    refused global, and the flags (or the one package-level allow) that would admit them."""
    text = found.refusal()
    if text is None:
        return []
    from .pickling import refusals

    return [f"the default load policy will refuse {text}{refusals.hint(found)}"]


def _capture_trailers(captured: dict[str, Any], stale: list) -> dict[str, str]:
    """``Gitpack-Capture`` (the tree as one-line JSON, when it is not huge) and ``Gitpack-Allow-Stale``."""
    out = {}
    text = json.dumps(captured, sort_keys=True, separators=(",", ":"), default=str)
    if captured.get("objects") and len(text) <= CAPTURE_TRAILER_LIMIT:
        out["Capture"] = text
    if stale:
        out["Allow-Stale"] = "; ".join(str(s) for s in stale)
    return out


def _code_as_imported(repo: Any, tree: str) -> dict[str, bytes]:
    """``{path: source as imported}`` for the snapshot's modules edited (or deleted) since this process imported
    them; a file the snapshot leaves out (ignored, too large) stays out."""
    changed = sources.imported_differences(repo.root)
    gone = [rel for rel in changed if repo.object_type(f"{tree}:{rel}") != "blob" and not (repo.root / rel).exists()]
    skip = snapshot.pinned.ignored(repo, gone)
    return {rel: data for rel, data in changed.items()
            if repo.object_type(f"{tree}:{rel}") == "blob" or (rel in gone and rel not in skip)}


def _message_with_notes(message: str | None, captured: dict[str, Any], as_imported: list[str],
                        unpinned: list[dict[str, str]]) -> str | None:
    """The user's message plus, for plain ``git log``: one readable line per constructed object, the files pinned
    as imported, and the modules whose code is not pinned."""
    blocks = [message.strip()] if message and message.strip() else []
    lines = summary_lines(captured)
    if lines:
        blocks.append("Constructed with:\n" + "\n".join(f"    {line}" for line in lines))
    if as_imported:
        blocks.append("Pinned as imported (the working tree has since changed):\n"
                      + "\n".join(f"    {rel}" for rel in as_imported))
    if unpinned:
        blocks.append("Not pinned (imported from outside this repository, and different):\n"
                      + "\n".join(f"    {u['module']} from {u['file']}" for u in unpinned))
    return "\n\n".join(blocks) or None

"""Named, versioned artifacts kept in the repository's own object database.

Everything is plain git objects under refs of gitpack's own, so any remote
carries them (``gitpack push``/``pull``), ``git gc`` keeps them, and no server
beyond git is needed::

    refs/gitpack/artifacts/NAME/vN    -> version commit
    refs/gitpack/aliases/NAME/ALIAS   -> version commit   (moveable; ``latest`` follows every save)

A *version commit* has a one-entry tree, ``archive.gitpack`` (the archive's
bytes, stored by ``git hash-object -w`` straight from the file, never read into
Python; or, above ``gitpack.lfsThreshold``, a Git LFS pointer to them: see
:mod:`gitpack.lfs`), and one parent: the snapshot commit whose code the archive runs.  So
fetching a version fetches its code, and the version cannot outlive it.  Its
message carries ``Gitpack-*`` trailers (snapshot, object type, digest, size,
params) so that :meth:`Store.versions` is one ``for-each-ref`` with no blob
reads.  The version *number* lives only in the ref name: renumbering after a
concurrent push (see :mod:`gitpack.sync`) moves a ref and rewrites nothing.

Telling a name from a path
--------------------------
``load``, ``inspect`` and ``export`` take either.  The rule, in order:

1. An argument containing a path separator (``/``, or ``\\`` on Windows), or
   not of the form ``NAME[@VERSION|@ALIAS]``, is a **path**.  NAME is letters,
   digits, ``_``, ``.`` and ``-``, starting with a letter or digit; VERSION is
   ``v1``, ``v2``, ...; ALIAS is a NAME-like word such as ``latest``.
2. Otherwise it is an **artifact reference** -- unless a file of exactly that
   name exists in the current directory.  Then it is that file if the store has
   no artifact called NAME, and an **error** if it has one: write ``./NAME``
   for the file or ``NAME@latest`` for the artifact.  gitpack never guesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import lfs, progress, trailers
from .archive import read_manifest
from .errors import GitError, NotARepoError, StoreError
from .fsutil import TEMP_MARK, owner_tag, remove_stale, removed_on_failure, writing
from .git import Repo, parse_commit_object, runner
from .history import iso_date
from .isolation import cache, cache_root
from .snapshot.branch import damaged

ARTIFACTS = "refs/gitpack/artifacts/"
ALIASES = "refs/gitpack/aliases/"
ARCHIVE_ENTRY = "archive.gitpack"
LATEST = "latest"
CHUNK = 8 << 20
# zlib level for stored archives.  Tensor bytes barely compress, and deflating
# them dominates a store save (256 MiB: 7.3 s at git's default level, 1.4 s
# stored); `git config gitpack.compression 6` trades that back for space.
DEFAULT_COMPRESSION = "0"
TEMP_GLOB = "*" + TEMP_MARK + "*"
CACHE_HINT = " (gitpack's cache: set GITPACK_CACHE to a writable directory with room)"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
_VERSION = re.compile(r"v([1-9][0-9]{0,8})")
_REF_ARG = re.compile(r"(?P<name>[^@/\\]+)(?:@(?P<selector>[^@/\\]+))?")
NAME_RULE = "letters, digits, '_', '.' and '-', starting with a letter or digit (at most 100)"


# ------------------------------------------------------------------ names
def validate_name(name: str) -> str:
    """*name* if it can name an artifact (and be a ref component), else :class:`StoreError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or name.endswith((".", ".lock")):
        raise StoreError(f"{name!r} is not a valid artifact name; use {NAME_RULE}")
    return name


def validate_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _NAME.fullmatch(alias) or ".." in alias or alias.endswith((".", ".lock")):
        raise StoreError(f"{alias!r} is not a valid alias; use {NAME_RULE}")
    if _VERSION.fullmatch(alias):
        raise StoreError(f"{alias!r} looks like a version number; pick an alias such as 'prod' or 'best'")
    return alias


@dataclass(frozen=True)
class Reference:
    """A parsed ``NAME[@SELECTOR]``; selector None means ``latest``."""

    name: str
    selector: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.selector}" if self.selector else self.name


def parse_reference(text: str) -> Reference | None:
    """The artifact reference *text* spells, or None when by rule 1 it can only be a path."""
    if not isinstance(text, str) or "/" in text or os.sep in text or (os.altsep and os.altsep in text):
        return None
    m = _REF_ARG.fullmatch(text)
    if not m:
        return None
    name, selector = m["name"], m["selector"]
    try:
        validate_name(name)
        if selector is not None and not _VERSION.fullmatch(selector):
            validate_alias(selector)
    except StoreError:
        return None
    return Reference(name, selector)


# ------------------------------------------------------------------ versions
@dataclass(frozen=True)
class ArtifactVersion:
    """One stored version: its ref number, its version commit and what that commit records."""

    name: str
    number: int
    commit: str  # the version commit
    snapshot: str  # its parent: the snapshot commit whose code the archive runs
    date: str
    size: int
    digest: str
    object_type: str
    params: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.number}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": f"v{self.number}", "aliases": list(self.aliases), "date": self.date,
            "snapshot": self.snapshot, "version_commit": self.commit, "size": self.size, "digest": self.digest,
            "object": self.object_type, "params": self.params,
        }


def version_ref(name: str, number: int) -> str:
    return f"{ARTIFACTS}{name}/v{number}"


def alias_ref(name: str, alias: str) -> str:
    return f"{ALIASES}{name}/{alias}"


def split_store_ref(ref: str) -> tuple[str, str, str] | None:
    """``refs/gitpack/artifacts/clf/v2`` -> ("artifacts", "clf", "v2"); None for anything else."""
    for kind, prefix in (("artifacts", ARTIFACTS), ("aliases", ALIASES)):
        if ref.startswith(prefix):
            parts = ref[len(prefix):].split("/")
            if len(parts) == 2 and all(parts):
                return kind, parts[0], parts[1]
    return None


def version_number(selector: str) -> int | None:
    m = _VERSION.fullmatch(selector)
    return int(m[1]) if m else None


class Store:
    """The artifacts of one repository."""

    def __init__(self, repo: Repo):
        self.repo = repo

    # -------------------------------------------------------------- reading
    def refs(self, *prefixes: str) -> dict[str, str]:
        """``{refname: sha}`` under each of *prefixes* (a ref path, matched up to a slash), in one git call."""
        out = self.repo.git("for-each-ref", "--format=%(refname) %(objectname)", *prefixes)
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def aliases(self, name: str | None = None) -> dict[str, dict[str, str]]:
        """``{name: {alias: version commit}}``."""
        out: dict[str, dict[str, str]] = {}
        for ref, sha in self.refs(ALIASES + name if name else ALIASES.rstrip("/")).items():
            parts = split_store_ref(ref)
            if parts:
                out.setdefault(parts[1], {})[parts[2]] = sha
        return out

    def versions(self, name: str | None = None) -> list[ArtifactVersion]:
        """Every version (of *name*, or of all names), by name then newest first."""
        # NUL-separated fields (a commit message cannot hold NUL, so a pushed message cannot forge a row), and
        # the raw date read here: git aborts the whole listing on a date before the epoch in iso-strict.
        fields = ("%(refname)", "%(objectname)", "%(committerdate:raw)", "%(parent)", "%(contents)")
        prefix = ARTIFACTS + name if name else ARTIFACTS.rstrip("/")
        try:
            raw = self.repo.git("for-each-ref", "--format=" + "%00".join(fields) + "%00", prefix, strip=False)
        except GitError:
            self.check_refs(prefix)  # a ref pointing at a missing object: name it, and how to mend it
            raise
        aliases = self.aliases(name)
        found = []
        tokens = raw.split("\0")
        for i in range(0, len(tokens) - 1, len(fields)):
            ref, sha, raw_date, parents, body = tokens[i:i + len(fields)]
            ref, date = ref.lstrip("\n"), iso_date(raw_date)
            parts = split_store_ref(ref)
            number = version_number(parts[2]) if parts else None
            if parts is None or number is None:
                continue  # not a ref gitpack wrote; ignore rather than guess
            t = trailers.parse_trailers(body)
            params, _ = trailers.parse_json(t.get("params"), {})
            params = params if isinstance(params, dict) else {}
            try:
                size = int(t.get("size", "0"))
            except ValueError:
                size = 0
            vname = parts[1]
            names = tuple(sorted(a for a, target in aliases.get(vname, {}).items() if target == sha))
            found.append(ArtifactVersion(vname, number, sha, (parents.split() or [""])[0], date, size,
                                         t.get("digest", ""), t.get("object", ""), params, names))
        found.sort(key=lambda v: (v.name, -v.number))
        return found

    def check_refs(self, prefix: str = "refs/gitpack") -> None:
        """:class:`DamagedRefError` naming the first ref under *prefix* whose commit is missing (`gitpack repair`)."""
        for ref, sha in sorted(self.refs(prefix).items()):
            kind = self.repo.object_type(sha)
            if kind != "commit":
                raise damaged(ref, sha, kind)

    def has(self, name: str) -> bool:
        return bool(self.repo.git("for-each-ref", "--count=1", "--format=%(refname)", ARTIFACTS + name))

    def resolve(self, ref: Reference | str) -> ArtifactVersion:
        """The version ``NAME``, ``NAME@vN`` or ``NAME@ALIAS`` names; StoreError saying what exists otherwise."""
        if isinstance(ref, str):
            parsed = parse_reference(ref)
            if parsed is None:
                raise StoreError(
                    f"{ref!r} is not an artifact reference; write NAME, NAME@v2 or NAME@latest ({NAME_RULE})"
                )
            ref = parsed
        validate_name(ref.name)
        versions = {v.number: v for v in self.versions(ref.name)}
        if not versions:
            raise StoreError(
                f"no artifact named {ref.name!r} in {self.repo.root}; `gitpack list` shows what is here, "
                "`gitpack pull` fetches artifacts saved in other clones (or load with --fetch)"
            )
        have = ", ".join(f"v{n}" for n in sorted(versions))
        selector = ref.selector or LATEST
        number = version_number(selector)
        if number is not None:
            if number in versions:
                return versions[number]
            raise StoreError(
                f"{ref.name} has no version {selector} (it has {have}); `gitpack pull` if it was saved in another clone"
            )
        target = self.aliases(ref.name).get(ref.name, {}).get(selector)
        if target is None:
            if selector == LATEST:
                return versions[max(versions)]
            known = sorted(self.aliases(ref.name).get(ref.name, {}))
            raise StoreError(
                f"{ref.name} has no alias {selector!r} (aliases: {', '.join(known) or 'none'}; versions: {have}); "
                "`gitpack pull` if it was set in another clone"
            )
        for version in versions.values():
            if version.commit == target:
                return version
        raise StoreError(
            f"alias {ref.name}@{selector} points at {target[:12]}, which is no version of {ref.name}; "
            f"move it with `gitpack alias {ref.name}@vN {selector}`"
        )

    # -------------------------------------------------------------- writing
    def version_updates(
        self, name: str, archive: Path, *, snapshot: str, digest: str, object_type: str, params: dict
    ) -> tuple[int, list[tuple[str, str | None, str | None]]]:
        """The next version number of *name* and the ref updates that store *archive* as it.

        The updates create ``vN`` (compare-and-swap: it must not exist yet) and move ``latest`` from where it
        is now; the save moves them in the same transaction as the snapshot branch
        (:func:`gitpack.snapshot.branch.commit`), so a save that fails or is killed leaves neither a log entry
        without its version nor a ``latest`` one version behind.  Another save of *name* that wins the race
        makes the transaction fail, and the save retries with the next number.

        The bytes go in with ``hash-object -w`` from the file (git streams files
        above ``core.bigFileThreshold`` straight into a pack), deflated at
        ``gitpack.compression`` (default 0).  Above ``gitpack.lfsThreshold`` the
        bytes go into Git LFS instead (:meth:`_archive_entry`).
        """
        validate_name(name)
        size = archive.stat().st_size
        blob = self._archive_entry(name, archive, size)  # sealed with this attempt's commit: new bytes each try
        tree = self.repo.git("mktree", input=f"100644 blob {blob}\t{ARCHIVE_ENTRY}\n".encode())
        params_json = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
        message = "\n".join([
            f"gitpack artifact {name}", "",
            f"{trailers.TRAILER_PREFIX}Artifact: {name}",
            f"{trailers.TRAILER_PREFIX}Snapshot: {snapshot}",
            f"{trailers.TRAILER_PREFIX}Object: {object_type}",
            f"{trailers.TRAILER_PREFIX}Digest: {digest}",
            f"{trailers.TRAILER_PREFIX}Size: {size}",
            f"{trailers.TRAILER_PREFIX}Params: {params_json}",
        ]) + "\n"
        commit = self.repo.commit_tree([tree, "-p", snapshot, "-m", message])
        # Only names and targets: a damaged version ref still holds its number.  One git call for both.
        found = self.refs(ARTIFACTS + name, alias_ref(name, LATEST))
        taken = [version_number(parts[2]) for parts in map(split_store_ref, found)
                 if parts is not None and parts[0] == "artifacts"]
        number = max((n for n in taken if n is not None), default=0) + 1
        latest = found.get(alias_ref(name, LATEST))
        return number, [(version_ref(name, number), commit, None), (alias_ref(name, LATEST), commit, latest)]

    def set_alias(self, ref: Reference | str, alias: str) -> ArtifactVersion:
        """Point ``NAME@ALIAS`` at the version *ref* names (e.g. ``clf@v2`` -> ``prod``)."""
        validate_alias(alias)
        version = self.resolve(ref)
        self._update_ref(alias_ref(version.name, alias), version.commit)
        return self.resolve(Reference(version.name, f"v{version.number}"))

    def _update_ref(self, ref: str, new: str, old: str | None = None) -> None:
        args = ["-c", "core.logAllRefUpdates=false", "update-ref", ref, new]
        if old is not None:
            args.append(old)
        self.repo.git(*args)

    # -------------------------------------------------------------- archives
    def archive_blob(self, version: ArtifactVersion) -> tuple[str, int]:
        """(blob sha, size) of the version's archive; StoreError when the version commit is not gitpack's."""
        kind, raw = self.repo.read_object(version.commit)
        headers, _ = parse_commit_object(raw) if kind == "commit" else ({}, "")
        entries = self.repo.read_tree(headers["tree"][0]) if headers.get("tree") else []
        blob = next((e.sha for e in entries if e.name == ARCHIVE_ENTRY and e.kind == "blob"), None)
        if blob is None:
            raise StoreError(
                f"{version.label} ({version.commit[:12]}) holds no {ARCHIVE_ENTRY}; it was not written by gitpack"
            )
        size = self.repo.object_size(blob)  # the long-lived reader: no process of its own
        if size is None:
            raise StoreError(f"{version.label} ({version.commit[:12]}) names an archive blob {blob[:12]} that is "
                             "missing; the repository may be damaged (`git fsck`, `gitpack repair`)")
        return blob, size

    def _archive_entry(self, name: str, archive: Path, size: int) -> str:
        """The blob the version's tree holds: the archive itself, or an LFS pointer to it (:mod:`gitpack.lfs`)."""
        if lfs.wanted(self.repo, size):
            pointer = lfs.store_file(self.repo, archive, f"storing {name} in Git LFS")
            return self.repo.git("hash-object", "-w", "--no-filters", "--stdin", input=pointer.text().encode())
        level = self.repo.config("gitpack.compression") or DEFAULT_COMPRESSION
        return self.repo.git("-c", f"core.compression={level}", "hash-object", "-w", "--no-filters", "--", str(archive))

    def archive_file(self, version: ArtifactVersion, *, remote: str | None = None) -> Path:
        """A file holding the version's archive.

        An archive in Git LFS is read straight from its object file, downloaded
        from *remote* (default: upstream, else origin) the first time and
        hashed against its pointer then.  Any other is a content-addressed copy
        in the cache, written once, named by its blob id and rehashed as it
        streams out of git, so a cached file is exactly the stored blob.  Either
        way the archive's own digests and the snapshot commit vouch for it at load.
        """
        blob, size = self.archive_blob(version)
        pointer = lfs.read_pointer(self.repo, blob, size)
        if pointer is not None:
            if lfs.has_object(self.repo, pointer):
                dest = lfs.object_path(self.repo, pointer)
            else:
                dest = lfs.fetch(self.repo, pointer, version.commit, remote=remote, label=version.label)
        else:
            dest = cache_root() / "store" / f"{blob}.gitpack"
            try:
                cached = dest.stat().st_size == size
            except FileNotFoundError:
                cached = False
            if not cached:
                with writing(dest.parent, CACHE_HINT):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    remove_stale(dest.parent, "." + TEMP_GLOB)  # copies that killed loads left
                    self.copy_blob(blob, size, dest, f"reading {version.label}")
                cache.note_written()  # only a new copy grows the cache: the load's settle() checks its size
        if read_manifest(dest).get("commit") != version.snapshot:
            raise StoreError(
                f"{version.label} ({version.commit[:12]}) holds an archive of another snapshot than its parent "
                f"{version.snapshot[:12]}; it was not written by gitpack, do not trust it"
            )
        return dest

    def copy_blob(self, blob: str, size: int, dest: Path, description: str) -> None:
        """Stream a blob into *dest* (atomically), verifying its git object id on the way."""
        h = hashlib.sha1() if len(blob) == 40 else hashlib.sha256()
        h.update(b"blob %d\0" % size)
        fd, tmp = tempfile.mkstemp(prefix="." + dest.name + TEMP_MARK + owner_tag(), dir=str(dest.parent))
        with removed_on_failure(tmp):
            proc = runner.start(["cat-file", "blob", blob], cwd=self.repo.root, stderr=False)
            with os.fdopen(fd, "wb") as out, progress.Bar(description, size) as bar:
                assert proc.stdout is not None
                while chunk := proc.stdout.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    bar.advance(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if proc.wait() != 0:
                raise StoreError(f"git could not read blob {blob[:12]}; the repository may be damaged (`git fsck`)")
            if h.hexdigest() != blob:
                raise StoreError(f"blob {blob[:12]} does not match its id; the repository is damaged (`git fsck`)")
            os.replace(tmp, dest)


# ------------------------------------------------------------------ name or path
def locate(target: str | os.PathLike, *, repo: str | os.PathLike | Repo | None = None,
           remote: str | None = None) -> tuple[Path, ArtifactVersion | None]:
    """The archive file *target* means, by the documented rule, and the version when it is an artifact.

    ``os.PathLike`` objects are always paths.  An artifact is read from its Git
    LFS object (downloaded from *remote* when missing) or copied into the cache
    (once per blob), so the ordinary archive reader can read it.
    """
    if not isinstance(target, str):
        return Path(target), None
    ref = parse_reference(target)
    if ref is None:
        return Path(target), None
    is_file = os.path.lexists(target)
    try:
        git_repo = Repo.discover(repo)
    except NotARepoError:
        if is_file:
            return Path(target), None
        raise StoreError(
            f"{target}: no such archive file, and no git repository here to hold an artifact of that name; "
            "check the path or run from the repository"
        ) from None
    try:
        store = Store(git_repo)
        if not store.has(ref.name):
            if is_file:
                return Path(target), None
            raise StoreError(
                f"{target}: no such archive file, and no artifact named {ref.name!r} in {git_repo.root}; "
                "`gitpack list` shows the artifacts here, `gitpack pull` fetches ones saved elsewhere (or use --fetch)"
            )
        if is_file:
            raise StoreError(
                f"{target!r} is both a file here and an artifact in the store; write ./{target} for the file "
                f"or {ref.name}@latest (or @vN) for the artifact"
            )
        version = store.resolve(ref)
        return store.archive_file(version, remote=remote), version
    finally:
        git_repo.close()

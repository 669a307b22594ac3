"""Comparing saves: parameters, environment and code, read from manifests and git, never by unpickling.

``compare(A, B)`` reports

* parameter changes by nested path: the explicit ``params`` (``params.lr``) and
  the captured constructor arguments (``$.layer(n_hidden)``, ``$.decoder(d)[2]``,
  ``$.layer(n_embed) default`` when only the default marking changed);
* environment changes (Python, platform, package versions);
* every path that differs between the two snapshots (``git diff --name-status
  -M``), always, whatever the objects use: code a snapshot adds or changes
  (a package's ``__init__.py``, a root ``torch.py`` that would shadow ``import
  torch`` inside the snapshot) must never hide behind "no changes";
* the code diff between the two snapshot commits, limited to the repo modules
  either object uses (``all_files=True`` for every file).

Manifests are untrusted JSON: every field may have any type or depth; a
module path that git cannot take (a NUL byte, ``..``) is skipped with a note.

With no B, A's snapshot is compared with the current working tree (written as a
tree object, nothing committed) and with the current environment: "what
changed since this model was saved".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import environment, textsafe
from .archive import read_manifest
from .git import Repo
from .history import require_snapshot_commit
from .isolation.namespace import installed_elsewhere
from .moves import module_moves
from .snapshot import limits_from_config, write_tree

WORKING_TREE = "working tree"
COMPARE_DEPTH = 64  # nested levels compared key by key; below that a subtree is compared whole
VALUE_DEPTH = 32  # nested levels of a changed value kept in the report (deeper: a placeholder)
PATHSPEC_BATCH = 500  # paths per git diff call (the argument list stays far below the system's limit)
FILES_SHOWN = 200  # changed paths listed in the text report before "... N more" (JSON lists them all)


@dataclass(frozen=True)
class FileChange:
    """One path that differs between the snapshots.

    git's status letter (``A M D R C T``), the path, and the old path of a rename.
    """

    status: str
    path: str
    old_path: str | None = None
    shadows: str | None = None  # the installed or standard module a new top-level module would hide

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "path": self.path}
        if self.old_path is not None:
            out["old_path"] = self.old_path
        if self.shadows is not None:
            out["shadows"] = self.shadows
        return out


@dataclass(frozen=True)
class Change:
    """One difference: *kind* is 'added', 'removed' or 'changed'; *path* is a list of keys and indices."""

    path: tuple
    kind: str
    old: Any = None
    new: Any = None

    @property
    def label(self) -> str:
        return path_label(self.path)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": list(self.path), "label": self.label, "kind": self.kind}
        if self.kind != "added":
            out["old"] = self.old
        if self.kind != "removed":
            out["new"] = self.new
        return out


@dataclass
class DiffReport:
    a: dict[str, Any]
    b: dict[str, Any]
    params: list[Change] = field(default_factory=list)
    environment: list[Change] = field(default_factory=list)
    code_paths: list[str] | None = None  # None: every file
    code: str = ""
    files: list[FileChange] = field(default_factory=list)  # every changed path, whatever the scope of `code`
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "params": [c.as_json() for c in self.params],
            "environment": [c.as_json() for c in self.environment],
            "files": [f.as_json() for f in self.files],
            "code": {"paths": self.code_paths, "all": self.code_paths is None, "diff": self.code},
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- nested comparison
def _suffix(key: Any) -> str:
    return f"[{key}]" if isinstance(key, int) else f".{key}"


def path_label(path: tuple) -> str:
    """A change's path as people write it.

    ``("capture", "$.layer", "args", "n_hidden")`` -> ``$.layer(n_hidden)``; ``("params", "lr")`` -> ``params.lr``.
    """
    if not path:
        return ""
    head, rest = path[0], list(path[1:])
    if head == "capture" and rest:
        obj, rest = rest[0], rest[1:]
        if not rest:
            return str(obj)
        section, rest = rest[0], rest[1:]
        if section in ("args", "defaults", "unknown") and rest:
            label = f"{obj}({rest[0]})" + "".join(_suffix(k) for k in rest[1:])
            return label + {"args": "", "defaults": " default", "unknown": " unknown"}[section]
        return f"{obj} {section}" + "".join(_suffix(k) for k in rest)
    if head == "environment" and rest:
        if rest[0] == "packages" and len(rest) > 1:
            return str(rest[1])
        return ".".join(str(k) for k in rest)
    return str(head) + "".join(_suffix(k) for k in rest)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality (types must match: 1 is not 1.0 here), without recursion."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if x.keys() != y.keys():
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif x != y:
            return False
    return True


def _kept(value: Any) -> Any:
    return textsafe.prune(value, VALUE_DEPTH) if isinstance(value, (dict, list)) else value


def compare_values(path: tuple, old: Any, new: Any) -> list[Change]:
    """Differences between two JSON values, by nested path (dict keys, list indices).

    Below COMPARE_DEPTH levels a subtree is compared whole (one change), and
    values in the changes are cut at VALUE_DEPTH levels: a manifest nested a
    thousand levels deep is reported, not recursed into.
    """
    if len(path) > COMPARE_DEPTH:
        return [] if _equal(old, new) else [Change(path, "changed", old=_kept(old), new=_kept(new))]
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            if key not in new:
                out.append(Change(path + (key,), "removed", old=_kept(old[key])))
            elif key not in old:
                out.append(Change(path + (key,), "added", new=_kept(new[key])))
            else:
                out += compare_values(path + (key,), old[key], new[key])
        return out
    if isinstance(old, list) and isinstance(new, list):
        out = []
        for i in range(max(len(old), len(new))):
            if i >= len(new):
                out.append(Change(path + (i,), "removed", old=_kept(old[i])))
            elif i >= len(old):
                out.append(Change(path + (i,), "added", new=_kept(new[i])))
            else:
                out += compare_values(path + (i,), old[i], new[i])
        return out
    if not _equal(old, new):
        return [Change(path, "changed", old=_kept(old), new=_kept(new))]
    return []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _names(value: Any) -> dict[str, bool]:
    """A list of names as ``{name: True}`` (compared by name); anything else (a string, a number) as one entry."""
    if isinstance(value, list):
        return {n if isinstance(n, str) else textsafe.json_value(n): True for n in value}
    return {} if value in (None, "", 0, False) else {textsafe.json_value(value): True}


def _normal_capture(tree: Any) -> dict[str, Any]:
    """Capture entries with the default and unknown lists as sets, so they compare by name."""
    out = {}
    for key, entry in _dict(_dict(tree).get("objects")).items():
        if not isinstance(entry, dict):
            out[key] = entry
            continue
        out[key] = {
            "class": entry.get("class"),
            "origin": entry.get("origin"),
            "args": entry.get("args") or {},
            "defaults": _names(entry.get("defaults")),
            "unknown": _names(entry.get("unknown")),
        }
    return out


def object_type(manifest: dict[str, Any]) -> Any:
    """The manifest's ``object.type`` (whatever JSON it is), or None when ``object`` is not an object."""
    return _dict(manifest.get("object")).get("type")


def compare_manifests(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[Change], list[Change]]:
    """(parameter changes, environment changes) between two manifests."""
    params = compare_values(("object",), object_type(a), object_type(b))
    params += compare_values(("params",), a.get("params") or {}, b.get("params") or {})
    params += compare_values(("capture",), _normal_capture(a.get("capture")), _normal_capture(b.get("capture")))
    env = compare_values(("environment",), a.get("environment") or {}, b.get("environment") or {})
    return params, env


# --------------------------------------------------------------------------- code
def valid_path(path: Any) -> bool:
    """A repo-relative path git can be given: a non-empty string, no NUL, not absolute, no ``.``/``..``/empty part."""
    return (isinstance(path, str) and 0 < len(path) <= 4096 and "\0" not in path and not path.startswith("/")
            and all(part not in ("", ".", "..") for part in path.split("/")))


def module_paths(manifest: dict[str, Any], label: str = "the archive") -> tuple[list[str], list[str]]:
    """(repo-relative files of the modules the saved object uses, notes on module paths skipped as invalid).

    A module's packages run too when it is imported, so the ``__init__.py`` of
    each package above a module (below its import root) counts as used.
    """
    paths, notes = set(), []
    modules = manifest.get("modules")
    for name, info in (modules.items() if isinstance(modules, dict) else ()):
        path = info.get("path") if isinstance(info, dict) else None
        if path is None:
            continue
        if valid_path(path):
            paths.add(path)
            root = info.get("root")
            root = root.rstrip("/") if isinstance(root, str) and valid_path(root.rstrip("/")) else ""
            rel = path[len(root) + 1:] if root and path.startswith(root + "/") else path
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                paths.add("/".join(([root] if root else []) + parts[:i] + ["__init__.py"]))
        else:
            notes.append(f"skipped module {textsafe.line(name, 200)} of {textsafe.line(label, 200)}: "
                         f"its path {textsafe.json_value(path, 200)} is not a valid path in a snapshot")
    return sorted(paths), notes


def used_paths(*manifests: dict[str, Any]) -> list[str]:
    """Repo-relative files of the modules the saved objects use (invalid paths left out)."""
    return sorted({p for m in manifests for p in module_paths(m)[0]})


def changed_files(repo: Repo, old: str, new: str, paths: list[str] | None = None,
                  renames: str = "-M") -> list[FileChange]:
    """Every path that differs between *old* and *new* (commits or trees), renames detected (-M), or only
    among *paths* (with *renames* ``-M1%``: a pair :mod:`gitpack.moves` knows to be one module moved).

    Read with ``-z``: any byte a file name may hold (a newline, a quote) stays
    in its name instead of ending or splitting it.
    """
    spec = [f":(literal){p}" for p in paths] if paths is not None else []
    raw = repo.git("diff", "--no-ext-diff", "--no-textconv", "--name-status", renames, "-z", old, new, "--", *spec,
                   strip=False, binary=True)
    fields = raw.decode("utf-8", "surrogateescape").split("\0")
    out, i = [], 0
    while i < len(fields) - 1:
        status = fields[i]
        if not status:
            break
        if status[:1] in ("R", "C") and i + 2 < len(fields):
            out.append(FileChange(status, fields[i + 2], fields[i + 1]))
            i += 3
        else:
            out.append(FileChange(status, fields[i + 1]))
            i += 2
    return out


def _mark_shadowing(files: list[FileChange], roots: list[str], repo_root: Path) -> list[FileChange]:
    """Mark added (or renamed, copied) files of a top-level module of the snapshot named like an installed one.

    Inside a loaded snapshot ``import torch`` resolves to the snapshot's own
    ``torch.py`` or ``torch/`` first, so such a file replaces the real module.
    """
    seen: dict[str, bool] = {}
    out = []
    for f in files:
        shadows = None
        if f.status[:1] in ("A", "R", "C") and f.path.endswith(".py"):
            for root in roots:
                if root and not f.path.startswith(root + "/"):
                    continue
                rel = f.path[len(root) + 1:] if root else f.path
                top = rel.split("/", 1)[0]
                name = top[:-3] if "/" not in rel else top
                if name not in seen:
                    seen[name] = name.isidentifier() and installed_elsewhere(name)
                if seen[name]:
                    shadows = name
                    break
        out.append(FileChange(f.status, f.path, f.old_path, shadows) if shadows else f)
    return out


def _roots(*manifests: dict[str, Any]) -> list[str]:
    """The import roots the manifests record (valid ones), and the repository root."""
    roots = {""}
    for m in manifests:
        found = m.get("roots")
        for r in found if isinstance(found, list) else []:
            if isinstance(r, str) and valid_path(r.rstrip("/")):
                roots.add(r.rstrip("/"))
    return sorted(roots)


def code_diff(repo: Repo, old: str, new: str, paths: list[str] | None, files: list[FileChange] | None = None,
              moves: dict[str, str] | None = None) -> str:
    """``git diff -M old new`` (commits or trees), limited to *paths* unless it is None.

    Paths go to git as literal pathspecs, a few hundred per call, both sides of a rename in *files* always in
    the same call (else git would show each side alone); invalid ones (see :func:`valid_path`) are never
    passed.  The *moves* (old path: new path, see :mod:`gitpack.moves`) are diffed as renames however much
    they changed.
    """
    moves = moves or {}
    base = ["diff", "--no-ext-diff", "--no-color", "--no-textconv", "-M", old, new, "--"]
    moved = [(a, b) for a, b in sorted(moves.items()) if valid_path(a) and valid_path(b)]
    pairs = "".join(repo.git(*base[:4], "-M1%", *base[5:], f":(literal){a}", f":(literal){b}", strip=False)
                    for a, b in moved)
    skip = {p for pair in moved for p in pair}
    if paths is None:
        return repo.git(*base, ".", *[f":(exclude,literal){p}" for p in sorted(skip)], strip=False) + pairs
    files = files or []
    partner = {f.path: f.old_path for f in files if f.old_path is not None}
    partner.update({f.old_path: f.path for f in files if f.old_path is not None})
    units: list[list[str]] = []
    seen: set[str] = set()
    for p in sorted({p for p in paths if valid_path(p)} - skip):
        if p in seen:
            continue
        unit = [p] + [q for q in [partner.get(p)] if q is not None and valid_path(q) and q not in seen]
        seen.update(unit)
        units.append(unit)
    out: list[str] = []
    batch: list[str] = []
    for unit in units:
        if batch and len(batch) + len(unit) > PATHSPEC_BATCH:
            out.append(repo.git(*base, *[f":(literal){p}" for p in batch], strip=False))
            batch = []
        batch += unit
    if batch:
        out.append(repo.git(*base, *[f":(literal){p}" for p in batch], strip=False))
    return "".join(out) + pairs


def _hunk_paths(files: list[FileChange], used: list[str]) -> list[str]:
    """The changed paths whose hunks are shown: those of used modules, with both sides of their renames."""
    wanted = set(used)
    out = set()
    for f in files:
        if f.path in wanted or (f.old_path is not None and f.old_path in wanted):
            out.add(f.path)
            if f.old_path is not None:
                out.add(f.old_path)
    return sorted(out)


def _with_moves(repo: Repo, old: str, new: str, files: list[FileChange], moves: dict[str, str]) -> list[FileChange]:
    """*files* with each moved module's delete and add replaced by git's rename entry for the pair."""
    if not moves:
        return files
    renamed = {}
    for a, b in moves.items():
        found = [f for f in changed_files(repo, old, new, [a, b], renames="-M1%") if f.old_path == a and f.path == b]
        if found:
            renamed[b] = found[0]
    gone = {a for a, b in moves.items() if b in renamed}
    return [renamed.get(f.path, f) for f in files if not (f.status == "D" and f.path in gone)]


def _archive_rel(repo: Repo, path: Path) -> str | None:
    try:
        return path.resolve().relative_to(repo.root.resolve()).as_posix()
    except (ValueError, OSError):
        return None


def compare(a: str | os.PathLike, b: str | os.PathLike | None = None, *, all_files: bool = False,
            repo: str | os.PathLike | None = None) -> DiffReport:
    """Compare archive *a* with archive *b*, or with the working tree when *b* is None."""
    path_a = Path(a)
    manifest_a = read_manifest(path_a)
    git_repo = Repo.discover(repo)
    try:
        commit_a = require_snapshot_commit(git_repo, manifest_a, path_a)
        side_a = {"archive": str(path_a), "commit": commit_a, "object": object_type(manifest_a)}
        used_a, notes = module_paths(manifest_a, str(path_a))
        manifests: tuple[dict[str, Any], ...]  # A and B, or only A when B is the working tree
        if b is not None:
            path_b = Path(b)
            manifest_b = read_manifest(path_b)
            commit_b = require_snapshot_commit(git_repo, manifest_b, path_b)
            side_b = {"archive": str(path_b), "commit": commit_b, "object": object_type(manifest_b)}
            used_b, notes_b = module_paths(manifest_b, str(path_b))
            notes += notes_b
            params, env = compare_manifests(manifest_a, manifest_b)
            old, new, manifests = commit_a, commit_b, (manifest_a, manifest_b)
            used = sorted(set(used_a) | set(used_b))
        else:
            exclude = {rel for rel in [_archive_rel(git_repo, path_a)] if rel}
            snap = write_tree(git_repo, limits_from_config(git_repo, exclude=exclude))
            side_b = {"archive": None, "commit": None, "tree": snap.tree, "object": None, "label": WORKING_TREE}
            params = []
            recorded = _dict(_dict(manifest_a.get("environment")).get("packages"))
            env = compare_values(("environment",), manifest_a.get("environment") or {},
                                 environment.describe([k for k in recorded if isinstance(k, str)]))
            old, new, manifests = commit_a, snap.tree, (manifest_a,)
            used = used_a
        files = changed_files(git_repo, old, new)
        moved = module_moves(git_repo, new, [f.path for f in files if f.status == "D"],
                             [f.path for f in files if f.status == "A"], *manifests)
        files = _with_moves(git_repo, old, new, files, moved)
        files = _mark_shadowing(files, _roots(*manifests), git_repo.root)
        paths = None if all_files else used
        hunks = None if all_files else _hunk_paths(files, used)
        text = code_diff(git_repo, old, new, hunks, files, moved) if files else ""
        return DiffReport(side_a, side_b, params, env, paths, text, files, notes)
    finally:
        git_repo.close()


# --------------------------------------------------------------------------- text
def _value(value: Any, limit: int = 120) -> str:
    if isinstance(value, dict) and set(value) == {"$ref"}:
        ref = value["$ref"]
        return f"-> {textsafe.line(ref, limit) if isinstance(ref, str) else textsafe.json_value(ref, limit)}"
    return textsafe.json_value(value, limit)


def _change_line(c: Change) -> str:
    label = textsafe.line(c.label, 300)
    if c.kind == "added":
        return f"  + {label}: {_value(c.new)}"
    if c.kind == "removed":
        return f"  - {label}: {_value(c.old)}"
    return f"  ~ {label}: {_value(c.old)} -> {_value(c.new)}"


def _side(side: dict[str, Any]) -> str:
    if side.get("label") == WORKING_TREE:
        return f"the working tree ({str(side['tree'])[:12]})"
    return f"{textsafe.line(side['archive'], 300)} ({str(side['commit'])[:12]})"


def _file_line(f: FileChange) -> str:
    where = textsafe.line(f.path, 500)
    if f.old_path is not None:
        where = f"{textsafe.line(f.old_path, 500)} -> {where}"
    line = f"  {textsafe.line(f.status, 8):<4} {where}"
    if f.shadows:
        line += f"  (top-level module: shadows `import {textsafe.line(f.shadows, 100)}` inside the snapshot)"
    return line


def format_text(report: DiffReport) -> str:
    """The report for people: parameters, environment, every changed path, then git's unified diff of the code.

    Everything that came from an archive or the repository is shown with its
    control characters escaped, the code diff included.
    """
    lines = [f"gitpack diff: {_side(report.a)} -> {_side(report.b)}"]
    lines += [f"note: {note}" for note in report.notes]
    if report.b.get("label") != WORKING_TREE:
        lines.append("parameters:" if report.params else "parameters: no changes")
        lines += [_change_line(c) for c in report.params]
    lines.append("environment:" if report.environment else "environment: no changes")
    lines += [_change_line(c) for c in report.environment]
    if report.files:
        scope = ""
        if report.code_paths is not None:
            scope = "; code below only for the modules the objects use, --all for every file"
        lines.append(f"files changed ({len(report.files)}{scope}):")
        lines += [_file_line(f) for f in report.files[:FILES_SHOWN]]
        if len(report.files) > FILES_SHOWN:
            lines.append(f"  ... and {len(report.files) - FILES_SHOWN} more (--json lists them all)")
    else:
        lines.append("files changed: none")
    if report.code_paths is None:
        scope = "all files"
    elif report.code_paths:
        shown = [textsafe.line(p, 300) for p in report.code_paths[:20]]
        scope = ", ".join(shown) + (f" and {len(report.code_paths) - 20} more" if len(report.code_paths) > 20 else "")
    else:
        scope = "no repo modules used (use --all for every file)"
    lines.append(f"code ({scope}):" if report.code else f"code ({scope}): no changes")
    text = "\n".join(lines) + "\n"
    if report.code:
        code = textsafe.block(report.code)
        text += code if code.endswith("\n") else code + "\n"
    return text

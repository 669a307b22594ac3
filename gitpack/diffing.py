"""Comparing saves: parameters, environment and code, read from manifests and git, never by unpickling.

``compare(A, B)`` reports

* parameter changes by nested path: the explicit ``params`` (``params.lr``) and
  the captured constructor arguments (``$.layer(n_hidden)``, ``$.decoder(d)[2]``,
  ``$.layer(n_embed) default`` when only the default marking changed);
* environment changes (Python, platform, package versions);
* the code diff between the two snapshot commits, limited to the repo modules
  either object uses (``all_files=True`` for every file).

With no B, A's snapshot is compared with the current working tree (written as a
tree object, nothing committed) and with the current environment: "what
changed since this model was saved".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import environment
from .audit import require_snapshot_commit
from .archive import read_manifest
from .gitrepo import DEFAULT_SIZE_CAP, Repo

WORKING_TREE = "working tree"


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

    def as_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "params": [c.as_json() for c in self.params],
            "environment": [c.as_json() for c in self.environment],
            "code": {"paths": self.code_paths, "all": self.code_paths is None, "diff": self.code},
        }


# --------------------------------------------------------------------------- nested comparison
def _suffix(key: Any) -> str:
    return f"[{key}]" if isinstance(key, int) else f".{key}"


def path_label(path: tuple) -> str:
    """``("capture", "$.layer", "args", "n_hidden")`` -> ``$.layer(n_hidden)``; ``("params", "lr")`` -> ``params.lr``."""
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


def compare_values(path: tuple, old: Any, new: Any) -> list[Change]:
    """Differences between two JSON values, by nested path (dict keys, list indices)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            if key not in new:
                out.append(Change(path + (key,), "removed", old=old[key]))
            elif key not in old:
                out.append(Change(path + (key,), "added", new=new[key]))
            else:
                out += compare_values(path + (key,), old[key], new[key])
        return out
    if isinstance(old, list) and isinstance(new, list):
        out = []
        for i in range(max(len(old), len(new))):
            if i >= len(new):
                out.append(Change(path + (i,), "removed", old=old[i]))
            elif i >= len(old):
                out.append(Change(path + (i,), "added", new=new[i]))
            else:
                out += compare_values(path + (i,), old[i], new[i])
        return out
    if type(old) is not type(new) or old != new:
        return [Change(path, "changed", old=old, new=new)]
    return []


def _normal_capture(tree: Any) -> dict[str, Any]:
    """Capture entries with the default and unknown lists as sets, so they compare by name."""
    out = {}
    for key, entry in ((tree or {}).get("objects") or {}).items():
        out[key] = {
            "class": entry.get("class"),
            "origin": entry.get("origin"),
            "args": entry.get("args") or {},
            "defaults": {name: True for name in entry.get("defaults") or ()},
            "unknown": {name: True for name in entry.get("unknown") or ()},
        }
    return out


def compare_manifests(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[Change], list[Change]]:
    """(parameter changes, environment changes) between two manifests."""
    params = compare_values(("object",), (a.get("object") or {}).get("type"), (b.get("object") or {}).get("type"))
    params += compare_values(("params",), a.get("params") or {}, b.get("params") or {})
    params += compare_values(("capture",), _normal_capture(a.get("capture")), _normal_capture(b.get("capture")))
    env = compare_values(("environment",), a.get("environment") or {}, b.get("environment") or {})
    return params, env


# --------------------------------------------------------------------------- code
def used_paths(*manifests: dict[str, Any]) -> list[str]:
    """Repo-relative files of the modules the saved objects use."""
    paths = set()
    for m in manifests:
        for info in (m.get("modules") or {}).values():
            if isinstance(info, dict) and isinstance(info.get("path"), str):
                paths.add(info["path"])
    return sorted(paths)




def code_diff(repo: Repo, old: str, new: str, paths: list[str] | None) -> str:
    """``git diff old new`` (commits or trees), limited to *paths* unless it is None."""
    if paths is not None and not paths:
        return ""
    args = ["diff", "--no-ext-diff", "--no-color", "--no-textconv", old, new, "--"]
    if paths is not None:
        args += [f":(literal){p}" for p in paths]
    return repo.git(*args, strip=False)


def _archive_rel(repo: Repo, path: Path) -> str | None:
    try:
        return path.resolve().relative_to(repo.root.resolve()).as_posix()
    except ValueError:
        return None


def compare(a: str | os.PathLike, b: str | os.PathLike | None = None, *, all_files: bool = False,
            repo: str | os.PathLike | None = None) -> DiffReport:
    """Compare archive *a* with archive *b*, or with the working tree when *b* is None."""
    path_a = Path(a)
    manifest_a = read_manifest(path_a)
    git_repo = Repo.discover(repo)
    try:
        commit_a = require_snapshot_commit(git_repo, manifest_a, path_a)
        side_a = {"archive": str(path_a), "commit": commit_a, "object": (manifest_a.get("object") or {}).get("type")}
        if b is not None:
            path_b = Path(b)
            manifest_b = read_manifest(path_b)
            commit_b = require_snapshot_commit(git_repo, manifest_b, path_b)
            side_b = {"archive": str(path_b), "commit": commit_b, "object": (manifest_b.get("object") or {}).get("type")}
            params, env = compare_manifests(manifest_a, manifest_b)
            paths = None if all_files else used_paths(manifest_a, manifest_b)
            text = code_diff(git_repo, commit_a, commit_b, paths)
        else:
            cap = int(git_repo.config("gitpack.sizecap") or DEFAULT_SIZE_CAP)
            exclude = {rel for rel in [_archive_rel(git_repo, path_a)] if rel}
            snap = git_repo.write_snapshot_tree(size_cap=cap, exclude=exclude)
            side_b = {"archive": None, "commit": None, "tree": snap.tree, "object": None, "label": WORKING_TREE}
            params = []
            env = compare_values(("environment",), manifest_a.get("environment") or {}, environment.describe())
            paths = None if all_files else used_paths(manifest_a)
            text = code_diff(git_repo, commit_a, snap.tree, paths)
        return DiffReport(side_a, side_b, params, env, paths, text)
    finally:
        git_repo.close()


# --------------------------------------------------------------------------- text
def _value(value: Any, limit: int = 120) -> str:
    if isinstance(value, dict) and set(value) == {"$ref"}:
        return f"-> {value['$ref']}"
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _change_line(c: Change) -> str:
    if c.kind == "added":
        return f"  + {c.label}: {_value(c.new)}"
    if c.kind == "removed":
        return f"  - {c.label}: {_value(c.old)}"
    return f"  ~ {c.label}: {_value(c.old)} -> {_value(c.new)}"


def _side(side: dict[str, Any]) -> str:
    if side.get("label") == WORKING_TREE:
        return f"the working tree ({side['tree'][:12]})"
    return f"{side['archive']} ({side['commit'][:12]})"


def format_text(report: DiffReport) -> str:
    """The report for people: parameters, environment, then git's unified diff of the code."""
    lines = [f"gitpack diff: {_side(report.a)} -> {_side(report.b)}"]
    if report.b.get("label") != WORKING_TREE:
        lines.append("parameters:" if report.params else "parameters: no changes")
        lines += [_change_line(c) for c in report.params]
    lines.append("environment:" if report.environment else "environment: no changes")
    lines += [_change_line(c) for c in report.environment]
    if report.code_paths is None:
        scope = "all files"
    elif report.code_paths:
        scope = ", ".join(report.code_paths)
    else:
        scope = "no repo modules used (use --all for every file)"
    lines.append(f"code ({scope}):" if report.code else f"code ({scope}): no changes")
    text = "\n".join(lines) + "\n"
    if report.code:
        text += report.code if report.code.endswith("\n") else report.code + "\n"
    return text

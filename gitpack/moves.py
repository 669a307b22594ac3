"""Modules a save moved (``git mv``, and then edited) that git's rename detection does not pair.

git pairs a deleted and an added file as a rename only when their contents are
at least half the same, and git records no renames: a small module moved and
edited (``git mv package.py renamed.py`` and a changed default) shows as one
file deleted and another added, and its code diff as two whole files.  The
manifests know better: when the class or function the saved object used from
the deleted file (``package:M``) is the one it uses from the added file
(``renamed:M``), or, against the working tree, the added file defines it, the
two are the same module moved.  :func:`module_moves` finds those pairs; the
diff then shows them as a rename, in the file list, the JSON and the code diff.
"""

from __future__ import annotations

import re
from typing import Any

from .git import Repo

MAX_SOURCE = 1 << 20  # bytes of an added file read to see what it defines


def used_names(manifest: dict[str, Any]) -> dict[str, set[str]]:
    """``{repo path: top-level names the saved object uses from that module}``, from the object's type and the
    classes of its captured constructor calls (module names mapped to files by the manifest's ``modules``)."""
    modules = manifest.get("modules")
    modules = modules if isinstance(modules, dict) else {}
    obj = manifest.get("object")
    capture = manifest.get("capture")
    objects = capture.get("objects") if isinstance(capture, dict) else None
    labels = [obj.get("type") if isinstance(obj, dict) else None]
    labels += [e.get("class") for e in (objects.values() if isinstance(objects, dict) else ()) if isinstance(e, dict)]
    out: dict[str, set[str]] = {}
    for label in labels:
        if not isinstance(label, str) or ":" not in label:
            continue
        module, _, qualname = label.partition(":")
        info = modules.get(module)
        path = info.get("path") if isinstance(info, dict) else None
        top = qualname.split(".")[0]
        if isinstance(path, str) and top.isidentifier():
            out.setdefault(path, set()).add(top)
    return out


def _defines(repo: Repo, tree: str, path: str, names: set[str]) -> bool:
    """Whether file *path* of *tree* defines one of *names* at its top level (a class, a function, an assignment)."""
    size = repo.object_size(f"{tree}:{path}")
    if size is None or size > MAX_SOURCE:
        return False
    text = repo.read_object(f"{tree}:{path}")[1].decode("utf-8", "replace")
    pattern = "|".join(re.escape(n) for n in sorted(names))
    return re.search(rf"^(?:class|def|async\s+def)\s+(?:{pattern})\b|^(?:{pattern})\s*[:=]", text, re.M) is not None


def module_moves(repo: Repo, new: str, deleted: list[str], added: list[str], manifest_a: dict[str, Any],
                 manifest_b: dict[str, Any] | None = None) -> dict[str, str]:
    """``{old path: new path}`` for each module of *manifest_a* that was deleted while exactly one added file
    carries on what the object used from it: the same names used from it in *manifest_b*, or (against the
    working tree, *new* being its tree) defined in it."""
    before = used_names(manifest_a)
    after = used_names(manifest_b) if manifest_b is not None else None
    candidates = [p for p in added if p.endswith(".py")]
    out: dict[str, str] = {}
    for old in deleted:
        names = before.get(old)
        if not names:
            continue
        if after is not None:
            matches = [p for p in candidates if after.get(p, set()) & names]
        else:
            matches = [p for p in candidates if _defines(repo, new, p, names)]
        matches = [p for p in matches if p not in out.values()]
        if len(matches) == 1:
            out[old] = matches[0]
    return out

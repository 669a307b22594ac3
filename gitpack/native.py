"""Making git itself treat archives well: attributes, config, and a textconv that shows the manifest.

``gitpack init`` writes, once:

* ``.gitattributes``: ``*.gitpack binary -delta diff=gitpack`` -- never merged
  or shown as text, never delta-compressed when packing (deltas of large
  archives cost memory and time and save nothing), and diffed through
  ``gitpack textconv``;
* git config: ``diff.gitpack.textconv = gitpack textconv`` and, when unset,
  ``core.bigFileThreshold`` so large blobs (archives in the store, too) are
  stored without delta attempts.

With that, ``git diff`` and ``git log -p`` on a committed archive show what
changed in its manifest -- commit, parameters, environment -- instead of
"Binary files differ".  :func:`textconv` reads only the manifest: it never
unpickles and never imports torch.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from .archive import read_manifest
from .errors import ArchiveError
from .gitrepo import Repo

ATTRIBUTES_LINE = "*.gitpack binary -delta diff=gitpack"
BIG_FILE_THRESHOLD = "64m"


def textconv_command() -> str:
    """``gitpack textconv`` when the command is on PATH, else this interpreter's ``-m gitpack``."""
    if shutil.which("gitpack"):
        return "gitpack textconv"
    return f"{shlex.quote(sys.executable)} -m gitpack textconv"


def init(repo: Repo) -> list[str]:
    """Write the attributes and config (idempotent); returns what was done, one line each."""
    done = []
    attributes = repo.root / ".gitattributes"
    existing = attributes.read_text(encoding="utf-8") if attributes.exists() else ""
    if ATTRIBUTES_LINE not in existing.splitlines():
        prefix = "" if not existing or existing.endswith("\n") else "\n"
        with open(attributes, "a", encoding="utf-8") as fh:
            fh.write(f"{prefix}# gitpack archives: binary, no delta compression, diffed as their manifest\n{ATTRIBUTES_LINE}\n")
        done.append(f"wrote '{ATTRIBUTES_LINE}' to {attributes} (commit it so every clone gets it)")
    command = textconv_command()
    if repo.config("diff.gitpack.textconv") != command:
        repo.git("config", "diff.gitpack.textconv", command)
        done.append(f"set git config diff.gitpack.textconv = {command}")
    if repo.config("core.bigFileThreshold") is None:
        repo.git("config", "core.bigFileThreshold", BIG_FILE_THRESHOLD)
        done.append(f"set git config core.bigFileThreshold = {BIG_FILE_THRESHOLD}")
    return done


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        out = []
        for key in sorted(value, key=str):
            out += _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, value)]


def textconv(path: str | os.PathLike) -> str:
    """The archive's manifest as stable, line-oriented text for ``git diff`` (no unpickling, no torch)."""
    if not Path(path).exists() or Path(path).stat().st_size == 0:
        return ""
    try:
        m = read_manifest(path)
    except ArchiveError as exc:
        return f"not a readable gitpack archive: {exc}\n"
    lines = ["gitpack archive"]

    def field(key: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            lines.append(f"{key:<12}{value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)}")

    field("object", (m.get("object") or {}).get("type"))
    field("commit", m.get("commit"))
    field("tree", m.get("tree"))
    field("created", m.get("created"))
    head = m.get("head") or "(no commits)"
    field("head", f"{head} on {m.get('head_branch') or 'detached HEAD'}" + (" (dirty)" if m.get("dirty") else ""))
    field("branch", m.get("branch"))
    field("message", m.get("message"))
    for title, key in (("params", "params"), ("environment", "environment")):
        if m.get(key):
            lines.append(title)
            lines += [f"    {k} = {json.dumps(v, sort_keys=True, default=str)}" for k, v in _flatten(m[key])]
    if m.get("modules"):
        lines.append("modules")
        lines += [f"    {name} = {info.get('path') if isinstance(info, dict) else info}" for name, info in sorted(m["modules"].items())]
    members = m.get("members") or []
    lines.append(f"{'members':<12}{len(members)} ({sum(int(x.get('size', 0)) for x in members)} bytes)")
    field("payload", m.get("payload_digest"))
    if isinstance(m.get("portable"), dict):
        objects = m["portable"].get("objects") or {}
        lines.append(f"{'portable':<12}source embedded ({objects.get('blobs', '?')} files, {objects.get('trees', '?')} trees)")
    return "\n".join(lines) + "\n"

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

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from . import lfs, textsafe
from .archive import read_manifest
from .errors import ArchiveError
from .git import Repo, runner

ATTRIBUTES_LINE = "*.gitpack binary -delta diff=gitpack"
LFS_LINE = "*.gitpack filter=lfs"
BIG_FILE_THRESHOLD = "64m"


def textconv_command() -> str:
    """The textconv driver: a shell function git runs with the file as ``$1``, which never makes ``git diff`` fail.

    git aborts the whole diff (exit 128, every other file's diff lost) when a textconv command fails, and
    ``gitpack`` is often not on PATH where git runs (a virtualenv not activated, an IDE, a hook).  So the driver
    tries this interpreter by its absolute path first, then ``gitpack`` on PATH, and when neither can read the
    archive it prints a raw summary (size and checksum) instead: the diff still shows that the archive changed.
    """
    python = shlex.quote(sys.executable)
    raw = ("printf 'gitpack archive (gitpack could not be run here to read its manifest)\\nbytes       %s\\n"
           "cksum       %s\\n' \"$(wc -c < \"$1\" | tr -d ' ')\" \"$(cksum < \"$1\")\"")
    return (f"gitpack_textconv() {{ {python} -m gitpack textconv \"$1\" 2>/dev/null || "
            f"gitpack textconv \"$1\" 2>/dev/null || {{ {raw}; }}; }}; gitpack_textconv")


def init(repo: Repo, *, use_lfs: bool = False) -> list[str]:
    """Write the attributes and config (idempotent); returns what was done, one line each.

    *use_lfs* also stores committed archives with Git LFS (:func:`track_with_lfs`); without it, the first run
    offers that when git-lfs is installed.
    """
    done = _add_attribute(repo, ATTRIBUTES_LINE, "binary, no delta compression, diffed as their manifest")
    command = textconv_command()
    if repo.config("diff.gitpack.textconv") != command:
        repo.git("config", "diff.gitpack.textconv", command)
        done.append(f"set git config diff.gitpack.textconv = {command}")
    if repo.config("core.bigFileThreshold") is None:
        repo.git("config", "core.bigFileThreshold", BIG_FILE_THRESHOLD)
        done.append(f"set git config core.bigFileThreshold = {BIG_FILE_THRESHOLD}")
    if use_lfs:
        done += track_with_lfs(repo)
    elif done and lfs.installed(repo) and LFS_LINE not in _attributes(repo).splitlines():
        done.append("git-lfs is installed: `gitpack init --lfs` also stores committed *.gitpack files in Git LFS")
    return done


def _attributes(repo: Repo) -> str:
    path = repo.root / ".gitattributes"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _add_attribute(repo: Repo, line: str, why: str) -> list[str]:
    """Append *line* (with a comment saying *why*) to ``.gitattributes`` unless it is there; what was done."""
    existing = _attributes(repo)
    if line in existing.splitlines():
        return []
    prefix = "" if not existing or existing.endswith("\n") else "\n"
    path = repo.root / ".gitattributes"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{prefix}# gitpack archives: {why}\n{line}\n")
    return [f"wrote '{line}' to {path} (commit it so every clone gets it)"]


def track_with_lfs(repo: Repo) -> list[str]:
    """``*.gitpack filter=lfs`` in ``.gitattributes``, and git-lfs's filter and hooks in this repository.

    The line adds only the filter to ``*.gitpack binary -delta diff=gitpack``, so
    ``git diff`` still shows manifests: git hands textconv the smudged archive,
    not the pointer.  ``git lfs install --local`` sets the filter (without it
    ``git add`` would store the whole file) and the pre-push hook that uploads
    the objects on a plain ``git push``.
    """
    lfs.require_client(repo, "`gitpack init --lfs`")
    done = _add_attribute(repo, LFS_LINE, "stored with Git LFS, still diffed as their manifest")
    if done or not repo.config("filter.lfs.process"):
        result = runner.run(["lfs", "install", "--local"], cwd=repo.root, check=False)
        said = (result.stdout + result.stderr).decode("utf-8", "replace")
        if result.returncode == 0:
            done.append("ran `git lfs install --local` (the LFS filter and hooks for this repository)")
        elif "Hook already exists" in said:  # the filter is set; a hook of the user's own is left alone
            done.append("warning: git-lfs left your own git hooks alone: add `git lfs pre-push \"$@\"` to your "
                        "pre-push hook (`git lfs update --manual` shows how), or a plain `git push` will not "
                        "upload the archives' LFS objects")
        else:
            raise lfs.LfsError(f"`git lfs install --local` failed: {runner.failure_detail(said) or said.strip()}; "
                               "fix that and run `gitpack init --lfs` again")
    return done


FLATTEN_DEPTH = 32  # nesting levels spelled out as dotted keys; deeper values are shown as (bounded) JSON


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]``, keys sorted; iterative, and no deeper than FLATTEN_DEPTH."""
    out: list[tuple[str, Any]] = []
    stack: list[tuple[str, Any, int]] = [(prefix, value, 0)]
    while stack:
        key, item, depth = stack.pop()
        if isinstance(item, dict) and item and depth < FLATTEN_DEPTH:
            children = sorted(item, key=str)
            stack.extend((f"{key}.{k}" if key else str(k), item[k], depth + 1) for k in reversed(children))
        else:
            out.append((key, item))
    return out


def _value(value: Any) -> str:
    # No length limit: a difference anywhere in a value must show in git diff.  Nesting below
    # FLATTEN_DEPTH + VALUE_DEPTH levels is shown as a placeholder.
    return textsafe.json_value(value, limit=None, max_depth=VALUE_DEPTH)


VALUE_DEPTH = 200


def textconv(path: str | os.PathLike) -> str:
    """The archive's manifest as stable, line-oriented text for ``git diff`` (no unpickling, no torch).

    Every field is treated as untrusted JSON of any type: what has the expected
    shape is shown as usual, anything else as bounded JSON, and control
    characters are escaped (git shows this text in a terminal).
    """
    try:
        if not Path(path).exists() or Path(path).stat().st_size == 0:
            return ""
    except (OSError, ValueError):  # a name with a NUL, a path too long
        return ""
    try:
        m = read_manifest(path)
    except ArchiveError as exc:
        return f"not a readable gitpack archive: {textsafe.line(exc)}\n"
    return manifest_text(m)


def manifest_text(m: Any) -> str:
    """:func:`textconv`'s text for an already-read manifest (any JSON value)."""
    if not isinstance(m, dict):
        m = {"manifest": m}
    lines = ["gitpack archive"]

    def field(key: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            lines.append(f"{key:<12}{textsafe.line(value) if isinstance(value, str) else _value(value)}")

    obj = m.get("object")
    field("object", obj.get("type") if isinstance(obj, dict) else obj)
    field("commit", m.get("commit"))
    field("tree", m.get("tree"))
    field("created", m.get("created"))
    head = m.get("head") or "(no commits)"
    head_branch = m.get("head_branch") or "detached HEAD"
    field("head", f"{_text(head)} on {_text(head_branch)}" + (" (dirty)" if m.get("dirty") else ""))
    field("branch", m.get("branch"))
    field("message", m.get("message"))
    for title, key in (("params", "params"), ("environment", "environment")):
        if m.get(key):
            lines.append(title)
            lines += [f"    {textsafe.line(k)} = {_value(v)}" for k, v in _flatten(m[key])]
    modules = m.get("modules")
    if isinstance(modules, dict) and modules:
        lines.append("modules")
        for name in sorted(modules, key=str):
            info = modules[name]
            where = info.get("path") if isinstance(info, dict) else info
            lines.append(f"    {textsafe.line(name)} = {_text(where)}")
    elif modules:
        field("modules", modules)
    members = m.get("members")
    if isinstance(members, list):
        sizes = [x.get("size") if isinstance(x, dict) else None for x in members]
        total = sum(n for n in sizes if type(n) is int)
        unreadable = sum(1 for n in sizes if type(n) is not int)
        without_size = f", {unreadable} without a size" if unreadable else ""
        lines.append(f"{'members':<12}{len(members)} ({total} bytes){without_size}")
    else:
        field("members", members)
    field("payload", m.get("payload_digest"))
    portable = m.get("portable")
    if isinstance(portable, dict):
        objects = portable.get("objects")
        objects = objects if isinstance(objects, dict) else {}
        lines.append(f"{'portable':<12}source embedded ({_text(objects.get('blobs', '?'))} files, "
                     f"{_text(objects.get('trees', '?'))} trees)")
    return "\n".join(lines) + "\n"


def _text(value: Any) -> str:
    """A field meant to be a string: escaped as it is; any other JSON value as bounded JSON."""
    return textsafe.line(value) if isinstance(value, str) else _value(value)

"""What a snapshot produced (:class:`SnapshotTree`), and the names of the temp files it makes in ``.git``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..fsutil import owner_tag

GIT_DIR_TEMP_PREFIX = "gitpack-tmp-"  # temp files in .git: private indexes, path lists, commit messages


@dataclass(frozen=True)
class SnapshotTree:
    """The working tree written as a git tree, plus where it came from."""

    tree: str
    head: str | None
    head_branch: str | None
    dirty: bool
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    submodule_warnings: list[str] = field(default_factory=list)


def temp_prefix(kind: str) -> str:
    """``gitpack-tmp-<kind>-<pid>@<host>~``: a later save removes it once its owner is gone."""
    return f"{GIT_DIR_TEMP_PREFIX}{kind}-{owner_tag()}"

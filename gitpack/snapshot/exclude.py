"""What a snapshot leaves out: gitpack archives, and untracked files past the size cap or the budget.

Tracked files are always snapshotted: git has them anyway, and the code that
reads them expects them.  Untracked (not ignored) files are where data shards,
checkpoints and scratch output pile up, and every save would copy them into
``.git`` (and every load into the cache), so they are bounded twice: no single
file above the size cap (``--size-cap``, ``gitpack.sizecap``, 10 MB), and no
more than a budget per save in all (``--untracked-budget``,
``gitpack.untrackedBudget``, 20 MB), the largest left out first.  What the
user names with ``--include PATH`` or ``gitpack.include`` is always taken.
Every file left out is reported with its size and how to include it.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from ..archive.format import MAGIC as ARCHIVE_MAGIC
from ..sizes import setting, size_text

DEFAULT_SIZE_CAP = 10 * 1000 * 1000
DEFAULT_UNTRACKED_BUDGET = 20 * 1000 * 1000
ARCHIVE = "gitpack archive"


@dataclass(frozen=True)
class Limits:
    """What may go into a snapshot: the per-file cap and total budget of untracked files, what the user
    included anyway (paths, directories or glob patterns), and paths never to take (archives being written)."""

    size_cap: int = DEFAULT_SIZE_CAP
    budget: int = DEFAULT_UNTRACKED_BUDGET
    include: tuple[str, ...] = ()
    exclude: AbstractSet[str] = field(default_factory=frozenset)

    def included(self, path: str) -> bool:
        """Whether the user asked for *path*: the path itself, a directory above it, or a matching pattern."""
        for pattern in self.include:
            pattern = pattern.strip().strip("/")
            if not pattern:
                continue
            if path == pattern or path.startswith(pattern + "/") or fnmatch.fnmatchcase(path, pattern):
                return True
        return False


def _archive_or_size(root: Path, path: str, exclude: AbstractSet[str]) -> tuple[str | None, int | None]:
    """("gitpack archive", size) for an archive, else (None, size of a regular file or None)."""
    if path in exclude:
        return ARCHIVE, None
    full = root / path
    try:
        st = full.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None, None  # deleted: staging the deletion is what we want
    if not full.is_file() or full.is_symlink():
        return None, None
    if st.st_size >= len(ARCHIVE_MAGIC):
        try:
            with open(full, "rb") as fh:
                if fh.read(len(ARCHIVE_MAGIC)) == ARCHIVE_MAGIC:
                    return ARCHIVE, st.st_size
        except OSError:
            return None, st.st_size
    return None, st.st_size


def left_out(root: Path, changed: Iterable[tuple[str, bool]], limits: Limits) -> dict[str, str]:
    """``{path: why}`` for every changed path that stays out of the snapshot.

    *changed* holds ``(path, untracked)`` for every path that differs from HEAD.  Archives always stay out;
    untracked files the user did not include stay out above the size cap, and then, largest first, until
    the rest fits the budget.
    """
    out: dict[str, str] = {}
    candidates: list[tuple[int, str]] = []
    for path, untracked in changed:
        archive, size = _archive_or_size(root, path, limits.exclude)
        if archive is not None:
            out[path] = archive
        elif untracked and size is not None and not limits.included(path):
            if size > limits.size_cap:
                out[path] = (f"untracked, {size_text(size)}: larger than the size cap of {size_text(limits.size_cap)}"
                             f"; {include_hint(path)}")
            else:
                candidates.append((size, path))
    total = sum(size for size, _ in candidates)
    for size, path in sorted(candidates, key=lambda c: (-c[0], c[1])):
        if total <= limits.budget:
            break
        total -= size
        out[path] = (f"untracked, {size_text(size)}: past the budget of {size_text(limits.budget)} for untracked "
                     f"files in one save, largest left out first; {include_hint(path)}")
    return out


def include_hint(path: str) -> str:
    return f"--include {path} or git config --add gitpack.include {path} takes it"


def is_size_exclusion(reason: str) -> bool:
    """Whether a reason :func:`left_out` gave is the cap or the budget (not an archive)."""
    return reason != ARCHIVE


def limits_from_config(config, *, size_cap: int | None = None, budget: int | None = None,
                       include: Iterable[str] = (), exclude: AbstractSet[str] = frozenset()) -> Limits:
    """The limits of one save: arguments first, then git config (``gitpack.sizecap``, ``gitpack.untrackedBudget``,
    every ``gitpack.include``), then the defaults.  *config* is a :class:`gitpack.git.Repo`."""
    cap = size_cap if size_cap is not None else setting("gitpack.sizecap", config.config("gitpack.sizecap"),
                                                          DEFAULT_SIZE_CAP)
    total = budget if budget is not None else setting("gitpack.untrackedBudget",
                                                        config.config("gitpack.untrackedBudget"),
                                                        DEFAULT_UNTRACKED_BUDGET)
    patterns = tuple(dict.fromkeys(list(include) + [p for p in config.config_all("gitpack.include") if p.strip()]))
    return Limits(size_cap=cap, budget=total, include=tuple(p.replace(os.sep, "/") for p in patterns),
                  exclude=exclude)

"""What a snapshot leaves out: gitpack archives, and files above the size cap."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from pathlib import Path

from ..archive.format import MAGIC as ARCHIVE_MAGIC

DEFAULT_SIZE_CAP = 10 * 1000 * 1000


def exclusion_reason(root: Path, path: str, size_cap: int, exclude: AbstractSet[str]) -> str | None:
    """Why *path* stays out of the snapshot (another archive, over the size cap), or None to take it."""
    full = root / path
    if path in exclude:
        return "gitpack archive"
    try:
        st = full.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None  # deleted: staging the deletion is what we want
    if not full.is_file() or full.is_symlink():
        return None
    if st.st_size > size_cap:
        return f"larger than the size cap ({st.st_size} > {size_cap} bytes)"
    if st.st_size >= len(ARCHIVE_MAGIC):
        with open(full, "rb") as fh:
            if fh.read(len(ARCHIVE_MAGIC)) == ARCHIVE_MAGIC:
                return "gitpack archive"
    return None

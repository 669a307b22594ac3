"""Progress bars for long transfers: shown on a terminal, silent when piped or quiet.

Saves, store loads, pushes and pulls of large artifacts can take minutes; a
person at a terminal wants to see that something moves, a script reading the
output wants nothing but the result.  So a bar appears only when stderr is a
terminal, gitpack is not quiet (``--quiet`` or ``GITPACK_QUIET=1``) and the
transfer is at least ``GITPACK_PROGRESS_MIN_BYTES`` (default 32 MiB).  rich is
imported only when a bar is actually drawn.
"""

from __future__ import annotations

import os
import sys
from typing import Any

DEFAULT_MIN_BYTES = 32 << 20
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (or re-allow) every progress bar of this process."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet or os.environ.get("GITPACK_QUIET", "") not in ("", "0")


def wanted(total: int | None) -> bool:
    """Whether a transfer of *total* bytes (None: unknown size) deserves a bar here."""
    if is_quiet():
        return False
    try:
        if not sys.stderr.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    try:
        minimum = int(os.environ.get("GITPACK_PROGRESS_MIN_BYTES", DEFAULT_MIN_BYTES))
    except ValueError:
        minimum = DEFAULT_MIN_BYTES
    return total is None or total >= minimum


class Bar:
    """One transient progress bar on stderr, or a no-op when :func:`wanted` says no.

    ``unit="bytes"`` shows sizes and speed; ``unit="percent"`` suits git's own
    phases (``Writing objects: 42%``), whose byte totals are not known ahead.
    """

    def __init__(self, description: str, total: int | None, *, unit: str = "bytes", force: bool | None = None):
        self.enabled = wanted(total) if force is None else (force and wanted(None))
        self.description = description
        self.total = total
        self.unit = unit
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
            if self.unit == "bytes":
                columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
            else:
                columns += [TaskProgressColumn()]
            self._progress = Progress(*columns, console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def advance(self, amount: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)

    def update(
        self, *, completed: float | None = None, total: float | None = None, description: str | None = None
    ) -> None:
        if self._progress is not None:
            kwargs: dict[str, Any] = {}
            if completed is not None:
                kwargs["completed"] = completed
            if total is not None:
                kwargs["total"] = total
            if description is not None:
                kwargs["description"] = description
            self._progress.update(self._task, **kwargs)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

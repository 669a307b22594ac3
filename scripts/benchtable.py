"""The benchmark scripts' common output: medians, times and sizes as printed, and the targets table.

``bench.py`` and ``bench_lfs.py`` (and the rows ``bench_objects.py`` adds) print one
table: what was measured, gitpack's number, the baseline's, the ratio, the
target and whether it is met.  Kept here once, so every table reads the same.
"""

from __future__ import annotations

import statistics

HEADER = ("what", "gitpack", "baseline", "ratio", "target", "met")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"


def fmt_b(x: float) -> str:
    return f"{x / 2**20:.0f} MiB"


class Table:
    """Rows of the targets table, added with :meth:`row` and printed as Markdown with :meth:`print`."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def row(self, what, ours, theirs, value, target, met) -> None:
        """One line; *met* None for a row that is only reported."""
        self.rows.append((what, ours, theirs, value, target, "" if met is None else "yes" if met else "NO"))

    def print(self) -> None:
        widths = [max(len(str(r[i])) for r in self.rows + [HEADER]) for i in range(len(HEADER))]
        print("| " + " | ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in self.rows:
            print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")

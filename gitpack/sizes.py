"""Sizes and durations as people type and read them: ``20MB``, ``5g``, ``30d``.

The limits gitpack takes from flags and git config (the snapshot's size cap
and untracked budget, the cache's maximum size, the Git LFS threshold,
``cache prune --older-than``) all parse here, one way: git's own convention for k, m and g (powers of
1024), ``kB``/``MB``/``GB`` for powers of 1000, and plain numbers of bytes.
"""

from __future__ import annotations

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _split(text: str) -> tuple[float, str]:
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(text) from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(text)
    return value, raw[len(number):]


def parse_size(text: str) -> int:
    """``"20m"`` (1024s, as git reads it), ``"20MB"`` (1000s), ``"5GiB"``, ``"1000"`` (bytes); ValueError else."""
    value, unit = _split(text)
    if unit not in _UNITS:
        raise ValueError(text)
    return int(value * _UNITS[unit])


def setting(key: str, value: str | None, default: int) -> int:
    """A size from git config *key* (its *value*, None or blank: *default*); a :class:`GitpackError` naming the
    setting when it is not a size."""
    if value is None or not value.strip():
        return default
    try:
        return parse_size(value)
    except ValueError:
        from .errors import GitpackError

        raise GitpackError(f"git config {key} = {value!r} is not a size; give bytes, or a number with k, m or g "
                           f"(e.g. git config {key} 50m)") from None


def parse_duration(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, ``"45s"`` in seconds; a plain number is days."""
    value, unit = _split(text)
    if unit == "":
        return value * 86400
    if unit not in _SECONDS:
        raise ValueError(text)
    return value * _SECONDS[unit]


def binary_size_text(n: int | float) -> str:
    """Bytes in binary units (``9.5 MiB``), as object and file sizes are shown."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{int(n)} bytes"


def size_text(n: int | float) -> str:
    """Bytes in decimal units (``5.2 MB``), as the defaults are given."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"

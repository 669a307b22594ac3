"""The cyclic garbage collector paused while a pickle is walked: a model of 10,000 layers is millions of objects.

Every 700 allocations CPython may run a collection, and the older generations
traverse every live object: pickling, dry-running or unpickling an object graph
of millions of objects spent a third of its time there, finding nothing (what a
pickle builds is alive until the walk ends).  Pausing is safe: memory held
during the walk is bounded by what the pickle itself describes, and objects
that die are still freed by reference counting; cycles are collected after.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block (nested blocks leave it to the outermost)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

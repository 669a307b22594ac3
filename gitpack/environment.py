"""What the archive records about the Python environment that built it.

Versions come from package metadata, so recording them never imports torch.
Besides a fixed set of packages, a save records the distribution of every
library whose globals the pickle names (``transformers``, ``peft``,
``scikit-learn``...): an upgrade of one of them can change what a loaded model
does, so ``gitpack diff`` must be able to show it.
"""

from __future__ import annotations

import functools
import platform
import sys
from collections.abc import Iterable
from importlib import metadata

TRACKED_PACKAGES = ("torch", "dill", "sentencepiece", "numpy", "gitpython", "gitpack")
_NOT_LIBRARIES = frozenset({"builtins", "__main__", "gitpack"})


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _top_level_distributions() -> dict[str, list[str]]:
    """Top-level import name -> the distributions that provide it (``sklearn`` -> ``scikit-learn``)."""
    return dict(metadata.packages_distributions())


def distributions_of(modules: Iterable[str]) -> list[str]:
    """The installed distributions that provide *modules* (dotted names), the standard library's and gitpack's
    own left out; in a stable order."""
    stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    tops = sorted({m.split(".")[0] for m in modules if m} - set(stdlib) - _NOT_LIBRARIES - set(TRACKED_PACKAGES))
    if not tops:
        return []  # nothing beyond what is always recorded: no need to read every distribution's file list
    found = _top_level_distributions()
    return sorted({dist for top in tops for dist in found.get(top, [])})


def describe(extra: Iterable[str] = ()) -> dict:
    """Python, the platform, and the versions of the tracked packages plus the distributions *extra*."""
    names = list(TRACKED_PACKAGES) + [n for n in dict.fromkeys(extra) if n not in TRACKED_PACKAGES]
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in names},
    }

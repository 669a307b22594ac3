"""What the archive records about the Python environment that built it.

Versions come from package metadata, so recording them never imports torch.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

TRACKED_PACKAGES = ("torch", "dill", "sentencepiece", "numpy", "gitpython", "gitpack")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict:
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in TRACKED_PACKAGES},
    }

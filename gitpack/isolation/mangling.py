"""Private module names: a snapshot's modules live under ``__gitpack_<tree>__`` beside everything else.

A snapshot with tree ``T`` gets the package ``__gitpack_<T>__``; its module
``mypkg.model`` lives in ``sys.modules`` as ``__gitpack_<T>__.mypkg.model``, so
the user's own ``mypkg`` is never replaced or read, and two snapshots run side
by side.  The whole tree id is used: two trees never share a namespace.
"""

from __future__ import annotations

PREFIX_FORMAT = "__gitpack_{}__"
_START = "__gitpack_"


def prefix_for(tree: str) -> str:
    """The private package name of the snapshot with tree *tree*."""
    return PREFIX_FORMAT.format(tree)


def is_private(name: str) -> bool:
    """Whether *name* is a module of some snapshot namespace."""
    return name.startswith(_START)


def canonical_module_name(name: str) -> str:
    """Strip a snapshot prefix: ``__gitpack_abc__.pkg.mod`` -> ``pkg.mod``."""
    if name.startswith(_START):
        return name.partition(".")[2]
    return name

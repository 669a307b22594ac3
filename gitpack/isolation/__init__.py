"""Isolated import: a snapshot's code, materialised from git into a cache and run under a private name."""

from .mangling import canonical_module_name, is_private, prefix_for
from .materialise import Materializer, cache_root
from .namespace import SnapshotNamespace, namespace_for, shadowing
from .sources import FilteredSource, GitSourceTree, SourceTree

__all__ = ["FilteredSource", "GitSourceTree", "Materializer", "SnapshotNamespace", "SourceTree", "cache_root",
           "canonical_module_name", "is_private", "namespace_for", "prefix_for", "shadowing"]

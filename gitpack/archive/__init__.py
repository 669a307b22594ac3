"""The archive: one file of raw aligned members and a JSON manifest (:mod:`.format`), its writer and reader,
and portable archives that carry their snapshot's source (:mod:`.portable`)."""

from .format import (
                     FORMAT_VERSION,
                     HEADER,
                     MAGIC,
                     TRAILER,
                     Member,
                     manifest_digest,
                     payload_digest,
                     sealed_manifest,
)
from .reader import ArchiveReader, read_manifest
from .writer import ArchiveWriter, DeferredBuffer

__all__ = ["FORMAT_VERSION", "HEADER", "MAGIC", "TRAILER", "ArchiveReader", "ArchiveWriter", "DeferredBuffer",
           "Member", "manifest_digest", "payload_digest", "read_manifest", "sealed_manifest"]

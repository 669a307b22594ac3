"""Archive format 2: BLAKE3 member digests, a sha256 payload digest that names them, format 1 still read.

Real archives written by the writer and read by the reader; the format-1 archives of earlier releases
are tests/test_compat.py's (committed fixtures).
"""

from __future__ import annotations

import hashlib
import json

import blake3
import pytest
from forging import rewrite_manifest

from gitpack.archive import ArchiveReader, ArchiveWriter, format
from gitpack.errors import ArchiveError


def _write(path, members: dict[str, bytes], version: int = format.FORMAT_VERSION):
    writer = ArchiveWriter(path, version=version)
    for name, data in members.items():
        writer.add(name, [data[: len(data) // 2], data[len(data) // 2:]])  # two buffers: one member
    writer.commit({"note": "format test"})
    return path


MEMBERS = {"pickle": b"\x80\x05N.", "storages/0": bytes(range(256)) * 4000, "storages/pack-0": b"\x01" * 100}


def test_members_are_hashed_with_blake3_and_the_payload_digest_names_the_algorithm(tmp_path):
    path = _write(tmp_path / "a.gitpack", MEMBERS)
    with ArchiveReader(path) as reader:
        manifest = reader.manifest
        assert reader.version == manifest["format"] == 3
        for entry in manifest["members"]:
            assert set(entry) == {"name", "offset", "size", "blake3"}
            assert entry["blake3"] == blake3.blake3(MEMBERS[entry["name"]]).hexdigest()
            assert reader.read(entry["name"]) == MEMBERS[entry["name"]]
        # The payload digest stays sha256, over each member's name, size and algorithm-named digest.
        lines = "".join(f"{m['name']}\0{m['size']}\0blake3:{m['blake3']}\n" for m in manifest["members"])
        assert manifest["payload_digest"] == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def test_format1_is_still_written_on_request_and_read_with_sha256(tmp_path):
    path = _write(tmp_path / "a.gitpack", MEMBERS, version=1)
    with ArchiveReader(path) as reader:
        assert reader.version == reader.manifest["format"] == 1
        for entry in reader.manifest["members"]:
            assert entry["sha256"] == hashlib.sha256(MEMBERS[entry["name"]]).hexdigest()
            reader.verify_member(entry["name"])
        lines = "".join(f"{m['name']}\0{m['size']}\0{m['sha256']}\n" for m in reader.manifest["members"])
        assert reader.manifest["payload_digest"] == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def test_large_members_are_hashed_on_several_threads_to_the_same_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(format, "PARALLEL_HASH_BYTES", 1 << 20)
    monkeypatch.setattr(format, "PARALLEL_CHUNK", 1 << 20)
    data = bytes(range(251)) * 20_000  # 5 MB: five threaded updates
    path = _write(tmp_path / "a.gitpack", {"storages/0": data})
    with ArchiveReader(path) as reader:
        assert reader.manifest["members"][0]["blake3"] == blake3.blake3(data).hexdigest()
        buf = bytearray(len(data))
        reader.readinto("storages/0", buf)
        assert buf == data


@pytest.mark.parametrize("change,why", [
    # A format-2 member table read as format 1's (or the other way round) is refused, never half-checked.
    (lambda m: m["members"][0].update(sha256=m["members"][0].pop("blake3")), "malformed member entry"),
    (lambda m: m["members"][0].update(sha256="0" * 64), "fields other than"),
    (lambda m: m.update(format=1), "different formats"),
])
def test_a_member_table_of_the_other_format_is_refused(tmp_path, change, why):
    path = _write(tmp_path / "a.gitpack", MEMBERS)
    rewrite_manifest(path, tmp_path / "b.gitpack", change)
    with pytest.raises(ArchiveError, match=why):
        ArchiveReader(tmp_path / "b.gitpack")


def test_a_flipped_byte_in_a_blake3_member_is_caught(tmp_path):
    path = _write(tmp_path / "a.gitpack", MEMBERS)
    with ArchiveReader(path) as reader:
        member = reader.member("storages/0")
    data = bytearray(path.read_bytes())
    data[member.offset + 1234] ^= 0x40
    path.write_bytes(bytes(data))
    with ArchiveReader(path) as reader:
        with pytest.raises(ArchiveError, match="does not match its digest"):
            reader.read("storages/0")
        with pytest.raises(ArchiveError, match="does not match its digest"):
            reader.verify_member("storages/0")
        assert json.loads(json.dumps(reader.manifest))["format"] == 3

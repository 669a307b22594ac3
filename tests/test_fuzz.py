"""Issue 5: corrupt real archives every way we can think of; load always fails with gitpack's own error.

One real archive (a repo class instance with a torch tensor, a numpy array and
a lambda) is saved in a subprocess, then hypothesis truncates it, flips bytes,
inserts and deletes bytes, rewrites the trailer's lengths, declares huge sizes
and overlapping members (zip-bomb ratios), gives members ``../``, absolute and
symlink-looking names, and rewrites manifest fields with the trailer digest
recomputed.  Every result must be a :class:`GitpackError` from ``load`` (and
from ``verify``; ``scan`` may also return a report), never another exception,
and nothing may be unpickled: the snapshot module writes a marker file when it
is imported and when an object is unpickled, and it must never appear in
``sys.modules``.

Examples per test: ``FUZZ_EXAMPLES`` (default 300 here, 600 with ``CI=true``),
so CI runs thousands of cases in all.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import gitpack
from gitpack.archive import HEADER, TRAILER, ArchiveReader
from gitpack.errors import GitpackError

from conftest import commit_files, git, init_repo, run

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or (600 if os.environ.get("CI") == "true" else 300))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

MODEL = '''\
import os
import pathlib

_MARKER = os.environ.get("GITPACK_FUZZ_MARKER")
if _MARKER:
    pathlib.Path(_MARKER).write_text("snapshot module imported")


class Thing:
    def __init__(self, tensor, array):
        self.tensor = tensor
        self.array = array
        self.fn = lambda x: x + 1

    def __setstate__(self, state):
        if _MARKER:
            pathlib.Path(_MARKER).write_text("unpickled")
        self.__dict__.update(state)
'''
SAVE = '''\
import sys
import numpy
import torch
import gitpack
from fz.model import Thing
gitpack.save(Thing(torch.arange(16, dtype=torch.float32), numpy.arange(8)), sys.argv[1])
'''


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    repo = init_repo(root / "repo")
    commit_files(repo, {"fz/__init__.py": "", "fz/model.py": MODEL, "save.py": SAVE}, "fuzz target")
    archive = root / "real.gitpack"
    proc = run(repo, sys.executable, "save.py", str(archive), env={"GITPACK_CACHE": str(root / "save-cache")})
    assert proc.returncode == 0, proc.stderr
    marker = root / "UNPICKLED"
    old = os.environ.get("GITPACK_FUZZ_MARKER")
    os.environ["GITPACK_FUZZ_MARKER"] = str(marker)
    with ArchiveReader(archive) as reader:
        manifest = reader.manifest
    yield types.SimpleNamespace(repo=repo, data=archive.read_bytes(), manifest=manifest, marker=marker,
                                work=root / "mutated.gitpack", prefix=f"__gitpack_{manifest['tree'][:12]}__")
    if old is None:
        os.environ.pop("GITPACK_FUZZ_MARKER", None)
    else:
        os.environ["GITPACK_FUZZ_MARKER"] = old


def test_the_unmutated_archive_loads_and_the_marker_works(target, tmp_path):
    """Control: the real archive loads (in another process) and its loading does write the marker."""
    marker = tmp_path / "control-marker"
    (tmp_path / "real.gitpack").write_bytes(target.data)
    code = "import sys, gitpack; t = gitpack.load(sys.argv[1]); print('RESULT', t.fn(1), t.tensor.sum().item(), t.array.sum())"
    proc = run(target.repo, sys.executable, "-c", code, str(tmp_path / "real.gitpack"),
               env={"GITPACK_FUZZ_MARKER": str(marker)})
    assert proc.returncode == 0, proc.stderr
    assert "RESULT 2 120.0 28" in proc.stdout
    assert marker.read_text() == "unpickled"


def _check(target, mutated: bytes) -> None:
    """Load, verify and scan *mutated*: gitpack errors only, and nothing unpickled."""
    assume(mutated != target.data)
    target.work.write_bytes(mutated)
    with pytest.raises(GitpackError):
        gitpack.load(target.work, repo=target.repo)
    with pytest.raises(GitpackError):
        gitpack.verify(target.work, repo=target.repo)
    try:
        gitpack.scan(target.work)
    except GitpackError:
        pass
    assert not target.marker.exists(), target.marker.read_text()
    assert not any(name.startswith(target.prefix + ".") for name in sys.modules)


def _with_manifest(target, change) -> bytes:
    """The real archive with its manifest edited and the trailer's manifest digest recomputed."""
    data = target.data
    offset, length, _, tail = TRAILER.unpack(data[-TRAILER.size:])
    manifest = json.loads(data[offset:offset + length])
    change(manifest)
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return data[:offset] + blob + TRAILER.pack(offset, len(blob), hashlib.sha256(blob).digest(), tail)


# ------------------------------------------------------------------------------------------ raw bytes
@FUZZ
@given(st.data())
def test_truncated(target, data):
    n = data.draw(st.integers(0, len(target.data) - 1))
    _check(target, target.data[:n])


@FUZZ
@given(st.data())
def test_byte_flips(target, data):
    mutated = bytearray(target.data)
    for _ in range(data.draw(st.integers(1, 4))):
        # Bias towards the small regions where a flip is most interesting: header, trailer, manifest.
        region = data.draw(st.sampled_from(["anywhere", "header", "tail"]))
        if region == "header":
            pos = data.draw(st.integers(0, min(len(mutated), 128) - 1))
        elif region == "tail":
            pos = data.draw(st.integers(max(0, len(mutated) - 4096), len(mutated) - 1))
        else:
            pos = data.draw(st.integers(0, len(mutated) - 1))
        mutated[pos] ^= data.draw(st.integers(1, 255))
    _check(target, bytes(mutated))


@FUZZ
@given(st.data())
def test_inserted_and_deleted_bytes(target, data):
    pos = data.draw(st.integers(0, len(target.data)))
    if data.draw(st.booleans()):
        mutated = target.data[:pos] + data.draw(st.binary(min_size=1, max_size=64)) + target.data[pos:]
    else:
        mutated = target.data[:pos] + target.data[pos + data.draw(st.integers(1, 64)):]
    _check(target, mutated)


HUGE = st.one_of(
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 1, 2**31, 2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 1]),
)


@FUZZ
@given(offset=st.one_of(HUGE, st.none()), length=st.one_of(HUGE, st.none()), version=st.one_of(st.integers(0, 2**32 - 1), st.none()),
       reserved=st.one_of(st.integers(0, 2**32 - 1), st.none()))
def test_rewritten_header_and_trailer_lengths(target, offset, length, version, reserved):
    data = bytearray(target.data)
    real_offset, real_length, digest, tail = TRAILER.unpack(data[-TRAILER.size:])
    data[-TRAILER.size:] = TRAILER.pack(real_offset if offset is None else offset, real_length if length is None else length, digest, tail)
    magic, real_version, real_reserved = HEADER.unpack(data[:HEADER.size])
    data[:HEADER.size] = HEADER.pack(magic, real_version if version is None else version, real_reserved if reserved is None else reserved)
    _check(target, bytes(data))


# ------------------------------------------------------------------------------------------ the member table
NASTY_NAMES = st.one_of(
    st.sampled_from([
        "../pickle", "../../etc/passwd", "/etc/passwd", "/pickle", "storages/../pickle", "storages/./0", "./pickle",
        "pickle/", "pickle\n", "pickle\x00", "C:\\pickle", "\\\\server\\share", "link -> /etc/passwd", "pickle@",
        "storages/0/../../x", "", ".", "..", "~/.ssh/id_rsa", "p" * 5000, "pickle ", "ｐｉｃｋｌｅ",
    ]),
    st.text(max_size=40),
)
MEMBER_VALUES = {
    "offset": st.one_of(HUGE, st.integers(-(2**70), -1), st.just(1.5), st.just("64"), st.none(), st.booleans(), st.just(10**400)),
    "size": st.one_of(HUGE, st.integers(-(2**70), -1), st.just(1e308), st.just([1]), st.none(), st.booleans()),
    "name": st.one_of(NASTY_NAMES, st.integers(), st.none(), st.just(["pickle"]), st.just(10**4000)),
    "sha256": st.one_of(st.text(max_size=70), st.just("0" * 64), st.just("G" * 64), st.integers()),
}


@FUZZ
@given(st.data())
def test_member_table_tampering(target, data):
    members = target.manifest["members"]
    index = data.draw(st.integers(0, len(members) - 1))
    field = data.draw(st.sampled_from(sorted(MEMBER_VALUES)))
    value = data.draw(MEMBER_VALUES[field])

    def change(manifest):
        manifest["members"][index][field] = value

    _check(target, _with_manifest(target, change))


@FUZZ
@given(st.data())
def test_zip_bomb_ratios_and_duplicated_members(target, data):
    """Declared sizes far beyond the file, members that overlap, repeat or point at the same bytes."""
    kind = data.draw(st.sampled_from(["all-same-bytes", "repeat", "declared-huge", "overlap", "drop", "swap"]))
    total = len(target.data)

    def change(manifest):
        members = manifest["members"]
        if kind == "all-same-bytes":
            for m in members:
                m["offset"], m["size"] = members[0]["offset"], total
        elif kind == "repeat":
            copies = data.draw(st.integers(2, 2000))
            manifest["members"] = [dict(members[0], name=f"storages/{i}") for i in range(copies)] + members
        elif kind == "declared-huge":
            m = members[data.draw(st.integers(0, len(members) - 1))]
            m["size"] = data.draw(st.sampled_from([total * 1000, 2**40, 2**62, 2**63 - 1]))
        elif kind == "overlap":
            i = data.draw(st.integers(1, len(members) - 1))
            members[i]["offset"] = members[i - 1]["offset"] + data.draw(st.integers(0, max(0, members[i - 1]["size"])))
        elif kind == "drop":
            members.pop(data.draw(st.integers(0, len(members) - 1)))
        else:
            i, j = data.draw(st.integers(0, len(members) - 1)), data.draw(st.integers(0, len(members) - 1))
            assume(i != j)
            members[i]["name"], members[j]["name"] = members[j]["name"], members[i]["name"]

    _check(target, _with_manifest(target, change))


# ------------------------------------------------------------------------------------------ the manifest
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
MANIFEST_KEYS = ["tree", "commit", "roots", "modules", "tensors", "by_value_code", "payload_digest", "params", "object",
                 "format", "members", "branch", "environment", "gitpack", "portable", "excluded", "head"]


@FUZZ
@given(key=st.sampled_from(MANIFEST_KEYS), value=JSON, delete=st.booleans())
def test_tampered_manifest_fields(target, key, value, delete):
    def change(manifest):
        if delete:
            manifest.pop(key, None)
        else:
            manifest[key] = value

    _check(target, _with_manifest(target, change))


@FUZZ
@given(st.data())
def test_plausible_manifest_rewrites(target, data):
    """Values a careful attacker would pick: other real commits and trees, path tricks in roots and modules."""
    head = git(target.repo, "rev-parse", "HEAD")
    choices = {
        "commit": st.sampled_from([head, "0" * 40, target.manifest["commit"][:39] + "0"]),
        "tree": st.sampled_from([git(target.repo, "rev-parse", "HEAD^{tree}"), "0" * 40, "../" * 5]),
        "roots": st.lists(st.sampled_from(["", "..", "../..", "/", "/etc", "fz/../..", "fz", "a\\b"]), max_size=3),
        "modules": st.dictionaries(st.sampled_from(["fz.model", "os", "../x", "fz..model"]),
                                   st.fixed_dictionaries({"root": st.sampled_from(["", "..", "/tmp", "fz"])}), max_size=2),
        "tensors": st.fixed_dictionaries({"buffers": st.one_of(HUGE, st.integers(-5, 5)), "storages": st.integers(-5, 5)}),
        "by_value_code": st.lists(st.text(max_size=10), max_size=2),
        "params": JSON,
    }
    key = data.draw(st.sampled_from(sorted(choices)))
    value = data.draw(choices[key])

    def change(manifest):
        manifest[key] = value

    _check(target, _with_manifest(target, change))

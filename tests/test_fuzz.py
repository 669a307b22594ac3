"""Corrupt real archives and commits every way we can think of; gitpack's own errors only.

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

Issue 9 adds everything that *reads* untrusted text: every mutated archive
also goes through ``inspect`` (the API and show.py's rich rendering, to a
string console), ``textconv``, ``scan``'s listing and -- for readable
manifests -- ``diff`` against the real archive both ways; hostile manifest
values (control characters, rich markup, lone surrogates, any JSON type where
another is expected, nesting 900 levels deep) are set at every field and many
nested paths; and hostile commit messages (random bytes with \x1e, \x1f, NUL,
deep JSON and huge values in the trailers) go through ``log``.  Each must give
a :class:`GitpackError` or output with no raw control character in it.  A few
real CLI processes check the same end to end: one ``gitpack: error:`` line or
clean output, never a traceback.

Examples per test: ``FUZZ_EXAMPLES`` (default 300 here, 600 with ``CI=true``;
the slower issue-9 tests run a third of that), so CI runs thousands of cases in all.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import types

import pytest
from conftest import commit_files, git, gitpack_cli, init_repo, run
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rich.console import Console

import gitpack
from gitpack import gitsetup as native
from gitpack.archive import HEADER, TRAILER, ArchiveReader
from gitpack.cli import render as show
from gitpack.compare import format_text
from gitpack.errors import GitpackError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or (600 if os.environ.get("CI") == "true" else 300))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
# The issue-9 tests run git (diff, log) for most examples: a third of the examples keeps them to seconds.
FUZZ_READERS = settings(FUZZ, max_examples=max(10, EXAMPLES // 3))

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
    yield types.SimpleNamespace(repo=repo, data=archive.read_bytes(), manifest=manifest, marker=marker, real=archive,
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


# What must never reach a terminal raw: C0 controls but newline (tab too: single-line fields escape it),
# DEL, C1, bidi overrides and isolates, lone surrogates.  Code hunks of a diff may keep tab and CRLF.
_RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_RAW_IN_CODE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]|\r(?!\n)")


def assert_printable(text: str, pattern: re.Pattern = _RAW) -> None:
    found = pattern.search(text)
    assert found is None, f"raw {found.group()!r} at {found.start()}: {text[max(0, found.start() - 80):found.start() + 40]!r}"


def _render(manifest) -> str:
    buf = io.StringIO()
    show.manifest(manifest, Console(file=buf, width=120, highlight=False, color_system=None))
    return buf.getvalue()


def _read(target, path, *, diff: bool = False) -> None:
    """What reads an archive without loading it: textconv, inspect (API and rendering), scan's listing, and
    with *diff* the diff against the real archive both ways.  A GitpackError or printable text, nothing else."""
    assert_printable(native.textconv(path))  # never raises: a broken archive is a line of text
    try:
        manifest = gitpack.inspect(path)
    except GitpackError:
        return
    assert_printable(_render(manifest))
    assert_printable(native.manifest_text(manifest))
    try:
        report = gitpack.scan(path)
    except GitpackError:
        pass
    else:
        assert_printable("\n".join(show.scan_lines(report)))
        json.dumps(report.as_json())
    if diff:
        for a, b in ((target.real, path), (path, target.real)):
            try:
                result = gitpack.api.diff(a, b, repo=target.repo)
            except GitpackError:
                continue
            assert_printable(format_text(result), _RAW_IN_CODE)
            json.dumps(result.as_json(), indent=2, default=str)


def _check(target, mutated: bytes, *, diff: bool = False) -> None:
    """Load, verify and scan *mutated*: gitpack errors only, and nothing unpickled; then everything that reads it."""
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
    _read(target, target.work, diff=diff)
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
    "blake3": st.one_of(st.text(max_size=70), st.just("0" * 64), st.just("G" * 64), st.integers()),  # format 2's digest
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

    _check(target, _with_manifest(target, change), diff=True)


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

    _check(target, _with_manifest(target, change), diff=True)


# ------------------------------------------------------------------------------------------ issue 9: readers
HOSTILE_CHARS = list("\x00\x07\x08\t\n\r\x1b\x1e\x1f\x7f\x85\x9b\u202a\u202e\u2066\u2069\u2028\ud800\udcff[]/\\:;=\"'a{}$")
HOSTILE_TEXT = st.one_of(
    st.text(alphabet=st.sampled_from(HOSTILE_CHARS), max_size=30),
    st.sampled_from(["[/]", "[bold red]x[/bold red]", "[link=http://evil]x[/link]", "\x1b]52;c;AAAA\x07", ":smile:",
                     "\x1b[2J\x1b[H", "\u202egnp.exe", "%s%n", "x" * 20_000]),
    st.text(max_size=12),
)
HOSTILE_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | HOSTILE_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(HOSTILE_TEXT, children, max_size=4),
    max_leaves=16,
)


def _nested(depth: int, leaf) -> object:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


DEEP_JSON = st.builds(_nested, st.integers(50, 900), HOSTILE_TEXT)
# Where a reader looks: top-level fields and the nested places it expects a given type.
READER_PATHS = [(k,) for k in MANIFEST_KEYS + ["created", "message", "remote_url", "head_branch", "dirty", "capture",
                                                  "structure", "stale_code", "allow_stale", "excluded"]] + [
    ("object", "type"), ("params", "\x1b[31m"), ("params", "[/]"), ("params", "nested", "deeper"),
    ("structure", "total"), ("structure", "total", "parameters"), ("structure", "total", "parameters", "total"),
    ("structure", "modules"), ("structure", "modules", 0), ("structure", "modules", 0, "bytes"),
    ("structure", "modules", 0, "tensors"), ("structure", "modules", 0, "path"),
    ("capture", "objects"), ("capture", "objects", "$"), ("capture", "objects", "$", "args"),
    ("capture", "objects", "$", "defaults"), ("capture", "objects", "$", "unknown"), ("capture", "objects", "$", "class"),
    ("environment", "packages"), ("environment", "python"), ("environment", "packages", "torch"),
    ("modules", "fz.model"), ("modules", "fz.model", "path"), ("modules", "fz.model", "root"),
    ("stale_code", 0), ("stale_code", 0, "module"), ("portable", "objects"), ("roots", 0),
]


def _set_path(manifest: dict, path: tuple, value) -> None:
    """Set *value* at *path*, turning whatever is on the way into the container the path needs."""
    node = manifest
    for key, nxt in itertools.pairwise(path):
        want = list if isinstance(nxt, int) else dict
        present = key in node if isinstance(node, dict) else key < len(node)
        child = node[key] if present else None
        if not isinstance(child, want) or (want is list and not child):
            child = [None] if want is list else {}
            node[key] = child
        node = child
    node[path[-1]] = value


@FUZZ_READERS
@given(path=st.sampled_from(READER_PATHS), value=st.one_of(HOSTILE_JSON, DEEP_JSON))
def test_hostile_manifest_values_reach_no_reader_raw(target, path, value):
    """Any JSON type, any characters, any depth, at every field a reader uses: errors or printable output."""
    def change(manifest):
        _set_path(manifest, path, value)

    _check(target, _with_manifest(target, change), diff=True)


def _commit_object(repo, message: bytes, parent: str) -> str:
    tree = git(repo, "rev-parse", "HEAD^{tree}")
    head = f"tree {tree}\nparent {parent}\nauthor M <m@x> 1700000000 +0000\ncommitter M <m@x> 1700000000 +0000\n\n"
    proc = subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--literally", "--stdin"], cwd=repo,
                          input=head.encode() + message, capture_output=True, check=True)
    return proc.stdout.decode().strip()


TRAILER_KEYS = st.sampled_from(["Gitpack-Digest", "Gitpack-Params", "Gitpack-Capture", "Gitpack-Archive", "Gitpack-Object",
                                "Gitpack-Head", "Gitpack-Manifest", "Signed-off-by", "gitpack-digest"])
MESSAGE_PIECES = [b"\x1e", b"\x1f", b"\x00", b"\n", b"\n\n", b"\x1b[31m", b"\xff\xfe", b"Gitpack-Digest: x", b": ",
                  b"\xe2\x80\xae", b"\xc2\x85", b"\xe2\x80\xa8", b"f" * 40 + b"\x1f2001-01-01T00:00:00+00:00\x1f"]
HOSTILE_BYTES = st.one_of(
    st.binary(max_size=60),
    st.lists(st.sampled_from(MESSAGE_PIECES), max_size=8).map(b"".join),
)
TRAILER_VALUES = st.one_of(
    HOSTILE_BYTES,
    HOSTILE_JSON.map(lambda v: json.dumps(v).encode()),
    st.integers(150, 100_000).map(lambda d: b"[" * d + b"]" * d),
    st.integers(150, 5000).map(lambda d: b'{"objects":' * d + b"1" + b"}" * d),
    st.just(b'{"objects": {"$": {"args": [1, 2]}}}'),
    st.just(b'{"objects": [1]}'),
    st.just(b'{"x": "' + b"y" * 200_000 + b'"}'),
)


@FUZZ_READERS
@given(subject=HOSTILE_BYTES, body=HOSTILE_BYTES,
       trailers=st.lists(st.tuples(TRAILER_KEYS, TRAILER_VALUES), max_size=5), with_digest=st.booleans())
def test_hostile_commit_messages_are_one_entry_each(target, subject, body, trailers, with_digest):
    """A pushed commit with any message is at most one `gitpack log` entry -- its own sha -- and prints cleanly."""
    block = [b"Gitpack-Digest: sha256:" + b"1" * 64] if with_digest else []
    block += [key.encode() + b": " + value for key, value in trailers]
    message = subject + b"\n\n" + body + (b"\n\n" + b"\n".join(block) + b"\n" if block else b"\n")
    base = git(target.repo, "rev-parse", "HEAD")
    sha = _commit_object(target.repo, message, base)
    git(target.repo, "update-ref", "refs/heads/fuzz-log", sha)
    entries = gitpack.api.log(branch="fuzz-log", repo=target.repo)
    assert [e.commit for e in entries] in ([], [sha])  # the base commit carries no trailers: never an entry
    text = "\n".join(show.log_lines(entries))
    assert_printable(text)
    assert len(text.splitlines()) == len(entries)
    json.dumps([{**e.as_json(), "capture": e.capture()} for e in entries], indent=2)


# ------------------------------------------------------------------------------------------ issue 9: the CLI
def _one_line_or_clean(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert_printable(proc.stdout.replace("\t", " "))
    assert_printable(proc.stderr)
    if proc.returncode != 0:
        assert proc.returncode == 1 and proc.stderr.startswith("gitpack: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stdout


def test_cli_on_hostile_archives_and_commits(target, tmp_path):
    """A few real processes of every reading command on the worst cases: one error line or clean output."""
    hostile = {"\x1b[2J[/]": "\u202e\x07" + "x" * 3000, "deep": _nested(900, "\x1b"), "list": [1, "\ud800"]}
    archives = {
        "values": _with_manifest(target, lambda m: m.update(params=hostile, object=["\x1b]0;t\x07"], message="\x9b31m")),
        "types": _with_manifest(target, lambda m: m.update(structure={"total": {"parameters": "many"}, "modules": [1, {}]},
                                                            capture={"objects": [1]}, environment=[1], stale_code="x")),
        "modules": _with_manifest(target, lambda m: m.update(modules={"a": {"path": "a\x00b.py"}, "b": [1], "c": {"path": 5}})),
        "commit": _with_manifest(target, lambda m: m.update(commit="\x1b[31m" + "0" * 40, remote_url="\x1b]8;;evil\x07")),
    }
    paths = []
    for name, data in archives.items():
        (tmp_path / f"{name}.gitpack").write_bytes(data)
        paths.append(str(tmp_path / f"{name}.gitpack"))
    base = git(target.repo, "rev-parse", "HEAD")
    deep = b"[" * 100_000 + b"]" * 100_000
    message = (b"subject \x1b[31m\n\n\x1e" + b"f" * 40 + b"\x1f2001-01-01T00:00:00+00:00\x1fforged\x1e\n\n"
               b"Gitpack-Digest: sha256:x\nGitpack-Archive: \x1b]0;owned\x07\nGitpack-Params: " + deep + b"\n"
               b"Gitpack-Capture: " + deep + b"\n")
    git(target.repo, "update-ref", "refs/heads/fuzz-cli", _commit_object(target.repo, message, base))
    commands = [["log", "--branch", "fuzz-cli"], ["log", "--branch", "fuzz-cli", "--json"]]
    for path in paths:
        commands += [["inspect", path], ["inspect", "--json", path], ["textconv", path], ["scan", path],
                     ["verify", path], ["diff", str(target.real), path], ["diff", path, str(target.real), "--json"]]
    # Several commands per process would hide which one failed; one process each, a few dozen in all.
    outputs = {}
    for args in commands:
        outputs[tuple(args)] = _one_line_or_clean(gitpack_cli(target.repo, *args))
    log_lines = outputs[("log", "--branch", "fuzz-cli")].splitlines()
    assert len(log_lines) == 1 and "f" * 12 not in log_lines[0] and "2001-" not in log_lines[0]
    assert "params=<not shown: nested deeper than 200 levels>" in log_lines[0]
    assert "\\x1b[2J[/]" in outputs[("inspect", paths[0])]
    assert "note: skipped module" in outputs[("diff", str(target.real), paths[2])]

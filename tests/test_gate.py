"""The trust gate against forged archives: one test per class of attack the trust-boundary review found.

Every archive here is forged as an attacker who can push to the team's remote would forge it
(:mod:`forging`: all digests recomputed, a vouching commit on gitpack's branch), so it passes every
integrity check and only the gate stands between its pickle and the user.  Each attack is loaded by
``gitpack load`` in a separate process, and each test shows:

* no marker file appears (nothing the pickle aimed at ran);
* no signal killed the process (exit status 1, not a negative one: no segfault, no OOM kill, no hang);
* nothing was written outside the cache (the working tree, the git state and a scratch home are unchanged);
* one ``gitpack: error:`` line names what was refused;
* ``gitpack scan`` flags the same construct (exit 1) without running the pickle or any snapshot code.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import types
from pathlib import Path

import pickle_asm as asm
import pytest
from conftest import commit_files, git, init_repo, run, user_git_state
from forging import forge, push_snapshot

import gitpack
from gitpack.archive import ArchiveReader

HELPERS = '''\
import os


def save_text(path, text):
    """A victim's ordinary helper: in the wrong hands, a file-writing gadget."""
    with open(path, "w") as fh:
        fh.write(text)
    return path


class Logger:
    """A victim's class whose __init__ opens a file: a gadget if a pickle could call it with arguments."""

    def __init__(self, path="train.log"):
        self.fh = open(path, "w")
'''
MODEL = '''\
import torch


class Box(torch.nn.Module):
    def __init__(self, data):
        super().__init__()
        self.data = data
        self.linear = torch.nn.Linear(2, 2)
        self.scale = lambda x: x * 2

    def forward(self, x):
        return self.linear(x)
'''
PREPARE = '''\
"""A script that runs at import: importing it is a gadget."""
import os
import pathlib

pathlib.Path(os.environ.get("GATE_MARKER", "/nonexistent/x")).write_text("prepare_data ran")
'''
SAVE = '''\
import sys
import gitpack
from pkg.helpers import save_text, Logger
from pkg.model import Box
gitpack.save({"box": Box([1, 2, 3]), "helper": save_text, "logger_class": Logger}, sys.argv[1])
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    repo = init_repo(root / "repo")
    commit_files(repo, {"pkg/__init__.py": "", "pkg/model.py": MODEL, "pkg/helpers.py": HELPERS,
                        "pkg/prepare_data.py": PREPARE, "save.py": SAVE, ".gitignore": "*.gitpack\n"}, "model")
    proc = run(repo, sys.executable, "save.py", str(root / "base.gitpack"), env={"GITPACK_CACHE": str(root / "cache")})
    assert proc.returncode == 0, proc.stderr
    return types.SimpleNamespace(repo=repo, base=root / "base.gitpack", root=root)


def _tree_digest(directory: Path) -> dict[str, str]:
    out = {}
    for path in sorted(directory.rglob("*")):
        if ".git" in path.relative_to(directory).parts or not path.is_file():
            continue
        out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def attempt(project, tmp_path, data: bytes, fragment: str, *, scan_fragment: str | None = None,
            manifest_changes: dict | None = None, replace_members: dict | None = None, timeout: int = 120,
            extra_env: dict | None = None) -> str:
    """Forge an archive around *data*, try to load it, and check everything the module docstring lists."""
    archive = forge(project.base, tmp_path / "evil.gitpack", project.repo, data, manifest_changes=manifest_changes,
                    replace_members=replace_members)
    marker = tmp_path / "MARKER"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    before = (user_git_state(project.repo), _tree_digest(home))
    env = {"GATE_MARKER": str(marker), "HOME": str(home), "GITPACK_CACHE": str(tmp_path / "cache"), **(extra_env or {})}
    code = f"import sys; sys.argv = ['gitpack', 'load', {str(archive)!r}]; import gitpack.cli; gitpack.cli.main()"
    proc = run(project.repo, sys.executable, "-c", code, env=env, timeout=timeout)
    assert proc.returncode == 1, f"exit {proc.returncode} (a negative status is a signal): {proc.stderr[-2000:]}"
    assert proc.stderr.startswith("gitpack: error:") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert fragment in proc.stderr, proc.stderr
    assert not marker.exists(), f"the payload ran: {marker.read_text()}"
    assert (user_git_state(project.repo), _tree_digest(home)) == before, "something was written outside the cache"

    scan = run(project.repo, sys.executable, "-m", "gitpack", "scan", str(archive), env=env)
    assert scan.returncode == 1, scan.stdout + scan.stderr
    assert (scan_fragment or fragment) in scan.stdout + scan.stderr, scan.stdout + scan.stderr
    assert not marker.exists()
    return proc.stderr


# ----------------------------------------------------------------------------- 1. BUILD on what is not an instance
def _partial_of_helper(marker_text: str) -> bytes:
    """functools.partial(pkg.helpers.save_text, GATE_MARKER, text): a value that writes a file when called."""
    return asm.build(asm.call(asm.glob("functools", "partial"), asm.snapshot_function("pkg.helpers", "save_text")),
                     asm.tup(asm.snapshot_function("pkg.helpers", "save_text"),
                             asm.tup(asm.s("/tmp/gitpack-gate-would-write-here"), asm.s(marker_text)),
                             asm.NONE, asm.NONE))


def test_build_on_an_allowed_class_itself_is_refused(project, tmp_path):
    # Slot state on pathlib.PosixPath *the class* would replace its read_bytes for everyone.
    data = asm.program(asm.build(asm.glob("pathlib", "PosixPath"),
                                 asm.tup(asm.NONE, asm.dct((asm.s("read_bytes"), _partial_of_helper("pwned"))))))
    attempt(project, tmp_path, data, "BUILD on the global pathlib.PosixPath itself")


def test_build_on_a_snapshot_module_is_refused(project, tmp_path):
    # Rewriting a snapshot module's __file__ used to make the function rebuilder compile attacker text.
    data = asm.program(asm.build(asm.snapshot_module("pkg.model"),
                                 asm.tup(asm.NONE, asm.dct((asm.s("__file__"), asm.s(str(tmp_path / "evil.py")))))))
    attempt(project, tmp_path, data, "BUILD on the module pkg.model itself")


def test_build_on_a_snapshot_class_or_function_is_refused(project, tmp_path):
    data = asm.program(asm.build(asm.snapshot_class("pkg.model", "Box"),
                                 asm.tup(asm.NONE, asm.dct((asm.s("forward"), _partial_of_helper("pwned"))))))
    attempt(project, tmp_path, data, "BUILD on the global pkg.model.Box itself")
    data = asm.program(asm.build(asm.snapshot_function("pkg.helpers", "save_text"),
                                 asm.dct((asm.s("__code__"), asm.NONE))))
    attempt(project, tmp_path, data, "BUILD on the function pkg.helpers.save_text itself")


def test_state_may_not_replace_a_method(project, tmp_path):
    # An nn.Linear *instance* whose forward is a partial of the victim's helper: a gadget at first call.
    linear = asm.new(asm.glob("torch.nn.modules.linear", "Linear"))
    data = asm.program(asm.build(linear, asm.dct((asm.s("forward"), _partial_of_helper("pwned")))))
    attempt(project, tmp_path, data, "state key 'forward' of torch.nn.modules.linear.Linear would replace its method")


def test_state_is_set_once_and_before_the_object_is_used(project, tmp_path):
    od = asm.glob("collections", "OrderedDict")
    hooks = asm.call(od) + asm.memo_put(0)
    # The same OrderedDict given to a tensor as (empty) backward hooks, then filled with a hook afterwards.
    tensor = asm.call(asm.glob("torch._utils", "_rebuild_tensor_v2"),
                      asm.pid(asm.s("storage"), asm.s("float32"), asm.s("0"), asm.s("cpu"), asm.i(4)),
                      asm.i(0), asm.tup(asm.i(4)), asm.tup(asm.i(1)), asm.FALSE, hooks)
    fill = b"h\x00" + asm.s("0") + asm.snapshot_function("pkg.helpers", "save_text") + b"s"
    data = asm.program(asm.tup(tensor, fill))
    attempt(project, tmp_path, data, "collections.OrderedDict changed after it was passed to another call")


def test_state_cannot_be_set_on_what_a_tensor_or_storage_id_stands_for():
    """BUILD on a tensor id's value, with slot state.  The gate's stand-in for it had no ``__setstate__``, so the C
    unpickler set the slots on the stand-in itself: relabelled a storage of 10**9 items, it passed
    ``_rebuild_tensor_v2``'s size check for a 400 MB view of a 16-byte storage."""
    from gitpack.pickling import gate

    tensor = asm.pid(asm.s("tensor"), asm.s("float32"), asm.s("pack-0:0"), asm.s("cpu"), asm.i(4), asm.i(0),
                     asm.tup(asm.i(4)), asm.tup(asm.i(1)), asm.FALSE, asm.s("tensor"))
    storage = asm.tup(asm.s("storage"), asm.s("float32"), asm.s("pack-0:0"), asm.s("cpu"), asm.i(10**9))
    relabelled = asm.build(tensor, asm.tup(asm.NONE, asm.dct((asm.s("kind"), asm.s("storage")), (asm.s("pid"), storage))))
    view = asm.call(asm.glob("torch._utils", "_rebuild_tensor_v2"), relabelled, asm.i(0), asm.tup(asm.i(10**8)),
                    asm.tup(asm.i(1)), asm.FALSE, asm.NONE)
    trace = gate.trace(asm.program(view))
    assert not trace.safe and "state" in (trace.refusal() or ""), trace.refusal()
    plain = asm.call(asm.glob("torch._utils", "_rebuild_tensor_v2"), storage + b"Q", asm.i(0), asm.tup(asm.i(10**8)),
                     asm.tup(asm.i(1)), asm.FALSE, asm.NONE)
    assert gate.trace(asm.program(plain)).safe  # the same call on an honest storage id passes: the BUILD is what is refused


# ----------------------------------------------------------------------------- 2. only gitpack's own commits vouch
def _vouching_message(archive: Path, *, body_only: bool = False, manifest_trailer: bool = True) -> str:
    from gitpack import trailers as audit
    from gitpack.archive import manifest_digest

    with ArchiveReader(archive) as reader:
        manifest = reader.manifest
    lines = [f"Gitpack-Digest: {manifest['payload_digest']}"]
    if manifest_trailer:
        lines.append(f"Gitpack-Manifest: {manifest_digest(manifest)}")
    if body_only:  # the trailers in the middle of an ordinary message, not in its trailer block
        return "fix typo\n\n" + "\n".join(lines) + "\n\nthanks for the review!\n"
    return audit.format_message(archive="x", object_type="x", digest=manifest["payload_digest"], params={}, head=None,
                                extra={"Manifest": manifest_digest(manifest)} if manifest_trailer else {})


def _recommit(project, tmp_path, archive: Path, commit: str, name: str) -> Path:
    """*archive* claiming *commit* (the manifest's commit field is the one thing the commit cannot cover)."""
    from gitpack.archive import ArchiveWriter

    with ArchiveReader(archive) as reader:
        manifest = dict(reader.manifest)
        members = {m: reader.read(m) for m in reader.members}
    writer = ArchiveWriter(tmp_path / name)
    for member, data in members.items():
        writer.add(member, [data])
    manifest = {k: v for k, v in manifest.items() if k not in ("members", "payload_digest", "format")}
    writer.seal({**manifest, "commit": commit})
    return writer.publish()


@pytest.mark.parametrize("how", ["ordinary commit on main", "trailers in the body only", "no manifest trailer",
                                 "another tree", "second parent of a save"])
def test_only_gitpack_snapshot_commits_vouch(project, tmp_path, how):
    evil = asm.program(asm.call(asm.snapshot_function("pkg.helpers", "save_text"), asm.s(str(tmp_path / "MARKER")), asm.s("x")))
    unvouched = forge(project.base, tmp_path / "unvouched.gitpack", project.repo, evil, vouch=False)
    with ArchiveReader(unvouched) as reader:
        tree = reader.manifest["tree"]
    repo = project.repo
    if how == "another tree":
        tree = subprocess.run(["git", "mktree"], cwd=repo, input="", capture_output=True, text=True,
                              check=True).stdout.strip()  # the empty tree: not the one the archive records
        commit = push_snapshot(repo, tree, _vouching_message(unvouched))
        expected = "does not hold the tree"
    elif how in ("ordinary commit on main", "second parent of a save"):
        # An outside contributor's commit, merged into main: it names the right tree and carries both trailers.
        message = _vouching_message(unvouched)
        commit = subprocess.run(["git", "commit-tree", tree, "-p", "HEAD", "-F", "-"], cwd=repo, input=message,
                                capture_output=True, text=True, check=True).stdout.strip()
        before = git(repo, "rev-parse", "refs/heads/main")
        git(repo, "update-ref", "refs/heads/main", commit, before)
        if how == "second parent of a save":  # a save now has it as its second parent: reachable, not first-parent
            proc = run(repo, sys.executable, "-c", "import gitpack; gitpack.save({'a': 1}, 'other.gitpack')")
            assert proc.returncode == 0, proc.stderr
            assert git(repo, "rev-parse", "refs/heads/gitpack^2") == commit
        expected = "not on gitpack's snapshot history"
    else:
        message = _vouching_message(unvouched, body_only=how == "trailers in the body only",
                                    manifest_trailer=how != "no manifest trailer")
        commit = push_snapshot(repo, tree, message)
        expected = "is not a gitpack snapshot"
    archive = _recommit(project, tmp_path, unvouched, commit, "claims.gitpack")
    with pytest.raises(gitpack.GitpackError, match=expected):
        gitpack.load(archive, repo=repo)
    with pytest.raises(gitpack.GitpackError, match=expected):
        gitpack.verify(archive, repo=repo)
    proc = run(repo, sys.executable, "-m", "gitpack", "load", str(archive))
    assert proc.returncode == 1 and expected in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "MARKER").exists()


def test_a_recorded_branch_is_a_branch_name_never_a_revision_expression(project, tmp_path):
    """A pull request brings an orphan history: a root shaped like gitpack's start commit, then a commit that
    vouches for a forged archive; merging it makes that commit ``main^2``.  The archive's manifest records its
    branch as ``refs/heads/main^2``, which git resolves like any revision, so the vouching check walked that
    history as if it were a snapshot branch of gitpack's."""
    from gitpack.git import START_MESSAGE

    evil = asm.program(asm.call(asm.snapshot_function("pkg.helpers", "save_text"), asm.s(str(tmp_path / "MARKER")), asm.s("x")))
    unvouched = forge(project.base, tmp_path / "unvouched.gitpack", project.repo, evil, vouch=False,
                      manifest_changes={"branch": "refs/heads/main^2"})
    with ArchiveReader(unvouched) as reader:
        tree = reader.manifest["tree"]
    repo = project.repo

    def commit_tree(tree_sha: str, message: str, *parents: str) -> str:
        args = ["git", "commit-tree", tree_sha, *sum((["-p", p] for p in parents), []), "-F", "-"]
        return subprocess.run(args, cwd=repo, input=message, capture_output=True, text=True, check=True).stdout.strip()

    empty = subprocess.run(["git", "mktree"], cwd=repo, input="", capture_output=True, text=True, check=True).stdout.strip()
    fake_start = commit_tree(empty, START_MESSAGE)
    fake_save = commit_tree(tree, _vouching_message(unvouched), fake_start)
    main = git(repo, "rev-parse", "refs/heads/main")
    git(repo, "update-ref", "refs/heads/main", commit_tree(tree, "Merge pull request #7\n", main, fake_save), main)
    assert git(repo, "rev-parse", "refs/heads/main^2") == fake_save
    archive = _recommit(project, tmp_path, unvouched, fake_save, "claims.gitpack")
    with pytest.raises(gitpack.GitpackError, match="not on gitpack's snapshot history"):
        gitpack.load(archive, repo=repo)
    assert not (tmp_path / "MARKER").exists()


# ----------------------------------------------------------------------------- 3. numpy object pointers
def _np_dtype(code: str) -> bytes:
    return asm.call(asm.glob("numpy", "dtype"), asm.s(code), asm.FALSE, asm.TRUE)


def test_numpy_object_arrays_from_bytes_are_refused(project, tmp_path):
    # numpy.ndarray(shape, dtype('O'), buffer=...) reads pointers from attacker bytes: SIGSEGV before the fix.
    fake_pointers = asm.b(b"\x41" * 64)
    data = asm.program(asm.call(asm.glob("numpy", "ndarray"), asm.tup(asm.i(8)),
                                asm.build(_np_dtype("O8"), asm.tup(asm.i(3), asm.s("|"), asm.NONE, asm.NONE, asm.NONE,
                                                                    asm.i(-1), asm.i(-1), asm.i(63))), fake_pointers))
    attempt(project, tmp_path, data, "numpy.dtype 'O8'")


def test_numpy_structured_dtype_with_an_object_field_is_refused(project, tmp_path):
    object_field = asm.build(_np_dtype("O8"), asm.tup(asm.i(3), asm.s("|"), asm.NONE, asm.NONE, asm.NONE,
                                                       asm.i(-1), asm.i(-1), asm.i(63)))
    void = asm.build(_np_dtype("V8"), asm.tup(asm.i(3), asm.s("|"), asm.NONE, asm.tup(asm.s("a")),
                                              asm.dct((asm.s("a"), asm.tup(object_field, asm.i(0)))),
                                              asm.i(8), asm.i(1), asm.i(27)))
    array = asm.call(asm.glob("numpy._core.numeric", "_frombuffer"), asm.b(b"\x41" * 8), void, asm.tup(asm.i(1)), asm.s("C"))
    attempt(project, tmp_path, asm.program(array), "numpy dtype state with object items")


def test_numpy_object_scalar_is_refused(project, tmp_path):
    scalar = asm.call(asm.glob("numpy._core.multiarray", "scalar"),
                      asm.build(_np_dtype("O8"), asm.tup(asm.i(3), asm.s("|"), asm.NONE, asm.NONE, asm.NONE,
                                                         asm.i(-1), asm.i(-1), asm.i(63))), asm.b(b"\x41" * 8))
    attempt(project, tmp_path, asm.program(scalar), "numpy.dtype 'O8'")


# ----------------------------------------------------------------------------- 4. snapshot functions and modules as gadgets
def test_a_snapshot_function_is_never_called(project, tmp_path):
    data = asm.program(asm.call(asm.snapshot_function("pkg.helpers", "save_text"),
                                asm.s(str(tmp_path / "MARKER")), asm.s("written by the pickle")))
    attempt(project, tmp_path, data, "calls the snapshot function pkg.helpers.save_text")


def test_a_legacy_snapshot_reference_cannot_call_a_function_either(project, tmp_path):
    # gitpack 0.1 wrote ('global', module, qualname) for classes and functions alike: the kind is found at load.
    data = asm.program(asm.call(asm.pid(asm.s("global"), asm.s("pkg.helpers"), asm.s("save_text")),
                                asm.s(str(tmp_path / "MARKER")), asm.s("written by the pickle")))
    attempt(project, tmp_path, data, "calls the snapshot function pkg.helpers.save_text")


def test_a_snapshot_class_is_not_called_with_arguments(project, tmp_path):
    data = asm.program(asm.call(asm.snapshot_class("pkg.helpers", "Logger"), asm.s(str(tmp_path / "MARKER"))))
    attempt(project, tmp_path, data, "calls the snapshot class pkg.helpers.Logger")


def test_an_unused_snapshot_module_is_never_imported(project, tmp_path):
    data = asm.program(asm.snapshot_module("pkg.prepare_data"))
    attempt(project, tmp_path, data, "snapshot module pkg.prepare_data, which the archive's manifest does not record")


def test_the_rebuilder_is_no_global_and_checks_its_arguments(project, tmp_path):
    # gitpack 0.1's rebuilder global, handed a module that is not the snapshot's (os) and a name to compile.
    data = asm.program(asm.call(asm.glob("gitpack.pickling", "rebuild_function"), asm.glob("os", "path"),
                                asm.s("system"), asm.i(1), asm.NONE, asm.NONE, asm.NONE, asm.NONE))
    attempt(project, tmp_path, data, "global os.path", scan_fragment="os.path  -- not on the allowlist")
    # The current rebuilder is reachable only through a persistent id, and only with a snapshot module.
    data = asm.program(asm.call(asm.pid(asm.s("rebuild")), asm.snapshot_class("pkg.model", "Box"), asm.s("Box.forward"),
                                asm.i(13), asm.NONE, asm.NONE, asm.NONE, asm.NONE))
    attempt(project, tmp_path, data, "gitpack's function rebuilder with malformed arguments")


# ----------------------------------------------------------------------------- 5. constructors called with arguments
def test_library_classes_are_never_called_with_arguments(project, tmp_path):
    # nn.Linear(20000, 20000): a 2 KB pickle that allocated 1.6 GB.  The child reports its peak memory.
    data = asm.program(asm.call(asm.glob("torch.nn.modules.linear", "Linear"), asm.i(20000), asm.i(20000)))
    attempt(project, tmp_path, data, "calls torch.nn.modules.linear.Linear (a library class is only ever built empty")
    data = asm.program(asm.new(asm.glob("torch.nn.modules.linear", "Linear"), asm.i(20000), asm.i(20000)))
    attempt(project, tmp_path, data, "constructs torch.nn.modules.linear.Linear with arguments")


@pytest.mark.parametrize("value,fragment", [
    (asm.call(asm.glob("builtins", "bytes"), asm.i(10**10)), "builtins.bytes called with something other than text"),
    (asm.call(asm.glob("builtins", "bytearray"), asm.i(10**10)), "builtins.bytearray called with something other"),
    (asm.call(asm.glob("torch", "Size"), asm.tup(asm.i(-1))), "torch.Size of something other than non-negative ints"),
])
def test_value_types_take_plain_data_only(project, tmp_path, value, fragment):
    attempt(project, tmp_path, asm.program(value), fragment)


def test_a_memo_table_bomb_is_refused_before_the_unpickler_runs(project, tmp_path):
    # LONG_BINPUT 2**29: the C unpickler would grow its memo to 8 GiB (measured: 27 s, 8.4 GB RSS).
    data = asm.program(asm.NONE + asm.memo_put(2**29))
    attempt(project, tmp_path, data, "memo index 536870912", timeout=60)


# ----------------------------------------------------------------------------- 6. sentencepiece never opens a path
def test_sentencepiece_takes_model_bytes_only(project, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading blocks forever: a hang if the processor were told to load it
    spm = asm.glob("sentencepiece", "SentencePieceProcessor")
    attempt(project, tmp_path, asm.program(asm.call(spm, asm.s(str(fifo)))),
            "calls sentencepiece.SentencePieceProcessor (a library class is only ever built empty", timeout=60)
    state = asm.dct((asm.s("model_proto"), asm.s(str(fifo))))
    attempt(project, tmp_path, asm.program(asm.build(asm.new(spm), state)),
            "sentencepiece state other than a serialized model proto", timeout=60)
    state = asm.dct((asm.s("model_proto"), asm.b(b"")), (asm.s("model_file"), asm.s(str(fifo))))
    attempt(project, tmp_path, asm.program(asm.build(asm.new(spm), state)),
            "sentencepiece state other than a serialized model proto", timeout=60)


# ----------------------------------------------------------------------------- 7. a snapshot that shadows an installed package
def test_a_snapshot_module_shadowing_an_installed_package_needs_trust(project, tmp_path):
    # The pushed snapshot keeps the victim's code and adds a root torch.py: `import torch` in model.py would run it.
    repo = project.repo
    with ArchiveReader(project.base) as reader:
        data, tree = reader.read("pickle"), reader.manifest["tree"]
    evil = f"import pathlib\npathlib.Path({str(tmp_path / 'MARKER')!r}).write_text('fake torch ran')\n"
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input=evil, capture_output=True,
                          text=True, check=True).stdout.strip()
    entries = git(repo, "ls-tree", tree).splitlines() + [f"100644 blob {blob}\ttorch.py"]
    new_tree = subprocess.run(["git", "mktree"], cwd=repo, input="\n".join(entries) + "\n", capture_output=True,
                              text=True, check=True).stdout.strip()
    stderr = attempt(project, tmp_path, data, "would shadow the installed package 'torch'",
                     manifest_changes={"tree": new_tree})
    assert "--trust" in stderr


# ----------------------------------------------------------------------------- 8. the tensor table (format 3)
def _table(*rows: list[int], rank: int = 1, units=("storages/pack-0",)) -> bytes:
    """A forged tensor table: *rows* as ``unit byte_offset numel dtype location offset requires_grad kind ndim
    size[rank] stride[rank]``, float32 on the CPU (written here, not by gitpack's encoder)."""
    import json
    import struct
    from array import array

    header = json.dumps({"rows": len(rows), "rank": rank, "itemsize": 8, "units": list(units), "dtypes": ["float32"],
                         "locations": ["cpu"]}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + array("q", [v for row in rows for v in row]).tobytes()


def _base_pickle(project) -> bytes:
    with ArchiveReader(project.base) as reader:
        assert "tensors" in reader.members  # the base archive's Linear is two rows
        return reader.read("pickle")


@pytest.mark.parametrize("rows, fragment", [
    # two storages over the same bytes of a 72-byte pack: on a GPU, a small pack standing for gigabytes
    ([[0, 0, 18, 0, 0, 0, 1, 1, 1, 4, 1], [0, 64, 2, 0, 0, 0, 1, 1, 1, 2, 1]], "row 1: a storage that overlaps another"),
    # a 10**6-item view of a 4-item storage: torch's set_ would grow the storage to 4 MB of bytes nobody wrote
    ([[0, 0, 4, 0, 0, 0, 1, 1, 1, 10**6, 1], [0, 64, 2, 0, 0, 0, 1, 1, 1, 2, 1]], "row 0: a view beyond its storage"),
    # (2**17) * 2**47 = 2**64: wraps to 0 in 64-bit ints, so a naive sum calls this view one item long
    ([[0, 0, 4, 0, 0, 0, 1, 1, 1, 2**17 + 1, 2**47], [0, 64, 2, 0, 0, 0, 1, 1, 1, 2, 1]], "row 0: a view beyond its storage"),
    # a storage of 10**9 floats in a member of 72 bytes
    ([[0, 0, 10**9, 0, 0, 0, 1, 1, 1, 4, 1], [0, 64, 2, 0, 0, 0, 1, 1, 1, 2, 1]],
     "row 0: a storage that is not where its member holds one"),
    # a dtype the header does not list
    ([[0, 0, 4, 3, 0, 0, 1, 1, 1, 4, 1], [0, 64, 2, 0, 0, 0, 1, 1, 1, 2, 1]], "row 0: a value out of range"),
])
def test_a_forged_tensor_row_is_refused_before_anything_is_read_into_it(project, tmp_path, rows, fragment):
    attempt(project, tmp_path, _base_pickle(project), f"tensor table {fragment}",
            replace_members={"tensors": _table(*rows)})


def test_the_pickle_names_only_rows_the_table_has(project, tmp_path):
    fine = _table([0, 0, 4, 0, 0, 0, 1, 1, 1, 4, 1])
    attempt(project, tmp_path, asm.program(asm.lst(asm.i(0) + b"Q", asm.i(7) + b"Q")),
            "tensor row 7 of a tensor table of 1 rows", replace_members={"tensors": fine})
    attempt(project, tmp_path, asm.program(asm.i(0) + b"Q"), "a tensor row in an archive with no tensor table",
            replace_members={"tensors": None})
    attempt(project, tmp_path, asm.program(asm.TRUE + b"Q"), "malformed persistent id",  # True is not row 1
            replace_members={"tensors": fine})


def test_a_table_naming_a_member_that_is_not_a_storage_is_refused(project, tmp_path):
    attempt(project, tmp_path, asm.program(asm.i(0) + b"Q"), "a unit that is not a storage member",
            replace_members={"tensors": _table([0, 0, 4, 0, 0, 0, 1, 1, 1, 4, 1], units=("pickle",))})


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("rows, fragment", [
    ([[0, 0, 4, 0, 0, 0, 1, 1, 1, 10**6, 1], [0, 64, 2, 0, 0, 0, 1, 1, 1, 2, 1]], "row 0: a view beyond its storage"),
    # a storage 64 bytes before its pack: with mmap=True, the bytes of the member before it (the pickle)
    ([[0, -64, 64, 0, 0, 0, 0, 0, 1, 64, 1], [0, 64, 2, 0, 0, 0, 1, 1, 1, 2, 1]], "row 0: a value out of range"),
    # two storages over the same bytes: each would be copied on its own to a map_location device
    ([[0, 0, 18, 0, 0, 0, 1, 1, 1, 4, 1], [0, 64, 2, 0, 0, 0, 1, 1, 1, 2, 1]], "a storage that overlaps another"),
])
def test_a_trusted_load_still_refuses_a_forged_table(project, tmp_path, rows, fragment, mmap):
    """--trust skips the load policy, never the archive's structure: the loader checks the table itself."""
    from gitpack.errors import ArchiveError

    archive = forge(project.base, tmp_path / "grow.gitpack", project.repo, _base_pickle(project),
                    replace_members={"tensors": _table(*rows)})
    with pytest.raises(ArchiveError, match=fragment):
        gitpack.load(archive, repo=project.repo, trust=True, mmap=mmap)


def test_a_row_number_too_long_to_print_is_refused_not_an_error():
    """str() of an int of more than 4,300 digits raises: the refusal must not try."""
    import struct

    from gitpack.pickling import gate
    from gitpack.pickling.tensortable import TensorTable

    raw = (10**5000).to_bytes(2100, "little")
    table = TensorTable.parse(_table([0, 0, 4, 0, 0, 0, 1, 1, 1, 4, 1]), {"storages/pack-0": 64})
    trace = gate.trace(asm.program(b"\x8b" + struct.pack("<i", len(raw)) + raw + b"Q"), table=table)
    assert trace.error is None and trace.refusal() == "tensor row beyond 10**12 of a tensor table of 1 rows"


# ----------------------------------------------------------------------------- what must still load
def test_the_base_archive_loads_without_trust_and_its_pieces_work(project, tmp_path):
    code = ("import gitpack, torch\n"
            "o = gitpack.load('base.gitpack')\n"
            "print('RESULT', o['box'].scale(21), o['box'](torch.ones(1, 2)).shape, o['helper'].__name__, o['logger_class'].__name__)\n")
    proc = run(project.repo, sys.executable, "-c", code.replace("'base.gitpack'", repr(str(project.base))),
               env={"GITPACK_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "RESULT 42 torch.Size([1, 2]) save_text Logger" in proc.stdout


GPT = '''\
import math

import numpy as np
import sentencepiece as spm
import torch
import torch.nn as nn
from torch.nn import functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout=0.0):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd = n_head, n_embd
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(approximate="tanh"), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList([Block(n_embd, n_head, block_size) for _ in range(n_layer)]), ln_f=nn.LayerNorm(n_embd)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one parameter, two modules

    def forward(self, idx):
        pos = torch.arange(idx.size(1))
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


class Featurizer:
    """numpy float arrays and a sentencepiece processor, as an NLP pipeline keeps them."""

    def __init__(self, corpus):
        import io
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(open(corpus).readlines()), model_writer=model,
                                       vocab_size=60)
        self.sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
        rng = np.random.default_rng(0)
        self.weights = rng.standard_normal((60, 8)).astype(np.float32)
        self.bias = np.linspace(0, 1, 8)

    def __call__(self, text):
        return (self.weights[self.sp.encode(text)].sum(0) + self.bias).tolist()
'''
SAVE_LEGIT = '''\
import json, sys
import torch
import gitpack
from nets import GPT, Featurizer

torch.manual_seed(0)
gpt = GPT().eval()
idx = torch.tensor([[1, 2, 3, 4]])
checkpoint = {"model": gpt.state_dict(), "epoch": 3, "step": 1000, "lr": 3e-4, "rng": torch.get_rng_state()}
feat = Featurizer("corpus.txt")
for name, obj in (("gpt", gpt), ("checkpoint", checkpoint), ("featurizer", feat)):
    gitpack.save(obj, name + ".gitpack")
with torch.no_grad():
    print("EXPECTED", json.dumps({"gpt": gpt(idx).sum().item(), "feat": feat("lorem ipsum dolor")}))
'''
LOAD_LEGIT = '''\
import json
import torch
import gitpack

gpt = gitpack.load("gpt.gitpack")  # the default policy: no --trust, no --allow
assert gpt.transformer.wte.weight is gpt.lm_head.weight, "weight tying survived"
checkpoint = gitpack.load("checkpoint.gitpack")
fresh = gitpack.load("gpt.gitpack")
fresh.load_state_dict(checkpoint["model"])
feat = gitpack.load("featurizer.gitpack")
assert checkpoint["epoch"] == 3 and torch.equal(checkpoint["rng"], torch.get_rng_state()) is not None
with torch.no_grad():
    idx = torch.tensor([[1, 2, 3, 4]])
    print("GOT", json.dumps({"gpt": gpt(idx).sum().item(), "feat": feat("lorem ipsum dolor"),
                             "restored": fresh(idx).sum().item()}))
'''


def test_real_models_still_load_under_the_default_policy(tmp_path):
    """A GPT-style module (weight tying, a causal-mask buffer), a checkpoint dict of tensors, and numpy float
    arrays beside a sentencepiece processor: all load in a new process with no --trust and no --allow."""
    from conftest import SEED

    repo = init_repo(tmp_path / "legit")
    commit_files(repo, {"nets.py": GPT, "save.py": SAVE_LEGIT, "load.py": LOAD_LEGIT,
                        "corpus.txt": (SEED / "corpus.txt").read_text(), ".gitignore": "*.gitpack\n"}, "nets")
    saved = run(repo, sys.executable, "save.py")
    assert saved.returncode == 0, saved.stderr
    assert "warning" not in saved.stderr
    expected = json_line(saved.stdout, "EXPECTED")
    for name in ("gpt", "checkpoint", "featurizer"):
        scan = run(repo, sys.executable, "-m", "gitpack", "scan", f"{name}.gitpack")
        assert scan.returncode == 0 and "REFUSED" not in scan.stdout and "pending" not in scan.stdout, scan.stdout
    loaded = run(repo, sys.executable, "load.py")
    assert loaded.returncode == 0, loaded.stderr
    got = json_line(loaded.stdout, "GOT")
    assert got["gpt"] == expected["gpt"] == got["restored"]
    assert got["feat"] == expected["feat"]


def json_line(stdout: str, tag: str):
    import json

    return json.loads([line for line in stdout.splitlines() if line.startswith(tag)][0].split(" ", 1)[1])


def test_scan_reports_the_opcode_count_the_load_never_computes():
    """A load's byte pass skips counting opcodes; the count scan reports is still every opcode of the pickle."""
    import pickle
    import pickletools

    from gitpack.pickling import gate

    data = pickle.dumps({"vocab": {f"w{k}": k for k in range(2000)}, "ids": list(range(500))}, protocol=5)
    trace = gate.trace(data, count_opcodes=True)
    assert trace.safe
    assert trace.opcodes == sum(1 for _ in pickletools.genops(data))
    assert gate.trace(b"\x80\x05N.N", count_opcodes=True).opcodes == 0  # refused by the byte pass: nothing counted
    assert gate.trace(data).opcodes == 0  # what a load runs: no count

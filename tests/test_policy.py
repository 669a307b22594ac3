"""Nothing runs before it is verified, and no code comes from outside the commit.

The malicious archives are built honestly: a real archive written by
``gitpack.save`` has its pickle member replaced, every digest recomputed and
(where the test needs the digest checks passed) a snapshot commit made that
vouches for the forged payload and manifest, so that it is the *policy*, not a
digest, that stops each one.  Every payload would create a marker file if any
of it ran; each test asserts that the marker never appears, that the error is
gitpack's own and names the problem, and that ``gitpack scan`` lists the
offending global.  Tampering without a matching commit is shown separately to
be caught by the digests.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import types
from ipaddress import IPv4Address
from pathlib import Path

import dill
import pytest
from conftest import commit_files, git, gitpack_cli, init_repo, run
from forging import forge, rewrite_manifest

import gitpack
from gitpack.archive import ArchiveReader
from gitpack.errors import ArchiveError, GitpackError, PolicyError
from gitpack.pickling.policy import _ALLOW, Policy, parse_allow

MODEL = '''\
import os  # so ('pkg.model', 'os.system') names something reachable from the snapshot module


class Box:
    def __init__(self, data):
        self.data = data
        self.scale = lambda x: x * 2
'''
SAVE = '''\
import sys
import gitpack
from pkg.model import Box
gitpack.save(Box([1, 2, 3]), sys.argv[1])
'''


# ----------------------------------------------------------------------------- helpers
def _s(text: str) -> bytes:
    """SHORT_BINUNICODE / BINUNICODE of *text*."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw if len(raw) < 256 else b"X" + struct.pack("<I", len(raw)) + raw


def _b(data: bytes) -> bytes:
    """BINBYTES of *data*."""
    return b"B" + struct.pack("<I", len(data)) + data


P4 = b"\x80\x04"


def _call(callable_ops: bytes, *args: bytes) -> bytes:
    """Ops that call the object *callable_ops* pushes with the pushed *args*."""
    return callable_ops + b"(" + b"".join(args) + b"tR"


def _stack_global(module: str, name: str) -> bytes:
    return _s(module) + _s(name) + b"\x93"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A repository with pkg/model.py, and a real archive of a Box (with its lambda) saved from it."""
    root = tmp_path_factory.mktemp("security")
    repo = init_repo(root / "repo")
    commit_files(repo, {"pkg/__init__.py": "", "pkg/model.py": MODEL, "save.py": SAVE}, "model")
    proc = run(repo, sys.executable, "save.py", str(root / "base.gitpack"), env={"GITPACK_CACHE": str(root / "cache")})
    assert proc.returncode == 0, proc.stderr
    return types.SimpleNamespace(repo=repo, base=root / "base.gitpack", root=root)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "MARKER"


def _scan_cli(project, path: Path) -> subprocess.CompletedProcess:
    return gitpack_cli(project.repo, "scan", str(path))


# ----------------------------------------------------------------------------- the corpus
def _by_value_call(command: str) -> bytes:
    """A real dill pickle of a call to a function defined in an interactive session, which runs *command*."""
    namespace = {"__name__": "__main__"}
    exec(compile(f"def evil():\n    import os\n    os.system({command!r})\n", "<stdin>", "exec"), namespace)
    fn = namespace["evil"]

    class Call:
        def __reduce__(self):
            return (fn, ())

    return dill.dumps(Call(), protocol=4, recurse=False, byref=False)


def corpus(marker: Path) -> dict[str, tuple[bytes, str, str | None]]:
    """name -> (pickle, a fragment the load error must contain, the global `gitpack scan` must list as refused)."""
    cmd = f"touch {marker}"
    reduce_os_system = b"\x80\x02cos\nsystem\n" + _s(cmd) + b"\x85R."
    memo_trick = (
        P4
        + _s("collections") + b"q\x00" + _s("OrderedDict") + b"q\x01" + b"00"  # what a naive scanner sees last...
        + _s("os") + b"q\x00" + _s("system") + b"q\x01" + b"00"  # ...overwritten in the memo
        + b"h\x00h\x01\x93" + _s(cmd) + b"\x85R."
    )
    getattr_chain = (
        P4
        + _call(_stack_global("builtins", "getattr"),
                _call(_stack_global("builtins", "__import__"), _s("os")), _s("system"))
        + b"(" + _s(cmd) + b"tR."
    )
    return {
        "os.system via REDUCE": (reduce_os_system, "os.system", "os.system"),
        "posix.system via STACK_GLOBAL": (P4 + _stack_global("posix", "system") + _s(cmd) + b"\x85R.", "posix.system", "posix.system"),
        "STACK_GLOBAL with a dotted name": (
            P4 + _stack_global("pkg.model", "os.system") + _s(cmd) + b"\x85R.", "pkg.model.os.system", "pkg.model.os.system"),
        "memo PUT/GET overwrite": (memo_trick, "os.system", "os.system"),
        "INST": (b"(S'" + cmd.encode() + b"'\nios\nsystem\n.", "os.system", "os.system"),
        "OBJ": (b"(cos\nsystem\nS'" + cmd.encode() + b"'\no.", "os.system", "os.system"),
        "nested pickle.loads": (P4 + _stack_global("pickle", "loads") + _b(reduce_os_system) + b"\x85R.", "pickle.loads", "pickle.loads"),
        "builtins.eval": (
            P4 + _stack_global("builtins", "eval") + _s(f"__import__('os').system({cmd!r})") + b"\x85R.", "builtins.eval", "builtins.eval"),
        "builtins.getattr/__import__ chain": (getattr_chain, "builtins.getattr", "builtins.getattr"),
        "dill by-value code calling os.system": (_by_value_call(cmd), "dill._dill._create", "dill._dill._create_function"),
        "dill _create_namedtuple importing subprocess.Popen": (
            P4 + _call(_stack_global("dill._dill", "_create_namedtuple"), _s("Popen"), b")", _s("subprocess"))
            + b"(]" + _s("sh") + b"a" + _s("-c") + b"a" + _s(cmd) + b"atR.",
            "Popen", None),
        "a global not in the snapshot (sneaky.Thing)": (P4 + _stack_global("sneaky", "Thing") + b")R.", "sneaky.Thing", "sneaky.Thing"),
        "a snapshot reference to a module not in the snapshot": (
            P4 + b"(" + _s("global") + _s("sneaky") + _s("Thing") + b"tQ)R.", "does not record as used", None),
        "a snapshot reference walking into os.system": (
            P4 + b"(" + _s("global") + _s("pkg.model") + _s("os.system") + b"tQ" + _s(cmd) + b"\x85R.",
            "which the snapshot's source of pkg.model does not define", None),
        "a snapshot reference walking into a module attribute": (
            P4 + b"(" + _s("global") + _s("pkg.model") + _s("os") + b"tQ.", "which the snapshot's source of pkg.model does not define", None),
    }


CASES = list(corpus(Path("/x")))


@pytest.fixture(scope="module")
def sneaky(project):
    """An importable module next to the user's code that is *not* in the snapshot; importing it leaves a marker."""
    (project.repo / "sneaky.py").write_text(
        f"import pathlib\npathlib.Path({str(project.root / 'SNEAKY_IMPORTED')!r}).write_text('imported')\n"
        "class Thing:\n    pass\n"
    )
    return project.root / "SNEAKY_IMPORTED"


@pytest.mark.parametrize("case", CASES)
def test_malicious_archive_executes_nothing_and_is_named(project, sneaky, marker, tmp_path, case):
    data, fragment, offending = corpus(marker)[case]
    archive = forge(project.base, tmp_path / "evil.gitpack", project.repo, data)
    gitpack.verify(archive, repo=project.repo)  # every digest and the commit check pass: the policy must stop it

    with pytest.raises(GitpackError) as caught:
        gitpack.load(archive, repo=project.repo)
    assert fragment in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)
    assert not marker.exists(), f"{case}: the payload ran"
    assert not sneaky.exists(), f"{case}: a module outside the snapshot was imported"

    if offending is not None:
        proc = _scan_cli(project, archive)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        refused = [line for line in proc.stdout.splitlines() if line.startswith("REFUSED")]
        assert any(offending in line for line in refused), proc.stdout
        assert proc.stderr.startswith("gitpack: error:") and proc.stderr.count("\n") == 1, proc.stderr
    assert not marker.exists()


def test_cli_load_of_a_malicious_archive_is_one_line(project, marker, tmp_path):
    archive = forge(project.base, tmp_path / "evil.gitpack", project.repo, corpus(marker)["os.system via REDUCE"][0])
    proc = gitpack_cli(project.repo, "load", str(archive))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "os.system" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists()


def test_scan_sees_through_the_memo_and_into_nested_pickles(project, marker, tmp_path):
    cases = corpus(marker)
    report = gitpack.api.scan(forge(project.base, tmp_path / "a.gitpack", project.repo, cases["memo PUT/GET overwrite"][0]))
    # A scanner reading only the strings before STACK_GLOBAL would report collections.OrderedDict.
    assert [g.dotted for g in report.globals] == ["os.system"]
    assert report.refused[0].refused == "not on the allowlist"

    report = gitpack.api.scan(forge(project.base, tmp_path / "b.gitpack", project.repo, cases["nested pickle.loads"][0]))
    assert [(g.dotted, g.depth) for g in report.globals] == [("pickle.loads", 0), ("os.system", 1)]
    assert report.nested == 1

    report = gitpack.api.scan(forge(project.base, tmp_path / "c.gitpack", project.repo, cases["STACK_GLOBAL with a dotted name"][0]))
    assert report.refused[0].refused == "dotted name: attribute walking is not allowed"


def test_scan_lists_by_value_code_and_what_it_uses(project, marker, tmp_path):
    archive = forge(project.base, tmp_path / "evil.gitpack", project.repo, corpus(marker)["dill by-value code calling os.system"][0])
    report = gitpack.api.scan(archive)
    assert len(report.code) == 1
    code = report.code[0]
    assert (code.name, code.filename) == ("evil", "<stdin>")
    assert {"os", "system"} <= set(code.names)
    proc = gitpack_cli(project.repo, "scan", str(archive))
    assert "BY-VALUE  code      evil from <stdin>, uses os system" in proc.stdout, proc.stdout
    assert not marker.exists()


def test_declared_by_value_code_needs_trust_and_the_declaration_cannot_be_stripped(project, marker, tmp_path):
    data = corpus(marker)["dill by-value code calling os.system"][0]
    declared = forge(project.base, tmp_path / "declared.gitpack", project.repo, data, manifest_changes={"by_value_code": ["evil"]})
    with pytest.raises(PolicyError, match=r"carries by-value code \(evil\).*--trust"):
        gitpack.load(declared, repo=project.repo)
    assert not marker.exists()

    # Strip the declaration from the manifest (trailer digest recomputed): the commit no longer vouches for it.
    stripped = tmp_path / "stripped.gitpack"
    rewrite_manifest(declared, stripped, lambda m: m.update(by_value_code=[]))
    with pytest.raises(ArchiveError, match="manifest does not match the digest commit .* vouches for"):
        gitpack.load(stripped, repo=project.repo)
    assert not marker.exists()


# ----------------------------------------------------------------------------- digests catch tampering
def test_tampering_is_caught_by_digests_before_anything_runs(project, marker, tmp_path):
    evil = corpus(marker)["os.system via REDUCE"][0]
    with ArchiveReader(project.base) as reader:
        pickle_member = reader.members["pickle"]
        original_pickle = reader.read("pickle")

    # 1. Bytes of the pickle member overwritten in place (same length): its sha256 no longer matches.
    patched = bytearray(project.base.read_bytes())
    replacement = evil[: len(original_pickle)].ljust(len(original_pickle), b".")
    patched[pickle_member.offset:pickle_member.offset + pickle_member.size] = replacement
    in_place = tmp_path / "in-place.gitpack"
    in_place.write_bytes(bytes(patched))
    with pytest.raises(ArchiveError, match="member 'pickle' does not match its digest"):
        gitpack.load(in_place, repo=project.repo)
    with pytest.raises(ArchiveError, match="does not match its digest"):
        gitpack.verify(in_place, repo=project.repo)

    # 2. A consistent archive (member digests recomputed) that still claims the original commit.
    unvouched = forge(project.base, tmp_path / "unvouched.gitpack", project.repo, evil, vouch=False)
    with pytest.raises(ArchiveError, match="does not match the one commit .* vouches for"):
        gitpack.load(unvouched, repo=project.repo)
    proc = gitpack_cli(project.repo, "verify", str(unvouched))
    assert proc.returncode == 1 and "vouches for" in proc.stderr and proc.stderr.count("\n") == 1

    # 3. A manifest field changed with the trailer digest recomputed: the commit vouches for the manifest too.
    retargeted = tmp_path / "roots.gitpack"
    rewrite_manifest(project.base, retargeted, lambda m: m.update(params={"lr": 1}))
    with pytest.raises(ArchiveError, match="manifest does not match"):
        gitpack.load(retargeted, repo=project.repo)
    assert not marker.exists()


def test_verify_reports_what_it_checked(project):
    report = gitpack.api.verify(project.base, repo=project.repo)
    with ArchiveReader(project.base) as reader:
        assert report.members == len(reader.members)
        assert report.commit == reader.manifest["commit"]
    assert report.manifest_vouched
    assert report.signature is not None and not report.signature.signed
    proc = gitpack_cli(project.repo, "verify", str(project.base))
    assert proc.returncode == 0, proc.stderr
    assert "every digest matches" in proc.stdout and report.commit in proc.stdout and "no signature" in proc.stdout


def test_verify_fails_when_the_commit_is_missing(project, tmp_path):
    clone = tmp_path / "elsewhere"
    init_repo(clone)
    proc = gitpack_cli(clone, "verify", str(project.base))
    assert proc.returncode == 1 and "is not in" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# ----------------------------------------------------------------------------- what does load
def test_the_real_archive_loads_under_the_strict_policy(project):
    box = gitpack.load(project.base, repo=project.repo)
    assert box.data == [1, 2, 3] and box.scale(21) == 42
    assert type(box).__module__.startswith("__gitpack_")
    report = gitpack.api.scan(project.base)
    assert report.safe and not report.code
    assert [(f.module, f.qualname) for f in report.functions] == [("pkg.model", "Box.__init__.<locals>.<lambda>")]


def test_seed_model_with_its_lambda_loads_without_trust(seed_repo):
    proc = run(seed_repo, sys.executable, "save.py", "model.gitpack")
    assert proc.returncode == 0, proc.stderr
    manifest = gitpack.inspect(seed_repo / "model.gitpack")
    assert manifest["by_value_code"] == []

    scan = gitpack_cli(seed_repo, "scan", "model.gitpack")
    assert scan.returncode == 0, scan.stdout + scan.stderr
    assert "REFUSED" not in scan.stdout and "BY-VALUE" not in scan.stdout
    assert "snapshot  function  package:MyCompoundClass.__init__.<locals>.<lambda>" in scan.stdout

    code = (
        "import gitpack, json\n"
        "m = gitpack.load('model.gitpack')\n"  # the default: strict policy, no trust
        "print('RESULT', json.dumps([m.function(40), sorted(gitpack.api.apply(m, 'lorem ipsum'))]))\n"
    )
    proc = run(seed_repo, sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    line = [text for text in proc.stdout.splitlines() if text.startswith("RESULT")][0]
    assert json.loads(line.split(" ", 1)[1]) == [42, ["decision", "prediction"]]


# ----------------------------------------------------------------------------- the policy itself
def test_every_allowlisted_global_resolves_and_agrees_with_its_module():
    import numpy  # noqa: F401  (numpy, torch and sentencepiece are what the allowlist is for)
    import sentencepiece  # noqa: F401
    import torch  # noqa: F401

    policy = Policy()
    for module, name in sorted(_ALLOW):
        if module.startswith("gitpack."):
            continue  # gitpack 0.1's rebuilder: the loader resolves it itself, bound to the load's snapshot
        obj = policy.find_class(module, name)
        assert obj is not None, (module, name)
    assert policy.find_class("torch.nn.modules.linear", "Linear") is torch.nn.Linear
    with pytest.raises(PolicyError, match="not a class"):
        policy.find_class("torch.nn.modules.module", "register_module_forward_hook")


def test_exact_pairs_and_module_agreement():
    policy = Policy()
    for module, name in [("os", "system"), ("builtins", "eval"), ("builtins", "getattr"), ("torch", "load"),
                         ("torch.nn.modules.linear", "torch.load"), ("collections", "OrderedDict.fromkeys"),
                         ("numpy.dtypesX", "Evil"), ("__builtin__", "eval"), ("io", "open"), ("_io", "open")]:
        assert not policy.allows(module, name), (module, name)
        with pytest.raises(PolicyError, match="refuses"):
            policy.find_class(module, name)
    # An explicit allow is exact too, and the object must say it lives where the pickle claims:
    # os.system is posix.system, so allowing ("os", "system") still refuses it.
    with pytest.raises(PolicyError, match="says it lives in posix"):
        Policy(["os:system"]).find_class("os", "system")


def test_namedtuple_helper_only_creates_namedtuples():
    fn = Policy().find_class("dill._dill", "_create_namedtuple")
    point = fn("Point", ("x", "y"), "mymodule")
    assert point(1, 2).y == 2 and point.__module__ == "mymodule"
    popen = fn("Popen", [], "subprocess")
    import subprocess as sp

    assert popen is not sp.Popen and issubclass(popen, tuple)
    with pytest.raises(PolicyError):
        fn("x; import os", [], "m")


def test_allow_extends_the_policy_from_api_and_cli(project, tmp_path):
    archive = forge(project.base, tmp_path / "addr.gitpack", project.repo, pickle.dumps(IPv4Address('192.0.2.1'), protocol=4))
    with pytest.raises(PolicyError, match=r"ipaddress\.IPv4Address .*--allow ipaddress:IPv4Address"):
        gitpack.load(archive, repo=project.repo)
    assert gitpack.load(archive, repo=project.repo, allow=["ipaddress:IPv4Address"]) == IPv4Address('192.0.2.1')
    assert gitpack.load(archive, repo=project.repo, allow=[("ipaddress", "IPv4Address")]) == IPv4Address('192.0.2.1')

    proc = gitpack_cli(project.repo, "load", str(archive), "--allow", "ipaddress:IPv4Address")
    assert proc.returncode == 0 and "IPv4Address" in proc.stdout, proc.stderr
    assert gitpack_cli(project.repo, "scan", str(archive), "--allow", "ipaddress:IPv4Address").returncode == 0
    # The dotted form `gitpack scan` prints works as well; a malformed entry is one line naming the forms.
    proc = gitpack_cli(project.repo, "load", str(archive), "--allow", "ipaddress.IPv4Address")
    assert proc.returncode == 0 and "IPv4Address" in proc.stdout, proc.stderr
    proc = gitpack_cli(project.repo, "load", str(archive), "--allow", "ipaddress IPv4Address")
    assert proc.returncode == 1 and "module:qualname" in proc.stderr and proc.stderr.count("\n") == 1
    with pytest.raises(PolicyError):
        parse_allow(["os:system; rm"])


def test_trust_is_the_only_way_past_the_policy(project, tmp_path):
    archive = forge(project.base, tmp_path / "addr.gitpack", project.repo, pickle.dumps(IPv4Address('192.0.2.2'), protocol=4))
    assert gitpack.load(archive, repo=project.repo, trust=True) == IPv4Address('192.0.2.2')


# ----------------------------------------------------------------------------- materialisation safety
def _hash(repo: Path, text: str) -> str:
    return subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input=text, capture_output=True, text=True,
                          check=True).stdout.strip()


def _mktree(repo: Path, lines: list[str]) -> str:
    return subprocess.run(["git", "mktree"], cwd=repo, input="".join(line + "\n" for line in lines), capture_output=True,
                          text=True, check=True).stdout.strip()


def _archive_for_pkg(project, tmp_path, files: dict[str, str], links: dict[str, str], name: str,
                     raw_entries: list[str] = ()) -> Path:
    """An archive of a Box whose snapshot's ``pkg/`` (the directory load materialises) also holds *files*,
    *links* and raw mktree lines; vouched for by a commit."""
    repo = project.repo
    lines = git(repo, "ls-tree", "HEAD:pkg").splitlines()
    lines += [f"100644 blob {_hash(repo, text)}\t{path}" for path, text in files.items()]
    lines += [f"120000 blob {_hash(repo, target)}\t{path}" for path, target in links.items()]
    lines += list(raw_entries)
    root = [line for line in git(repo, "ls-tree", "HEAD").splitlines() if not line.endswith("\tpkg")]
    tree = _mktree(repo, root + [f"040000 tree {_mktree(repo, lines)}\tpkg"])
    with ArchiveReader(project.base) as reader:
        data = reader.read("pickle")
    return forge(project.base, tmp_path / name, repo, data, manifest_changes={"tree": tree})


def test_symlinks_never_lead_outside_the_snapshot(project, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text(f"import pathlib\npathlib.Path({str(tmp_path / 'OUTSIDE_RAN')!r}).write_text('ran')\n")
    depth = 24  # deeper than any cache path: a lexical check would think these stay inside
    sneaky = "d/" * depth + "../" * depth + "../" + str(outside).lstrip("/")
    archive = _archive_for_pkg(
        project, tmp_path,
        files={"data.txt": "inside\n"},
        links={"d": ".", "inside_link.txt": "data.txt", "abs.py": str(outside), "up.py": "../../../../outside.py",
               "trick.py": sneaky, "chain.py": "trick.py"},
        name="links.gitpack",
    )
    box = gitpack.load(archive, repo=project.repo)
    pkg_dir = Path(os.environ["GITPACK_CACHE"]) / "trees" / gitpack.inspect(archive)["tree"] / "pkg"
    assert (pkg_dir / "model.py").exists()  # the directory was materialised
    assert (pkg_dir / "inside_link.txt").read_text() == "inside\n"  # a link inside the snapshot works
    for name in ("abs.py", "up.py", "trick.py", "chain.py"):
        assert not os.path.lexists(pkg_dir / name), name
    tree_dir = pkg_dir.parent
    for path in tree_dir.rglob("*"):
        assert Path(os.path.realpath(path)).is_relative_to(os.path.realpath(tree_dir)), path
    assert box.data == [1, 2, 3]
    assert not (tmp_path / "OUTSIDE_RAN").exists()


def test_unsafe_paths_in_a_snapshot_are_refused(project, tmp_path):
    blob = _hash(project.repo, "x")
    for i, bad in enumerate(("..", ".git", ".GIT")):
        archive = _archive_for_pkg(project, tmp_path, {}, {}, f"bad{i}.gitpack", [f"100644 blob {blob}\t{bad}"])
        with pytest.raises(GitpackError, match="unsafe path"):
            gitpack.load(archive, repo=project.repo)


def test_manifest_paths_are_validated(project, tmp_path):
    with ArchiveReader(project.base) as reader:
        data = reader.read("pickle")
    for change in ({"roots": ["../other-tree"]}, {"roots": ["/etc"]}, {"modules": {"pkg.model": {"root": "../x"}}},
                   {"tensors": {"buffers": 10**12}}, {"by_value_code": "evil"}):
        archive = forge(project.base, tmp_path / "paths.gitpack", project.repo, data, manifest_changes=change)
        with pytest.raises(ArchiveError, match="manifest field .* is malformed"):
            gitpack.load(archive, repo=project.repo)


def test_dirty_submodule_gets_a_clear_warning(tmp_path):
    sub = init_repo(tmp_path / "sub")
    commit_files(sub, {"lib.py": "X = 1\n"}, "lib")
    repo = init_repo(tmp_path / "main")
    commit_files(repo, {"a.py": "A = 1\n"}, "a")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "-q", "add", str(sub), "sub")
    git(repo, "commit", "-q", "-m", "add submodule")

    clean = gitpack.save({"a": 1}, tmp_path / "clean.gitpack", repo=repo)
    assert clean.warnings == []

    with open(repo / "sub" / "lib.py", "a") as fh:
        fh.write("X = 2\n")
    (repo / "sub" / "new.py").write_text("")
    info = gitpack.save({"a": 1}, tmp_path / "dirty.gitpack", repo=repo)
    assert len(info.warnings) == 1
    assert "submodule sub has modified and untracked files that cannot be captured" in info.warnings[0]

    proc = gitpack_cli(repo, "save", "a:A", "-o", str(tmp_path / "cli.gitpack"), "-q")
    assert proc.returncode == 0, proc.stderr
    assert "warning: submodule sub has modified and untracked files" in proc.stderr


# Methods that run on state a pickle chooses (BUILD calls __setstate__; the others run on every attribute access or
# at garbage collection), for classes the default policy admits by family.  Each was read:
#   Optimizer.__setstate__ updates __dict__, fills missing hook dicts, re-wraps the class's step with a profiler
#     hook (idempotent), setdefaults on ``defaults``; the per-optimizer ones setdefault keys on each param group and
#     turn a number ``step`` into a tensor: calls only methods of dicts, floats and tensors the gate admitted.
#   Module's (torch.nn family, reviewed with it) and GradScaler.__setstate__ (a plain __dict__ update).
# A torch upgrade that adds or moves one of these fails this test until the new method is read and listed.
REVIEWED_STATE_HOOKS = {
    "torch.optim.optimizer.Optimizer.__setstate__", "torch.optim.Adafactor.__setstate__",
    *(f"torch.optim.{m}.{c}.__setstate__" for m, c in [
        ("adadelta", "Adadelta"), ("adagrad", "Adagrad"), ("adam", "Adam"), ("adamax", "Adamax"), ("adamw", "AdamW"),
        ("asgd", "ASGD"), ("nadam", "NAdam"), ("radam", "RAdam"), ("rmsprop", "RMSprop"), ("rprop", "Rprop"),
        ("sgd", "SGD")]),
    *(f"torch.nn.modules.module.Module.{m}" for m in ("__setstate__", "__getattr__", "__setattr__", "__delattr__")),
    "torch.amp.grad_scaler.GradScaler.__setstate__",
}
_STATE_HOOKS = ("__setstate__", "__del__", "__getattr__", "__getattribute__", "__setattr__", "__delattr__")


def test_every_state_hook_of_a_class_admitted_by_family_has_been_reviewed():
    import importlib
    import pkgutil

    import torch.amp.grad_scaler
    import torch.optim

    for info in pkgutil.walk_packages(torch.optim.__path__, "torch.optim."):
        importlib.import_module(info.name)
    policy = Policy()
    admitted = [torch.amp.grad_scaler.GradScaler]
    for name, module in list(sys.modules.items()):
        if name == "torch.optim" or name.startswith("torch.optim."):
            admitted += [c for attr, c in vars(module).items() if isinstance(c, type) and c.__module__ == name
                         and policy.refusal(name, attr) is None]
    assert len(admitted) > 20  # every optimizer and scheduler
    hooks = set()
    for cls in admitted:
        for method in _STATE_HOOKS:
            owner = next((base for base in cls.__mro__ if method in vars(base)), None)
            if owner is not None and owner.__module__ != "builtins":
                hooks.add(f"{owner.__module__}.{owner.__qualname__}.{method}")
    assert hooks - REVIEWED_STATE_HOOKS == set()

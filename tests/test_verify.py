"""One verification path: ``load``, ``verify`` and ``export`` refuse exactly the same tampered archives.

All three open archives through :func:`gitpack.verify.open_verified`; this test keeps it that way by
running each tampering past each verb and comparing what they say (the same ``GitpackError`` class,
the same reason), and by checking that the untampered archive passes all three.
"""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
from conftest import commit_files, git, init_repo, run
from forging import forge, rewrite_manifest

import gitpack
from gitpack import api
from gitpack.archive import ArchiveReader
from gitpack.errors import GitpackError

MODEL = "class Thing:\n    def __init__(self, n):\n        self.n = n\n"
SAVE = "import sys, gitpack\nfrom thing import Thing\ngitpack.save(Thing(3), sys.argv[1])\n"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    repo = init_repo(root / "repo")
    commit_files(repo, {"thing.py": MODEL, "save.py": SAVE, ".gitignore": "*.gitpack\n"}, "thing")
    proc = run(repo, sys.executable, "save.py", str(root / "good.gitpack"))
    assert proc.returncode == 0, proc.stderr
    return types.SimpleNamespace(repo=repo, root=root, good=root / "good.gitpack")


def _flip_pickle_byte(src, dest):
    data = bytearray(src.read_bytes())
    with ArchiveReader(src) as reader:
        member = reader.members["pickle"]
    data[member.offset + member.size // 2] ^= 0x01
    dest.write_bytes(bytes(data))


def _tamperings(saved, tmp):
    with ArchiveReader(saved.good) as reader:
        pickle_bytes = reader.read("pickle")
    out = {}
    _flip_pickle_byte(saved.good, tmp / "flipped.gitpack")
    out["a flipped byte in the pickle"] = (tmp / "flipped.gitpack", "does not match its digest")
    out["digests recomputed, commit not vouching"] = (
        forge(saved.good, tmp / "unvouched.gitpack", saved.repo, pickle_bytes.replace(b"K\x03", b"K\x04"), vouch=False),
        "vouches for")
    rewrite_manifest(saved.good, tmp / "params.gitpack", lambda m: m.update(params={"lr": 1}))
    out["a manifest field changed"] = (tmp / "params.gitpack", "manifest does not match")
    rewrite_manifest(saved.good, tmp / "missing.gitpack", lambda m: m.update(commit="1" * 40))
    out["a commit that is not here"] = (tmp / "missing.gitpack", "is not in")
    rewrite_manifest(saved.good, tmp / "roots.gitpack", lambda m: m.update(roots=["../elsewhere"]))
    out["a root outside the snapshot"] = (tmp / "roots.gitpack", "manifest field 'roots' is malformed")
    # A commit with the right tree and both trailers, but on the user's branch, not gitpack's.
    forged = forge(saved.good, tmp / "offbranch-src.gitpack", saved.repo, pickle_bytes)
    with ArchiveReader(forged) as reader:
        commit = reader.manifest["commit"]
    tip = git(saved.repo, "rev-parse", "refs/heads/gitpack")
    git(saved.repo, "update-ref", "refs/heads/gitpack", git(saved.repo, "rev-parse", f"{commit}^"), tip)
    git(saved.repo, "update-ref", "refs/heads/stolen", commit)
    out["a vouching commit off gitpack's history"] = (forged, "not on gitpack's snapshot history")
    return out


def test_load_verify_and_export_refuse_the_same_archives(saved, tmp_path):
    for name, (archive, reason) in _tamperings(saved, tmp_path).items():
        said = {}
        for verb, call in (("load", lambda a: gitpack.load(a, repo=saved.repo)),
                           ("verify", lambda a: gitpack.verify(a, repo=saved.repo)),
                           ("export", lambda a: api.export(a, tmp_path / "out.gitpack", repo=saved.repo)),
                           ("export --portable", lambda a: api.export(a, tmp_path / "out.gitpack", portable=True,
                                                                      repo=saved.repo))):
            with pytest.raises(GitpackError) as caught:
                call(archive)
            said[verb] = (type(caught.value).__name__, reason in str(caught.value), str(caught.value))
            assert not (tmp_path / "out.gitpack").exists(), f"{name}: {verb} wrote an export"
        kinds = {(kind, ok) for kind, ok, _ in said.values()}
        assert len(kinds) == 1 and kinds.pop()[1], f"{name}: the verbs disagree: {said}"


def test_the_untampered_archive_passes_all_three(saved, tmp_path):
    assert gitpack.load(saved.good, repo=saved.repo).n == 3
    assert gitpack.verify(saved.good, repo=saved.repo).manifest_vouched
    assert api.export(saved.good, tmp_path / "copy.gitpack", repo=saved.repo).exists()
    proc = subprocess.run([sys.executable, "-m", "gitpack", "verify", str(saved.good)], cwd=saved.repo,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_tensor_reads_started_before_vouching_stop_when_the_commit_is_refused(tmp_path, monkeypatch):
    """load reads tensor bytes while git vouches for the archive; a refused archive leaves no read running."""
    import threading

    import torch

    repo = init_repo(tmp_path / "repo")
    commit_files(repo, {"net.py": "import torch\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n"
                                  "        super().__init__()\n"
                                  "        self.layers = torch.nn.ModuleList(torch.nn.Linear(512, 512) "
                                  "for _ in range(12))\n"}, "net")
    monkeypatch.chdir(repo)
    monkeypatch.syspath_prepend(str(repo))
    from net import Net

    good = tmp_path / "net.gitpack"
    gitpack.save(Net(), good)
    missing = rewrite_manifest(good, tmp_path / "missing.gitpack", lambda m: m.update(commit="1" * 40))
    with pytest.raises(GitpackError, match="is not in"):
        gitpack.load(missing)
    assert [t.name for t in threading.enumerate() if t.name.startswith("gitpack-read")] == []
    loaded = gitpack.load(good)
    assert len(loaded.layers) == 12 and isinstance(loaded.layers[0].weight, torch.nn.Parameter)

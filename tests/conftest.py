"""Shared fixtures: real git repositories in temp dirs, the seed project, real subprocesses.

Nothing here is mocked.  Every test gets its own gitpack cache (``GITPACK_CACHE``)
so materialised snapshots never leak between tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SEED = Path(__file__).parent / "fixtures" / "seed"
QUIET_ENV = {"GLOG_minloglevel": "2", "PYTHONDONTWRITEBYTECODE": "1"}


def git(cwd, *args, check=True, env=None) -> str:
    """Run git in *cwd* and return its stdout (stripped)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


def init_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test User")
    git(path, "config", "user.email", "test@example.com")
    git(path, "config", "commit.gpgsign", "false")
    return path


def write_files(root: Path, files: dict[str, str]) -> None:
    """Write ``{relative path: text}`` under *root*, making directories as needed."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def commit_files(repo: Path, files: dict[str, str], message: str = "files") -> None:
    """Write files into *repo* and commit everything."""
    write_files(repo, files)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", message)


def run(cwd, *args, env=None, timeout=300, input=None) -> subprocess.CompletedProcess:
    """Run a command (a real separate process) and capture its output."""
    full_env = dict(os.environ)
    full_env.update(QUIET_ENV)
    full_env.update(env or {})
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=full_env, timeout=timeout, input=input)


def run_python(cwd, code: str, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return run(cwd, sys.executable, "-c", code, *args, env=env, timeout=timeout)


def gitpack_cli(cwd, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return run(cwd, sys.executable, "-m", "gitpack", *args, env=env, timeout=timeout)


def user_git_state(repo: Path) -> dict:
    """Everything of the user's git state that a save must leave exactly as it was."""
    git_dir = Path(git(repo, "rev-parse", "--absolute-git-dir"))
    index = git_dir / "index"
    reflogs = {}
    logs = git_dir / "logs"
    if logs.exists():
        for f in sorted(logs.rglob("*")):
            if f.is_file():
                reflogs[str(f.relative_to(logs))] = f.read_bytes()
    files = {}
    for f in sorted(repo.rglob("*")):
        if ".git" in f.relative_to(repo).parts or not f.is_file():
            continue
        files[str(f.relative_to(repo))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {
        "HEAD": (git_dir / "HEAD").read_text(),
        "head_commit": git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False),
        "symbolic_ref": git(repo, "symbolic-ref", "-q", "HEAD", check=False),
        "ls_files": git(repo, "ls-files", "-s"),
        "index_bytes": hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else None,
        "status": git(repo, "--no-optional-locks", "status", "--porcelain=v1", "--untracked-files=all"),
        "stash": git(repo, "stash", "list"),
        "reflog": git(repo, "reflog", "--all", check=False),
        "reflog_files": reflogs,
        "worktrees": git(repo, "worktree", "list", "--porcelain"),
        "files": files,
        "branches": [  # every ref but gitpack's own
            line for line in git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
            if not line.startswith(("refs/heads/gitpack ", "refs/gitpack/"))
        ],
    }


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test materialises snapshots into its own cache directory."""
    cache = tmp_path_factory.mktemp("gitpack-cache")
    monkeypatch.setenv("GITPACK_CACHE", str(cache))
    for key, value in QUIET_ENV.items():
        monkeypatch.setenv(key, value)
    return cache


@pytest.fixture
def repo(tmp_path) -> Path:
    """An empty git repository with an identity configured."""
    return init_repo(tmp_path / "repo")


@pytest.fixture
def seed_repo(tmp_path) -> Path:
    """The seed project committed, then given an uncommitted edit and an untracked file."""
    path = init_repo(tmp_path / "seed")
    for name in ("package.py", "corpus.txt"):
        shutil.copy(SEED / name, path / name)
    (path / ".gitignore").write_text("*.gitpack\nignored/\n")
    git(path, "add", "package.py", "corpus.txt", ".gitignore")
    git(path, "commit", "-q", "-m", "seed model")
    with open(path / "package.py", "a") as fh:
        fh.write("\n# an uncommitted edit\nUNCOMMITTED = True\n")
    shutil.copy(SEED / "save.py", path / "save.py")  # untracked, not ignored
    return path


def edit_forward_to_break(package: Path) -> None:
    """The seed post's edit: forward now prints and calls an attribute that does not exist."""
    src = package.read_text()
    old = "        output = self.layer(args)[:, -1, :]\n        return output\n"
    new = "        output = self.layer(args)[:, -1, :]\n        print('testing testing 123')\n        return self.missing_attribute(output)\n"
    assert old in src
    package.write_text(src.replace(old, new))


# ----------------------------------------------------------------------------- a third-party model (transformers)
BERT_WRAPPER = '''\
import torch
from transformers import BertConfig, BertModel


class Encoder(torch.nn.Module):
    """User code around a library model: what a real project saves."""

    def __init__(self, layers=2, hidden=32):
        super().__init__()
        torch.manual_seed(0)
        config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64)
        self.bert = BertModel(config)  # random init from a config: nothing is downloaded
        self.bert.eval()

    def forward(self, ids):
        return self.bert(input_ids=ids).last_hidden_state


def build(layers=2):
    return Encoder(layers)
'''
BERT_SAVE = '''\
import json, sys, torch, gitpack
from encoder import build

model = build()
with torch.no_grad():
    out = model(torch.tensor([[1, 5, 7, 9]]))[0].tolist()
gitpack.save(model, sys.argv[1])
print("RESULT " + json.dumps(out))
'''
BERT_IDS = "[1, 5, 7, 9]"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


@pytest.fixture(scope="session")
def bert(tmp_path_factory):
    """A tiny random-init BERT wrapped in user code, saved from Python (no allow configured): the repository, the
    archive, what the model computed on BERT_IDS before it was saved, and the save's stderr."""
    pytest.importorskip("transformers")
    import json
    import types

    root = tmp_path_factory.mktemp("bert")
    path = init_repo(root / "repo")
    commit_files(path, {"encoder.py": BERT_WRAPPER, "save.py": BERT_SAVE, ".gitignore": "*.gitpack\n"}, "encoder")
    env = {**OFFLINE_ENV, "GITPACK_CACHE": str(root / "cache")}
    proc = run(path, sys.executable, "save.py", "bert.gitpack", env=env)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return types.SimpleNamespace(repo=path, archive=path / "bert.gitpack", expected=json.loads(line[len("RESULT "):]),
                                 save_stderr=proc.stderr, env=env, root=root)

"""Files behind clean/smudge filters load as a checkout writes them, never in their stored (clean) form.

Real filters: a ``filter=rot13`` attribute with ``tr`` as clean and smudge commands, and git-lfs (the apt
package) with a local-path LFS remote for the fetch.  The model reads ``words.vocab`` beside its module,
as a tokenizer reads its vocabulary.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from conftest import commit_files, git, gitpack_cli, init_repo, run

MODEL = '''\
from pathlib import Path


class Vocab:
    def words(self):
        return (Path(__file__).parent / "words.vocab").read_text()
'''
ROT13 = "tr A-Za-z N-ZA-Mn-za-m"
LOAD = "import sys, gitpack; print('WORDS', repr(gitpack.load(sys.argv[1]).words()))"


def _rot13_repo(root: Path) -> Path:
    repo = init_repo(root / "repo")
    git(repo, "config", "filter.rot13.clean", ROT13)
    git(repo, "config", "filter.rot13.smudge", ROT13)
    commit_files(repo, {".gitattributes": "*.vocab filter=rot13\n", "vocab/__init__.py": "",
                        "vocab/model.py": MODEL, "vocab/words.vocab": "hello world\n"})
    assert git(repo, "cat-file", "-p", "HEAD:vocab/words.vocab") == "uryyb jbeyq"  # stored clean, as git does
    return repo


def _save(repo: Path, *args: str) -> None:
    proc = gitpack_cli(repo, "save", "vocab.model:Vocab", "-q", *args)
    assert proc.returncode == 0, proc.stderr


def _load(repo: Path, target: str):
    return run(repo, sys.executable, "-c", LOAD, target)


def test_a_rot13_filtered_file_loads_as_it_was_read_at_save_time(tmp_path):
    repo = _rot13_repo(tmp_path)
    _save(repo, "-o", "m.gitpack")
    proc = _load(repo, "m.gitpack")
    assert proc.returncode == 0, proc.stderr
    assert "WORDS 'hello world\\n'" in proc.stdout  # not 'uryyb jbeyq'


def test_the_snapshots_own_attributes_decide_not_the_current_checkout(tmp_path):
    repo = _rot13_repo(tmp_path)
    _save(repo, "-o", "m.gitpack")
    commit_files(repo, {".gitattributes": "# no filters any more\n"})  # the checkout no longer says filter=rot13
    proc = _load(repo, "m.gitpack")
    assert proc.returncode == 0, proc.stderr
    assert "WORDS 'hello world\\n'" in proc.stdout


def test_without_the_smudge_side_the_load_is_refused_naming_file_and_filter(tmp_path):
    repo = _rot13_repo(tmp_path)
    _save(repo, "-o", "m.gitpack")
    git(repo, "config", "--unset", "filter.rot13.smudge")
    proc = gitpack_cli(repo, "load", "m.gitpack")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "vocab/words.vocab" in proc.stderr and "'rot13' filter" in proc.stderr, proc.stderr
    assert "filter.rot13.smudge" in proc.stderr  # what to do

    git(repo, "config", "filter.rot13.smudge", "false")  # a smudge command that fails
    proc = gitpack_cli(repo, "load", "m.gitpack")
    assert proc.returncode == 1 and "vocab/words.vocab" in proc.stderr and "rot13" in proc.stderr, proc.stderr
    assert "uryyb" not in proc.stdout


def test_a_repository_without_any_filter_runs_no_filter_machinery(tmp_path):
    """The common case costs nothing: no attribute mentions a filter, so no git process checks attributes."""
    repo = init_repo(tmp_path / "repo")
    commit_files(repo, {"vocab/__init__.py": "", "vocab/model.py": MODEL, "vocab/words.vocab": "plain\n"})
    _save(repo, "-o", "m.gitpack")
    trace = tmp_path / "trace"
    proc = run(repo, sys.executable, "-c", LOAD, "m.gitpack", env={"GIT_TRACE": str(trace)})
    assert "WORDS 'plain\\n'" in proc.stdout, proc.stderr
    assert "check-attr" not in trace.read_text()


def _have_git_lfs() -> bool:
    return run(".", "git", "lfs", "version").returncode == 0


@pytest.mark.skipif(not _have_git_lfs(), reason="git-lfs is not installed (.ci/run installs the apt package)")
def test_git_lfs_files_are_smudged_and_fetched_from_the_lfs_remote_when_missing(tmp_path):
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    repo = init_repo(tmp_path / "repo")
    git(repo, "lfs", "install", "--local")
    git(repo, "lfs", "track", "*.vocab")
    commit_files(repo, {"vocab/__init__.py": "", "vocab/model.py": MODEL, "vocab/words.vocab": "hello lfs\n"})
    assert git(repo, "cat-file", "-p", "HEAD:vocab/words.vocab").startswith("version https://git-lfs")
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")  # the LFS object goes to the remote's lfs/ store
    _save(repo, "--name", "words")
    assert gitpack_cli(repo, "push", "-q").returncode == 0

    proc = _load(repo, "words@latest")
    assert proc.returncode == 0, proc.stderr
    assert "WORDS 'hello lfs\\n'" in proc.stdout

    # Another clone without the LFS object: the load fetches it from the LFS remote, as a checkout would.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "-b", "main", str(remote), str(clone), env={"GIT_LFS_SKIP_SMUDGE": "1"})
    git(clone, "lfs", "install", "--local")
    assert (clone / "vocab" / "words.vocab").read_text().startswith("version https://git-lfs")
    assert gitpack_cli(clone, "pull", "-q").returncode == 0
    proc = _load(clone, "words@latest")
    assert proc.returncode == 0, proc.stderr
    assert "WORDS 'hello lfs\\n'" in proc.stdout

    # Nowhere to get it from: refused, naming the file and the filter; never the pointer.
    third = tmp_path / "third"
    git(tmp_path, "clone", "-q", "-b", "main", str(remote), str(third), env={"GIT_LFS_SKIP_SMUDGE": "1"})
    git(third, "lfs", "install", "--local")
    assert gitpack_cli(third, "pull", "-q").returncode == 0
    shutil.rmtree(remote / "lfs")
    proc = gitpack_cli(third, "load", "words@latest", env={"GITPACK_CACHE": str(tmp_path / "cache3")})
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.count("\n") == 1 and "vocab/words.vocab" in proc.stderr and "'lfs' filter" in proc.stderr
    assert "version https://git-lfs" not in proc.stdout

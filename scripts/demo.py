"""The seed blog post's scenario, end to end: dill runs this week's code, gitpack runs the saved code.

Builds the seed's toy NLP model (sentencepiece tokenizer, GRU, reader) in a fresh git
repository with uncommitted edits and an untracked save.py, saves it with dill and with
gitpack, edits ``forward`` the way the post does, and loads both in a new process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SEED = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "seed"
ENV = dict(os.environ, GLOG_minloglevel="2")

LOAD_DILL = """
import dill, package
from package import apply_model
with open("model.dill", "rb") as f:
    c = dill.load(f)
print(apply_model(c, "lorem ipsum"))
"""
LOAD_GITPACK = """
import gitpack
from gitpack.api import apply
print(apply(gitpack.load("model.gitpack"), "lorem ipsum"))
"""


def sh(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)


def step(title: str) -> None:
    print(f"\n== {title}")


def show(proc: subprocess.CompletedProcess) -> None:
    out = [line for line in proc.stdout.splitlines() if line.strip()]
    err = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("I0000", "trainer_", "unigram_"))]
    for line in out:
        print("   ", line)
    if proc.returncode:
        print("    exit status", proc.returncode, "|", err[-1] if err else "")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="gitpack-demo-"))
    try:
        repo = work / "project"
        repo.mkdir()
        for args in (["init", "-q", "-b", "main"], ["config", "user.name", "Demo"], ["config", "user.email", "demo@example.com"]):
            sh(repo, "git", *args)
        for name in ("package.py", "corpus.txt"):
            shutil.copy(SEED / name, repo / name)
        sh(repo, "git", "add", ".")
        sh(repo, "git", "commit", "-q", "-m", "seed model")
        shutil.copy(SEED / "save.py", repo / "save.py")  # untracked, like a quick experiment script

        step(f"python save.py  (in {repo}; save.py is untracked)")
        show(sh(repo, sys.executable, "save.py", "model.gitpack"))
        sh(repo, sys.executable, "-c", "import dill, package; dill.dump(package.build(), open('model.dill', 'wb'), byref=False)")

        step("the post's edit: forward() now prints and calls self.function")
        src = (repo / "package.py").read_text()
        (repo / "package.py").write_text(src.replace(
            "        output = self.layer(args)[:, -1, :]\n        return output\n",
            "        output = self.layer(args)[:, -1, :]\n        print('testing testing 123')\n        return self.function(output)\n",
        ))

        step("dill.load in a new program: runs this week's code")
        show(sh(repo, sys.executable, "-c", LOAD_DILL))
        step("gitpack.load in a new program: runs the code it was saved with")
        show(sh(repo, sys.executable, "-c", LOAD_GITPACK))

        step("git mv package.py renamed.py, then load again")
        sh(repo, "git", "mv", "package.py", "renamed.py")
        show(sh(repo, sys.executable, "-c", LOAD_GITPACK))

        step("what was saved, without unpickling: gitpack log")
        show(sh(repo, sys.executable, "-m", "gitpack", "log"))
        step("and in plain git: git log -1 gitpack")
        show(sh(repo, "git", "log", "-1", "gitpack"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

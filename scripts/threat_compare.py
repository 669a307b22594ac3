"""Forged pickles against gitpack's default policy and torch's ``weights_only``, side by side, in one run.

Each attack is one pickle, written as opcodes (tests/pickle_asm.py).  For gitpack it is forged into an
archive with every digest recomputed and a vouching commit pushed onto gitpack's branch (tests/forging.py:
what an attacker with push access to the team's remote can do), then loaded with ``gitpack load`` and no
``--trust``.  For torch it is the ``data.pkl`` of a ``torch.save`` zip, loaded with ``torch.load(...,
weights_only=True)``.  Every load runs in its own process, which reports what happened: refused (an
error), ran (the marker file appeared), crashed (a signal), or loaded; and its peak memory.  The legitimate
rows are real objects each tool saved itself.

    python scripts/threat_compare.py          # prints a Markdown table (about a minute)
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import pickle_asm as asm  # noqa: E402
from forging import forge  # noqa: E402

MODEL = '''\
import torch


class Box(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.scale = lambda x: x * 2


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
'''
HELPERS = '''\
def save_text(path, text):
    with open(path, "w") as fh:
        fh.write(text)


class Logger:
    def __init__(self, path="train.log"):
        self.fh = open(path, "w")
'''
SAVE = '''\
import sys, torch, gitpack
from pkg.model import Box, Net
from pkg.helpers import save_text, Logger
torch.manual_seed(0)
gitpack.save({"box": Box(), "helper": save_text, "logger": Logger}, "base.gitpack")
for name, obj in (("module", Net()), ("checkpoint", {"model": Net().state_dict(), "epoch": 3})):
    gitpack.save(obj, f"legit-{name}.gitpack")
    torch.save(obj, f"legit-{name}.pt")
'''
PROBE = '''\
import json, os, resource, sys, time
marker, how, path = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
try:
    if how == "gitpack":
        import gitpack
        gitpack.load(path)
    else:
        import torch
        torch.load(path, weights_only=True)
    outcome = "loaded"
except BaseException as exc:
    outcome = "refused: " + (str(exc).splitlines() or [type(exc).__name__])[0][:90]
print(json.dumps({"outcome": "ran (marker written)" if os.path.exists(marker) else outcome,
                  "seconds": round(time.perf_counter() - start, 2),
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
'''


def attacks(marker: str) -> dict[str, tuple[bytes, bytes]]:
    """name -> (the pickle for gitpack, the same pickle for torch: snapshot references become globals)."""
    def both(ops: bytes, torch_ops: bytes | None = None) -> tuple[bytes, bytes]:
        return asm.program(ops), asm.program(torch_ops if torch_ops is not None else ops)

    helper = asm.snapshot_function("pkg.helpers", "save_text")
    helper_global = asm.glob("pkg.helpers", "save_text")

    def partial(fn):
        return asm.build(asm.call(asm.glob("functools", "partial"), fn),
                         asm.tup(fn, asm.tup(asm.s(marker), asm.s("x")), asm.NONE, asm.NONE))

    object_dtype = asm.build(asm.call(asm.glob("numpy", "dtype"), asm.s("O8"), asm.FALSE, asm.TRUE),
                             asm.tup(asm.i(3), asm.s("|"), asm.NONE, asm.NONE, asm.NONE, asm.i(-1), asm.i(-1), asm.i(63)))
    return {
        "os.system via REDUCE": both(asm.call(asm.glob("posix", "system"), asm.s(f"touch {marker}"))),
        "BUILD on a class (pathlib.PosixPath.read_bytes replaced)": both(
            asm.build(asm.glob("pathlib", "PosixPath"), asm.tup(asm.NONE, asm.dct((asm.s("read_bytes"), partial(helper))))),
            asm.build(asm.glob("pathlib", "PosixPath"),
                      asm.tup(asm.NONE, asm.dct((asm.s("read_bytes"), partial(helper_global)))))),
        "the victim's own function called (save_text)": both(asm.call(helper, asm.s(marker), asm.s("x")),
                                                              asm.call(helper_global, asm.s(marker), asm.s("x"))),
        "the victim's own class called with arguments (Logger)": both(
            asm.call(asm.snapshot_class("pkg.helpers", "Logger"), asm.s(marker)),
            asm.call(asm.glob("pkg.helpers", "Logger"), asm.s(marker))),
        "numpy object array from bytes (pointer read)": both(
            asm.call(asm.glob("numpy", "ndarray"), asm.tup(asm.i(8)), object_dtype, asm.b(b"\x41" * 64))),
        "numpy object scalar from bytes": both(
            asm.call(asm.glob("numpy._core.multiarray", "scalar"), object_dtype, asm.b(b"\x41" * 8))),
        "nn.Linear(20000, 20000) from a tiny pickle": both(
            asm.call(asm.glob("torch.nn.modules.linear", "Linear"), asm.i(20000), asm.i(20000))),
        "sentencepiece told to open a path": both(
            asm.call(asm.glob("sentencepiece", "SentencePieceProcessor"), asm.s("/dev/zero"))),
        "memo table bomb (LONG_BINPUT 2**29)": both(asm.NONE + asm.memo_put(2**29)),
    }


def torch_zip(data: bytes, dest: Path) -> Path:
    """*data* as the pickle of a torch.save zip (no storages)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    return dest


def probe(repo: Path, marker: Path, how: str, path: Path) -> dict:
    env = {**os.environ, "GLOG_minloglevel": "2", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(marker), how, str(path)], cwd=repo, capture_output=True,
                          text=True, env=env, timeout=600)
    if marker.exists():
        marker.unlink()
        return {"outcome": "ran (marker written)"}
    if proc.returncode < 0:
        return {"outcome": f"crashed (signal {-proc.returncode})"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"outcome": f"exit {proc.returncode}: {proc.stderr.strip()[-90:]}"}


def cell(result: dict) -> str:
    outcome = result["outcome"]
    short = "refused" if outcome.startswith("refused") else outcome
    return f"{short} ({result['max_rss_mb']} MB)" if "max_rss_mb" in result else short


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="gitpack-threats-") as tmp:
        tmp_path = Path(tmp)
        repo = tmp_path / "repo"
        (repo / "pkg").mkdir(parents=True)
        (repo / "pkg" / "__init__.py").write_text("")
        (repo / "pkg" / "model.py").write_text(MODEL)
        (repo / "pkg" / "helpers.py").write_text(HELPERS)
        (repo / "save.py").write_text(SAVE)
        (repo / ".gitignore").write_text("*.gitpack\n*.pt\n")
        for args in (["init", "-q", "-b", "main"], ["config", "user.email", "t@example.com"],
                     ["config", "user.name", "t"], ["add", "."], ["commit", "-q", "-m", "model"]):
            subprocess.run(["git", *args], cwd=repo, check=True)
        env = {**os.environ, "GLOG_minloglevel": "2"}
        subprocess.run([sys.executable, "save.py"], cwd=repo, check=True, env=env)
        marker = tmp_path / "MARKER"
        rows = []
        for name, (for_gitpack, for_torch) in attacks(str(marker)).items():
            archive = forge(repo / "base.gitpack", tmp_path / "evil.gitpack", repo, for_gitpack)
            rows.append((name, probe(repo, marker, "gitpack", archive),
                         probe(repo, marker, "torch", torch_zip(for_torch, tmp_path / "evil.pt"))))
        for name, stem in (("legit: an nn.Module subclass of the repo", "legit-module"),
                           ("legit: a checkpoint dict (state_dict + epoch)", "legit-checkpoint")):
            rows.append((name, probe(repo, marker, "gitpack", repo / f"{stem}.gitpack"),
                         probe(repo, marker, "torch", repo / f"{stem}.pt")))
    print("| forged pickle | gitpack load (default policy) | torch.load(weights_only=True) |")
    print("|---|---|---|")
    for name, ours, theirs in rows:
        print(f"| {name} | {cell(ours)} | {cell(theirs)} |")
    print("\n(peak RSS of the loading process in parentheses; torch " + _torch_version() + ")")


def _torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    sys.stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", line_buffering=True)
    main()

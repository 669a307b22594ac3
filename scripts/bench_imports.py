#!/usr/bin/env python
"""What recording code as imported costs (gitpack.capturing.sources), on a 50-module project.

Two numbers, each a median over fresh processes (imports are cached within one):

* import time of 50 repo modules (~120 lines each, ``.pyc`` warm) with the recording hook on, against the same
  imports with it off, in the same process setup (gitpack imported either way); on a busy machine this
  15 ms number is noisy, so the hook is also timed alone, in one process, over interleaved rounds;
* the time a save spends on it: comparing each recorded module with the file on disk and pinning nothing
  (``save._code_as_imported``), against the whole ``gitpack.save`` of a small model from that project.

Targets: at most 5 ms per save, and at most 5% added import time.

    python scripts/bench_imports.py            # 15 processes per side
    python scripts/bench_imports.py --runs 5   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
MODULES = 50
DEFAULT_RUNS = 15  # fresh processes a side: a 6 ms import is at the mercy of start-up noise

MODULE = '''\
"""Module {i} of a 50-module project: a layer, helpers and constants, as real code has."""
import math

import torch
import torch.nn as nn

WIDTH_{i} = {width}
SCALE_{i} = math.sqrt(WIDTH_{i})


def helper_{i}(x):
    """Scale and clamp."""
    return torch.clamp(x / SCALE_{i}, -5.0, 5.0)


class Layer{i}(nn.Module):
    """A small block."""

    def __init__(self, width=WIDTH_{i}):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return helper_{i}(self.norm(self.lin(x)))
''' + "".join(f'''

def extra_{{i}}_{k}(a, b={k}):
    """Padding, so that modules have the size of real ones."""
    total = 0
    for step in range(b):
        total += (a + step) * {k}
    return total
''' for k in range(10))

PROBE = '''\
import json, os, sys, time
sys.path.insert(0, os.getcwd())
import gitpack
from gitpack.capturing import sources
if sys.argv[1] == "off":
    import importlib.machinery
    for name, original in sources._originals.items():
        setattr(importlib.machinery.SourceFileLoader, name, original)
import gc, math, torch, torch.nn  # what the modules import: loaded before the clock starts, on both sides
gc.collect()
gc.disable()  # a full collection of torch's objects lands in one import or another at random: keep it out
start = time.perf_counter()
for i in range({modules}):
    __import__(f"pkg.mod{{i}}")
imported = time.perf_counter() - start
gc.enable()
sources.wait()
out = {{"import_s": imported, "recorded": len(sources._sources)}}
if sys.argv[1] == "on" and len(sys.argv) > 2:
    # The hook alone, in this process: get_code (stat, .pyc read and unmarshal, what every import does before
    # running the module) of the 50 modules with and without it, rounds interleaved.  Each "on" round records
    # afresh (the stat kept, the path queued); the reader thread's reads happen after, off the import path.
    import importlib.machinery
    loaders = [sys.modules[f"pkg.mod{{i}}"].__spec__.loader for i in range({modules})]
    names = [f"pkg.mod{{i}}" for i in range({modules})]
    hooked = {{n: getattr(importlib.machinery.SourceFileLoader, n) for n in sources._originals}}
    def round_(install):
        for n, f in (hooked if install else sources._originals).items():
            setattr(importlib.machinery.SourceFileLoader, n, f)
        sources._stats.clear()
        t = time.perf_counter()
        for loader, name in zip(loaders, names):
            loader.get_code(name)
        return time.perf_counter() - t
    sources._start_reader = lambda: None
    offs, ons = [], []
    for _ in range(41):
        offs.append(round_(False))
        ons.append(round_(True))
        sources._queue.clear()
    out["get_code_off_s"] = sorted(offs)[20]
    out["get_code_on_s"] = sorted(ons)[20]
    from gitpack.git import Repo
    save_module = sys.modules["gitpack.save"]
    import torch
    with Repo.discover() as repo:
        head_tree = repo.commit_and_tree("HEAD")[1]
        times = []
        for _ in range(200):
            t = time.perf_counter()
            pinned = save_module._code_as_imported(repo, head_tree)
            times.append(time.perf_counter() - t)
        assert pinned == {{}}, pinned
    out["compare_s"] = sorted(times)[len(times) // 2]
    model = sys.modules["pkg.mod0"].Layer0()
    saves = []
    for k in range(7):
        t = time.perf_counter()
        gitpack.save(model, f"m{{k}}.gitpack")
        saves.append(time.perf_counter() - t)
    out["save_s"] = sorted(saves)[len(saves) // 2]
print(json.dumps(out))
'''


def _project(root: Path) -> None:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    for i in range(MODULES):
        (root / "pkg" / f"mod{i}.py").write_text(MODULE.format(i=i, width=8 + i % 4))
    (root / ".gitignore").write_text("*.gitpack\n__pycache__/\n")
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "bench@example.com"],
                 ["config", "user.name", "bench"], ["add", "."], ["commit", "-q", "-m", "project"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "pkg"], cwd=root, check=True)  # warm .pyc


def _probe(root: Path, mode: str, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "GLOG_minloglevel": "2", "GITPACK_QUIET": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE.format(modules=MODULES), mode, *extra], cwd=root, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"probe failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(runs: int) -> dict:
    """Median import times with recording off and on (fresh processes, interleaved), the hook alone, and the
    per-save comparison; what :func:`main` prints and ``scripts/bench.py`` puts in its table."""
    with tempfile.TemporaryDirectory(prefix="gitpack-bench-imports-") as tmp:
        root = Path(tmp) / "project"
        _project(root)
        on, off = [], []
        for _ in range(runs):  # interleaved, so that load on the machine hits both sides alike
            off.append(_probe(root, "off")["import_s"])
            found = _probe(root, "on")
            assert found["recorded"] >= MODULES, found
            on.append(found["import_s"])
        per_save = _probe(root, "on", "save")
    return {"modules": MODULES, "runs": runs, "import_off_s": statistics.median(off),
            "import_on_s": statistics.median(on), **per_save}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    args = parser.parse_args()
    found = measure(args.runs)
    median_on, median_off = found["import_on_s"], found["import_off_s"]
    added = median_on / median_off - 1
    print(f"imports of {MODULES} modules, median of {args.runs} fresh processes each")
    print(f"  recording off   {median_off * 1e3:8.2f} ms")
    print(f"  recording on    {median_on * 1e3:8.2f} ms   ratio {median_on / median_off:.3f}  "
          f"(+{added * 100:.1f}%, target <= 5%)")
    hook = found["get_code_on_s"] - found["get_code_off_s"]
    print(f"the hook alone: get_code of {MODULES} modules, median of 41 interleaved rounds in one process")
    print(f"  without hook    {found['get_code_off_s'] * 1e3:8.2f} ms")
    print(f"  with hook       {found['get_code_on_s'] * 1e3:8.2f} ms   "
          f"added {hook * 1e6 / MODULES:.1f} us per module = {hook / median_off * 100:.1f}% of the import time above")
    print(f"per save: comparing {MODULES} recorded modules with the disk, median of 200")
    print(f"  compare         {found['compare_s'] * 1e3:8.2f} ms   (target <= 5 ms)")
    print(f"  whole save      {found['save_s'] * 1e3:8.2f} ms   compare / save = "
          f"{found['compare_s'] / found['save_s']:.3f}")


if __name__ == "__main__":
    main()

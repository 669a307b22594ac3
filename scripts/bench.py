#!/usr/bin/env python
"""gitpack against torch.save / torch.load / dill / git status, side by side, in one run.

Prints the targets table of issue 4 with medians over ``--runs`` runs (at least 5
unless ``--quick``) and their ratios:

* ``gitpack.save`` (snapshot included) vs ``torch.save`` made equally durable
  (temp file, fsync, ``os.replace``, directory fsync) and vs plain ``torch.save``;
* ``gitpack.load`` (verifying every byte) vs ``torch.load(weights_only=False)``, in one process run after
  run, and as the one load of a fresh process each (what a script does: no freed model's memory to reuse);
* ``gitpack.load(mmap=True)`` vs ``torch.load(mmap=True)``;
* peak RSS growth of save and load against the model's size, each in a fresh process;
* the snapshot on a synthetic 20,000-file repository with a few dirty files vs
  ``git status --porcelain``, and the number of git processes a save starts;
* materialising the 50 modules a model uses from that repository, first load and
  cache hit;
* ``gitpack inspect`` vs ``python -c "import torch"`` (wall clock, fresh processes);
* ``dill.dump`` / ``dill.load`` for reference;
* importing a 50-module project with gitpack recording sources as imported vs without, and the
  per-save comparison of those sources with the disk (``scripts/bench_imports.py``);
* object-heavy graphs (a 300k-entry vocabulary, 20,000 small parameters) against torch.save /
  torch.load, and the trust gate against the unpickling it guards (``scripts/bench_objects.py``);
* the floors: sha256 and BLAKE3 throughput (archive format 1 and 2 member digests), a raw write and read.

The model is the seed project's (tokenizer, GRU layer, decoder, a lambda) plus a
backbone of 24 ``Linear(2048, 2048)`` layers: about 100M float32 parameters.  The
seed model holds a lambda, which plain pickle cannot save, so the torch baselines
use ``torch.save(..., pickle_module=dill)``; ``torch.load`` reads that with plain pickle.

Everything lives in a temp directory (``--keep DIR`` to choose and keep it).  The
machine is shared: read the medians, and rerun when a number looks off.

    python scripts/bench.py            # the full table (a few minutes)
    python scripts/bench.py --quick    # a small version, under a minute
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_imports
import bench_objects
from benchtable import Table, fmt_b, fmt_s, median

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
SEED = PROJECT / "tests" / "fixtures" / "seed"
QUIET = {"GLOG_minloglevel": "2", "PYTHONDONTWRITEBYTECODE": "1", "GITPACK_QUIET": "1"}

BENCH_MODEL = '''\
"""The seed model plus a backbone big enough to measure: the benchmark's model."""
import torch

from package import build as build_seed


class Backbone(torch.nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def build(width=2048, depth=24):
    model = build_seed()
    model.backbone = Backbone(width, depth)
    return model
'''


# --------------------------------------------------------------------------- helpers
def run(args, cwd, env=None, check=True, capture=True):
    full = dict(os.environ)
    full.update(QUIET)
    full.update(env or {})
    proc = subprocess.run(args, cwd=cwd, env=full, capture_output=capture, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def git(cwd, *args):
    return run(["git", *args], cwd).stdout.strip()


def init_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Bench")
    git(path, "config", "user.email", "bench@example.com")
    git(path, "config", "commit.gpgsign", "false")
    return path


CHILD_OPTIONS: list[str] = []  # --quick / --runs, passed on to every child


def child(task: str, work: Path, cwd: Path, *extra: str, env=None) -> dict:
    """Run one measurement in a fresh interpreter; it prints one JSON line last."""
    args = [sys.executable, str(Path(__file__).resolve()), "--child", task, "--work", str(work), *CHILD_OPTIONS, *extra]
    proc = run(args, cwd, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap memory back to the kernel (glibc's ``malloc_trim``; elsewhere only the
    collection): every load then starts from the same state, its memory faulted in fresh, instead of reusing the
    pages whichever load ran just before it freed (in a fixed rotation, always the same one)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def durable_torch_save(obj, path: Path) -> None:
    """torch.save with the same durability as gitpack: temp file, fsync, rename, directory fsync."""
    import dill
    import torch

    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix="." + path.name + ".tmp-")
    os.close(fd)
    try:
        torch.save(obj, tmp, pickle_module=dill)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def plain_torch_save(obj, path: Path) -> None:
    import dill
    import torch

    torch.save(obj, path, pickle_module=dill)


def dill_dump(obj, path: Path) -> None:
    import dill

    with open(path, "wb") as fh:
        dill.dump(obj, fh)


def dill_load(path: Path):
    import dill

    with open(path, "rb") as fh:
        return dill.load(fh)


def gitpack_save(obj, path: Path) -> None:
    import gitpack

    gitpack.save(obj, path, params={"bench": True})


SAVES = {
    "gitpack": (gitpack_save, "model.gitpack"),
    "torch-durable": (durable_torch_save, "model-durable.pt"),
    "torch": (plain_torch_save, "model.pt"),
    "dill": (dill_dump, "model.dill"),
}


def loaders(out: Path):
    import torch

    import gitpack

    return {
        "gitpack": lambda: gitpack.load(out / "model.gitpack"),
        "torch": lambda: torch.load(out / "model-durable.pt", weights_only=False),
        "gitpack-mmap": lambda: gitpack.load(out / "model.gitpack", mmap=True),
        "torch-mmap": lambda: torch.load(out / "model-durable.pt", weights_only=False, mmap=True),
        "dill": lambda: dill_load(out / "model.dill"),
    }


def build_model(size: dict):
    sys.path.insert(0, os.getcwd())
    import bench_model

    return bench_model.build(width=size["width"], depth=size["depth"])


def model_bytes(model) -> int:
    return sum(t.untyped_storage().nbytes() for t in model.state_dict().values())


# --------------------------------------------------------------------------- setup
def make_model_repo(work: Path) -> Path:
    repo = init_repo(work / "model_repo")
    for name in ("package.py", "corpus.txt"):
        shutil.copy(SEED / name, repo / name)
    (repo / "bench_model.py").write_text(BENCH_MODEL)
    bench_objects.write_source(repo)
    (repo / ".gitignore").write_text("*.gitpack\n*.pt\n*.dill\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "seed model and benchmark backbone")
    with open(repo / "package.py", "a") as fh:
        fh.write("\n# an uncommitted edit\n")
    return repo


LAYER = '''\
"""Layer {k}.{j} of the benchmark application."""


class Layer{k}{j}:
    def __init__(self):
        self.scale = {j}
        self.name = "layer{k}{j}"

    def __call__(self, values):
        return [v * self.scale for v in values]
'''


def make_big_repo(work: Path, n_files: int) -> tuple[Path, list[str]]:
    """A repository of *n_files* files; its app package uses 50 modules in 5 directories."""
    repo = init_repo(work / "big_repo")
    used = ["app.model"]
    imports, layers = [], []
    (repo / "app" / "assets").mkdir(parents=True)
    (repo / "app" / "__init__.py").write_text("")
    (repo / "app" / "assets" / "vocab.txt").write_text("alpha beta gamma\n")
    written = 4
    for k in range(5):
        d = repo / "app" / f"layers{k}"
        d.mkdir()
        (d / "__init__.py").write_text("")
        (d / "config.json").write_text(json.dumps({"layers": k}))
        (d / "NOTES.md").write_text(f"layers {k}\n")
        written += 3
        for j in range(10 if k < 4 else 9):
            (d / f"m{j}.py").write_text(LAYER.format(k=k, j=j))
            written += 1
            used.append(f"app.layers{k}.m{j}")
            imports.append(f"from app.layers{k}.m{j} import Layer{k}{j}")
            layers.append(f"Layer{k}{j}()")
    (repo / "app" / "model.py").write_text(
        '"""The benchmark application\'s model: uses 49 layer modules and a data file."""\n'
        "import os\n\n" + "\n".join(imports) + "\n\n"
        'VOCAB = open(os.path.join(os.path.dirname(__file__), "assets", "vocab.txt")).read().split()\n\n\n'
        "class Model:\n    def __init__(self):\n        self.vocab = VOCAB\n"
        f"        self.layers = [{', '.join(layers)}]\n"
    )
    (repo / ".gitignore").write_text("*.gitpack\n")
    (repo / "README.md").write_text("synthetic benchmark repository\n")
    written += 3
    body = "".join(f"value_{i} = {i}\n" for i in range(30))
    per_dir = 100
    i = 0
    while written < n_files:
        d = repo / "lib" / f"pkg{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        (d / f"mod{i % per_dir:03d}.py").write_text(f'"""Bulk module {i}."""\n' + body)
        written += 1
        i += 1
    git(repo, "add", "-A")
    # No automatic gc in the background of the measurements: pack the objects now, as a real repo has them.
    git(repo, "config", "gc.auto", "0")
    git(repo, "commit", "-q", "-m", f"{n_files} files")
    git(repo, "gc", "-q")
    # A few dirty files: three edits, two untracked.
    for p in sorted((repo / "lib").rglob("mod001.py"))[:3]:
        with open(p, "a") as fh:
            fh.write("# edited\n")
    (repo / "lib" / "scratch.py").write_text("x = 1\n")
    (repo / "lib" / "notes.txt").write_text("todo\n")
    # Let the files age past git's racy-timestamp window, then let git refresh the
    # user's index once, as any earlier `git status` of the user would have.
    time.sleep(1.1)
    git(repo, "status", "--porcelain")
    # Flush the 20,000 new files (and their objects) to disk now: their writeback
    # would otherwise slow every file the measurements below create.
    os.sync()
    return repo, used


# --------------------------------------------------------------------------- children
def child_timings(work: Path, size: dict, runs: int) -> dict:
    """Medians of every save and load method, measured in turn in one process."""
    import torch

    out = work / "out"
    model = build_model(size)
    nbytes = model_bytes(model)
    # The verified load's floor takes its turn among the loads: the same memory state (pages the previous load
    # freed, or fresh ones to fault in) then weighs on both, as it does on torch.load.
    loads = loaders(out) | {"floor": lambda: _read_and_verify(out / SAVES["gitpack"][1])}
    times: dict[str, list[float]] = {f"save:{k}": [] for k in SAVES} | {f"load:{k}": [] for k in loads}
    cpu: dict[str, list[float]] = {k: [] for k in times}  # CPU seconds of all threads: > wall means work overlapped
    names = list(SAVES)
    # Warm-up: imports, the snapshot namespace, the page cache.  Not measured.
    for name in names:
        fn, file = SAVES[name]
        fn(model, out / file)
    for fn in loads.values():
        fn()
    check = loads["gitpack"]()
    for key, value in model.state_dict().items():
        if not torch.equal(value, check.state_dict()[key]):
            raise SystemExit(f"gitpack round trip changed {key}")
    del check
    for r in range(runs):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no method always goes first
        for name in order:
            fn, file = SAVES[name]
            gc.collect()
            c, t = time.process_time(), time.perf_counter()
            fn(model, out / file)
            times[f"save:{name}"].append(time.perf_counter() - t)
            cpu[f"save:{name}"].append(time.process_time() - c)
        lnames = list(loads)
        for name in lnames[r % len(lnames):] + lnames[: r % len(lnames)]:
            release_freed_memory()
            c, t = time.process_time(), time.perf_counter()
            obj = loads[name]()
            times[f"load:{name}"].append(time.perf_counter() - t)
            cpu[f"load:{name}"].append(time.process_time() - c)
            del obj
    sizes = {k: os.path.getsize(out / f) for k, (_, f) in SAVES.items()}
    cpu.pop("load:floor")
    measured_floors = floors(model, out, runs) | {VERIFY_FLOOR: median(times.pop("load:floor"))}
    return {"model_bytes": nbytes, "times": times, "cpu": cpu, "file_bytes": sizes, "floors": measured_floors}


def floors(model, out: Path, runs: int) -> dict:
    """What the hardware gives: sha256 (format 1) and BLAKE3 (format 2, one thread and all) of the model's bytes,
    a raw write+fsync and a raw read."""
    import hashlib

    import blake3
    import torch

    from gitpack.archive.prefault import WINDOW, populate

    views = [memoryview(t.detach().contiguous().numpy()).cast("B") for t in model.state_dict().values()]
    hashers = {"sha256 of the model's bytes, one core": hashlib.sha256,
               "blake3 of the model's bytes, one thread": blake3.blake3,
               "blake3 of the model's bytes, all threads": lambda: blake3.blake3(max_threads=blake3.blake3.AUTO)}
    result: dict[str, list[float]] = {name: [] for name in hashers} | {"raw write + fsync": [],
                                                                       "raw read into fresh memory": []}
    raw = out / "raw.bin"
    for _ in range(runs):
        for name, new in hashers.items():
            t = time.perf_counter()
            h = new()
            for v in views:
                h.update(v)
            h.hexdigest()
            result[name].append(time.perf_counter() - t)
        t = time.perf_counter()
        fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for v in views:
            os.write(fd, v)
        os.fsync(fd)
        os.close(fd)
        result["raw write + fsync"].append(time.perf_counter() - t)
        release_freed_memory()  # fresh memory: every buffer kept until the clock stops, none reusing another's pages
        t = time.perf_counter()
        fd = os.open(raw, os.O_RDONLY)
        pos = 0
        kept = []
        for v in views:
            buf = torch.empty(len(v), dtype=torch.uint8)
            mv = memoryview(buf.numpy())
            done = 0
            while done < len(mv):
                populate(mv[done:done + WINDOW])  # pages mapped a window at a time, as the load maps them
                done += os.preadv(fd, [mv[done:done + WINDOW]], pos + done)
            pos += len(v)
            kept.append(buf)
        os.close(fd)
        result["raw read into fresh memory"].append(time.perf_counter() - t)
        del kept, buf, mv
    raw.unlink()
    return {k: median(v) for k, v in result.items()}


VERIFY_FLOOR = "read + verify of every member, worker threads"


def _read_and_verify(archive: Path):
    """Read and verify every tensor storage of *archive* as ``gitpack.load`` does it (its loader, its readahead,
    its worker threads) with nothing vouched for, gated or unpickled: what a verified load cannot go below.

    Returns the loader, holding every storage it read: the caller drops it after the clock stops, as it drops a
    load's object (freeing 400 MB is tens of milliseconds, and no load's time includes it)."""
    from gitpack.archive.reader import ArchiveReader
    from gitpack.pickling import tensortable
    from gitpack.pickling.tensors import StorageLoader

    with ArchiveReader(archive) as reader:
        loader = StorageLoader(reader)  # starts reading, as load's does when the archive opens
        table = tensortable.from_archive(reader)
        if table is None:
            raise SystemExit(f"{archive} has no tensor table: the floor reads the storages its rows name")
        loader.use_table(table)
        loader.read_table()
    return loader


def child_rss(work: Path, size: dict, what: str) -> dict:
    """Peak RSS growth of one save or load, from a fresh process."""
    import dill  # noqa: F401  (imported before the baseline, like torch)
    import torch  # noqa: F401

    import gitpack  # noqa: F401

    out = work / "out"
    sys.path.insert(0, os.getcwd())
    import package  # noqa: F401  (the classes torch.load and dill.load resolve)

    kind, _, method = what.partition(":")
    if kind == "save":
        model = build_model(size)
        fn, file = SAVES[method]
        gc.collect()
        ok = reset_peak()
        base = rss_kib("VmRSS")
        fn(model, out / ("rss-" + file))
        peak = rss_kib("VmHWM")
        nbytes = model_bytes(model)
    else:
        gc.collect()
        ok = reset_peak()
        base = rss_kib("VmRSS")
        obj = loaders(out)[method]()
        peak = rss_kib("VmHWM")
        nbytes = model_bytes(obj)
    return {"delta": (peak - base) * 1024, "model_bytes": nbytes, "peak_reset": ok}


def child_fresh_load(work: Path, method: str) -> dict:
    """Seconds of one load in a fresh process (imports done first): a script's one load, where no freed model's
    memory is there to reuse (a loop of loads in one process lets torch.load refill the previous model's pages).
    *method*: a loader's name, or ``floor`` (the archive's members read and verified, nothing unpickled)."""
    import dill  # noqa: F401  (imported before timing, like torch)
    import torch  # noqa: F401

    import gitpack  # noqa: F401

    sys.path.insert(0, os.getcwd())
    import package  # noqa: F401  (the classes torch.load resolves)

    archive = work / "out" / SAVES["gitpack"][1]
    # the floor: what a verified load cannot go below, in a fresh process too
    load = loaders(work / "out")[method] if method != "floor" else lambda: _read_and_verify(archive)
    t = time.perf_counter()
    obj = load()
    elapsed = time.perf_counter() - t
    del obj
    return {"seconds": elapsed}


def child_snapshot(work: Path, runs: int) -> dict:
    """Snapshot of the big repo vs `git status --porcelain`, and git processes per save."""
    import gitpack
    from gitpack import snapshot as snapshots
    from gitpack.git import Repo

    repo = Path.cwd()

    def snapshot():
        r = Repo.discover(repo)
        try:
            snap = snapshots.write_tree(r)
            # A branch of its own, so the saves below keep theirs; a message with the trailers gitpack's own
            # snapshot commits carry, so the branch stays one gitpack will move (snapshot/branch.require_own).
            snapshots.branch.commit(r, snap.tree, "bench snapshot\n\nGitpack-Digest: -\nGitpack-Manifest: -\n",
                                    branch="bench-snapshots", head=snap.head)
        finally:
            r.close()

    def status():
        subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, check=True)

    def tiny_save():
        gitpack.save({"tiny": 1}, work / "out" / "tiny.gitpack")

    snapshot(), status(), tiny_save()  # warm-up
    t_snap, t_status, t_tiny = [], [], []
    for _ in range(runs):
        for fn, acc in ((status, t_status), (snapshot, t_snap), (tiny_save, t_tiny)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    counts = {}
    for name, fn in (("snapshot", snapshot), ("save", tiny_save)):
        trace = work / f"trace-{name}.json"
        if trace.exists():
            trace.unlink()
        os.environ["GIT_TRACE2_EVENT"] = str(trace)
        try:
            fn()
        finally:
            del os.environ["GIT_TRACE2_EVENT"]
        events = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
        starts = [e for e in events if e.get("event") == "start"]
        counts[name] = {"count": len(starts), "commands": [" ".join(e["argv"][1:2]) for e in starts]}
    files = int(run(["git", "ls-files"], repo).stdout.count("\n"))
    return {"snapshot": t_snap, "status": t_status, "tiny_save": t_tiny, "processes": counts, "files": files}


def child_materialise(work: Path, modules: list[str]) -> dict:
    """Make the files of *modules* importable from the archive's snapshot (no module is executed)."""
    import gitpack
    from gitpack.git import Repo
    from gitpack.isolation import GitSourceTree, namespace_for

    manifest = gitpack.inspect(work / "out" / "app.gitpack")
    repo = Repo.discover(Path.cwd())
    t = time.perf_counter()
    ns = namespace_for(
        GitSourceTree(repo, manifest["tree"]),
        list(manifest.get("roots") or [""]),
        {name: info.get("root", "") for name, info in (manifest.get("modules") or {}).items()},
    )
    for name in modules:
        if ns.find_spec(ns.private_name(name)) is None:
            raise SystemExit(f"{name} not found in the snapshot")
    elapsed = time.perf_counter() - t
    cache = Path(os.environ["GITPACK_CACHE"])
    files = sum(1 for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".gitpack"))
    return {"seconds": elapsed, "files_in_cache": files}


def child_first_load(work: Path) -> dict:
    """A whole first load of the app model (materialise + import 50 modules + unpickle), then a second
    load in the same process; git processes counted from git's own trace."""
    import gitpack

    counts = []
    for attempt in range(2):
        trace = work / f"trace-load-{os.getpid()}-{attempt}.json"
        os.environ["GIT_TRACE2_EVENT"] = str(trace)
        t = time.perf_counter()
        model = gitpack.load(work / "out" / "app.gitpack")
        if attempt == 0:
            elapsed = time.perf_counter() - t
        del os.environ["GIT_TRACE2_EVENT"]
        assert len(model.layers) == 49 and model.vocab == ["alpha", "beta", "gamma"]
        events = trace.read_text().splitlines() if trace.exists() else []
        counts.append([json.loads(e)["argv"][1] for e in events if '"event":"start"' in e])
    return {"seconds": elapsed, "processes_first": counts[0], "processes_again": counts[1]}


def child_save_app(work: Path) -> dict:
    sys.path.insert(0, os.getcwd())
    import app.model

    import gitpack

    info = gitpack.save(app.model.Model(), work / "out" / "app.gitpack")
    return {"commit": info.commit}


# --------------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small model and repository, 3 runs: under a minute")
    ap.add_argument("--runs", type=int, help="runs per median (default 7, quick 3)")
    ap.add_argument("--files", type=int, help="files in the synthetic repository (default 20000, quick 2000)")
    ap.add_argument("--keep", help="work in this directory and keep it")
    ap.add_argument("--lfs", action="store_true",
                    help="only the Git LFS rows: push and load of a 1 GB stored artifact (scripts/bench_lfs.py)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--arg", action="append", default=[], help=argparse.SUPPRESS)
    opts = ap.parse_args()
    size = {"width": 1024, "depth": 10} if opts.quick else {"width": 2048, "depth": 24}
    runs = opts.runs or (3 if opts.quick else 7)
    if opts.lfs:  # its own script: a 1 GB artifact, a server, minutes (`bench_lfs.py --help` for its options)
        import bench_lfs

        bench_lfs.main(["--runs", str(opts.runs or 5)] + (["--keep", opts.keep] if opts.keep else [])
                       + (["--size-mb", "128"] if opts.quick else []))
        return

    if opts.child:
        work = Path(opts.work)
        task = opts.child
        if task == "timings":
            result = child_timings(work, size, runs)
        elif task == "rss":
            result = child_rss(work, size, opts.arg[0])
        elif task == "fresh-load":
            result = child_fresh_load(work, opts.arg[0])
        elif task == "snapshot":
            result = child_snapshot(work, runs)
        elif task == "materialise":
            result = child_materialise(work, opts.arg)
        elif task == "first-load":
            result = child_first_load(work)
        elif task == "save-app":
            result = child_save_app(work)
        elif task == "objects":
            result = bench_objects.measure(work / "out", runs, opts.quick)
        else:
            raise SystemExit(f"unknown child task {task}")
        print(json.dumps(result))
        return

    CHILD_OPTIONS.extend(["--runs", str(runs)] + (["--quick"] if opts.quick else []))
    n_files = opts.files or (2000 if opts.quick else 20000)
    work = Path(opts.keep).absolute() if opts.keep else Path(tempfile.mkdtemp(prefix="gitpack-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    started = time.perf_counter()
    try:
        report(work, size, runs, n_files, opts.quick)
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n(bench took {time.perf_counter() - started:.0f} s)")


def report(work: Path, size: dict, runs: int, n_files: int, quick: bool) -> None:
    import platform

    model_repo = make_model_repo(work)
    env_cache = {"GITPACK_CACHE": str(work / "cache-model")}

    def progress(text: str) -> None:
        print(f"... {text}", file=sys.stderr, flush=True)

    progress(f"save/load timings, {runs} runs")
    tm = child("timings", work, model_repo, env=env_cache)
    T = {k: median(v) for k, v in tm["times"].items()}
    nbytes = tm["model_bytes"]

    progress(f"object-heavy graphs and the trust gate, {runs} runs")
    objects = child("objects", work, model_repo, env=env_cache)

    progress("peak RSS, one fresh process per measurement")
    rss_methods = ["save:gitpack", "save:torch-durable", "load:gitpack", "load:torch", "load:gitpack-mmap"]
    if not quick:
        rss_methods += ["save:dill", "load:dill"]
    rss = {m: child("rss", work, model_repo, "--arg", m, env=env_cache) for m in rss_methods}

    progress(f"one load per fresh process, {runs} each, alternating")
    fresh: dict[str, list[float]] = {"gitpack": [], "torch": [], "floor": []}
    for r in range(runs):
        for method in ("gitpack", "torch", "floor") if r % 2 == 0 else ("torch", "gitpack", "floor"):
            fresh[method].append(child("fresh-load", work, model_repo, "--arg", method, env=env_cache)["seconds"])

    progress(f"synthetic repository of {n_files} files")
    big, used = make_big_repo(work, n_files)
    snap = child("snapshot", work, big)
    child("save-app", work, big, env={"GITPACK_CACHE": str(work / "cache-save")})
    os.sync()

    progress("materialisation, first load and cache hit")
    first, hit, loads = [], [], []
    cached_files = 0
    for r in range(2 if quick else runs):
        cache = work / f"cache-mat-{r}"
        # Each run starts with the previous runs' files on disk: their deferred writeback (ext4's
        # journal) otherwise lands inside the next measurement and triples it on this kind of VM.
        os.sync()
        first.append(child("materialise", work, big, *sum((["--arg", m] for m in used), []), env={"GITPACK_CACHE": str(cache)}))
        hit.append(child("materialise", work, big, *sum((["--arg", m] for m in used), []), env={"GITPACK_CACHE": str(cache)}))
        loads.append(child("first-load", work, big, env={"GITPACK_CACHE": str(work / f"cache-load-{r}")}))
        cached_files = first[-1]["files_in_cache"]

    progress("start-up: gitpack inspect vs import torch")
    t_inspect, t_torch = [], []
    for _ in range(runs):
        for args, acc in (([sys.executable, "-m", "gitpack", "inspect", str(work / "out" / "model.gitpack")], t_inspect),
                          ([sys.executable, "-c", "import torch"], t_torch)):
            t = time.perf_counter()
            run(args, model_repo)
            acc.append(time.perf_counter() - t)

    # bench_imports' own number of processes a side: 5 gave medians from 0.95x to 1.10x for a hook that costs
    # about 1% (its own row, timed in one process).
    import_runs = runs if quick else max(runs, bench_imports.DEFAULT_RUNS)
    progress(f"import recording (sources as imported), {import_runs} fresh processes each way")
    imports = bench_imports.measure(import_runs)

    # ------------------------------------------------------------------ table
    def ratio(a, b):
        return a / b if b else float("nan")

    table = Table()
    row = table.row

    r_save = ratio(T["save:gitpack"], T["save:torch-durable"])
    row("gitpack.save (snapshot incl.) vs durable torch.save", fmt_s(T["save:gitpack"]), fmt_s(T["save:torch-durable"]),
        f"{r_save:.2f}x", "<= 1.0x", r_save <= 1.0)
    row("  ... vs plain torch.save (no fsync)", fmt_s(T["save:gitpack"]), fmt_s(T["save:torch"]),
        f"{ratio(T['save:gitpack'], T['save:torch']):.2f}x", "report", None)
    r_load = ratio(T["load:gitpack"], T["load:torch"])
    row("gitpack.load (verifying) vs torch.load(weights_only=False)", fmt_s(T["load:gitpack"]), fmt_s(T["load:torch"]),
        f"{r_load:.2f}x", "<= 0.8x", r_load <= 0.8)
    floor = tm["floors"][VERIFY_FLOOR]
    row(f"  ... its floor ({VERIFY_FLOOR}) vs torch.load", fmt_s(floor), fmt_s(T["load:torch"]),
        f"{ratio(floor, T['load:torch']):.2f}x", "report", None)
    f_gp, f_torch = median(fresh["gitpack"]), median(fresh["torch"])
    r_fresh = ratio(f_gp, f_torch)
    row("  ... each the one load of a fresh process", fmt_s(f_gp), fmt_s(f_torch), f"{r_fresh:.2f}x", "<= 0.8x",
        r_fresh <= 0.8)
    f_floor = median(fresh["floor"])
    row("  ... its floor in a fresh process vs torch.load there", fmt_s(f_floor), fmt_s(f_torch),
        f"{ratio(f_floor, f_torch):.2f}x", "report", None)
    d_mmap = T["load:gitpack-mmap"] - T["load:torch-mmap"]
    row("gitpack.load(mmap=True) vs torch.load(mmap=True)", fmt_s(T["load:gitpack-mmap"]), fmt_s(T["load:torch-mmap"]),
        f"+{d_mmap * 1000:.1f} ms", "<= +50 ms", d_mmap <= 0.05)
    r_rl = ratio(rss["load:gitpack"]["delta"], nbytes)
    row("peak RSS delta of gitpack.load / model size", fmt_b(rss["load:gitpack"]["delta"]), fmt_b(rss["load:torch"]["delta"]) + " (torch)",
        f"{r_rl:.2f}x", "<= 1.1x", r_rl <= 1.1)
    r_rs = ratio(rss["save:gitpack"]["delta"], nbytes)
    row("peak RSS delta of gitpack.save / model size", fmt_b(rss["save:gitpack"]["delta"]), fmt_b(rss["save:torch-durable"]["delta"]) + " (torch)",
        f"{r_rs:.2f}x", "<= 0.1x", r_rs <= 0.1)
    s_snap, s_status = median(snap["snapshot"]), median(snap["status"])
    row(f"snapshot ({snap['files']} files, 5 dirty) vs git status --porcelain", fmt_s(s_snap), fmt_s(s_status),
        f"{ratio(s_snap, s_status):.2f}x", "<= 2x", ratio(s_snap, s_status) <= 2)
    m_first = median([x["seconds"] for x in first])
    m_hit = median([x["seconds"] for x in hit])
    row(f"first-load materialisation, {len(used)} modules ({cached_files} files written)", fmt_s(m_first), "", "", "<= 50 ms", m_first <= 0.05)
    row("materialisation on a cache hit", fmt_s(m_hit), "", "", "<= 20 ms", m_hit <= 0.02)
    bench_objects.rows(objects, row, fmt_s)
    r_cli = ratio(median(t_inspect), median(t_torch))
    row('gitpack inspect vs python -c "import torch" (wall)', fmt_s(median(t_inspect)), fmt_s(median(t_torch)),
        f"{r_cli:.2f}x", "<= 0.5x", r_cli <= 0.5)

    r_imp = ratio(imports["import_on_s"], imports["import_off_s"])
    row(f"importing {imports['modules']} modules with gitpack recording vs without (fresh processes)",
        fmt_s(imports["import_on_s"]), fmt_s(imports["import_off_s"]), f"{r_imp:.2f}x", "<= 1.05x", r_imp <= 1.05)
    hook = (imports["get_code_on_s"] - imports["get_code_off_s"]) / imports["modules"]
    row("  ... the recording hook alone, per module (in one process)", f"{hook * 1e6:.1f} us", "", "", "report", None)
    row(f"comparing {imports['modules']} recorded modules with the disk, per save", fmt_s(imports["compare_s"]), "",
        "", "<= 5 ms", imports["compare_s"] <= 0.005)

    print()
    if quick:
        print("QUICK RUN: a small model and repository; fixed costs dominate, so the ratios say little. Run without --quick.")
    print(f"gitpack benchmark: model {nbytes / 1e6:.0f} MB ({nbytes // 4 / 1e6:.1f}M float32 parameters), "
          f"medians of {runs} runs, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {__import__('torch').__version__}, {run(['git', '--version'], work).stdout.strip()}")
    print()
    table.print()

    print("\nreference (medians):")
    for k in ("save:gitpack", "save:torch-durable", "save:torch", "save:dill", "load:gitpack", "load:torch",
              "load:gitpack-mmap", "load:torch-mmap", "load:dill"):
        print(f"  {k:<20} {fmt_s(T[k]):>10}   CPU {fmt_s(median(tm['cpu'][k])):>9} (all threads)   "
              f"runs: {', '.join(f'{x * 1000:.0f}' for x in tm['times'][k])} ms")
    print("  one load per fresh process: " + "; ".join(
        f"{k} {', '.join(f'{x * 1000:.0f}' for x in v)} ms" for k, v in fresh.items()))
    for name, value in tm["floors"].items():
        print(f"  floor: {name:<40} {fmt_s(value):>10}   {nbytes / value / 1e9:5.2f} GB/s")
    print("  object-heavy graphs (medians, every run):")
    for text in bench_objects.reference(objects, fmt_s):
        print(text)
    print("  peak RSS delta (fresh process each): " + ", ".join(
        f"{k} {fmt_b(v['delta'])} ({ratio(v['delta'], nbytes):.2f}x)" for k, v in rss.items()))
    if not all(v["peak_reset"] for v in rss.values()):
        print("  (the kernel refused to reset VmHWM: RSS deltas include start-up peaks)")
    print(f"  archive {fmt_b(tm['file_bytes']['gitpack'])}, torch file {fmt_b(tm['file_bytes']['torch'])}, dill file {fmt_b(tm['file_bytes']['dill'])}")
    print(f"  snapshot runs: {', '.join(f'{x * 1000:.0f}' for x in snap['snapshot'])} ms; "
          f"git status runs: {', '.join(f'{x * 1000:.0f}' for x in snap['status'])} ms")
    print(f"  gitpack.save of a tiny object in that repo (snapshot + archive + fsyncs): {fmt_s(median(snap['tiny_save']))}")
    for name, c in snap["processes"].items():
        print(f"  git processes per {name}: {c['count']} ({', '.join(c['commands'])})")
    print(f"  first gitpack.load of the app model, all included (cold cache): {fmt_s(median([x['seconds'] for x in loads]))}")
    print(f"  git processes per gitpack.load: first {len(loads[0]['processes_first'])} "
          f"({', '.join(loads[0]['processes_first'])}); again in the same process {len(loads[0]['processes_again'])}")
    first_ms = ", ".join(f"{x['seconds'] * 1000:.1f}" for x in first)
    hit_ms = ", ".join(f"{x['seconds'] * 1000:.1f}" for x in hit)
    print(f"  materialisation runs: first {first_ms} ms; hit {hit_ms} ms")
    load1 = os.getloadavg()[0]
    print(f"  load average at the end: {load1:.2f} (the machine is shared; other work inflates every number)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""A stored artifact of about 1 GB through Git LFS: push and load, against git-lfs itself and the plain file.

Run through the main benchmark (``python scripts/bench.py --lfs``) or alone
(``python scripts/bench_lfs.py``).  Rows, medians of ``--runs`` runs:

* ``gitpack.api.push()`` (fetch, merge, ``git lfs push`` of the object, ``git push`` of the refs; timed in
  its process, as every row of ``bench.py`` is) into an empty remote vs doing the same by hand,
  ``git lfs push --object-id`` then ``git push`` of the same refs, and vs ``git lfs push`` alone; and the
  ``gitpack push`` command, whose interpreter start, imports and CLI add a fixed ~0.5-1 s; over HTTP (git's ``http-backend`` and giftless, a real LFS server, on 127.0.0.1:
  ``tests/lfs_http_server.py``) and, where ``/dev/shm`` is another filesystem, to a ``file://`` remote
  there (same filesystem, git-lfs would hard-link and move no bytes at all);
* peak RSS of everything ``gitpack push`` starts (the largest process: gitpack's Python, git, git-lfs)
  against the model's size: the bytes are streamed, never held;
* ``gitpack.load("big@v1")`` in a fresh clone with only the pointers (downloading the one object, checking
  its sha256, loading from the object file) vs ``git lfs fetch`` then ``gitpack.load(<that file>)``, over
  both transports; and the download step's own peak RSS against the model's size;
* ``gitpack.load("big@v1")`` when the object is here vs ``gitpack.load`` of the same file by path, and
  with ``mmap=True``; plus reading the file once (the floor).

Everything lives in a temp directory (``--keep DIR`` keeps it); about 6 GB of disk at the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchtable import Table, fmt_b, fmt_s, median

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
QUIET = {"GLOG_minloglevel": "2", "PYTHONDONTWRITEBYTECODE": "1", "GITPACK_QUIET": "1",
         "PYTHONPATH": str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

MODEL = '''\
"""About SIZE_MB MB of float32 weights in 64 MiB tensors: the LFS benchmark's model."""
import torch


class Weights(torch.nn.Module):
    def __init__(self, size_mb=1024):
        super().__init__()
        chunk = 16 << 20  # floats: 64 MiB
        count = max(1, size_mb * (1 << 20) // (4 * chunk))
        generator = torch.Generator().manual_seed(0)
        self.blocks = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(chunk, generator=generator), requires_grad=False) for _ in range(count)
        )

    def checksum(self):
        return float(sum(float(b[:: 1 << 16].sum()) for b in self.blocks))


def build(size_mb=1024):
    return Weights(size_mb)
'''

# Runs argv[1:], waits, prints {"seconds": wall, "peak_kib": largest RSS of any process it started, "out": its
# last stdout line}.
MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - t
if proc.returncode:
    sys.exit(f"{sys.argv[1:]} failed: {proc.stdout}{proc.stderr}")
print(json.dumps({"seconds": seconds, "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "out": (proc.stdout.strip().splitlines() or [""])[-1]}))
"""

# gitpack.api.push(argv[1]) timed inside the process: the push without the interpreter's start and imports.
PUSH_API = """
import json, sys, time, gitpack.api
t = time.perf_counter()
gitpack.api.push(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

# In one process, after a warm-up, the targets' loads interleaved run by run (order alternating, gc between):
# the medians' inputs as JSON.  Loading a target right after another's garbage would bias the order otherwise.
LOADS = """
import gc, json, sys, time, gitpack
runs, targets = int(sys.argv[1]), sys.argv[2:]
out = {target: [] for target in targets}
for target in targets:
    ref, _, mode = target.partition("#")
    gitpack.load(ref, mmap=mode == "mmap").checksum()
for r in range(runs):
    for target in (targets if r % 2 == 0 else targets[::-1]):
        ref, _, mode = target.partition("#")
        gc.collect()
        t = time.perf_counter()
        model = gitpack.load(ref, mmap=mode == "mmap")
        out[target].append(time.perf_counter() - t)
        del model
print(json.dumps(out))
"""

# One cold load: time gitpack.load(argv[1]) (its download included when the object is missing).
COLD = """
import json, sys, time, gitpack
t = time.perf_counter()
model = gitpack.load(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t, "checksum": model.checksum()}))
"""

# The download step alone (what load does before reading): the object fetched and verified.
DOWNLOAD = """
import sys, gitpack.artifacts as a
print(a.locate(sys.argv[1])[0])
"""


def run(args, cwd, env=None) -> subprocess.CompletedProcess:
    full = dict(os.environ, **QUIET, **(env or {}))
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=full, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def git(cwd, *args) -> str:
    return run(["git", *args], cwd).stdout.strip()


def measure(args, cwd, env=None) -> dict:
    return json.loads(run([sys.executable, "-c", MEASURE, *args], cwd, env).stdout)


def python_json(code: str, cwd, *args, env=None) -> dict:
    return json.loads(run([sys.executable, "-c", code, *args], cwd, env).stdout.strip().splitlines()[-1])


class Host:
    """git smart HTTP + giftless on 127.0.0.1 (the tests' server), serving the bare repositories under *root*."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        port_file = root / "port"
        self.root = root
        self.log = open(root / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, str(PROJECT / "tests" / "lfs_http_server.py"), str(root),
                                      str(port_file)], stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError((root / "server.log").read_text())
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def new_remote(self, name: str) -> tuple[str, Path]:
        path = self.root / "org" / f"{name}.git"
        path.parent.mkdir(parents=True, exist_ok=True)
        git(path.parent, "init", "-q", "--bare", path.name)
        return f"http://127.0.0.1:{self.port}/org/{name}.git", path

    def drop(self, name: str) -> None:
        shutil.rmtree(self.root / "org" / f"{name}.git", ignore_errors=True)
        shutil.rmtree(self.root / "lfs-storage" / "org" / name, ignore_errors=True)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


class FileRemotes:
    """Bare repositories reached by file:// on another filesystem than the clones (so bytes really move)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def new_remote(self, name: str) -> tuple[str, Path]:
        path = self.root / f"{name}.git"
        git(self.root, "init", "-q", "--bare", path.name)
        return path.as_uri(), path

    def drop(self, name: str) -> None:
        shutil.rmtree(self.root / f"{name}.git", ignore_errors=True)


def make_project(work: Path, size_mb: int) -> tuple[Path, float]:
    repo = work / "a"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for key, value in (("user.name", "Bench"), ("user.email", "bench@example.com"), ("commit.gpgsign", "false")):
        git(repo, "config", key, value)
    (repo / "lfsbench.py").write_text(MODEL)
    (repo / ".gitignore").write_text("__pycache__/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "benchmark model")
    t = time.perf_counter()
    run([sys.executable, "-m", "gitpack", "save", "lfsbench:build", "--name", "big", "-p", f"size_mb={size_mb}"], repo)
    return repo, time.perf_counter() - t


def push_rows(a: Path, remotes, runs: int, oid: str) -> dict[str, list]:
    """gitpack push (the command, and gitpack.api.push timed inside its process) vs git lfs push + git push vs
    git lfs push alone, each into a fresh empty remote, in rotating order."""
    refs = [r for r in git(a, "for-each-ref", "--format=%(refname)", "refs/gitpack", "refs/heads/gitpack").split()]
    out: dict[str, list] = {"gitpack push": [], "gitpack.api.push": [], "by hand": [], "git lfs push": [],
                            "gitpack_peak": [], "git-lfs_peak": []}
    kinds = ["gitpack push", "gitpack.api.push", "by hand"]
    for i in range(runs):
        for what in kinds[i % 3:] + kinds[:i % 3]:
            name = f"run{i}-{what.replace(' ', '-')}"
            url, _ = remotes.new_remote(name)
            if what == "by hand":
                lfs = measure(["git", "lfs", "push", "--object-id", url, oid], a)
                refs_pushed = measure(["git", "push", "-q", url, *[f"{r}:{r}" for r in refs]], a)
                out["by hand"].append(lfs["seconds"] + refs_pushed["seconds"])
                out["git lfs push"].append(lfs["seconds"])
                out["git-lfs_peak"].append(lfs["peak_kib"] << 10)
            else:
                git(a, "remote", "add", "bench", url)
                if what == "gitpack push":
                    m = measure([sys.executable, "-m", "gitpack", "push", "bench", "-q"], a)
                    out[what].append(m["seconds"])
                    out["gitpack_peak"].append(m["peak_kib"] << 10)
                else:
                    m = measure([sys.executable, "-c", PUSH_API, "bench"], a)
                    out[what].append(json.loads(m["out"])["seconds"])
                git(a, "remote", "remove", "bench")
                for ref in git(a, "for-each-ref", "--format=%(refname)", "refs/gitpack-remotes").split():
                    git(a, "update-ref", "-d", ref)
            remotes.drop(name)
    return out


def clone(url: str, dest: Path) -> Path:
    run(["git", "clone", "-q", url, str(dest)], dest.parent)
    run([sys.executable, "-m", "gitpack", "pull", "-q"], dest)
    return dest


def load_rows(a: Path, remotes, runs: int, oid: str, tag: str, warm: bool) -> dict[str, list]:
    """Cold loads in fresh clones (gitpack downloading on demand vs git lfs fetch + load by path); with *warm*,
    then loads with the object here, by name and by path."""
    url, _ = remotes.new_remote("loads")
    git(a, "remote", "add", "loads", url)
    run([sys.executable, "-m", "gitpack", "push", "loads", "-q"], a)
    git(a, "remote", "remove", "loads")
    commit = git(a, "rev-parse", "refs/gitpack/artifacts/big/v1")
    out: dict[str, list] = {"cold gitpack": [], "cold by hand": [], "fetch by hand": [], "download_peak": []}
    scratch = a.parent / f"clones-{tag}"
    scratch.mkdir()
    kept = None
    for i in range(runs):
        for what in (["gitpack", "by hand"] if i % 2 == 0 else ["by hand", "gitpack"]):
            b = clone(url, scratch / f"b{i}-{what.replace(' ', '-')}")
            path = b / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
            run(["sync"], b)
            if what == "gitpack":
                out["cold gitpack"].append(python_json(COLD, b, "big@v1")["seconds"])
                os.unlink(path)
                out["download_peak"].append(measure([sys.executable, "-c", DOWNLOAD, "big@v1"], b)["peak_kib"] << 10)
            else:
                fetch = measure(["git", "lfs", "fetch", "origin", commit], b)
                out["fetch by hand"].append(fetch["seconds"])
                out["cold by hand"].append(fetch["seconds"] + python_json(COLD, b, str(path))["seconds"])
            if warm and i == runs - 1 and what == "by hand":
                kept = b
            else:
                shutil.rmtree(b)
    if kept is None:
        remotes.drop("loads")
        return out
    # Warm: the object is here; the same archive by name (LFS) and by path, read and mapped.
    path = kept / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    warm = python_json(LOADS, kept, str(runs), "big@v1", str(path), "big@v1#mmap", f"{path}#mmap")
    out.update({"warm " + k: v for k, v in warm.items()})
    reads = []
    for _ in range(runs):
        t = time.perf_counter()
        with open(path, "rb") as fh:
            while fh.read(8 << 20):
                pass
        reads.append(time.perf_counter() - t)
    out["read the file"] = reads
    out["path"] = [str(path)]
    remotes.drop("loads")
    return out


def report(work: Path, size_mb: int, runs: int) -> None:
    def note(text: str) -> None:
        print(f"... {text}", file=sys.stderr, flush=True)

    note(f"saving a {size_mb} MB model with --name (into Git LFS)")
    a, save_seconds = make_project(work, size_mb)
    pointer = git(a, "cat-file", "blob", "refs/gitpack/artifacts/big/v1:archive.gitpack").split()
    oid, size = pointer[pointer.index("oid") + 1].removeprefix("sha256:"), int(pointer[pointer.index("size") + 1])
    table = Table()
    row = table.row

    transports = []
    try:
        host = Host(work / "host")
        transports.append(("HTTP (giftless)", host))
    except Exception as exc:  # giftless missing: say so, measure the rest
        host = None
        print(f"(no HTTP rows: the LFS server did not start: {str(exc).strip()[-300:]})")
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(work).st_dev:
        transports.append(("file:// on tmpfs", FileRemotes(Path(tempfile.mkdtemp(prefix="gitpack-bench-", dir=shm)))))
    measured = {}
    try:
        for label, remotes in transports:
            note(f"push, {label}, {runs} runs")
            p = push_rows(a, remotes, runs, oid)
            measured[f"push {label}"] = p
            ours, theirs = median(p["gitpack.api.push"]), median(p["by hand"])
            row(f"gitpack.api.push() vs git lfs push + git push, {label}", fmt_s(ours), fmt_s(theirs),
                f"{ours / theirs:.2f}x", "<= 1.2x", ours / theirs <= 1.2)
            row("  ... vs git lfs push alone", fmt_s(ours), fmt_s(median(p["git lfs push"])),
                f"{ours / median(p['git lfs push']):.2f}x", "report", None)
            cli = median(p["gitpack push"])
            row("  `gitpack push` (the command: + interpreter, imports, CLI)", fmt_s(cli), fmt_s(theirs),
                f"{cli / theirs:.2f}x", "report", None)
            peak = max(p["gitpack_peak"])
            row("  peak RSS of gitpack push (largest process) / model size", fmt_b(peak),
                fmt_b(max(p["git-lfs_peak"])) + " (git lfs push)", f"{peak / size:.3f}x", "<= 0.1x", peak / size <= 0.1)
        for n, (label, remotes) in enumerate(transports):
            note(f"loads, {label}, {runs} runs")
            last = n == len(transports) - 1
            L = measured[f"load {label}"] = load_rows(a, remotes, runs, oid, f"t{n}", warm=last)
            r = median(L["cold gitpack"]) / median(L["cold by hand"])
            row(f"gitpack.load('big@v1') in a fresh clone (download incl.) vs git lfs fetch + gitpack.load(file), "
                f"{label}", fmt_s(median(L["cold gitpack"])), fmt_s(median(L["cold by hand"])), f"{r:.2f}x",
                "<= 1.2x", r <= 1.2)
            peak = max(L["download_peak"])
            row("  peak RSS of the download step (git lfs fetch + sha256) / model size", fmt_b(peak), "",
                f"{peak / size:.3f}x", "<= 0.1x", peak / size <= 0.1)
            if last:
                path = L["path"][0]
                for mode, what in (("", "gitpack.load"), ("#mmap", "gitpack.load(mmap=True)")):
                    ours, theirs = median(L[f"warm big@v1{mode}"]), median(L[f"warm {path}{mode}"])
                    target, met = ("<= 1.2x", ours / theirs <= 1.2) if not mode else ("report", None)
                    row(f"{what}: 'big@v1' from .git/lfs vs the same file by path", fmt_s(ours), fmt_s(theirs),
                        f"{ours / theirs:.2f}x", target, met)
    finally:
        if host is not None:
            host.stop()
        for _, remotes in transports:
            if isinstance(remotes, FileRemotes):
                shutil.rmtree(remotes.root, ignore_errors=True)

    import platform

    print()
    print(f"gitpack LFS benchmark: one stored artifact of {size / 1e6:.0f} MB, medians of {runs} runs, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {git(work, 'lfs', 'version')}, "
          f"{git(work, 'version')}")
    print()
    table.print()
    print("\nreference:")
    print(f"  gitpack save --name of the model (into LFS, incl. Python and torch start-up): {fmt_s(save_seconds)}")
    for key, values in measured.items():
        for name, xs in values.items():
            if name == "path":
                continue
            shown = ", ".join(fmt_b(x) if name.endswith("peak") else f"{x * 1000:.0f}" for x in xs)
            print(f"  {key:<22} {name:<40} {shown}{'' if name.endswith('peak') else ' ms'}")
    for values in measured.values():
        if "read the file" in values:
            print(f"  reading the object file once (8 MiB reads): {fmt_s(median(values['read the file']))}")
    print(f"  load average at the end: {os.getloadavg()[0]:.2f} (the machine is shared; other work inflates every number)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="model size in MB (default 1024)")
    ap.add_argument("--runs", type=int, default=5, help="runs per median (default 5)")
    ap.add_argument("--keep", help="work in this directory and keep it")
    opts = ap.parse_args(argv)
    if shutil.which("git-lfs") is None and subprocess.run(["git", "lfs", "version"], capture_output=True).returncode:
        raise SystemExit("git-lfs is not installed; install it (apt-get install git-lfs) to run this benchmark")
    work = Path(opts.keep).absolute() if opts.keep else Path(tempfile.mkdtemp(prefix="gitpack-bench-lfs-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        report(work, opts.size_mb, opts.runs)
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n(LFS bench took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

"""Object-heavy graphs and the trust gate, for ``scripts/bench.py``: gitpack against torch.save / torch.load.

Three objects of a repository module (:data:`SOURCE`), each saved and loaded by both in one process,
methods rotated run by run:

* ``vocab``: a tokenizer-like object, a 300,000-entry ``str -> int`` dict and its inverse list;
* ``layers``: a module of 10,000 ``Linear(8, 8)`` layers (20,000 small parameters, 10,000 modules);
* ``params``: a module holding 20,000 small parameters in one ``ParameterList``.

For each, the trust gate (the tensor table check, the byte pass and the dry run) is timed against the
unpickling it guards: the C unpickler over the same bytes, resolving through the load's own ``Resolver``
with every storage already read (what ``gitpack.load`` runs after the gate).

bench.py calls :func:`measure` in a child process and :func:`rows` to add the table's lines; to add
another object, add its class to :data:`SOURCE` and a line to :data:`OBJECTS`.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

from benchtable import median

MODULE = "bench_objects_model"
SOURCE = '''\
"""Object-heavy graphs for the benchmark: a vocabulary and modules of many small parameters."""
import torch


class Vocab:
    def __init__(self, n=300_000):
        self.itos = [f"tok{i * 7919 % 1000003:07d}" for i in range(n)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.unk = 0


class ManyLayers(torch.nn.Module):
    def __init__(self, n=10_000, width=8):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(n))


class ManyParams(torch.nn.Module):
    def __init__(self, n=20_000, width=16):
        super().__init__()
        self.params = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(width)) for _ in range(n))
'''

# name -> (class, full-size argument, quick argument, description)
OBJECTS = {
    "vocab": ("Vocab", 300_000, 30_000, "300k-vocab object"),
    "layers": ("ManyLayers", 10_000, 1_000, "20k small params (10,000 Linear(8, 8))"),
    "params": ("ManyParams", 20_000, 2_000, "20k small params (one ParameterList)"),
}
TARGETS = {"vocab": (1.5, 1.5), "layers": (2.0, 2.0), "params": (2.0, 2.0)}
GATE_TARGET = 0.2


def write_source(repo: Path) -> None:
    (repo / f"{MODULE}.py").write_text(SOURCE)


def _gate_and_unpickle(path: Path) -> tuple[float, float]:
    """Seconds of the trust gate (tensor table check + byte pass + dry run) and of the unpickling it guards, over the same bytes."""
    from gitpack.isolation import namespace_for
    from gitpack.manifest import BUFFER_PREFIX, PICKLE_MEMBER
    from gitpack.pickling import gate, tensortable
    from gitpack.pickling.policy import Policy
    from gitpack.pickling.tensors import StorageLoader
    from gitpack.pickling.unpickler import Resolver
    from gitpack.pickling.unpickler import load as unpickle
    from gitpack.verify import open_verified

    with open_verified(path) as checked:
        plan = checked.plan
        data = checked.reader.read(PICKLE_MEMBER)
        modules = frozenset(plan.modules)
        table = tensortable.from_archive(checked.reader)
        policy = Policy()
        t = time.perf_counter()
        verdict = gate.trace(data, policy, modules=modules, buffers=plan.buffers, table=table)
        gate_s = time.perf_counter() - t
        verdict.raise_if_refused(str(path))
        buffers = [checked.reader.read_buffer(f"{BUFFER_PREFIX}{i}") for i in range(plan.buffers)]
        loader = StorageLoader(checked.reader)
        if table is not None:
            loader.use_table(table)
            loader.read_table()
        for pid in verdict.storages:
            loader.load(pid)
        known = {name: info.root for name, info in plan.modules.items()}
        resolver = Resolver(namespace_for(checked.source, plan.roots, known), policy, modules=modules)
        verdict.check_classes(resolver.ref)
        t = time.perf_counter()
        unpickle(data, resolver=resolver, storage_loader=loader, buffers=buffers)
        return gate_s, time.perf_counter() - t


def measure(out: Path, runs: int, quick: bool) -> dict:
    """Medians of torch.save / gitpack.save / torch.load / gitpack.load per object, and the gate's cost."""
    sys.path.insert(0, str(Path.cwd()))
    model = __import__(MODULE)
    result = {}
    for key, (cls, full, small, _) in OBJECTS.items():
        result[key] = _measure_one(key, getattr(model, cls)(small if quick else full), out, runs)
    return result


def _measure_one(key: str, obj, out: Path, runs: int) -> dict:
    import torch

    import gitpack

    pt, gp = out / f"{key}.pt", out / f"{key}.gitpack"
    methods = {
        "save:torch": lambda: torch.save(obj, pt),
        "save:gitpack": lambda: gitpack.save(obj, gp, params={"bench": key}),
        "load:torch": lambda: torch.load(pt, weights_only=False),
        "load:gitpack": lambda: gitpack.load(gp),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():  # warm-up: imports, the snapshot namespace, the page cache
        fn()
    names = list(methods)
    for r in range(runs):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: no method always goes first
            gc.collect()
            t = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - t)
    gate_runs = [_gate_and_unpickle(gp) for _ in range(max(3, runs))]
    return {"times": times, "gate": [g for g, _ in gate_runs], "unpickle": [u for _, u in gate_runs]}


def rows(measured: dict, row, fmt_s) -> None:
    """Add the table's lines through bench.py's ``row(what, ours, theirs, value, target, met)``."""
    for key, (_, _, _, what) in OBJECTS.items():
        m = {k: median(v) for k, v in measured[key]["times"].items()}
        save_target, load_target = TARGETS[key]
        r = m["save:gitpack"] / m["save:torch"]
        row(f"{what}: gitpack.save vs torch.save", fmt_s(m["save:gitpack"]), fmt_s(m["save:torch"]), f"{r:.2f}x",
            f"<= {save_target}x", r <= save_target)
        r = m["load:gitpack"] / m["load:torch"]
        row(f"{what}: gitpack.load (verifying) vs torch.load", fmt_s(m["load:gitpack"]), fmt_s(m["load:torch"]),
            f"{r:.2f}x", f"<= {load_target}x", r <= load_target)
    for key, (_, _, _, what) in OBJECTS.items():
        g, u = median(measured[key]["gate"]), median(measured[key]["unpickle"])
        r = g / u if u else float("nan")
        row(f"{what}: trust gate vs the C unpickling it guards", fmt_s(g), fmt_s(u), f"{r:.2f}x",
            f"<= {GATE_TARGET}x", r <= GATE_TARGET)


def reference(measured: dict, fmt_s) -> list[str]:
    """One line per object and method: the median and every run."""
    lines = []
    for key, data in measured.items():
        for name, xs in list(data["times"].items()) + [("gate", data["gate"]), ("unpickle", data["unpickle"])]:
            lines.append(f"  {key + ' ' + name:<22} {fmt_s(median(xs)):>10}   runs: "
                         + ", ".join(f"{x * 1000:.0f}" for x in xs) + " ms")
    return lines

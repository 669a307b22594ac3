#!/usr/bin/env python
"""CUDA tensors through gitpack on a real GPU: save on the device, load with every kind of ``map_location``.

Run on a machine with a CUDA device (CI has none; the tests cover the CPU paths):

    python scripts/device_check.py [--out results.json]

In a temp repository it trains a small GPT-style model on ``cuda`` with AdamW and a ``GradScaler``, saves a
checkpoint, then, each in a fresh process (the "another program" of a real workflow):

* loads it as saved: every parameter on ``cuda:0``, the optimizer state on the devices the saver's was on
  (AdamW keeps ``step`` on the CPU), outputs equal to the saver's;
* ``map_location="cpu"``, ``{"cuda:0": "cpu"}`` and a callable: every tensor on the CPU, outputs equal
  (within float tolerance of the GPU's);
* saves a CPU model and loads it with ``map_location="cuda"``: every tensor on the GPU;
* resumes training from the loaded checkpoint on the GPU (one optimizer step);

and times ``gitpack.save``/``gitpack.load`` against ``torch.save``/``torch.load`` of the same state
(medians of 5), printing ratios.  Prints one JSON object; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent

MODEL = '''\
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        h = self.ln(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab=256, width=256, depth=4):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.tok(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x)
'''

SAVE = '''\
import json, sys, time
import gitpack
import torch
from model import TinyGPT

torch.manual_seed(0)
model = TinyGPT().cuda()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler("cuda")
data = torch.randint(0, 256, (8, 65), device="cuda")
for _ in range(3):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(data[:, :-1]).flatten(0, 1).float(), data[:, 1:].flatten())
    scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); opt.zero_grad()
ckpt = {"model": model, "optimizer": opt, "scaler": scaler, "step": 3}
probe = torch.arange(64, device="cuda").unsqueeze(0) % 256
with torch.no_grad():
    out = model(probe).float().cpu()
torch.save(out, "expected.pt")
gitpack.save(ckpt, "gpu.gitpack", params={"lr": 1e-3})
cpu_model = TinyGPT()
gitpack.save(cpu_model, "cpu.gitpack")
with torch.no_grad():
    torch.save(cpu_model(probe.cpu()), "expected_cpu.pt")
saves, loads, tsaves, tloads = [], [], [], []
for k in range(5):
    torch.cuda.synchronize(); t = time.perf_counter(); gitpack.save(ckpt, f"t{k}.gitpack"); saves.append(time.perf_counter() - t)
    t = time.perf_counter(); torch.save(ckpt, f"t{k}.pt"); tsaves.append(time.perf_counter() - t)
    t = time.perf_counter(); gitpack.load(f"t{k}.gitpack"); torch.cuda.synchronize(); loads.append(time.perf_counter() - t)
    t = time.perf_counter(); torch.load(f"t{k}.pt", weights_only=False); torch.cuda.synchronize(); tloads.append(time.perf_counter() - t)
med = lambda xs: sorted(xs)[len(xs) // 2]
state_devices = sorted({str(v.device) for s in opt.state.values() for v in s.values() if torch.is_tensor(v)})
print(json.dumps({"state_devices": state_devices, "save_s": med(saves), "torch_save_s": med(tsaves), "load_s": med(loads), "torch_load_s": med(tloads),
                  "params": sum(p.numel() for p in model.parameters())}))
'''

LOAD = '''\
import json, sys
import gitpack
import torch

how = sys.argv[1]
maps = {"saved": None, "cpu": "cpu", "dict": {"cuda:0": "cpu"}, "callable": lambda storage, location: storage.cpu(),
        "to_cuda": "cuda"}
archive = "cpu.gitpack" if how == "to_cuda" else "gpu.gitpack"
loaded = gitpack.load(archive, map_location=maps[how])
model = loaded if how == "to_cuda" else loaded["model"]
devices = sorted({str(t.device) for t in list(model.parameters()) + list(model.buffers())})
state_devices = []
if how != "to_cuda":
    opt = loaded["optimizer"]
    state_devices = sorted({str(v.device) for s in opt.state.values() for v in s.values() if torch.is_tensor(v)})
    shared = opt.param_groups[0]["params"][0] is next(iter(model.parameters()))
else:
    shared = True
device = next(model.parameters()).device
probe = torch.arange(64, device=device).unsqueeze(0) % 256
with torch.no_grad():
    out = model(probe).float().cpu()
expected = torch.load("expected_cpu.pt" if how == "to_cuda" else "expected.pt").float()
close = bool(torch.allclose(out, expected, atol=2e-3, rtol=1e-3))
resumed = None
if how == "saved":
    opt, scaler = loaded["optimizer"], loaded["scaler"]
    data = torch.randint(0, 256, (8, 65), device="cuda")
    loss = torch.nn.functional.cross_entropy(model(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten())
    scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    resumed = float(loss)
print(json.dumps({"devices": devices, "state_devices": state_devices, "close": close, "shared": shared,
                  "max_abs_diff": float((out - expected).abs().max()), "resumed_loss": resumed}))
'''


def _run(cwd: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "GITPACK_QUIET": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run this on a machine with a GPU")
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="gitpack-device-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        (repo / "model.py").write_text(MODEL)
        (repo / ".gitignore").write_text("*.gitpack\n*.pt\n")
        for git_args in (["init", "-q", "-b", "main"], ["config", "user.email", "gpu@example.com"],
                         ["config", "user.name", "gpu"], ["add", "."], ["commit", "-q", "-m", "model"]):
            subprocess.run(["git", *git_args], cwd=repo, check=True, capture_output=True)
        (repo / "save_it.py").write_text(SAVE)
        (repo / "load_it.py").write_text(LOAD)
        timing = _run(repo, "save_it.py")
        results["timing"] = {**timing, "save_ratio": timing["save_s"] / timing["torch_save_s"],
                             "load_ratio": timing["load_s"] / timing["torch_load_s"]}
        expect = {"saved": ["cuda:0"], "cpu": ["cpu"], "dict": ["cpu"], "callable": ["cpu"], "to_cuda": ["cuda:0"]}
        failures = []
        for how, devices in expect.items():
            found = _run(repo, "load_it.py", how)
            results[how] = found
            if found["devices"] != devices or not found["close"] or not found["shared"]:
                failures.append(how)
            # As saved: the optimizer state where the saver's was (AdamW keeps ``step`` on the CPU).
            state_expected = timing["state_devices"] if how == "saved" else devices
            if how != "to_cuda" and found["state_devices"] != state_expected:
                failures.append(f"{how} (optimizer state)")
        results["failures"] = failures
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    raise SystemExit(1 if results["failures"] else 0)


if __name__ == "__main__":
    main()

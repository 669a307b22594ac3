"""Training runs as researchers write them: checkpoints with optimizers, schedulers and scalers, the model file
edited while the run goes on, ``torch.compile``, the repo's own package installed with pip.

Every "another program" is a real separate Python process; every model is a real torch model trained for a
few steps.  About 40 s on a 2-core machine (most of it ``torch.compile`` with inductor).
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from conftest import commit_files, git, gitpack_cli, run, run_python

import gitpack

MODEL = '''\
"""A GPT-style block, small enough to train in a test."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class TinyGPT(nn.Module):
    def __init__(self, vocab=17, n_embd=16, n_head=2, block=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, n_embd)
        self.pos = nn.Embedding(block, n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        x = x + self.attn(self.ln(x))
        return self.head(self.ln(x))  # EDIT-POINT
'''

TRAIN = '''\
"""Train for three epochs, checkpointing each one, while "someone" edits model.py between epochs."""
import json
import random
from pathlib import Path

import gitpack  # first: every module imported after it is recorded as imported
import numpy as np
import torch
import torch.nn.functional as F

from model import TinyGPT

torch.manual_seed(0)
model = TinyGPT()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 ** epoch)
scaler = torch.amp.GradScaler("cpu")
data = torch.randint(0, 17, (4, 9))
probe = torch.arange(8).unsqueeze(0) % 17
outputs = {}
for epoch in range(3):
    for _ in range(3):
        logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 17), data[:, 1:].reshape(-1))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    scheduler.step()
    checkpoint = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "epoch": epoch,
                  "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
    info = gitpack.save(checkpoint, f"ckpt-{epoch}.gitpack", params={"lr": 3e-3, "epoch": epoch})
    torch.save(optimizer.state_dict(), f"opt-{epoch}.pt")
    with torch.no_grad():
        outputs[epoch] = model(probe).tolist()
    # The researcher edits the model while the run goes on: each checkpoint must keep the code that trained it.
    src = Path("model.py")
    src.write_text(src.read_text().replace("# EDIT-POINT", f"* {epoch + 2}  # EDIT-POINT"))
Path("outputs.json").write_text(json.dumps(outputs))
'''

CHECK = '''\
import json, sys
import torch
import gitpack

epoch = int(sys.argv[1])
ck = gitpack.load(f"ckpt-{epoch}.gitpack")
model, optimizer = ck["model"], ck["optimizer"]
probe = torch.arange(8).unsqueeze(0) % 17
with torch.no_grad():
    out = model(probe).tolist()
expected = torch.load(f"opt-{epoch}.pt")
state = optimizer.state_dict()
same_state = all(torch.equal(a, b) for i in expected["state"] for k, a in expected["state"][i].items()
                 for b in [state["state"][i][k]])
assert state["param_groups"] == expected["param_groups"], (state["param_groups"], expected["param_groups"])
# The optimizer holds the loaded model's own parameters, so a resumed run trains the model that is returned.
shared = optimizer.param_groups[0]["params"][0] is next(iter(model.parameters()))
print(json.dumps({"out": out, "same_state": same_state, "shared": shared, "epoch": ck["epoch"],
                  "lr": ck["scheduler"].get_last_lr(), "scale": ck["scaler"].get_scale(),
                  "rng": torch.equal(ck["rng"]["torch"], ck["rng"]["torch"])}))
# Resume: one more step runs without error.
model(probe).sum().backward(); optimizer.step(); ck["scheduler"].step()
'''


def test_every_checkpoint_of_a_run_whose_model_file_was_edited_loads_and_runs_the_code_that_trained_it(repo):
    commit_files(repo, {"model.py": MODEL, "train.py": TRAIN, ".gitignore": "*.gitpack\n*.pt\noutputs.json\n"})
    trained = run(repo, sys.executable, "train.py")
    assert trained.returncode == 0, trained.stderr
    outputs = json.loads((repo / "outputs.json").read_text())
    assert "* 4  # EDIT-POINT" in (repo / "model.py").read_text()  # the working tree holds the last edit
    for epoch in range(3):
        manifest = gitpack.inspect(repo / f"ckpt-{epoch}.gitpack")
        # From the second checkpoint on, model.py differs on disk from what was imported, and is pinned as imported.
        assert manifest["pinned"] == ([] if epoch == 0 else ["model.py"])
        assert manifest["stale_code"] == [] and manifest["params"] == {"lr": 3e-3, "epoch": epoch}
        assert git(repo, "show", f"{manifest['commit']}:model.py") == MODEL.rstrip("\n")  # the code that trained it
        checked = run(repo, sys.executable, "-c", CHECK, str(epoch))
        assert checked.returncode == 0, checked.stderr
        result = json.loads(checked.stdout)
        assert result["out"] == outputs[str(epoch)]
        assert result["same_state"] and result["shared"] and result["epoch"] == epoch
        assert result["lr"] == [3e-3 * 0.5 ** (epoch + 1)]
        assert result["scale"] > 0
    # Without gitpack the edited file would run: the working tree's model really computes something else now.
    current = run_python(repo, "import torch, json; from model import TinyGPT; torch.manual_seed(0); "
                               "print(json.dumps(TinyGPT()(torch.arange(8).unsqueeze(0) % 17).tolist()))")
    assert current.returncode == 0, current.stderr
    assert json.loads(current.stdout) != outputs["2"]


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    lambda p: torch.optim.AdamW(p, lr=1e-2),
    lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
], ids=["Adam", "AdamW", "SGD"])
def test_optimizer_checkpoints_load_with_equal_state_under_the_default_policy(repo, make):
    commit_files(repo, {"model.py": MODEL})
    sys.path.insert(0, str(repo))
    try:
        from model import TinyGPT

        torch.manual_seed(1)
        model = TinyGPT()
        optimizer = make(model.parameters())
        for _ in range(2):
            model(torch.randint(0, 17, (2, 8))).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        gitpack.save({"model": model, "optimizer": optimizer}, repo / "ck.gitpack", repo=repo)
        torch.save(optimizer.state_dict(), repo / "opt.pt")
    finally:
        sys.path.remove(str(repo))
        sys.modules.pop("model", None)
    done = run_python(repo, "import torch, gitpack\n"
                            "ck = gitpack.load('ck.gitpack')\n"
                            "a, b = ck['optimizer'].state_dict(), torch.load('opt.pt')\n"
                            "assert a['param_groups'] == b['param_groups']\n"
                            "assert a['state'].keys() == b['state'].keys()\n"
                            "for i in a['state']:\n"
                            "    for k in b['state'][i]:\n"
                            "        assert torch.equal(a['state'][i][k], b['state'][i][k]), (i, k)\n"
                            "print(type(ck['optimizer']).__name__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == type(optimizer).__name__


COMPILED = '''\
import json, sys
import gitpack
import torch
from model import TinyGPT

torch.manual_seed(0)
model = torch.compile(TinyGPT(), backend=sys.argv[1], dynamic=False)
probe = torch.arange(8).unsqueeze(0) % 17
with torch.no_grad():
    out = model(probe)  # compiles and runs
info = gitpack.save(model, "compiled.gitpack")
print(json.dumps(out.tolist()))
'''


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_a_compiled_module_saves_as_its_original_module_and_loads_with_equal_outputs(repo, backend):
    if backend == "inductor" and shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor on CPU needs a C compiler")  # the eager backend still covers the wrapper
    commit_files(repo, {"model.py": MODEL, "compile_and_save.py": COMPILED})
    saved = run(repo, sys.executable, "compile_and_save.py", backend)
    assert saved.returncode == 0, saved.stderr
    expected = json.loads(saved.stdout.strip().splitlines()[-1])
    manifest = gitpack.inspect(repo / "compiled.gitpack")
    assert manifest["object"]["type"] == "model:TinyGPT"
    [compiled] = manifest["compiled"]
    assert compiled["class"] == "model:TinyGPT" and compiled["dynamic"] is False
    assert compiled["backend"] == backend
    loaded = run_python(repo, "import json, torch, gitpack\n"
                              "m = gitpack.load('compiled.gitpack')\n"
                              "assert type(m).__name__ == 'TinyGPT', type(m)\n"
                              "with torch.no_grad():\n"
                              "    print(json.dumps(m(torch.arange(8).unsqueeze(0) % 17).tolist()))")
    assert loaded.returncode == 0, loaded.stderr
    assert torch.allclose(torch.tensor(json.loads(loaded.stdout)), torch.tensor(expected), atol=1e-5)
    shown = gitpack_cli(repo, "inspect", "compiled.gitpack")
    assert "compiled" in shown.stdout and f"backend={backend}" in shown.stdout


NET = '''\
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x) * 2  # VERSION
'''

PYPROJECT = '''\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "mypkg"
version = "0.0.1"

[tool.setuptools.packages.find]
where = ["src"]
'''

SAVE_INSTALLED = '''\
import json, torch, warnings
import gitpack
from mypkg.net import Net  # from the pip --target directory, not from the working tree

torch.manual_seed(0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    info = gitpack.save(Net(), "net.gitpack")
print(json.dumps({"warnings": [str(w.message) for w in caught if issubclass(w.category, gitpack.GitpackWarning)],
                  "info": info.warnings}))
'''

RUN_LOADED = '''\
import json, torch, gitpack
m = gitpack.load("net.gitpack")
torch.manual_seed(0)
print(json.dumps({"out": m(torch.ones(1, 3)).tolist(), "lin": m.lin.weight.tolist(), "bias": m.lin.bias.tolist()}))
'''


def _pip_install_target(repo, target):
    shutil.rmtree(target, ignore_errors=True)
    done = run(repo, sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
               "--no-index", "--target", str(target), ".")
    assert done.returncode == 0, done.stderr


def test_a_pip_installed_copy_of_the_repo_package_is_pinned_and_an_edit_reinstalled_does_not_change_the_load(
        repo, tmp_path):
    commit_files(repo, {"pyproject.toml": PYPROJECT, "src/mypkg/__init__.py": "", "src/mypkg/net.py": NET,
                        ".gitignore": "*.gitpack\nbuild/\n*.egg-info/\n"})
    target = tmp_path / "site"
    _pip_install_target(repo, target)
    env = {"PYTHONPATH": f"{target}:{':'.join(p for p in sys.path if p)}"}
    saved = run(repo, sys.executable, "-c", SAVE_INSTALLED, env=env)
    assert saved.returncode == 0, saved.stderr
    assert json.loads(saved.stdout) == {"warnings": [], "info": []}
    manifest = gitpack.inspect(repo / "net.gitpack")
    assert manifest["modules"]["mypkg.net"]["path"] == "src/mypkg/net.py" and manifest["unpinned"] == []
    before = run(repo, sys.executable, "-c", RUN_LOADED, env=env)
    assert before.returncode == 0, before.stderr

    # Edit and reinstall: the installed code now differs from what was saved; the archive runs the saved code.
    (repo / "src/mypkg/net.py").write_text(NET.replace("* 2  # VERSION", "* 3  # VERSION"))
    git(repo, "commit", "-qam", "triple")
    _pip_install_target(repo, target)
    after = run(repo, sys.executable, "-c", RUN_LOADED, env=env)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    out = json.loads(after.stdout)
    expected = (torch.tensor(out["lin"]) @ torch.ones(3) + torch.tensor(out["bias"])) * 2
    assert torch.allclose(torch.tensor(out["out"][0]), expected)


def test_an_installed_copy_that_differs_from_the_working_tree_is_said_loudly_to_be_unpinned(repo, tmp_path):
    commit_files(repo, {"pyproject.toml": PYPROJECT, "src/mypkg/__init__.py": "", "src/mypkg/net.py": NET,
                        ".gitignore": "*.gitpack\nbuild/\n*.egg-info/\n"})
    target = tmp_path / "site"
    _pip_install_target(repo, target)
    (repo / "src/mypkg/net.py").write_text(NET.replace("* 2  # VERSION", "* 3  # VERSION"))  # not reinstalled
    env = {"PYTHONPATH": f"{target}:{':'.join(p for p in sys.path if p)}"}
    saved = run(repo, sys.executable, "-c", SAVE_INSTALLED, env=env)
    assert saved.returncode == 0, saved.stderr
    said = json.loads(saved.stdout)
    expected = (f"mypkg.net is imported from {target}/mypkg/net.py, not from this repository "
                f"(src/mypkg/net.py differs); its code is not pinned")
    assert said["info"][0] == expected
    # Third-party code now, so a default load would refuse it, and the save says that too; each of the save's
    # warnings is also a GitpackWarning, once.
    assert said["warnings"] == said["info"]
    assert said["info"][1:] and "global mypkg.net.Net (not on the allowlist)" in said["info"][1]
    manifest = gitpack.inspect(repo / "net.gitpack")
    assert manifest["unpinned"] == [{"module": "mypkg.net", "file": f"{target}/mypkg/net.py",
                                     "repository": "src/mypkg/net.py"}]
    assert "mypkg.net" not in manifest["modules"]
    assert "Not pinned (imported from outside this repository, and different):" in git(
        repo, "log", "-1", "--format=%B", manifest["commit"])
    (repo / "cli_target.py").write_text("from mypkg.net import Net\n")
    cli = gitpack_cli(repo, "save", "cli_target:Net", "-o", "cli.gitpack", env=env)
    assert cli.returncode == 0, cli.stderr
    assert f"warning: {expected}" in cli.stderr

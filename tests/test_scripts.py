"""Scripts as snapshot modules: loading an object whose class was defined in ``train.py`` (run as ``__main__``)
runs that script's definitions, never its training loop."""

from __future__ import annotations

import ast
import sys

import pytest
from conftest import commit_files, run, run_python

import gitpack
from gitpack.isolation.scripts import is_definition

TRAIN = '''\
"""Train and save in one script, the way quick experiments are written."""
from pathlib import Path

import gitpack
import torch
import torch.nn as nn

HIDDEN = 8
ACTIVATION = torch.tanh


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, HIDDEN)
        self.out = nn.Linear(HIDDEN, 1)
        self.scale = lambda t: t * 3

    def forward(self, x):
        return self.scale(self.out(ACTIVATION(self.lin(x))))


runs = Path("runs.txt")
runs.write_text(runs.read_text() + "ran\\n" if runs.exists() else "ran\\n")  # a side effect of training
torch.manual_seed(0)
model = Probe()
if __name__ == "__main__":
    gitpack.save(model, "probe.gitpack")
    print(model(torch.ones(1, 3)).item())
'''


def test_loading_an_object_whose_class_is_in_a_script_runs_its_definitions_not_its_statements(repo):
    commit_files(repo, {"train.py": TRAIN, ".gitignore": "*.gitpack\nruns.txt\n"})
    trained = run(repo, sys.executable, "train.py")
    assert trained.returncode == 0, trained.stderr
    expected = float(trained.stdout)
    assert (repo / "runs.txt").read_text() == "ran\n"
    manifest = gitpack.inspect(repo / "probe.gitpack")
    assert manifest["object"]["type"] == "train:Probe" and manifest["scripts"] == ["train"]
    loaded = run_python(repo, "import torch, gitpack; m = gitpack.load('probe.gitpack'); print(m(torch.ones(1, 3)).item())")
    assert loaded.returncode == 0, loaded.stderr
    assert float(loaded.stdout) == expected
    assert (repo / "runs.txt").read_text() == "ran\n"  # the training statements did not run again


@pytest.mark.parametrize("statement, runs", [
    ("import os", True),
    ("from torch import nn", True),
    ("def f():\n    pass", True),
    ("@decorate()\ndef f():\n    pass", True),
    ("class C:\n    pass", True),
    ("batch_size = 12", True),
    ("a, b = 1, 2", True),
    ("ACT = F.gelu", True),
    ("'''a docstring'''", True),
    ("model = Net()", False),
    ("m.post = shift", False),
    ("cfg['lr'] = 3", False),
    ("x = [i for i in range(3)]", False),
    ("print('hi')", False),
    ("if __name__ == '__main__':\n    main()", False),
    ("for i in range(3):\n    pass", False),
    ("with open('f') as fh:\n    pass", False),
])
def test_only_statements_that_define_something_run(statement, runs):
    assert is_definition(ast.parse(statement).body[0]) is runs

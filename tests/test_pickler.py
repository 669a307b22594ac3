"""The C pickler's module reduction: empty hook registries left out, restored by torch's own __setstate__.

A real repository, a real save and load; the pickle bytes are read back from the archive to see what
was (and was not) written.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from conftest import commit_files

import gitpack
from gitpack.archive import ArchiveReader
from gitpack.pickling import gate

RECREATED = {"_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
             "_forward_hooks_always_called", "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
             "_load_state_dict_post_hooks", "_non_persistent_buffers_set", "_is_full_backward_hook",
             "_backward_pre_hooks"}

MODEL = '''\
import torch


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) * 2


class Custom(torch.nn.Module):
    """Its own __setstate__: pickled exactly as torch would, registries and all."""

    def __init__(self):
        super().__init__()
        self.scale = 3

    def __setstate__(self, state):
        super().__setstate__(state)
        self.restored = True


def double(module, args):
    return (args[0] * 2,)
'''


def _save(repo: Path, obj, name: str) -> tuple[Path, bytes]:
    path = repo.parent / name
    gitpack.save(obj, path, repo=repo)
    with ArchiveReader(path) as reader:
        return path, reader.read("pickle")


def test_empty_hook_registries_are_left_out_and_come_back_empty(repo, monkeypatch):
    commit_files(repo, {"blockpkg/__init__.py": "", "blockpkg/model.py": MODEL}, "model")
    monkeypatch.syspath_prepend(str(repo))
    from blockpkg.model import Block, Custom

    torch.manual_seed(0)
    block, custom = Block(), Custom()
    path, data = _save(repo, {"block": block, "custom": custom}, "m.gitpack")
    # Block and its Linear leave out the registries Module.__setstate__ recreates; Custom keeps its own.
    built = sum(n for (callee, _, _), n in gate.trace(data).calls.items() if callee.dotted == "collections.OrderedDict")
    kept = sum(type(v) is OrderedDict for m in (block, block.lin) for k, v in vars(m).items() if k not in RECREATED)
    everything = sum(type(v) is OrderedDict for v in vars(custom).values())
    assert built == kept + everything
    assert everything - sum(type(v) is OrderedDict for k, v in vars(custom).items() if k not in RECREATED) >= 8

    loaded = gitpack.load(path, repo=repo)
    for module in (loaded["block"], loaded["block"].lin):
        for name in ("_forward_pre_hooks", "_state_dict_hooks", "_load_state_dict_post_hooks", "_backward_pre_hooks"):
            assert type(getattr(module, name)) is OrderedDict and not getattr(module, name)
        assert module._non_persistent_buffers_set == set() and module._is_full_backward_hook is None
    assert loaded["custom"].restored and loaded["custom"].scale == 3
    x = torch.ones(1, 4)
    with torch.no_grad():
        assert torch.equal(loaded["block"](x), block(x))
        # The recreated registries work: a hook registered after load runs.
        loaded["block"].register_forward_pre_hook(lambda module, args: (args[0] * 0,))
        assert torch.equal(loaded["block"](x), block(torch.zeros(1, 4)))


def test_a_registry_that_is_not_empty_is_kept(repo, monkeypatch):
    commit_files(repo, {"blockpkg/__init__.py": "", "blockpkg/model.py": MODEL}, "model")
    monkeypatch.syspath_prepend(str(repo))
    from blockpkg.model import Block, double

    block = Block()
    block.register_forward_pre_hook(double)
    path, data = _save(repo, block, "hooked.gitpack")
    assert b"_forward_pre_hooks" in data
    loaded = gitpack.load(path, repo=repo, trust=True)
    assert len(loaded._forward_pre_hooks) == 1
    x = torch.ones(1, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), block(x))

"""Constructor arguments captured (or inferred) and the structure summary, readable without unpickling.

The seed model is built for real (sentencepiece + torch) in subprocesses, through
both routes: ``gitpack save package:build -p vocab_size=100`` and ``with
gitpack.capture():`` in a script.  The finer points of capture run in-process
against real modules written into a temporary repository.
About 12 s on a 2-core machine.
"""

from __future__ import annotations

import gc
import importlib
import json
import re
import shutil
import sys
import threading
import uuid
from pathlib import Path

import pytest
from conftest import SEED, git, gitpack_cli, init_repo, run

import gitpack
import gitpack.capturing as CAPTURE_MODULE
import gitpack.capturing.records as CAPTURE_RECORDS

SCRIPT = """
import gitpack
import package                      # the classes exist before capture is on

early = package.build(vocab_size=100)  # built with capture off: its arguments can only be inferred
gitpack.save(early, "early.gitpack", params={"vocab_size": 100, "route": "early"})

with gitpack.capture():
    model = package.build(vocab_size=100)
gitpack.save(model, "script.gitpack", params={"vocab_size": 100, "route": "script"})
print("PIECES", model.tokenizer.tokenizer.get_piece_size())
"""


def seed_tree(pieces: int) -> dict:
    return {"objects": {
        "$": {"class": "package:MyCompoundClass", "origin": "captured", "defaults": [],
              "args": {"tokenizer": {"$ref": "$.tokenizer"}, "layer": {"$ref": "$.layer"}, "decoder": {"$ref": "$.decoder"}}},
        "$.tokenizer": {"class": "package:MyTokenizer", "origin": "captured", "defaults": [], "args": {"vocab_size": 100}},
        "$.layer": {"class": "package:MyLayer", "origin": "captured", "defaults": ["n_embed", "n_hidden"],
                    "args": {"n_symbols": pieces, "n_classes": 3, "n_embed": 64, "n_hidden": 256}},
        "$.decoder": {"class": "package:MyReader", "origin": "captured", "defaults": [], "args": {"d": ["good", "bad", "ugly"]}},
    }}


@pytest.fixture(scope="module")
def seed_saves(tmp_path_factory):
    """The seed project saved three ways: CLI with capture, script with capture, script without."""
    path = init_repo(tmp_path_factory.mktemp("capture") / "seed")
    for name in ("package.py", "corpus.txt"):
        shutil.copy(SEED / name, path / name)
    (path / ".gitignore").write_text("*.gitpack\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "seed model")
    env = {"GITPACK_CACHE": str(tmp_path_factory.mktemp("capture-cache"))}
    cli = run(path, sys.executable, "-m", "gitpack", "save", "package:build", "-p", "vocab_size=100", "-o", "cli.gitpack", env=env)
    assert cli.returncode == 0, cli.stderr
    (path / "script.py").write_text(SCRIPT)
    script = run(path, sys.executable, "script.py", env=env)
    assert script.returncode == 0, script.stderr
    pieces = int(re.search(r"PIECES (\d+)", script.stdout).group(1))
    return {"repo": path, "pieces": pieces, "env": env}


def test_seed_tree_is_exact_when_saved_by_the_cli(seed_saves):
    manifest = gitpack.inspect(seed_saves["repo"] / "cli.gitpack")
    assert manifest["capture"] == seed_tree(seed_saves["pieces"])
    assert seed_saves["pieces"] == 100  # sentencepiece's hard vocab limit: one symbol per piece
    assert manifest["params"] == {"vocab_size": 100}


def test_seed_tree_is_exact_when_captured_by_the_context_manager(seed_saves):
    manifest = gitpack.inspect(seed_saves["repo"] / "script.gitpack")
    assert manifest["capture"] == seed_tree(seed_saves["pieces"])


def test_objects_built_before_capture_get_inferred_arguments_marked_inferred(seed_saves):
    objects = gitpack.inspect(seed_saves["repo"] / "early.gitpack")["capture"]["objects"]
    assert objects == {
        "$": {"class": "package:MyCompoundClass", "origin": "inferred", "defaults": [],
              "args": {"tokenizer": {"$ref": "$.tokenizer"}, "layer": {"$ref": "$.layer"}, "decoder": {"$ref": "$.decoder"}}},
        "$.tokenizer": {"class": "package:MyTokenizer", "origin": "inferred", "defaults": [], "args": {"vocab_size": 100}},
        # MyLayer keeps none of its arguments as attributes: all four are unknown, none invented.
        "$.layer": {"class": "package:MyLayer", "origin": "inferred", "defaults": [], "args": {},
                    "unknown": ["n_symbols", "n_classes", "n_embed", "n_hidden"]},
        "$.decoder": {"class": "package:MyReader", "origin": "inferred", "defaults": [], "args": {"d": ["good", "bad", "ugly"]}},
    }


def test_structure_summary_counts_every_module_and_tensor(seed_saves):
    structure = gitpack.inspect(seed_saves["repo"] / "cli.gitpack")["structure"]
    by_path = {m["path"]: m for m in structure["modules"]}
    assert list(by_path) == ["$", "$.layer", "$.layer.embedding", "$.layer.rnn", "$.layer.proj"]
    embedding, gru, linear = 100 * 64, 3 * 256 * 64 + 3 * 256 * 256 + 2 * 3 * 256, 256 * 3 + 3
    total = embedding + gru + linear
    assert by_path["$"]["class"] == "package:MyCompoundClass"
    assert by_path["$.layer.rnn"]["class"] == "torch.nn.modules.rnn:GRU"
    assert by_path["$.layer.rnn"]["extra_repr"] == "64, 256, batch_first=True"
    assert by_path["$.layer.embedding"]["parameters"] == {"total": embedding, "trainable": embedding, "tensors": 1}
    assert by_path["$.layer.rnn"]["parameters"]["total"] == gru
    assert by_path["$"]["parameters"] == {"total": total, "trainable": total, "tensors": 7}
    assert by_path["$"]["buffers"] == {"total": 0, "tensors": 0}
    assert by_path["$"]["bytes"] == structure["total"]["bytes"] == 4 * total
    assert by_path["$.layer.proj"]["tensors"] == {
        "weight": {"kind": "parameter", "shape": [3, 256], "dtype": "float32", "device": "cpu", "requires_grad": True},
        "bias": {"kind": "parameter", "shape": [3], "dtype": "float32", "device": "cpu", "requires_grad": True},
    }


def test_inspect_shows_arguments_defaults_references_and_structure(seed_saves):
    repo = seed_saves["repo"]
    shown = gitpack_cli(repo, "inspect", "cli.gitpack", env=seed_saves["env"])
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    for line in ("vocab_size = 100", "n_embed = 64  (default)", "n_hidden = 256  (default)", "n_symbols = 100",
                 "tokenizer -> $.tokenizer", 'd = ["good", "bad", "ugly"]', "GRU(64, 256, batch_first=True)",
                 "weight  parameter 100x64 float32 on cpu", "254,467 params", "torch "):
        assert line in out, (line, out)
    assert "inferred" not in out
    early = gitpack_cli(repo, "inspect", "early.gitpack", env=seed_saves["env"])
    assert "(inferred from attributes; capture was off)" in early.stdout
    assert "n_symbols = ? (no attribute of that name)" in early.stdout


def test_plain_git_log_shows_the_parameters_of_each_save(seed_saves):
    out = git(seed_saves["repo"], "log", "gitpack")
    saves = [c for c in re.split(r"^commit ", out, flags=re.M) if "gitpack save: " in c]
    by_archive = {re.search(r"gitpack save: (\S+)", c).group(1): c for c in saves}
    assert len(saves) == 3
    assert set(by_archive) == {"cli.gitpack", "early.gitpack", "script.gitpack"}
    for body in by_archive.values():
        assert "    Parameters:\n        vocab_size = 100\n" in body
        assert "Gitpack-Params: " in body
    assert '        route = "script"' in by_archive["script.gitpack"]
    assert '        route = "early"' in by_archive["early.gitpack"]
    # The constructor arguments too, one readable line per object, and as JSON for scripts.
    assert "$.layer = package:MyLayer(n_symbols=100, n_classes=3, n_embed=64 (default), n_hidden=256 (default))" \
        in by_archive["cli.gitpack"]
    assert "$.tokenizer = package:MyTokenizer(vocab_size=100) (inferred)" in by_archive["early.gitpack"]
    trailer = re.search(r"^    Gitpack-Capture: (.*)$", by_archive["script.gitpack"], flags=re.M).group(1)
    assert json.loads(trailer) == seed_tree(seed_saves["pieces"])


# ------------------------------------------------------------------ in-process capture against real modules
MODULE = """
import math


class Config:
    def __init__(self, lr, momentum=0.9):
        self.lr = lr
        self.momentum = momentum


class Base:
    def __init__(self, a, b=2):
        self.a = a
        self.b = b


class Child(Base):
    def __init__(self, x, y=5, *rest, z=7, **extra):
        super().__init__(a=x)
        self.rest = rest
        self.extra = extra


class Slotted:
    __slots__ = ("value",)

    def __init__(self, value=1):
        self.value = value


class Holder:
    def __init__(self, items, child):
        self.items = items
        self.child = child


class Model:
    def __init__(self, cfg, weights, sizes, act=None, eps=float("nan")):
        self.lr = cfg.lr          # the config object itself is not kept
        self.weights = weights
        self.sizes = sizes
        self.act = act
        sizes.append(99)          # mutated after the call: the record keeps what was passed


MODULE_LEVEL = Config(0.4)
"""


@pytest.fixture
def repo_module(repo):
    """A module written into the temp repository (committed) and importable under a unique name."""
    name = f"capmod_{uuid.uuid4().hex[:8]}"
    (repo / f"{name}.py").write_text(MODULE)
    (repo / ".gitignore").write_text("*.gitpack\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "module")
    sys.path.insert(0, str(repo))
    yield name
    sys.path.remove(str(repo))
    sys.modules.pop(name, None)


def _objects(repo: Path, obj, archive: str = "x.gitpack") -> dict:
    gitpack.save(obj, repo / archive, repo=repo)
    return gitpack.inspect(repo / archive)["capture"]["objects"]


def test_outermost_init_only_and_explicit_arguments_are_never_mistaken_for_defaults(repo, repo_module):
    m = importlib.import_module(repo_module)
    with gitpack.capture():
        holder = m.Holder(items=[m.Child(1, 5, 9, z=7, w=3), m.Child(2)], child=m.Slotted())
    objects = _objects(repo, holder)

    def cls(name: str) -> str:
        return f"{repo_module}:{name}"

    assert objects == {
        "$": {"class": cls("Holder"), "origin": "captured", "defaults": [],
              "args": {"items": [{"$ref": "$.items[0]"}, {"$ref": "$.items[1]"}], "child": {"$ref": "$.child"}}},
        # Child's own call, not Base's (super().__init__(a=x) is not recorded); y=5 and z=7 were passed explicitly.
        "$.items[0]": {"class": cls("Child"), "origin": "captured", "defaults": [],
                       "args": {"x": 1, "y": 5, "*rest": [9], "z": 7, "**extra": {"w": 3}}},
        "$.items[1]": {"class": cls("Child"), "origin": "captured", "defaults": ["y", "z"], "args": {"x": 2, "y": 5, "z": 7}},
        "$.child": {"class": cls("Slotted"), "origin": "captured", "defaults": ["value"], "args": {"value": 1}},
    }


def test_arguments_passed_through_kwargs_are_recorded_as_given(repo, repo_module):
    """``Base(**kwargs)``, ``Base(*args, **kwargs)``: what the caller unpacked was passed explicitly, even when it
    equals the default (a small int equal to the default is the very same object: identity proves nothing)."""
    m = importlib.import_module(repo_module)

    def build(**kwargs):
        return m.Base(**kwargs)

    def build_args(*args, **kwargs):
        return m.Base(*args, **kwargs)

    def build_mixed(first, *args):
        return m.Base(first, *args)

    with gitpack.capture():
        made = [build(a=1, b=2), build(a=1), build_args(1, b=2), build_args(1, 2), build_args(1), build_mixed(1, 2)]
    objects = _objects(repo, made)
    defaults = [objects[f"$[{i}]"]["defaults"] for i in range(len(made))]
    assert defaults == [[], ["b"], [], [], ["b"], []]
    assert all(objects[f"$[{i}]"]["args"] == {"a": 1, "b": 2} for i in range(len(made)))


def test_values_are_described_as_they_were_at_call_time(repo, repo_module):
    import torch

    m = importlib.import_module(repo_module)
    with gitpack.capture():
        model = m.Model(m.Config(0.1), torch.zeros(2, 3), [1, 2], act=torch.nn.ReLU)
    assert model.sizes == [1, 2, 99]
    objects = _objects(repo, model)
    assert objects == {
        "$": {"class": f"{repo_module}:Model", "origin": "captured", "defaults": ["eps"], "args": {
            "cfg": {"$ref": "$(cfg)"},
            "weights": {"type": "torch:Tensor", "shape": [2, 3], "dtype": "float32", "device": "cpu",
                        "requires_grad": False, "repr": "[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]"},
            "sizes": [1, 2],
            "act": {"type": "class", "name": "torch.nn.modules.activation:ReLU"},
            "eps": {"type": "float", "repr": "nan"},
        }},
        # The config was only read, never kept: it still gets its own entry, named after the argument.
        "$(cfg)": {"class": f"{repo_module}:Config", "origin": "captured", "defaults": ["momentum"],
                   "args": {"lr": 0.1, "momentum": 0.9}},
    }


def test_objects_built_in_threads_are_captured(repo, repo_module):
    m = importlib.import_module(repo_module)
    built = []
    with gitpack.capture():
        worker = threading.Thread(target=lambda: built.append(m.Config(0.5)))
        worker.start()
        worker.join()
    assert _objects(repo, built[0])["$"] == {"class": f"{repo_module}:Config", "origin": "captured",
                                             "defaults": ["momentum"], "args": {"lr": 0.5, "momentum": 0.9}}


def test_capture_ends_with_the_block_and_a_plain_call_keeps_it_on(repo, repo_module):
    m = importlib.import_module(repo_module)
    with gitpack.capture():
        pass
    after = m.Config(0.3, momentum=0.8)
    assert _objects(repo, after)["$"] == {"class": f"{repo_module}:Config", "origin": "inferred", "defaults": [],
                                          "args": {"lr": 0.3, "momentum": 0.8}}
    handle = gitpack.capture()  # a plain call, as at program start
    try:
        fresh = importlib.reload(m)  # a module imported after capture started: its module-level object too
        late = fresh.Config(0.2)
        assert CAPTURE_MODULE.is_capturing()
        assert _objects(repo, late, "late.gitpack")["$"]["origin"] == "captured"
        assert _objects(repo, fresh.MODULE_LEVEL, "level.gitpack")["$"]["args"] == {"lr": 0.4, "momentum": 0.9}
    finally:
        handle.stop()
    assert not CAPTURE_MODULE.is_capturing()
    assert sys.getprofile() is None


def test_records_are_dropped_when_their_objects_die(repo_module):
    m = importlib.import_module(repo_module)
    with gitpack.capture():
        config = m.Config(0.7)
    key = id(config)
    assert CAPTURE_RECORDS.record_for(config) is not None
    del config
    gc.collect()
    assert key not in CAPTURE_RECORDS.records


def test_cli_save_captures_objects_built_while_importing_the_target(repo, repo_module):
    proc = gitpack_cli(repo, "save", f"{repo_module}:MODULE_LEVEL", "-o", "level.gitpack")
    assert proc.returncode == 0, proc.stderr
    objects = gitpack.inspect(repo / "level.gitpack")["capture"]["objects"]
    assert objects == {"$": {"class": f"{repo_module}:Config", "origin": "captured", "defaults": ["momentum"],
                             "args": {"lr": 0.4, "momentum": 0.9}}}
    listed = gitpack_cli(repo, "log")
    assert listed.returncode == 0, listed.stderr
    assert "level.gitpack  lr=0.4 momentum=0.9" in listed.stdout  # no -p given: the captured arguments stand in
    as_json = json.loads(gitpack_cli(repo, "log", "--json").stdout)
    assert as_json[0]["capture"] == {"objects": objects}


def test_structure_counts_shared_modules_and_tied_weights_once_like_torch():
    """The one-pass summary agrees with ``module.parameters()`` / ``buffers()`` on every module, sharing included."""
    import torch

    from gitpack.structure import is_module, object_paths, summarize

    shared = torch.nn.Linear(3, 3)
    encoder, decoder = torch.nn.Linear(5, 5), torch.nn.Linear(5, 5)
    decoder.weight = encoder.weight  # tied
    root = torch.nn.Module()
    root.a = torch.nn.Sequential(shared, torch.nn.BatchNorm1d(3), encoder)
    root.b = torch.nn.Sequential(shared, decoder)  # the same Linear at two paths
    root.register_buffer("steps", torch.zeros(2, dtype=torch.int64))
    root.frozen = torch.nn.Parameter(torch.ones(4), requires_grad=False)
    paths = object_paths(root, is_module)
    structure = summarize(paths)
    by_path = {entry["path"]: entry for entry in structure["modules"]}
    for path, module in paths.values():
        params, buffers = list(module.parameters()), list(module.buffers())
        entry = by_path[path]
        assert entry["parameters"] == {"total": sum(p.numel() for p in params), "tensors": len(params),
                                       "trainable": sum(p.numel() for p in params if p.requires_grad)}, path
        assert entry["buffers"] == {"total": sum(b.numel() for b in buffers), "tensors": len(buffers)}, path
        assert entry["bytes"] == sum(t.numel() * t.element_size() for t in params + buffers), path
        assert set(entry["tensors"]) == {n for n, _ in module.named_parameters(recurse=False)} | \
            {n for n, _ in module.named_buffers(recurse=False)}, path
    assert structure["total"] == {k: by_path["$"][k] for k in ("parameters", "buffers", "bytes")}
    # shared Linear 2, BatchNorm 2, encoder 2, decoder 1 (its weight is tied), frozen 1
    assert by_path["$"]["parameters"]["tensors"] == 8


def test_a_long_parameter_list_is_summarised_not_listed_line_by_line():
    import torch

    from gitpack.structure import is_module, object_paths, summarize

    params = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(2)) for _ in range(500))
    entry = summarize(object_paths(params, is_module))["modules"][0]
    assert entry["extra_repr"] == "500 parameters" and len(entry["tensors"]) == 500
    short = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    assert summarize(object_paths(short, is_module))["modules"][0]["extra_repr"] == short.extra_repr()

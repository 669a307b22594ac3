"""Save and load a model with its code pinned to a git snapshot.

Every "other program" is a real subprocess, every "other checkout" a real clone.
"""

from __future__ import annotations

import json
import shutil
import site
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import (
    commit_files,
    edit_forward_to_break,
    git,
    gitpack_cli,
    init_repo,
    run,
    run_python,
    user_git_state,
    write_files,
)

APPLY = """
import json, sys, gitpack
from gitpack.api import apply
obj = gitpack.load(sys.argv[1])
print("RESULT " + json.dumps(apply(obj, "lorem ipsum")))
"""


def _result(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0][len("RESULT "):])


def _save_seed(seed_repo: Path) -> dict:
    """Run the seed's save.py (the untracked file) and return what the fresh model printed."""
    proc = run(seed_repo, sys.executable, "save.py", "model.gitpack")
    assert proc.returncode == 0, proc.stderr
    printed = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert printed, proc.stdout
    return eval(printed[-1])  # the seed prints a dict repr, as in the blog post


def test_seed_model_survives_edit_rename_and_clone(seed_repo, tmp_path):
    expected = _save_seed(seed_repo)
    assert set(expected) == {"decision", "prediction"} and len(expected["prediction"]) == 3

    # The snapshot holds the uncommitted edit and the untracked save.py, but not the ignored archive.
    assert "UNCOMMITTED = True" in git(seed_repo, "show", "gitpack:package.py")
    assert "gitpack.save" in git(seed_repo, "show", "gitpack:save.py")
    assert "model.gitpack" not in git(seed_repo, "ls-tree", "-r", "--name-only", "gitpack")

    # Sanity: the same load before any edit gives the printed output.
    assert _result(run_python(seed_repo, APPLY, "model.gitpack")) == expected

    # The blog's edit: forward prints and calls a missing attribute. Old code still runs, silently.
    edit_forward_to_break(seed_repo / "package.py")
    proc = run_python(seed_repo, APPLY, "model.gitpack")
    assert _result(proc) == expected
    assert "testing testing 123" not in proc.stdout + proc.stderr

    # Renaming the module breaks pickle and dill; gitpack never imports the checkout's module.
    (seed_repo / "package.py").rename(seed_repo / "renamed.py")
    proc = run_python(seed_repo, APPLY, "model.gitpack")
    assert _result(proc) == expected

    # Another checkout: a real clone, with the archive copied over.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(seed_repo), str(clone))
    git(clone, "fetch", "-q", "origin", "gitpack:gitpack")
    shutil.copy(seed_repo / "model.gitpack", clone / "model.gitpack")
    assert not (clone / "save.py").exists()  # the clone lacks the untracked file the model was built from
    assert _result(run_python(clone, APPLY, "model.gitpack")) == expected


def test_cli_load_summary_and_apply(seed_repo):
    expected = _save_seed(seed_repo)
    edit_forward_to_break(seed_repo / "package.py")
    proc = gitpack_cli(seed_repo, "load", "model.gitpack", "--apply", "lorem ipsum")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected
    assert "testing testing 123" not in proc.stdout

    proc = gitpack_cli(seed_repo, "load", "model.gitpack")
    assert proc.returncode == 0, proc.stderr
    commit = git(seed_repo, "rev-parse", "gitpack")
    assert "package:MyCompoundClass" in proc.stdout
    assert commit in proc.stdout
    assert '"vocab_size": 100' in proc.stdout
    # The class comes from the materialised snapshot, not from the checkout.
    assert str(seed_repo / "package.py") not in proc.stdout and "package.py" in proc.stdout


TORCH_MODULE = """\
import torch


class Scorer(torch.nn.Module):
    def __init__(self, n=3):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(n, 2)
        self.drop = torch.nn.Dropout(0.5)  # --apply runs in eval mode: no randomness in its output

    def forward(self, x):
        return self.drop(self.linear(x)).softmax(-1)
"""


def test_apply_runs_any_torch_module_on_json(repo):
    """A module without preprocess/postprocess: JSON in, a tensor, forward on a batch of one, JSON out."""
    commit_files(repo, {"scorer.py": TORCH_MODULE, ".gitignore": "*.gitpack\n"})
    assert gitpack_cli(repo, "save", "scorer:Scorer", "-o", "s.gitpack").returncode == 0
    code = """
import json, torch, gitpack, scorer
from gitpack.api import apply
from gitpack.errors import GitpackError

m = scorer.Scorer().eval()
print('EXPECTED ' + json.dumps(m(torch.tensor([[0.5, -1.0, 2.0]]))[0].tolist()))
loaded = gitpack.load('s.gitpack')
for bad in ('lorem ipsum', '[[1, 2], [3]]'):
    try:
        apply(loaded, bad)
    except GitpackError as exc:
        print('REFUSED ' + str(exc))
try:
    apply(object(), '1')
except GitpackError as exc:
    print('REFUSED ' + str(exc))
"""
    proc = run_python(repo, code)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split(" ", 1) for line in proc.stdout.splitlines()]
    expected = json.loads(next(text for kind, text in lines if kind == "EXPECTED"))
    refused = [text for kind, text in lines if kind == "REFUSED"]
    assert "takes JSON" in refused[0] and "not a tensor" in refused[1] and "is not a torch module" in refused[2]
    proc = gitpack_cli(repo, "load", "s.gitpack", "--apply", "[0.5, -1.0, 2]")  # an int among floats: the dtype
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == pytest.approx(expected)


def test_model_built_under_main_loads_from_another_program(seed_repo, tmp_path):
    proc = run(seed_repo, sys.executable, "package.py", "main.gitpack")
    assert proc.returncode == 0, proc.stderr
    expected = eval([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    manifest = json.loads(gitpack_cli(seed_repo, "inspect", "main.gitpack", "--json").stdout)
    assert manifest["object"]["type"] == "package:MyCompoundClass"  # __main__ mapped to the file's module
    # Another program, in another directory inside the repo, with no `package` importable from it.
    other = seed_repo / "elsewhere"
    other.mkdir()
    shutil.copy(seed_repo / "main.gitpack", other / "m.gitpack")
    assert _result(run_python(other, APPLY, "m.gitpack")) == expected


MODEL_V = textwrap.dedent(
    """
    VERSION = {version!r}

    class Model:
        def __init__(self, scale):
            self.scale = scale

        def run(self, x):
            return {{"version": VERSION, "value": x * self.scale + {offset}}}

    def build(scale=2):
        return Model(scale)
    """
)


def _commit_version(repo: Path, version: str, offset: int) -> None:
    (repo / "package.py").write_text(MODEL_V.format(version=version, offset=offset))
    git(repo, "add", "package.py")
    git(repo, "commit", "-q", "-m", f"version {version}")


def test_two_archives_from_different_commits_run_side_by_side(repo):
    _commit_version(repo, "one", 1)
    assert gitpack_cli(repo, "save", "package:build", "-o", "one.gitpack", "-p", "scale=3").returncode == 0
    _commit_version(repo, "two", 100)
    assert gitpack_cli(repo, "save", "package:build", "-o", "two.gitpack", "-p", "scale=5").returncode == 0
    (repo / "package.py").write_text(MODEL_V.format(version="checkout", offset=-1))

    code = textwrap.dedent(
        """
        import json, sys
        import package                      # the current checkout's module
        before = sys.modules["package"]
        import gitpack
        one = gitpack.load("one.gitpack")
        two = gitpack.load("two.gitpack")
        out = {
            "one": one.run(10), "two": two.run(10), "checkout": package.Model(1).run(10),
            "untouched": sys.modules["package"] is before and package.VERSION == "checkout",
            "distinct": type(one) is not type(two),
            "one_again": gitpack.load("one.gitpack").run(1),
        }
        print("RESULT " + json.dumps(out))
        """
    )
    out = _result(run_python(repo, code))
    assert out["one"] == {"version": "one", "value": 31}
    assert out["two"] == {"version": "two", "value": 150}
    assert out["checkout"] == {"version": "checkout", "value": 9}
    assert out["untouched"] is True
    assert out["distinct"] is True
    assert out["one_again"] == {"version": "one", "value": 4}


def test_save_leaves_user_git_state_exactly_as_it_was(repo):
    (repo / "a.py").write_text("A = 1\n")
    (repo / "b.py").write_text("B = 1\n")
    (repo / ".gitignore").write_text("ignored.txt\n*.gitpack\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    (repo / "a.py").write_text("A = 2\n")
    git(repo, "stash")  # a stash entry that must survive
    (repo / "a.py").write_text("A = 3  # staged\n")
    git(repo, "add", "a.py")
    (repo / "a.py").write_text("A = 4  # staged then edited\n")
    (repo / "b.py").unlink()  # an unstaged deletion
    (repo / "new.py").write_text("NEW = 1\n")  # untracked
    (repo / "ignored.txt").write_text("secret\n")
    git(repo, "worktree", "add", "-q", "-b", "side", str(repo.parent / "side-wt"))
    (repo / "model.py").write_text("class Thing:\n    def __init__(self):\n        self.x = 1\n\ndef build():\n    return Thing()\n")

    before = user_git_state(repo)
    proc = gitpack_cli(repo, "save", "model:build", "-o", "thing.gitpack")
    assert proc.returncode == 0, proc.stderr
    after = user_git_state(repo)
    before["files"]["thing.gitpack"] = after["files"].get("thing.gitpack")  # the one new file is the archive
    assert after == before

    snapshot = git(repo, "ls-tree", "-r", "--name-only", "gitpack").split()
    assert git(repo, "show", "gitpack:a.py") == "A = 4  # staged then edited"
    assert "b.py" not in snapshot and "new.py" in snapshot and "model.py" in snapshot
    assert "ignored.txt" not in snapshot and "thing.gitpack" not in snapshot
    # The snapshot commit links to the user's HEAD and is readable in plain git log.
    head = git(repo, "rev-parse", "HEAD")
    assert git(repo, "rev-parse", "gitpack^2") == head
    assert "gitpack save: thing.gitpack (model:Thing)" in git(repo, "log", "-1", "gitpack")


def test_each_save_is_its_own_commit_and_archives_and_big_files_stay_out(repo):
    (repo / "model.py").write_text("def build(n=1):\n    return {'n': n}\n")
    (repo / "big.bin").write_bytes(b"x" * 5000)
    proc = gitpack_cli(repo, "save", "model:build", "-o", "first.gitpack", "--size-cap", "4000")
    assert proc.returncode == 0, proc.stderr
    assert "big.bin" in proc.stderr and "size cap" in proc.stderr
    proc = gitpack_cli(repo, "save", "model:build", "-o", "second.gitpack", "-p", "n=2", "--size-cap", "4000")
    assert proc.returncode == 0, proc.stderr
    # The first archive sits untracked in the tree: it is left out, and the user is told.
    assert "first.gitpack" in proc.stderr and "gitpack archive" in proc.stderr
    subjects = git(repo, "log", "--first-parent", "--format=%s", "gitpack").splitlines()
    assert subjects == [
        "gitpack save: second.gitpack (builtins:dict)",
        "gitpack save: first.gitpack (builtins:dict)",
        "gitpack: start of the snapshot branch",
    ]
    files = git(repo, "ls-tree", "-r", "--name-only", "gitpack").split()
    assert files == ["model.py"]
    log = json.loads(gitpack_cli(repo, "log", "--json").stdout)
    assert [e["archive"] for e in log] == ["second.gitpack", "first.gitpack"]
    assert log[0]["params"] == {"n": 2}


PKG_FILES = {
    "mypkg/__init__.py": "from mypkg.core import Model\n",
    "mypkg/core.py": textwrap.dedent(
        """
        import json, os
        from mypkg.sub.helpers import scale          # absolute intra-package import
        from .sub import helpers as rel_helpers      # relative import

        class Model:
            def __init__(self):
                self.factor = 2

            def run(self, x):
                from mypkg.lazy import BONUS             # lazy import, resolved at call time
                with open(os.path.join(os.path.dirname(__file__), "assets", "table.json")) as f:
                    table = json.load(f)                 # a __file__-relative data file
                return scale(x, self.factor) + BONUS + table["offset"] + rel_helpers.EXTRA
        """
    ),
    "mypkg/sub/__init__.py": "",
    "mypkg/sub/helpers.py": "EXTRA = 1000\n\ndef scale(x, f):\n    return x * f\n",
    "mypkg/lazy.py": "BONUS = 10\n",
    "mypkg/assets/table.json": '{"offset": 100}\n',
}


def test_package_imports_lazy_imports_and_data_files_come_from_the_snapshot(repo):
    for rel, text in PKG_FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "pkg")
    proc = gitpack_cli(repo, "save", "mypkg:Model", "-o", "m.gitpack")
    assert proc.returncode == 0, proc.stderr

    # Change all of them in the working tree.
    (repo / "mypkg/sub/helpers.py").write_text("EXTRA = -1\n\ndef scale(x, f):\n    raise RuntimeError('new code ran')\n")
    (repo / "mypkg/lazy.py").write_text("BONUS = -10\n")
    (repo / "mypkg/assets/table.json").write_text('{"offset": -100}\n')

    code = textwrap.dedent(
        """
        import inspect, json, gitpack
        m = gitpack.load("m.gitpack")
        import mypkg.lazy                                 # the checkout's own copy, side by side
        src = inspect.getsource(type(m).run)
        print("RESULT " + json.dumps({"value": m.run(1), "checkout_bonus": mypkg.lazy.BONUS,
                                      "source_ok": "from mypkg.lazy import BONUS" in src}))
        """
    )
    out = _result(run_python(repo, code))
    assert out == {"value": 2 + 10 + 100 + 1000, "checkout_bonus": -10, "source_ok": True}


def _one_line_error(proc, *needles):
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("gitpack: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_input_gives_one_line_errors_and_loses_nothing(repo, tmp_path):
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    (outside / "m.py").write_text("X = 1\n")
    env = {"GIT_CEILING_DIRECTORIES": str(tmp_path)}
    _one_line_error(gitpack_cli(outside, "save", "m:X", "-o", "x.gitpack", env=env), "not inside a git")
    assert not (outside / "x.gitpack").exists()

    (repo / "model.py").write_text(
        "class Holder:\n    def __init__(self):\n        self.numbers = (i for i in range(3))  # generators cannot be pickled\n\n"
        "def good():\n    return {'a': 1}\n"
    )
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "m")
    assert gitpack_cli(repo, "save", "model:good", "-o", "good.gitpack").returncode == 0
    tip = git(repo, "rev-parse", "gitpack")
    good_bytes = (repo / "good.gitpack").read_bytes()

    # An unpicklable object: no archive, the old one untouched, no moved ref, no temp file.
    _one_line_error(gitpack_cli(repo, "save", "model:Holder", "-o", "good.gitpack"), "cannot pickle")
    assert (repo / "good.gitpack").read_bytes() == good_bytes
    assert git(repo, "rev-parse", "gitpack") == tip
    assert sorted(p.name for p in repo.iterdir() if "gitpack" in p.name) == ["good.gitpack"]

    # Bad TARGETs.
    _one_line_error(gitpack_cli(repo, "save", "model", "-o", "x.gitpack"), "module:attr")
    _one_line_error(gitpack_cli(repo, "save", "nosuchmodule:x", "-o", "x.gitpack"), "nosuchmodule")
    _one_line_error(gitpack_cli(repo, "save", "model:nothing", "-o", "x.gitpack"), "nothing")
    _one_line_error(gitpack_cli(repo, "save", "model:good", "-o", "x.gitpack", "-p", "novalue"), "key=value")
    assert not (repo / "x.gitpack").exists()
    assert git(repo, "rev-parse", "gitpack") == tip

    # Missing and truncated archives.
    _one_line_error(gitpack_cli(repo, "load", "missing.gitpack"), "no such archive")
    (repo / "trunc.gitpack").write_bytes(good_bytes[: len(good_bytes) // 2])
    _one_line_error(gitpack_cli(repo, "load", "trunc.gitpack"), "corrupt or truncated")
    (repo / "notes.txt").write_text("hello")
    _one_line_error(gitpack_cli(repo, "inspect", "notes.txt"), "not a gitpack archive")

    # An archive whose commit is not in this repository: the error names it and how to fetch it.
    other = init_repo(tmp_path / "other")
    shutil.copy(repo / "good.gitpack", other / "good.gitpack")
    err = _one_line_error(gitpack_cli(other, "load", "good.gitpack"), tip, "fetch")
    assert "gitpack pull" in err

    # A bad flag: one line, exit status 2.
    proc = gitpack_cli(repo, "load", "good.gitpack", "--no-such-flag")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no-such-flag" in proc.stderr


def test_interactive_session_code_is_pickled_by_value_and_needs_trust(repo):
    (repo / "README").write_text("x\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "x")
    saved = run_python(repo, textwrap.dedent(
        """
        import gitpack
        class Counter:                      # defined in `python -c`: no file to pin it to
            def __init__(self):
                self.n = 41
            def bump(self):
                return self.n + 1
        gitpack.save(Counter(), "c.gitpack")
        """
    ))
    assert saved.returncode == 0, saved.stderr
    manifest = json.loads(gitpack_cli(repo, "inspect", "c.gitpack", "--json").stdout)
    assert "Counter.bump" in manifest["by_value_code"]
    _one_line_error(gitpack_cli(repo, "load", "c.gitpack"), "by-value code", "--trust")
    out = _result(run_python(repo, "import gitpack, json\nprint('RESULT ' + json.dumps(gitpack.load('c.gitpack', trust=True).bump()))"))
    assert out == 42


def test_everyday_python_parts_load_under_the_default_policy(repo):
    """Dataclasses, enums, nested classes and functools.partial of repo functions (a scheduler, an activation)."""
    (repo / "parts.py").write_text(textwrap.dedent(
        """
        import dataclasses, enum, functools

        class Color(enum.Enum):
            RED = 1
            BLUE = 2

        @dataclasses.dataclass
        class Cfg:
            lr: float = 0.1
            color: Color = Color.RED

        class Outer:
            class Inner:
                def __init__(self):
                    self.v = 5

        def scale(x, k):
            return x * k

        def build():
            return {"cfg": Cfg(0.5, Color.BLUE), "inner": Outer.Inner(), "f": functools.partial(scale, k=3)}
        """
    ))
    assert gitpack_cli(repo, "save", "parts:build", "-o", "p.gitpack").returncode == 0
    (repo / "parts.py").write_text("raise RuntimeError('the checkout is never imported')\n")
    out = _result(run_python(repo, textwrap.dedent(
        """
        import json, gitpack
        o = gitpack.load("p.gitpack")
        print("RESULT " + json.dumps([o["cfg"].lr, o["cfg"].color.name, o["inner"].v, o["f"](2)]))
        """
    )))
    assert out == [0.5, "BLUE", 5, 6]


def test_stock_torch_layers_load_under_the_default_policy(repo):
    """A TransformerEncoderLayer keeps F.relu as an attribute: tensor-math functions are allowed, nothing else there."""
    (repo / "net.py").write_text(textwrap.dedent(
        """
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
                self.enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
                self.gelu_layer = torch.nn.TransformerEncoderLayer(16, 2, 32, activation="gelu", batch_first=True)
                self.head = torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.GELU(), torch.nn.Linear(16, 3))

            def forward(self, x):
                return self.head(self.gelu_layer(self.enc(x)))

        def build():
            torch.manual_seed(0)
            return Net().eval()
        """
    ))
    assert gitpack_cli(repo, "save", "net:build", "-o", "n.gitpack").returncode == 0
    code = textwrap.dedent(
        """
        import json, torch, gitpack, net
        x = torch.randn(1, 5, 16)
        with torch.no_grad():
            ok = torch.equal(gitpack.load("n.gitpack")(x), net.build()(x))
        print("RESULT " + json.dumps(ok))
        """
    )
    assert _result(run_python(repo, code)) is True

    from gitpack.errors import PolicyError
    from gitpack.pickling.policy import Policy

    policy = Policy()
    assert policy.find_class("torch.nn.functional", "relu") is __import__("torch").nn.functional.relu
    for module, name in [("torch.nn.functional", "torch"), ("torch.nn.functional", "boolean_dispatch"),
                         ("torch.nn.functional", "_canonical_mask"), ("torch.nn.functional", "os.system")]:
        with pytest.raises(PolicyError):
            policy.find_class(module, name)


MODEL_AND_HELPER = {
    "mypkg/__init__.py": "",
    "mypkg/util.py": "def helper(x):\n    return x + 12\n",
    "mypkg/model.py": "from mypkg.util import helper\n\nclass Model:\n    def forward(self, x):\n        return helper(x)\n",
}

# An editable install that finds `mypkg` through a meta-path finder, with no sys.path entry for src/
# (what setuptools' strict and hatch's editable installs do).
FINDER = """
import importlib.machinery, sys
class _Editable:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "mypkg" or name.startswith("mypkg."):
            return importlib.machinery.PathFinder.find_spec(name, path or [{src!r}])
sys.meta_path.insert(0, _Editable)
"""


def test_save_a_file_inside_a_package_by_its_path(repo):
    """`gitpack save src/myproj/nets.py:build` imports it as myproj.nets from its source root, so its relative
    imports work and its classes are pinned under the name every other import uses."""
    write_files(repo, {"src/myproj/__init__.py": "", "src/myproj/layers.py": "class Layer:\n    def __init__(self, n=3):\n"
                       "        self.n = n\n", "src/myproj/nets.py": "from .layers import Layer\n\n\ndef build(n=4):\n"
                       "    return Layer(n)\n", ".gitignore": "*.gitpack\n"})
    proc = gitpack_cli(repo, "save", "src/myproj/nets.py:build", "-o", "m.gitpack", "-p", "n=5")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(gitpack_cli(repo, "inspect", "m.gitpack", "--json").stdout)
    assert manifest["object"]["type"] == "myproj.layers:Layer"
    assert manifest["modules"]["myproj.layers"] == {"path": "src/myproj/layers.py", "root": "src"}
    assert manifest["capture"]["objects"]["$"]["args"] == {"n": 5}
    assert _result(run_python(repo, "import gitpack, json\nprint('RESULT ' + json.dumps(gitpack.load('m.gitpack').n))")) == 5
    # A package whose name another module already has: one line saying which form to use.
    write_files(repo, {"src/json/__init__.py": "", "src/json/shapes.py": "X = 1\n"})
    _one_line_error(gitpack_cli(repo, "save", "src/json/shapes.py:X", "-o", "j.gitpack"), "is module json.shapes",
                    "gitpack save json.shapes:ATTR")


def test_src_layout_found_by_an_editable_finder_is_pinned(repo):
    write_files(repo / "src", MODEL_AND_HELPER)
    finder = FINDER.format(src=str(repo / "src"))
    saved = run_python(repo, finder + "import gitpack, mypkg.model\ngitpack.save(mypkg.model.Model(), 'm.gitpack')\n")
    assert saved.returncode == 0, saved.stderr
    manifest = json.loads(gitpack_cli(repo, "inspect", "m.gitpack", "--json").stdout)
    assert manifest["modules"]["mypkg.model"] == {"path": "src/mypkg/model.py", "root": "src"}
    (repo / "src/mypkg/util.py").write_text("def helper(x):\n    return x + 1000\n")
    code = finder + "import gitpack, json, mypkg.util\nprint('RESULT ' + json.dumps([gitpack.load('m.gitpack').forward(1), mypkg.util.helper(1)]))\n"
    assert _result(run_python(repo, code)) == [13, 1001]  # the snapshot's helper, beside the checkout's


def test_a_venv_inside_the_repo_and_odd_directory_names_do_not_break_loading(repo):
    (repo / ".gitignore").write_text(".venv/\n")
    made = run(repo, sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", ".venv")
    assert made.returncode == 0, made.stderr
    # The inner venv sees the packages this interpreter sees (gitpack, torch), whether it is the base interpreter
    # or itself a virtualenv (--system-site-packages alone reaches only the base's).
    inner = next((repo / ".venv").glob("lib/python*/site-packages"))
    (inner / "outer.pth").write_text("import site; " + "; ".join(f"site.addsitedir({p!r})"
                                                                 for p in site.getsitepackages()) + "\n")
    write_files(repo / "sub dir é", {"model.py": "class M:\n    def f(self):\n        return 7\n"})
    venv_python = str(repo / ".venv" / "bin" / "python")
    saved = run(repo / "sub dir é", venv_python, "-m", "gitpack", "save", "model:M", "-o", "../m.gitpack")
    assert saved.returncode == 0, saved.stderr
    manifest = json.loads(gitpack_cli(repo, "inspect", "m.gitpack", "--json").stdout)
    assert not any(r.startswith(".venv") for r in manifest["roots"])  # ignored: not snapshot code
    assert _result(run_python(repo, "import gitpack, json\nprint('RESULT ' + json.dumps(gitpack.load('m.gitpack').f()))")) == 7


def test_namespace_packages_load_from_the_snapshot(repo):
    write_files(repo, {"nspkg/sub/mod.py": "class M:\n    def f(self):\n        return 'ns'\n"})
    assert gitpack_cli(repo, "save", "nspkg.sub.mod:M", "-o", "n.gitpack").returncode == 0
    (repo / "nspkg/sub/mod.py").write_text("raise RuntimeError('checkout imported')\n")
    assert _result(run_python(repo, "import gitpack, json\nprint('RESULT ' + json.dumps(gitpack.load('n.gitpack').f()))")) == "ns"


def test_a_module_left_out_of_the_snapshot_refuses_the_save(repo):
    (repo / "model.py").write_text("# " + "y" * 200 + "\nclass M:\n    pass\n")  # untracked, over the cap
    _one_line_error(gitpack_cli(repo, "save", "model:M", "-o", "m.gitpack", "--size-cap", "100"), "model", "left out",
                    "--include model.py")
    assert not (repo / "m.gitpack").exists()
    assert git(repo, "rev-parse", "--verify", "-q", "gitpack", check=False) == ""
    # Tracked, the same file is always taken, whatever its size.
    git(repo, "add", "model.py")
    assert gitpack_cli(repo, "save", "model:M", "-o", "m.gitpack", "--size-cap", "100").returncode == 0


def test_save_warns_when_the_default_policy_would_refuse_the_archive(repo):
    (repo / "m.py").write_text("import ipaddress\n\ndef build():\n    return {'addr': ipaddress.IPv4Address('192.0.2.1')}\n")
    proc = gitpack_cli(repo, "save", "m:build", "-o", "a.gitpack")
    assert proc.returncode == 0, proc.stderr
    assert "warning: the default load policy will refuse global ipaddress.IPv4Address" in proc.stderr
    assert gitpack_cli(repo, "load", "a.gitpack", "--allow", "ipaddress:IPv4Address").returncode == 0


def test_save_never_moves_the_checked_out_branch_nor_writes_over_a_device(repo):
    (repo / "m.py").write_text("X = {'a': 1}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "m")
    head = git(repo, "rev-parse", "HEAD")
    _one_line_error(gitpack_cli(repo, "save", "m:X", "-o", "a.gitpack", "--branch", "main"), "checked-out branch")
    _one_line_error(gitpack_cli(repo, "save", "m:X", "-o", "a.gitpack", "--branch", "refs/tags/v1"), "refs/heads")
    assert git(repo, "rev-parse", "HEAD") == head and not (repo / "a.gitpack").exists()
    # A link is written through, as open() and torch.save write (a dangling one creates its target) ...
    (repo / "dangling").symlink_to(repo / "nowhere")
    assert gitpack_cli(repo, "save", "m:X", "-o", "dangling", "-q").returncode == 0
    assert (repo / "dangling").is_symlink() and (repo / "nowhere").is_file()
    # ... but never over a device.
    _one_line_error(gitpack_cli(repo, "save", "m:X", "-o", "/dev/null"), "not a regular file")
    assert Path("/dev/null").is_char_device()


LOAD_TRACED = """
import json, os, sys
sys.path.insert(0, os.getcwd())
import gitpack, m
gitpack.save(m.M(), "x.gitpack", name="thing")
gitpack.load("x.gitpack")
gitpack.load("thing")
found = {}
for what in ("x.gitpack", "thing"):
    trace = os.path.abspath(f"trace-{what}.json")
    os.environ["GIT_TRACE2_EVENT"] = trace
    gitpack.load(what)
    del os.environ["GIT_TRACE2_EVENT"]
    events = [json.loads(line) for line in open(trace) if line.strip()]
    found[what] = [" ".join(e["argv"][1:3]) for e in events if e.get("event") == "start"]
print("RESULT " + json.dumps(found))
"""


def test_a_load_finds_its_repository_once_and_reads_objects_through_one_process(repo):
    # Each step of a load (allow settings, the store, the vouching check, the snapshot's sources) used to
    # discover the repository again: a rev-parse, a settings read and an object reader of its own.
    commit_files(repo, {"m.py": "class M:\n    def __init__(self):\n        self.x = [1, 2, 3]\n",
                        ".gitignore": "*.gitpack\ntrace-*\n"})
    found = _result(run_python(repo, LOAD_TRACED))
    for what, started in found.items():
        assert started.count("rev-parse --show-toplevel") == 1, (what, started)
        assert started.count("config -z") == 1, (what, started)
        assert started.count("cat-file --batch-command") == 1, (what, started)

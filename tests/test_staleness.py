"""A save refuses when the code in memory is not the code on disk, unless told to allow it.

Real modules are imported, then their files are really edited.  About 5 s on a 2-core machine.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path

import pytest
from conftest import git, gitpack_cli

import gitpack
from gitpack.errors import StaleCodeError
from gitpack.pickling.modulemap import ModuleMap
from gitpack.staleness import find_stale

SOURCE = '''\
SCALE = 3


def helper(x):
    return x * SCALE


def unrelated():
    return "not used by Scaler"


class Scaler:
    def __init__(self, factor, offset=0.0):
        self.factor = factor
        self.offset = offset
        self.fn = lambda v: v + 1

    def apply(self, x):
        return helper(x) * self.factor + self.offset

    def describe(self):
        return "scaler"


def build(factor=2.0):
    return Scaler(factor)
'''


@pytest.fixture
def module(repo):
    """``(name, path)`` of a committed module in the temp repository, importable under a unique name."""
    name = f"prov_{uuid.uuid4().hex[:8]}"
    path = repo / f"{name}.py"
    path.write_text(SOURCE)
    (repo / ".gitignore").write_text("*.gitpack\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "scaler")
    sys.path.insert(0, str(repo))
    yield name, path
    sys.path.remove(str(repo))
    sys.modules.pop(name, None)


def _edit(path: Path, old: str, new: str) -> None:
    """Every edit here changes the file's size (see the note on racy-clean snapshots in test_compare.py)."""
    text = path.read_text()
    assert len(old) != len(new)
    assert old in text
    path.write_text(text.replace(old, new))


def _stale_after(repo: Path, module, old: str, new: str) -> list[str]:
    """Import, build, edit the file, then ask which used code is stale."""
    name, path = module
    m = importlib.import_module(name)
    obj = m.build()
    _edit(path, old, new)
    module_map = ModuleMap(repo, lambda rel: (repo / rel).is_file())
    module_map.canonical(name)
    stale = find_stale([type(obj), obj.fn], module_map, lambda rel: (repo / rel).read_bytes())
    return [f"{s.qualname}: {s.reason}" for s in stale]


def test_edit_after_import_refuses_the_save_naming_module_and_function(repo, module):
    name, path = module
    m = importlib.import_module(name)
    obj = m.build()
    _edit(path, "* self.factor + self.offset", "* self.factor - 2 * self.offset")
    tip = git(repo, "rev-parse", "-q", "--verify", "refs/heads/gitpack", check=False)
    with pytest.raises(StaleCodeError) as err:
        gitpack.save(obj, repo / "a.gitpack", repo=repo)
    assert f"{name}:Scaler.apply (code differs)" in str(err.value)
    assert "--allow-stale" in str(err.value) and "\n" not in str(err.value)
    assert not (repo / "a.gitpack").exists()
    assert git(repo, "rev-parse", "-q", "--verify", "refs/heads/gitpack", check=False) == tip

    info = gitpack.save(obj, repo / "a.gitpack", repo=repo, allow_stale=True)
    manifest = gitpack.inspect(repo / "a.gitpack")
    assert manifest["allow_stale"] is True
    assert manifest["stale_code"] == [{"module": name, "qualname": "Scaler.apply", "reason": "code differs"}]
    body = git(repo, "log", "-1", "--format=%B", info.commit)
    assert f"Gitpack-Allow-Stale: {name}:Scaler.apply (code differs)" in body


def test_a_save_of_unchanged_code_records_no_stale_code(repo, module):
    m = importlib.import_module(module[0])
    gitpack.save(m.build(), repo / "ok.gitpack", repo=repo)
    manifest = gitpack.inspect(repo / "ok.gitpack")
    assert manifest["stale_code"] == [] and manifest["allow_stale"] is False


def test_a_helper_called_by_a_method_is_compared_too(repo, module):
    assert _stale_after(repo, module, "return x * SCALE", "return x * SCALE * 2") == ["helper: code differs"]


def test_a_changed_default_is_stale(repo, module):
    assert _stale_after(repo, module, "offset=0.0", "offset=1.25") == ["Scaler.__init__: default values differ"]


def test_unused_code_and_pure_line_shifts_inside_methods_are_not_stale(repo, module):
    stale = _stale_after(repo, module, '    return "not used by Scaler"\n',
                         '    return "edited, still not used"\n')
    assert stale == []
    name, path = module
    # An edit below the lambda that only moves lines (a comment) leaves every code object as it was.
    _edit(path, '    def describe(self):\n', '    def describe(self):\n        # a comment\n')
    module_map = ModuleMap(repo, lambda rel: True)
    module_map.canonical(name)
    m = sys.modules[name]
    assert find_stale([m.Scaler], module_map, lambda rel: (repo / rel).read_bytes()) == []


def test_a_lambda_pickled_by_its_line_must_stay_on_that_line(repo, module):
    stale = _stale_after(repo, module, "SCALE = 3\n", "# a new first line\nSCALE = 3\n")
    assert stale == ["Scaler.__init__.<locals>.<lambda>: moved from line 16 to line 17 on disk"]


def test_a_method_added_on_disk_is_reported(repo, module):
    stale = _stale_after(repo, module, '    def describe(self):\n',
                         '    def extra(self):\n        return 1\n\n    def describe(self):\n')
    assert stale == ["Scaler.extra: added on disk"]


TRAIN = '''\
from pathlib import Path

import {name}


def build():
    obj = {name}.build()
    # Someone edits the file while training runs:
    src = Path({name}.__file__)
    src.write_text(src.read_text().replace("* self.factor + self.offset", "* self.factor - 2 * self.offset"))
    return obj
'''


def test_cli_refuses_then_allow_stale_goes_through_and_is_marked(repo, module):
    name, path = module
    (repo / "train.py").write_text(TRAIN.format(name=name))
    refused = gitpack_cli(repo, "save", "train:build", "-o", "a.gitpack")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert f"{name}:Scaler.apply (code differs)" in refused.stderr
    assert not (repo / "a.gitpack").exists()

    path.write_text(SOURCE)  # the factory edits it again on the next run
    allowed = gitpack_cli(repo, "save", "train:build", "-o", "a.gitpack", "--allow-stale")
    assert allowed.returncode == 0, allowed.stderr
    manifest = gitpack.inspect(repo / "a.gitpack")
    assert manifest["allow_stale"] is True
    assert [s["qualname"] for s in manifest["stale_code"]] == ["Scaler.apply"]
    assert f"Gitpack-Allow-Stale: {name}:Scaler.apply (code differs)" in git(repo, "log", "-1", "gitpack")
    shown = gitpack_cli(repo, "inspect", "a.gitpack")
    assert "saved with stale code" in shown.stdout and "Scaler.apply (code differs)" in shown.stdout

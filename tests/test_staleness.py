"""A save refuses when the code in memory is not the code on disk, unless told to allow it.

Real modules are imported, then their files are really edited.  About 5 s on a 2-core machine.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path

import pytest
from conftest import git, gitpack_cli, run, run_python

import gitpack
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


def test_edit_after_import_pins_the_source_as_imported(repo, module):
    """gitpack was imported first, so the module's source was recorded as Python imported it: the save pins
    that, the working tree keeps the edit, and the archive runs the code the object was built with."""
    name, path = module
    m = importlib.import_module(name)
    obj = m.build()
    _edit(path, "* self.factor + self.offset", "* self.factor - 2 * self.offset")
    edited = path.read_bytes()
    info = gitpack.save(obj, repo / "a.gitpack", repo=repo)
    assert git(repo, "show", f"{info.commit}:{path.name}") == SOURCE.rstrip("\n")
    assert path.read_bytes() == edited  # the user's file is left as it is
    manifest = gitpack.inspect(repo / "a.gitpack")
    assert manifest["pinned"] == [path.name] and manifest["stale_code"] == []
    assert f"Pinned as imported (the working tree has since changed):\n    {path.name}" in git(
        repo, "log", "-1", "--format=%B", info.commit)
    shown = gitpack_cli(repo, "inspect", "a.gitpack")
    assert "pinned as imported" in shown.stdout and path.name in shown.stdout
    loaded = run_python(repo, "import gitpack; print(gitpack.load('a.gitpack').apply(5.0))")
    assert loaded.returncode == 0, loaded.stderr
    assert float(loaded.stdout) == 5.0 * 3 * 2.0  # helper(5) * factor + offset, the code as imported


IMPORTED_FIRST = '''\
import sys
from pathlib import Path

import {name}  # before gitpack: its source as imported is unknown
import gitpack
from gitpack.errors import StaleCodeError

obj = {name}.build()
src = Path({name}.__file__)
src.write_text(src.read_text().replace("* self.factor + self.offset", "* self.factor - 2 * self.offset"))
try:
    gitpack.save(obj, "a.gitpack")
except StaleCodeError as exc:
    print("refused:", exc)
    assert not Path("a.gitpack").exists()
info = gitpack.save(obj, "a.gitpack", allow_stale=True)
print("saved", info.commit)
'''


def test_edit_after_import_of_an_unrecorded_module_refuses_and_says_how_to_fix_it(repo, module):
    name, path = module
    tip = git(repo, "rev-parse", "-q", "--verify", "refs/heads/gitpack", check=False)
    (repo / "prog.py").write_text(IMPORTED_FIRST.format(name=name))
    done = run(repo, sys.executable, "prog.py")
    assert done.returncode == 0, done.stderr
    refused, saved = done.stdout.splitlines()
    assert f"{name}:Scaler.apply (code differs)" in refused
    assert "Import gitpack before your model's modules" in refused and "--allow-stale" in refused
    commit = saved.split()[1]
    saves = git(repo, "log", "--first-parent", "--format=%s", "refs/heads/gitpack").splitlines()
    assert tip == "" and len([s for s in saves if s.startswith("gitpack save")]) == 1  # the refusal made no commit
    manifest = gitpack.inspect(repo / "a.gitpack")
    assert manifest["allow_stale"] is True and manifest["pinned"] == []
    assert manifest["stale_code"] == [{"module": name, "qualname": "Scaler.apply", "reason": "code differs"}]
    body = git(repo, "log", "-1", "--format=%B", commit)
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


def test_cli_save_pins_a_module_edited_while_its_target_ran(repo, module):
    """``gitpack save`` imports gitpack before TARGET, so the edit made while TARGET ran is not what is pinned."""
    name, path = module
    (repo / "train.py").write_text(TRAIN.format(name=name))
    saved = gitpack_cli(repo, "save", "train:build", "-o", "a.gitpack")
    assert saved.returncode == 0, saved.stderr
    assert "* self.factor - 2 * self.offset" in path.read_text()
    manifest = gitpack.inspect(repo / "a.gitpack")
    assert manifest["pinned"] == [path.name] and manifest["allow_stale"] is False
    assert "* self.factor + self.offset" in git(repo, "show", f"gitpack:{path.name}")

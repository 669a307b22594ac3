"""``gitpack diff``, and inspect / log / diff reading archives without unpickling or importing torch.

Every command runs as a real subprocess against a real repository (the many hostile manifest shapes run
in-process).  About 20 s on a 2-core machine.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from conftest import git, gitpack_cli, run_python

MODEL = '''\
class Scaler:
    def __init__(self, factor, offset=0.0):
        self.factor = factor
        self.offset = offset

    def apply(self, x):
        return x * self.factor + self.offset

    def describe(self):
        return "a scaler"

    def unit(self):
        return "per step"


def build(factor=2.0):
    return Scaler(factor)
'''


def _commit_files(repo: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (repo / name).write_text(text)
    (repo / ".gitignore").write_text("*.gitpack\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "model")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _ok(proc):
    assert proc.returncode == 0, proc.stderr
    return proc


def test_diff_shows_exactly_the_changed_parameter_and_the_changed_methods_hunk(repo):
    _commit_files(repo, {"model.py": MODEL, "other.py": "VALUE = 1\n"})
    _ok(gitpack_cli(repo, "save", "model:build", "-p", "factor=2.0", "-o", "a.gitpack"))
    # Edits change the files' sizes: a same-size edit in the same second as the commit can be missed by
    # the index-copy snapshot (git's racy-clean check; see notes/issue-3.md), which provenance then reports.
    _edit(repo / "model.py", "return x * self.factor + self.offset", "return x * self.factor - 2 * self.offset")
    _edit(repo / "other.py", "VALUE = 1", "VALUE = 20")  # not used by the model
    _ok(gitpack_cli(repo, "save", "model:build", "-p", "factor=3.0", "-o", "b.gitpack"))

    report = json.loads(_ok(gitpack_cli(repo, "diff", "a.gitpack", "b.gitpack", "--json")).stdout)
    assert report["params"] == [
        {"path": ["params", "factor"], "label": "params.factor", "kind": "changed", "old": 2.0, "new": 3.0},
        {"path": ["capture", "$", "args", "factor"], "label": "$(factor)", "kind": "changed", "old": 2.0, "new": 3.0},
    ]
    assert report["environment"] == []
    assert report["code"]["paths"] == ["model.py"]
    code = report["code"]["diff"]
    assert code.count("\n@@ ") == 1 and code.count("diff --git") == 1
    hunk = code[code.index("\n@@ "):]
    changed = [line for line in hunk.splitlines()[1:] if line[:1] in "+-"]
    assert changed == ["-        return x * self.factor + self.offset", "+        return x * self.factor - 2 * self.offset"]
    assert "other.py" not in code

    text = _ok(gitpack_cli(repo, "diff", "a.gitpack", "b.gitpack")).stdout
    assert "  ~ params.factor: 2.0 -> 3.0\n  ~ $(factor): 2.0 -> 3.0\n" in text
    assert "environment: no changes" in text and "code (model.py):" in text
    assert "+        return x * self.factor - 2 * self.offset" in text

    everything = json.loads(_ok(gitpack_cli(repo, "diff", "a.gitpack", "b.gitpack", "--all", "--json")).stdout)
    assert everything["code"]["all"] is True
    assert "diff --git a/other.py b/other.py" in everything["code"]["diff"]

    # One archive alone: what changed in the code since it was saved (the working tree, nothing committed).
    head = git(repo, "rev-parse", "HEAD")
    _edit(repo / "model.py", 'return "per step"', 'return "per epoch"')
    since = _ok(gitpack_cli(repo, "diff", "b.gitpack")).stdout
    assert "-> the working tree" in since and "environment: no changes" in since
    assert '-        return "per step"\n+        return "per epoch"' in since
    assert "self.offset" not in since  # b already had that change
    assert git(repo, "rev-parse", "HEAD") == head and "model.py" in git(repo, "status", "--porcelain")


def test_diff_reports_default_markings_and_nested_values(repo):
    script = textwrap.dedent('''
        import gitpack, model
        with gitpack.capture():
            a = model.Scaler(2.0)
            b = model.Scaler(2.0, offset=0.0)
        gitpack.save({"main": a, "sizes": [1, 2]}, "a.gitpack", params={"opt": {"lr": 0.1, "steps": [1, 2]}})
        gitpack.save({"main": b, "sizes": [1, 2]}, "b.gitpack", params={"opt": {"lr": 0.1, "steps": [1, 3]}, "tag": "x"})
    ''')
    _commit_files(repo, {"model.py": MODEL})
    _ok(run_python(repo, script))
    report = json.loads(_ok(gitpack_cli(repo, "diff", "a.gitpack", "b.gitpack", "--json")).stdout)
    assert [(c["label"], c["kind"]) for c in report["params"]] == [
        ("params.opt.steps[1]", "changed"),
        ("params.tag", "added"),
        ('$["main"](offset) default', "removed"),  # same value, but passed explicitly this time
    ]
    assert report["code"]["diff"] == ""


MARKER_MODULE = '''\
class Boom:
    """Unpickling this object runs __setstate__: the marker file proves the pickle was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __setstate__(self, state):
        with open(state["marker"], "w") as fh:
            fh.write("unpickled")
        self.__dict__.update(state)
'''


def test_inspect_log_and_diff_never_unpickle(repo, tmp_path):
    marker = tmp_path / "unpickled.marker"
    _commit_files(repo, {"boom.py": MARKER_MODULE})
    for archive in ("a.gitpack", "b.gitpack"):
        _ok(gitpack_cli(repo, "save", "boom:Boom", "-p", f"marker={marker}", "-o", archive))
    assert not marker.exists()
    for args in (["inspect", "a.gitpack"], ["inspect", "a.gitpack", "--json"], ["log"], ["log", "--json"],
                 ["diff", "a.gitpack"], ["diff", "a.gitpack", "b.gitpack"], ["diff", "a.gitpack", "b.gitpack", "--json", "--all"]):
        _ok(gitpack_cli(repo, *args))
        assert not marker.exists(), f"gitpack {' '.join(args)} ran the pickle"
    # The control: loading does run it, so the marker would have shown any unpickling above.
    _ok(gitpack_cli(repo, "load", "a.gitpack"))
    assert marker.read_text() == "unpickled"


TINY = '''\
import torch


class Tiny(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.linear = torch.nn.Linear(width, 2)
        self.register_buffer("scale", torch.ones(2))


def build(width=4):
    return Tiny(width)
'''

NO_TORCH = '''
import sys
from gitpack.cli import main

for argv in (["inspect", "a.gitpack"], ["inspect", "--json", "a.gitpack"], ["log"], ["log", "--json"],
             ["diff", "a.gitpack"], ["diff", "a.gitpack", "b.gitpack", "--json"], ["diff", "a.gitpack", "b.gitpack"]):
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, (argv, exc.code)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH-MODULES", len(loaded), loaded[:3])
'''


def test_inspect_log_and_diff_of_a_torch_model_never_import_torch(repo):
    _commit_files(repo, {"tiny.py": TINY})
    _ok(gitpack_cli(repo, "save", "tiny:build", "-p", "width=4", "-o", "a.gitpack"))
    _ok(gitpack_cli(repo, "save", "tiny:build", "-p", "width=3", "-o", "b.gitpack"))
    proc = _ok(run_python(repo, NO_TORCH))
    assert "TORCH-MODULES 0 []" in proc.stdout
    # ... while what they print does describe the torch model.
    assert "── linear  torch.nn.modules.linear:Linear(in_features=4," in proc.stdout  # under $, named by its attribute
    assert "scale  buffer 2 float32 on cpu" in proc.stdout
    assert "$(width): 4 -> 3" in proc.stdout


# ------------------------------------------------------------------------------ issue 9: nothing hides
PKG_MODEL = '''\
class M:
    def __init__(self, n=1):
        self.n = n


def build(n=1):
    return M(n)
'''


def test_diff_lists_every_changed_path_even_outside_the_modules_used(repo):
    """`diff A B` said "no changes" when B changed pkg/__init__.py or added a root torch.py (which shadows
    `import torch` inside the snapshot): every changed path is now listed, hunks stay limited to what is used."""
    commit = {"pkg/__init__.py": "", "pkg/model.py": PKG_MODEL, "util.py": "A = 1\n", "old.py": "RENAMED = True\n" * 20}
    for name, text in commit.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _commit_files(repo, {})
    _ok(gitpack_cli(repo, "save", "pkg.model:build", "-p", "n=1", "-o", "a.gitpack"))
    (repo / "pkg" / "__init__.py").write_text("import os\nos.environ['OWNED'] = '1'\n")
    (repo / "torch.py").write_text("print('not the torch you wanted')\n")
    (repo / "util.py").write_text("A = 22\n")
    git(repo, "mv", "old.py", "new.py")
    _ok(gitpack_cli(repo, "save", "pkg.model:build", "-p", "n=1", "-o", "b.gitpack"))

    text = _ok(gitpack_cli(repo, "diff", "a.gitpack", "b.gitpack")).stdout
    assert "parameters: no changes" in text
    assert "files changed (4; code below only for the modules the objects use, --all for every file):" in text
    lines = text.splitlines()
    assert "  M    pkg/__init__.py" in lines and "  M    util.py" in lines
    assert "  R100 old.py -> new.py" in lines
    assert "  A    torch.py  (top-level module: shadows `import torch` inside the snapshot)" in lines
    # The package above the used module runs on import: its hunk is shown; util.py's is not.
    assert "code (pkg/__init__.py, pkg/model.py):" in text and "+os.environ['OWNED'] = '1'" in text
    assert "A = 22" not in text

    report = json.loads(_ok(gitpack_cli(repo, "diff", "a.gitpack", "b.gitpack", "--json")).stdout)
    assert sorted(report["files"], key=lambda f: f["path"]) == [
        {"status": "R100", "path": "new.py", "old_path": "old.py"},
        {"status": "M", "path": "pkg/__init__.py"},
        {"status": "A", "path": "torch.py", "shadows": "torch"},
        {"status": "M", "path": "util.py"},
    ]
    assert "diff --git a/util.py" not in report["code"]["diff"]
    everything = _ok(gitpack_cli(repo, "diff", "a.gitpack", "b.gitpack", "--all")).stdout
    assert "+A = 22" in everything and "+print('not the torch you wanted')" in everything
    assert "files changed (4):" in everything

    # Against the working tree too; and no change at all says so.
    (repo / "util.py").write_text("A = 333\n")
    since = _ok(gitpack_cli(repo, "diff", "b.gitpack")).stdout
    assert "files changed (1; " in since and "  M    util.py" in since.splitlines()
    same = _ok(gitpack_cli(repo, "diff", "b.gitpack", "b.gitpack")).stdout
    assert "files changed: none" in same and "code (pkg/__init__.py, pkg/model.py): no changes" in same


def test_diff_skips_module_paths_git_cannot_take_with_a_note(repo, tmp_path):
    """A NUL byte in a manifest's module path reached git's argv (ValueError traceback): now skipped, with a note."""
    from forging import rewrite_manifest
    from test_render import assert_clean

    _commit_files(repo, {"model.py": MODEL})
    _ok(gitpack_cli(repo, "save", "model:build", "-o", "a.gitpack"))
    _edit(repo / "model.py", "return x * self.factor + self.offset", "return x * self.factor + 2 * self.offset")
    _ok(gitpack_cli(repo, "save", "model:build", "-o", "b.gitpack"))
    bad = {"model": {"path": "model.py", "root": ""}, "a": {"path": "mo\x00del.py", "root": ""},
           "b": {"path": "../../etc/passwd"}, "c": {"path": "/etc/passwd"}, "d": {"path": ["model.py"]}, "e": "x"}
    rewrite_manifest(repo / "b.gitpack", tmp_path / "b.gitpack", lambda m: m.update(modules=bad))
    out = assert_clean(gitpack_cli(repo, "diff", "a.gitpack", str(tmp_path / "b.gitpack")))
    notes = [line for line in out.splitlines() if line.startswith("note: skipped module")]
    assert len(notes) == 4 and any('"mo\\u0000del.py"' in n for n in notes)
    assert "code (model.py):" in out and "+        return x * self.factor + 2 * self.offset" in out
    report = json.loads(assert_clean(gitpack_cli(repo, "diff", "a.gitpack", str(tmp_path / "b.gitpack"), "--json")))
    assert len(report["notes"]) == 4 and report["code"]["paths"] == ["model.py"]
    # The same manifest shape as a list instead of an object: no modules, no crash.
    rewrite_manifest(repo / "b.gitpack", tmp_path / "c.gitpack", lambda m: m.update(modules=[["model.py"]]))
    assert "code (model.py):" in assert_clean(gitpack_cli(repo, "diff", "a.gitpack", str(tmp_path / "c.gitpack")))


def test_diff_escapes_control_characters_from_manifests_and_code(repo, tmp_path):
    from forging import rewrite_manifest
    from test_render import assert_clean

    _commit_files(repo, {"model.py": MODEL})
    _ok(gitpack_cli(repo, "save", "model:build", "-o", "a.gitpack"))
    _edit(repo / "model.py", 'return "a scaler"', 'return "a scaler\x1b]0;owned\x07\u202e"')
    _ok(gitpack_cli(repo, "save", "model:build", "-o", "b.gitpack"))
    rewrite_manifest(repo / "b.gitpack", tmp_path / "b.gitpack", lambda m: m.update(
        params={"\x1b[2Jkey": "\x9b31mvalue"}, object={"type": "model:Scaler\x1b[8m"}))
    out = assert_clean(gitpack_cli(repo, "diff", "a.gitpack", str(tmp_path / "b.gitpack"), "--all"))
    assert '  + params.\\x1b[2Jkey: "\\x9b31mvalue"' in out
    assert '+        return "a scaler\\x1b]0;owned\\x07\\u202e"' in out
    report = json.loads(assert_clean(gitpack_cli(repo, "diff", "a.gitpack", str(tmp_path / "b.gitpack"), "--json")))
    assert report["params"][0]["new"] == "model:Scaler\x1b[8m"  # JSON carries the exact value, JSON-escaped


def test_diff_takes_any_manifest_shape(tmp_path):
    """Every hostile manifest shape that inspect must render, as either side of a diff: a report (text and JSON)
    or a GitpackError, nothing else (in-process, so the many shapes cost no process each)."""
    from conftest import commit_files, init_repo
    from forging import rewrite_manifest
    from test_render import MODEL as SHOW_MODEL
    from test_render import RAW, SHAPES

    from gitpack import api
    from gitpack.compare import format_text
    from gitpack.errors import GitpackError

    repo = init_repo(tmp_path / "shapes")
    commit_files(repo, {"pkg/__init__.py": "", "pkg/model.py": SHOW_MODEL, ".gitignore": "*.gitpack\n"}, "model")
    _ok(gitpack_cli(repo, "save", "pkg.model:build", "-o", "a.gitpack"))
    shapes = dict(SHAPES, modules_list=(lambda m: m.update(modules=[1]), []),
                  capture_deep=(lambda m: m.update(capture={"objects": {"$": {"args": json.loads("[" * 800 + "]" * 800)}}}), []))
    reports = 0
    for name, (change, _) in sorted(shapes.items()):
        target = rewrite_manifest(repo / "a.gitpack", tmp_path / f"{name}.gitpack", change)
        for a, b in ((repo / "a.gitpack", target), (target, repo / "a.gitpack")):
            try:
                report = api.diff(a, b, repo=repo)
            except GitpackError:
                assert name == "every-field-a-number"  # its commit is 7: refused
                continue
            text = format_text(report)
            assert not any(ch in text for ch in RAW), (name, text)
            json.dumps(report.as_json(), indent=2, default=str)
            reports += 1
    assert reports == 2 * len(shapes) - 2


def test_a_module_moved_and_edited_is_a_rename_in_the_list_the_json_and_the_code(repo):
    """`git mv` plus an edit leaves a small module less than half the same, so git alone sees a delete and an
    add; the manifests say it is the module the object used, moved."""
    small = "class M:\n    def __init__(self, n=1):\n        self.n = n\n\n    def f(self):\n        return self.n\n"
    _commit_files(repo, {"package.py": small, ".gitignore": "*.gitpack\n"})
    _ok(gitpack_cli(repo, "save", "package:M", "-o", "a.gitpack"))
    git(repo, "mv", "package.py", "renamed.py")
    (repo / "renamed.py").write_text(small.replace("n=1", "n=2").replace("return self.n", "return self.n * 2"))
    _ok(gitpack_cli(repo, "save", "renamed:M", "-o", "b.gitpack"))
    for args in (["a.gitpack", "b.gitpack"], ["a.gitpack"], ["a.gitpack", "--all"]):  # the working tree too
        out = _ok(gitpack_cli(repo, "diff", *args)).stdout
        assert "package.py -> renamed.py" in out and "D    package.py" not in out, out
        assert "rename from package.py\nrename to renamed.py\n" in out and "-        return self.n\n" in out
        assert "+        return self.n * 2\n" in out and "new file mode" not in out
    report = json.loads(_ok(gitpack_cli(repo, "diff", "a.gitpack", "b.gitpack", "--json")).stdout)
    assert [(f["status"][0], f["old_path"], f["path"]) for f in report["files"]] == [("R", "package.py", "renamed.py")]
    assert "rename from package.py" in report["code"]["diff"]
    # An unrelated new module is not taken for a move of a deleted one.
    (repo / "renamed.py").unlink()
    (repo / "other.py").write_text("class Other:\n    pass\n")
    out = _ok(gitpack_cli(repo, "diff", "a.gitpack")).stdout
    assert "D    package.py" in out and "A    other.py" in out

"""`gitpack inspect` renders any manifest -- every field is untrusted JSON of any type.

A tampered archive's manifest is attacker-controlled in every field and its
digests are simply recomputed, so ``inspect`` (which never verifies the commit:
it must work on any archive) sees whatever JSON anyone wrote.  It must show
what it can, one line of error at most, and never let control characters or
rich markup in a key or value reach the terminal.  Real archives, real CLI
processes; archives are edited with :func:`forging.rewrite_manifest`, as in test_gitsetup, test_compare and
test_fuzz.
"""

from __future__ import annotations

import io
import json

import pytest
from conftest import commit_files, gitpack_cli, init_repo
from forging import rewrite_manifest
from rich.console import Console

from gitpack.cli import render as show

MODEL = "class M:\n    def __init__(self, n=1):\n        self.n = n\n\n\ndef build(n=1):\n    return M(n)\n"
# Raw control characters and bidi overrides that must never be written as they are.
RAW = ["\x1b", "\x07", "\x9b", "\u202e", "\u2066", "\x00", "\r"]


def assert_clean(proc, *, rc: int = 0) -> str:
    """Exit status *rc*, no traceback, nothing raw on stdout or stderr; returns stdout."""
    assert proc.returncode == rc, proc.stderr
    assert "Traceback" not in proc.stderr
    for ch in RAW:
        assert ch not in proc.stdout, (ch, proc.stdout)
        assert ch not in proc.stderr, (ch, proc.stderr)
    return proc.stdout


def assert_clean_or_one_line_error(proc) -> str:
    """Either clean output, or exit 1 with exactly one ``gitpack: error:`` line; no traceback, nothing raw."""
    if proc.returncode == 0:
        return assert_clean(proc)
    assert_clean(proc, rc=1)
    assert proc.stderr.startswith("gitpack: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return ""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A repository and one real archive saved from it by the CLI."""
    root = tmp_path_factory.mktemp("show")
    repo = init_repo(root / "repo")
    commit_files(repo, {"pkg/__init__.py": "", "pkg/model.py": MODEL, ".gitignore": "*.gitpack\n"}, "model")
    proc = gitpack_cli(repo, "save", "pkg.model:build", "-p", "n=2", "-o", "a.gitpack",
                       env={"GITPACK_CACHE": str(root / "cache")})
    assert proc.returncode == 0, proc.stderr
    return repo, repo / "a.gitpack"


def _set(path: str, value):
    """A manifest change: set the value at dotted *path* (creating objects on the way)."""
    def change(m):
        keys = path.split(".")
        node = m
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
    return change


SHAPES = {
    # rich markup in keys and values: once a MarkupError traceback
    "markup-key": (_set("params", {"[/]": 1, "[bold red]x[/]": "[link=http://evil]y"}), ["[/] = 1", "[bold red]x[/]"]),
    "object-list": (_set("object", ["pkg.model:M"]), ['["pkg.model:M"]']),
    "object-string": (_set("object", "just a string"), ["just a string"]),
    "parameters-string": (_set("structure", {"total": {"parameters": {"total": "many"}},
                                             "modules": [{"path": "$", "class": "X", "bytes": "lots",
                                                          "parameters": {"total": "12", "trainable": [1]}}]}),
                          ['"many" params', '"12" params']),
    "structure-total-string": (_set("structure", {"total": "all", "modules": [{"path": "$"}]}), ["structure"]),
    "module-entries": (_set("structure", {"modules": [1, "x", None, {"path": ["a"], "tensors": {"w": 5, "v": {"shape": "3"}}}]}),
                       ["(not a module entry)"]),
    "capture-list": (_set("capture", {"objects": [1, 2]}), []),
    "capture-entries": (_set("capture", {"objects": {"$": 5, "$.x": {"args": [1], "defaults": 3, "unknown": "ab"}}}),
                        ["(not an object entry)", "args = [1]"]),
    "capture-string": (_set("capture", "no"), ['constructed with "no"']),
    "stale-string": (_set("stale_code", "just text"), ["saved with stale code"]),
    "stale-entries": (_set("stale_code", [1, {"module": ["m"]}]), ["saved with stale code"]),
    "environment-shapes": (_set("environment", {"packages": [1, 2], "python": {"v": 3}, "extra": [[[]]]}), ["packages [1, 2]"]),
    "environment-list": (_set("environment", [1]), ["environment [1]"]),
    "params-list": (_set("params", [1, [2, [3]]]), ["[1]"]),
    "deep-params": (_set("params", json.loads('{"a":' * 900 + "1" + "}" * 900)), ["nested deeper than"]),
    "huge-value": (_set("params", {"big": "x" * 100_000}), ["..."]),
    "every-field-a-number": (lambda m: m.update({k: 7 for k in ("created", "commit", "tree", "head", "head_branch",
                                                               "remote_url", "message", "dirty")}),
                             ["commit 7  tree 7"]),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_inspect_renders_every_manifest_shape_without_a_traceback(saved, tmp_path, name):
    repo, archive = saved
    change, expected = SHAPES[name]
    target = rewrite_manifest(archive, tmp_path / f"{name}.gitpack", change)
    out = assert_clean(gitpack_cli(repo, "inspect", str(target)))
    for text in expected:
        assert text in out, (text, out)
    assert "integrity" in out  # the whole tree was drawn, down to the last section
    json.loads(assert_clean(gitpack_cli(repo, "inspect", "--json", str(target))))


def test_inspect_shows_control_characters_escaped(saved, tmp_path):
    repo, archive = saved
    hostile = {
        "\x1b]0;owned\x07title": "\x1b[2J\x1b[31mred",
        "bidi\u202eevil": "\u2066isolate\u2069",
        "c1\x9b31m": "line1\nline2\rover",
    }

    def change(m):
        m["params"] = hostile
        m["message"] = "msg\x1b[5m"
        m["remote_url"] = "https://x\x1b[8m"
        m["object"] = {"type": "pkg.model:M\x1b[0m"}

    target = rewrite_manifest(archive, tmp_path / "hostile.gitpack", change)
    out = assert_clean(gitpack_cli(repo, "inspect", str(target)))
    for text in ("\\x1b]0;owned\\x07title", "bidi\\u202eevil", "c1\\x9b31m", "msg\\x1b[5m", "https://x\\x1b[8m",
                 "pkg.model:M\\x1b[0m", "line1\\nline2\\rover"):
        assert text in out, (text, out)
    # --json is JSON: its escapes are JSON's, and it round-trips exactly.
    assert json.loads(assert_clean(gitpack_cli(repo, "inspect", "--json", str(target))))["params"] == hostile


def _render(manifest) -> str:
    buf = io.StringIO()
    show.manifest(manifest, Console(file=buf, width=100, highlight=False))
    return buf.getvalue()


def test_show_manifest_renders_shapes_the_archive_reader_refuses():
    """The renderer itself takes any JSON: member sizes as strings, a member table that is not a list, no dict at all."""
    out = _render({"members": [{"size": "12"}, {"size": 5}, 3]})
    assert "3 members, 5 bytes (2 without a readable size)" in out
    assert "member table is not a list" in _render({"members": "all of them"})
    assert "[1, 2]" in _render([1, 2])
    assert "?  saved ?" in _render({})


def _deep(layers: int = 12, subs: int = 8) -> dict:
    """A manifest whose structure is a BERT-like stack: layers of modules, each with a tensor."""
    def module(path, cls):
        return {"path": path, "class": cls, "parameters": {"total": 4, "trainable": 4}, "bytes": 16,
                "tensors": {"weight": {"kind": "parameter", "shape": [2, 2], "dtype": "float32", "device": "cpu",
                                       "requires_grad": True}}}
    modules = [module("$", "m:Net"), module("$.layers", "torch.nn.modules.container:ModuleList")]
    for i in range(layers):
        modules.append(module(f"$.layers.{i}", "m:Layer"))
        modules += [module(f"$.layers.{i}.sub{j}", "torch.nn.modules.linear:Linear") for j in range(subs)]
    return {"structure": {"total": {"parameters": {"total": 4 * len(modules)}}, "modules": modules}}


def _rendered(manifest, **options) -> str:
    buf = io.StringIO()
    show.manifest(manifest, Console(file=buf, width=120, highlight=False), **options)
    return buf.getvalue()


def test_inspect_summarises_a_deep_structure_to_fit_a_screen():
    deep = _deep()
    full = _rendered(deep, full=True)
    assert full.count("weight  parameter 2x2") == 2 + 12 * 9 and "layers.11" not in full  # names, not paths
    summary = _rendered(deep)
    assert len(summary.splitlines()) <= 40, summary
    assert "(+8 submodules)" in summary and "weight  parameter" not in summary
    assert "modules shown down to depth 2: gitpack inspect --depth N for more levels, --full" in summary
    shallow = _rendered(deep, depth=1)
    assert "── layers  torch.nn.modules.container:ModuleList" in shallow and "(+108 submodules)" in shallow
    assert "m:Layer" not in shallow
    small = _rendered(_deep(layers=2, subs=2))  # fits: everything, tensors included
    assert small.count("weight  parameter") == 2 + 2 * 3 and "modules shown" not in small


def test_inspect_depth_and_full_flags(saved):
    repo, _ = saved
    for flags in (["--full"], ["--depth", "0"], ["--depth", "3", "--full"]):
        assert "integrity" in assert_clean(gitpack_cli(repo, "inspect", "a.gitpack", *flags))
    assert gitpack_cli(repo, "inspect", "a.gitpack", "--depth", "-1").returncode == 2

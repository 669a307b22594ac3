"""Allowing a library: ``--allow transformers`` / ``allow=["transformers"]`` / ``git config gitpack.allow``.

A real transformers model (a tiny random-init BERT inside user code, :func:`conftest.bert`) loads with one
package-level allow given any of the three ways, and computes what it computed before it was saved; without
it, one error names every refused class and the flags that would admit them.  Then forged archives (as in
``test_gate``) show what a package-level allow still refuses: calling the package's functions, building its
classes with arguments, classes that are not plain (their own ``__new__``, ``__setstate__``, ``__del__``),
re-exports and modules.
"""

from __future__ import annotations

import json
import math
import sys

import pickle_asm as asm
import pytest
from conftest import BERT_IDS, git, gitpack_cli, run, run_python
from test_gate import attempt, project  # noqa: F401  (project: the fixture attempt() forges against)

from gitpack.errors import PolicyError
from gitpack.pickling.policy import CLASS, TRUSTED, Policy, parse_allow


def _close(a, b) -> bool:
    """Nested lists of floats equal to within float32 rounding."""
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


def _applied(proc) -> list:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ----------------------------------------------------------------------------- the real library
def test_one_package_allow_loads_a_transformers_model_from_cli_api_and_git_config(bert, tmp_path):
    env = bert.env
    # The CLI.
    out = _applied(gitpack_cli(bert.repo, "load", "bert.gitpack", "--allow", "transformers", "--apply", BERT_IDS, env=env))
    assert _close(out, bert.expected)
    # The API; then the repository's git config, then the user's global one, with no allow given at all (each
    # load reads the configuration afresh; one process, so transformers is imported once).
    home = tmp_path / "home"
    home.mkdir()
    code = f"""
import json, os, subprocess, torch, gitpack
from gitpack.errors import PolicyError

def run(**allow):
    m = gitpack.load('bert.gitpack', **allow)
    with torch.no_grad():
        return m(torch.tensor([{BERT_IDS}]))[0].tolist(), type(m.bert).__module__

print('API ' + json.dumps(run(allow=['transformers'])))
subprocess.run(['git', 'config', '--add', 'gitpack.allow', 'transformers'], check=True)
print('REPO ' + json.dumps(run()))
subprocess.run(['git', 'config', '--unset-all', 'gitpack.allow'], check=True)
try:
    run()
except PolicyError:
    print('REFUSED')
os.environ['HOME'] = {str(home)!r}
subprocess.run(['git', 'config', '--global', '--add', 'gitpack.allow', 'transformers'], check=True)
print('GLOBAL ' + json.dumps(run()))
"""
    proc = run_python(bert.repo, code, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in proc.stdout.splitlines())
    assert "REFUSED" in lines  # between the two configurations: the default policy again
    for way in ("API", "REPO", "GLOBAL"):
        output, module = json.loads(lines[way])
        assert _close(output, bert.expected), way
        assert module == "transformers.models.bert.modeling_bert"  # the library's class, not a copy


def test_without_the_allow_one_refusal_names_every_refused_class_and_the_flags(bert):
    scanned = gitpack_cli(bert.repo, "scan", "bert.gitpack", "--json", env=bert.env)
    refused = [g for g in json.loads(scanned.stdout)["globals"] if not g["allowed"]]
    names = {f"{g['module']}.{g['name']}" for g in refused}
    assert len(names) >= 8 and all(n.startswith("transformers.") for n in names)  # BertModel, BertLayer, BertConfig...

    proc = gitpack_cli(bert.repo, "load", "bert.gitpack", env=bert.env)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for name in names:  # every one at once, each with the exact flag to paste
        assert name in proc.stderr
        module, _, qual = name.rpartition(".")
        assert f"--allow {module}:{qual}" in proc.stderr
    assert "--allow transformers " in proc.stderr and "git config --add gitpack.allow transformers" in proc.stderr
    # The exact flags it lists, pasted, load it too (each trusted fully); so does the dotted form scan prints.
    flags = [a for name in sorted(names) for a in ("--allow", name)]
    assert _close(_applied(gitpack_cli(bert.repo, "load", "bert.gitpack", *flags, "--apply", BERT_IDS, env=bert.env)),
                  bert.expected)
    # The save warned about it, from Python, as a GitpackWarning.
    assert "GitpackWarning: the default load policy will refuse" in bert.save_stderr
    assert "--allow transformers" in bert.save_stderr


def test_a_bad_configured_entry_is_one_line_naming_the_setting(bert):
    git(bert.repo, "config", "--add", "gitpack.allow", "not a name")
    try:
        proc = gitpack_cli(bert.repo, "load", "bert.gitpack", env=bert.env)
    finally:
        git(bert.repo, "config", "--unset-all", "gitpack.allow")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "git config gitpack.allow entry 'not a name'" in proc.stderr


# ----------------------------------------------------------------------------- the policy itself
def test_allow_entries_exact_dotted_and_package():
    allowed = parse_allow(["mylib.layers:Norm", "other.mod.Thing", "transformers", ("x.y", "Z")])
    assert allowed.exact == {("mylib.layers", "Norm"), ("other.mod", "Thing"), ("x.y", "Z")}
    assert allowed.packages == {"other.mod.Thing", "transformers"}
    policy = Policy(allowed)
    assert policy.category("other.mod", "Thing") == TRUSTED  # the dotted form scan prints is an exact allow
    assert policy.category("transformers.models.bert.modeling_bert", "BertModel") == CLASS  # a package: never TRUSTED
    assert policy.from_package("transformers.models.bert.modeling_bert", "BertModel")
    assert not policy.allows("transformersx", "Thing") and not policy.allows("trans", "Thing")
    assert not policy.allows("transformers", "a.b")  # no attribute walking through a package allow
    for bad in (["os:system; rm"], ["a b"], ["mod:"], [":Name"], [("a",)]):
        with pytest.raises(PolicyError):
            parse_allow(bad)


def test_a_package_allow_admits_only_plain_classes_defined_there():
    policy = Policy(["json", "os", "subprocess", "tempfile"])
    from json.decoder import JSONDecoder

    assert policy.find_class("json.decoder", "JSONDecoder") is JSONDecoder
    cases = [
        (("json", "dumps"), "is not a class"),  # a function
        (("json", "JSONDecodeError"), "not a class defined in json"),  # a re-export (of json.decoder's)
        (("os", "path"), "is a module"),  # a module
        (("subprocess", "Popen"), "defines its own __del__"),  # state it would act on as it is collected
        (("tempfile", "SpooledTemporaryFile"), "defines its own"),  # (io's __new__ and __del__)
    ]
    for (module, name), fragment in cases:
        with pytest.raises(PolicyError, match=fragment):
            policy.find_class(module, name)


# ----------------------------------------------------------------------------- forged archives
ALLOW_TRANSFORMERS = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "gitpack.allow",
                      "GIT_CONFIG_VALUE_0": "transformers", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def _transformers():
    pytest.importorskip("transformers")


def test_a_package_allow_never_calls_a_function_of_the_package(project, tmp_path, _transformers):  # noqa: F811
    # transformers' own helper, called by REDUCE with the attacker's arguments.
    data = asm.program(asm.call(asm.glob("transformers.utils.hub", "cached_file"), asm.s(str(tmp_path / "x")),
                                asm.s("config.json")))
    attempt(project, tmp_path, data, "only ever built empty", extra_env=ALLOW_TRANSFORMERS, timeout=240)


def test_a_package_allow_never_builds_a_class_with_arguments(project, tmp_path, _transformers):  # noqa: F811
    config = asm.glob("transformers.models.bert.configuration_bert", "BertConfig")
    data = asm.program(asm.new(config, asm.i(30000)))  # NEWOBJ with arguments (REDUCE is refused as above)
    attempt(project, tmp_path, data, "with arguments", extra_env=ALLOW_TRANSFORMERS, timeout=240)


def _allow(entry: str) -> dict:
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "gitpack.allow", "GIT_CONFIG_VALUE_0": entry}


def test_a_package_allow_never_admits_a_function_as_a_value(project, tmp_path):  # noqa: F811
    # A function held as a value (a model would call it later): a package allow admits classes only.
    data = asm.program(asm.dct((asm.s("act"), asm.glob("json", "loads"))))
    attempt(project, tmp_path, data, "is not a class", extra_env=_allow("json"))


def test_a_package_allow_refuses_classes_that_are_not_plain(project, tmp_path):  # noqa: F811
    # `git config gitpack.allow subprocess`: Popen is a class of it, but an empty Popen given state would act on
    # that state in its __del__.
    popen = asm.build(asm.new(asm.glob("subprocess", "Popen")),
                      asm.dct((asm.s("_child_created"), asm.TRUE), (asm.s("pid"), asm.i(1))))
    attempt(project, tmp_path, asm.program(popen), "defines its own __del__", extra_env=_allow("subprocess"))
    # And a module object is never admitted, however it was allowed (BUILD on it would rewrite the module).
    attempt(project, tmp_path, asm.program(asm.new(asm.glob("os", "path"))), "is a module", extra_env=_allow("os.path"))


def test_allow_in_config_and_flags_reach_scan_and_save(repo):
    """`gitpack scan` counts configured allows as a load here would; a save warns only about what a load here
    would refuse."""
    (repo / "m.py").write_text("import ipaddress\n\ndef build():\n    return {'addr': ipaddress.IPv4Address('192.0.2.1')}\n")
    proc = gitpack_cli(repo, "save", "m:build", "-o", "a.gitpack")
    assert "warning: the default load policy will refuse global ipaddress.IPv4Address" in proc.stderr
    assert "--allow ipaddress:IPv4Address" in proc.stderr
    assert "--allow ipaddress " not in proc.stderr  # IPv4Address is called with arguments: no package alternative
    assert gitpack_cli(repo, "scan", "a.gitpack").returncode == 1
    assert gitpack_cli(repo, "scan", "a.gitpack", "--allow", "ipaddress.IPv4Address").returncode == 0
    git(repo, "config", "--add", "gitpack.allow", "ipaddress:IPv4Address")
    assert gitpack_cli(repo, "scan", "a.gitpack").returncode == 0
    proc = gitpack_cli(repo, "save", "m:build", "-o", "b.gitpack")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    proc = run(repo, sys.executable, "-c", "import gitpack, m; print(gitpack.load('b.gitpack')['addr'])")
    assert proc.stdout.strip() == "192.0.2.1", proc.stderr

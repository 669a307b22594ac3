"""The environment a save records: the libraries the pickle's globals come from, with their versions.

A transformers upgrade can change what a loaded model computes, so the archive of a real transformers model
(:func:`conftest.bert`) records transformers' version, `inspect` shows it, and `diff` reports it changed (the
recorded environment of a copy edited, as an older save would have it).  Nothing is unpickled for any of it.
"""

from __future__ import annotations

import json
from importlib import metadata

from conftest import gitpack_cli
from forging import rewrite_manifest

from gitpack import environment


def test_the_distributions_of_referenced_modules_are_found_without_the_standard_library():
    assert environment.distributions_of(["collections", "builtins", "torch._utils", "numpy.core.multiarray"]) == []
    found = environment.distributions_of(["dill._dill", "pytest", "_pytest.python", "__main__", "gitpack"])
    assert "pytest" in found and "gitpack" not in found and "dill" not in found  # dill is always recorded


def test_inspect_shows_the_transformers_version(bert):
    proc = gitpack_cli(bert.repo, "inspect", "bert.gitpack", "--json", env=bert.env)
    assert proc.returncode == 0, proc.stderr
    packages = json.loads(proc.stdout)["environment"]["packages"]
    assert packages["transformers"] == metadata.version("transformers")
    assert packages["torch"] == metadata.version("torch")
    shown = gitpack_cli(bert.repo, "inspect", "bert.gitpack", env=bert.env).stdout
    assert f"transformers {metadata.version('transformers')}" in shown.replace("\n│", "").replace("  ", " ")


def test_diff_reports_a_changed_library_version(bert, tmp_path):
    current = metadata.version("transformers")
    old = rewrite_manifest(bert.archive, tmp_path / "old.gitpack",
                           lambda m: m["environment"]["packages"].update(transformers="4.30.0"))
    proc = gitpack_cli(bert.repo, "diff", str(old), "bert.gitpack", env=bert.env)
    assert proc.returncode == 0, proc.stderr
    assert f'  ~ transformers: "4.30.0" -> "{current}"' in proc.stdout.splitlines(), proc.stdout
    report = json.loads(gitpack_cli(bert.repo, "diff", str(old), "bert.gitpack", "--json", env=bert.env).stdout)
    assert [(c["label"], c["old"], c["new"]) for c in report["environment"]] == [("transformers", "4.30.0", current)]
    # Against the working tree and this environment: the version installed now.
    proc = gitpack_cli(bert.repo, "diff", str(old), env=bert.env)
    assert f'  ~ transformers: "4.30.0" -> "{current}"' in proc.stdout.splitlines(), proc.stdout
    assert "transformers" not in gitpack_cli(bert.repo, "diff", "bert.gitpack", env=bert.env).stdout

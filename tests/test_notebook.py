"""Models built in a notebook: a real Jupyter kernel (``ipykernel`` driven by ``nbclient``) runs the cells, and a
plain ``python`` process loads what it saved, without trust.  About 15 s on a 2-core machine."""

from __future__ import annotations

import json
import sys

import nbformat
from conftest import commit_files, git, gitpack_cli, run_python
from nbclient import NotebookClient

import gitpack

CELLS = [
    "import gitpack\nimport torch\nimport torch.nn as nn\nfrom pathlib import Path",
    # The model class and a lambda live in cells, not in any file.
    "class Net(nn.Module):\n"
    "    def __init__(self, d=4):\n"
    "        super().__init__()\n"
    "        self.lin = nn.Linear(d, 2)\n"
    "\n"
    "    def forward(self, x):\n"
    "        return self.post(torch.tanh(self.lin(x)))\n"
    "\n"
    "\n"
    "shift = lambda t: t + 1.5",
    "%time x = torch.ones(1, 4)",  # a magic: IPython turns it into a call, skipped at load
    "Path('side_effect.txt').write_text('the cell ran')  # must not run again at load\n"
    "torch.manual_seed(0)\n"
    "model = Net()\n"
    "model.post = shift\n"
    "print(model(x).tolist())",
    "info = gitpack.save(model, 'nb.gitpack', params={'d': 4})\nprint(info.commit)",
]


def _run_notebook(repo, cells, name="explore.ipynb"):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbformat.write(nb, str(repo / name))
    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(repo)}})
    # Jupyter tells the kernel which notebook it runs through JPY_SESSION_NAME; so does this test.
    client.execute(env={**_env(), "JPY_SESSION_NAME": str(repo / name)})
    outputs = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                raise AssertionError("\n".join(out.get("traceback", [])))
            if out.get("name") == "stdout":
                outputs.append(out["text"])
    return outputs


def _env():
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = ":".join(p for p in sys.path if p)
    return env


def test_a_model_defined_in_a_notebook_cell_loads_in_plain_python_without_trust(repo):
    commit_files(repo, {".gitignore": "*.gitpack\nside_effect.txt\n.ipynb_checkpoints/\n"})
    printed = _run_notebook(repo, CELLS)
    expected = json.loads([o for o in printed if o.startswith("[[")][0])
    commit = [o for o in printed if len(o.strip()) == 40][0].strip()
    (repo / "side_effect.txt").unlink()

    manifest = gitpack.inspect(repo / "nb.gitpack")
    assert manifest["by_value_code"] == []  # no bytecode in the archive
    notebook = manifest["notebook"]
    assert notebook["notebook"] == "explore.ipynb" and notebook["cells"] == len(CELLS)
    module = notebook["module"]
    assert manifest["object"]["type"] == f"{module}:Net" and manifest["scripts"] == [module]
    pinned = git(repo, "show", f"{commit}:{notebook['file']}")
    assert "class Net(nn.Module):" in pinned and "shift = lambda t: t + 1.5" in pinned
    assert "%time" not in pinned  # the magic became Python (and is skipped at load)
    assert git(repo, "show", f"{commit}:explore.ipynb")  # the notebook file itself is in the snapshot too

    loaded = run_python(repo, "import json, torch, gitpack\n"
                              "m = gitpack.load('nb.gitpack')\n"
                              "print(json.dumps(m(torch.ones(1, 4)).tolist()))\n"
                              "print(type(m).__module__)")
    assert loaded.returncode == 0, loaded.stderr
    out, module_name = loaded.stdout.splitlines()
    assert json.loads(out) == expected
    assert module_name.endswith(f".{module}")
    assert not (repo / "side_effect.txt").exists()  # the load ran the definitions, not the cells
    scanned = gitpack_cli(repo, "scan", "nb.gitpack")
    assert scanned.returncode == 0, scanned.stdout + scanned.stderr
    shown = gitpack_cli(repo, "inspect", "nb.gitpack")
    assert f"notebook {len(CELLS)} cells from explore.ipynb" in " ".join(shown.stdout.split())


def test_code_with_no_source_at_all_stays_by_value_behind_trust(repo):
    commit_files(repo, {".gitignore": "*.gitpack\n"})
    cells = ["import gitpack",
             "exec('def made():\\n    return 41 + 1')  # a function whose source nobody kept\n"
             "fn = made\n"
             "try:\n"
             "    gitpack.save({'fn': fn}, 'exec.gitpack')\n"
             "    print('saved')\n"
             "except gitpack.GitpackError as exc:\n"
             "    print('refused', exc)"]
    printed = _run_notebook(repo, cells, "exec.ipynb")
    assert printed == ["saved\n"]
    manifest = gitpack.inspect(repo / "exec.gitpack")
    assert manifest["by_value_code"] == ["made"]
    refused = run_python(repo, "import gitpack; gitpack.load('exec.gitpack')")
    assert refused.returncode != 0 and "--trust" in refused.stderr
    trusted = run_python(repo, "import gitpack; print(gitpack.load('exec.gitpack', trust=True)['fn']())")
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.strip() == "42"


def test_an_object_built_before_its_cell_was_edited_and_run_again_is_refused_as_stale(repo):
    """The notebook module holds every cell as run, and a load gets a name's last definition: an object of an
    earlier one would silently run other code, so the save refuses and says what to do."""
    commit_files(repo, {".gitignore": "*.gitpack\n"})
    cells = ["import gitpack",
             "class Scale:\n    def __call__(self, x):\n        return x * 2",
             "old = Scale()",
             "class Scale:\n    def __call__(self, x):\n        return x * 3",
             "try:\n"
             "    gitpack.save(old, 'old.gitpack')\n"
             "except gitpack.GitpackError as exc:\n"
             "    print(type(exc).__name__, exc)\n"
             "gitpack.save(Scale(), 'new.gitpack')\n"
             "print('saved new')"]
    refused, saved = "".join(_run_notebook(repo, cells, "edit.ipynb")).splitlines()
    assert refused.startswith("StaleCodeError") and "Scale.__call__ (code differs)" in refused
    assert "re-run the cells that build it" in refused
    assert saved == "saved new" and not (repo / "old.gitpack").exists()
    loaded = run_python(repo, "import gitpack; print(gitpack.load('new.gitpack')(5))")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "15"

"""The source of each module as imported (gitpack.capturing.sources), in real fresh interpreters: with and
without a valid .pyc, edited before the reader got to it, in a forked child, and never for libraries."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import run

PROBE = '''\
import json, os, sys, time
sys.path.insert(0, os.getcwd())
import gitpack
from gitpack.capturing import sources
import mymod
path = os.path.abspath(mymod.__file__)
original = open(path, "rb").read()
{between}
out = {{"same": sources.imported_source(path) == original, "known": sources.imported_source(path) is not None,
       "library": sources.imported_source(json.__file__) is not None}}
print(json.dumps(out))
'''

MODULE = "def f():\n    return 1\n"


def _probe(tmp_path, between="", *, pyc: bool, env=None):
    (tmp_path / "mymod.py").write_text(MODULE)
    if pyc:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tmp_path / "mymod.py")], check=True)
    done = run(tmp_path, sys.executable, "-c", PROBE.format(between=between),
               env={"PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


EDIT_LATER = '''\
time.sleep(0.3)  # the reader has read it by now
with open(path, "a") as fh:
    fh.write("# edited after the import\\n")
'''

EDIT_AT_ONCE = '''\
with open(path, "a") as fh:  # before the reader (which waits for imports to pause) read it
    fh.write("# edited at once\\n")
'''


def test_a_module_loaded_from_its_pyc_is_read_just_after_and_kept_as_imported(tmp_path):
    assert _probe(tmp_path, EDIT_LATER, pyc=True) == {"same": True, "known": True, "library": False}


def test_a_module_compiled_from_source_keeps_the_bytes_python_compiled(tmp_path):
    assert _probe(tmp_path, EDIT_AT_ONCE, pyc=False) == {"same": True, "known": True, "library": False}


def test_a_file_edited_before_it_could_be_read_is_unknown_rather_than_wrong(tmp_path):
    # The .pyc was validated against the file's size and time; the edit changes both, so the bytes read after
    # it are not what was imported, and gitpack says it does not know rather than pinning the edit.
    assert _probe(tmp_path, EDIT_AT_ONCE, pyc=True) == {"same": False, "known": False, "library": False}


FORK = '''\
pid = os.fork()  # at once: the parent's reader has not read mymod yet
if pid == 0:
    sources.wait()  # the child has no reader thread of its own; waiting must not hang
    os._exit(0 if sources.imported_source(path) == original else 3)
_, status = os.waitpid(pid, 0)
assert os.WEXITSTATUS(status) == 0, status
'''


def test_a_forked_child_reads_what_its_parent_had_not_read_yet(tmp_path):
    assert _probe(tmp_path, FORK, pyc=True)["same"] is True


ASLEEP = '''\
import json, os, sys, time
sys.path.insert(0, os.getcwd())
import gitpack
from gitpack.capturing import sources
sources._IDLE_POLLS = 2  # asleep after 0.1 s of no imports, not 5 s
deadline = time.monotonic() + 10
while not sources._reader_asleep and time.monotonic() < deadline:
    time.sleep(0.01)
asleep = sources._reader_asleep
import mymod
path = os.path.abspath(mymod.__file__)
original = open(path, "rb").read()
time.sleep(0.5)  # the import woke the reader, which has read the file by now
with open(path, "a") as fh:
    fh.write("# edited after the reader read it\\n")
print(json.dumps({"asleep": asleep, "same": sources.imported_source(path) == original}))
'''


def test_an_import_after_a_quiet_spell_wakes_the_reader(tmp_path):
    # The reader polls while imports may come and blocks after a quiet spell; the next import must wake it,
    # or the file would first be read by the save, after the edit, and its source as imported be lost.
    (tmp_path / "mymod.py").write_text(MODULE)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tmp_path / "mymod.py")], check=True)
    done = run(tmp_path, sys.executable, "-c", ASLEEP, env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"asleep": True, "same": True}

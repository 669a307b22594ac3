"""Red-team of the trust gate: forged archives that get past it, and strong attacks it already stops.

Same setting as :mod:`test_gate`: every archive is forged as an attacker who can push to the team's remote
would forge it (:mod:`forging`: every digest recomputed, a vouching commit on gitpack's branch, manifest
included), and is loaded under the default policy in a process of its own.  Each test asserts the SAFE
behaviour, so each test in the first part FAILS on the gate as it stands (the docstring says what happens
instead: a marker file, a SIGSEGV, gigabytes of memory, a hang, a file outside the cache, a replaced method).

What "safe" means here (:func:`expect_refused`):

* the load ends with a one-line ``gitpack: error:`` (exit 1): no signal, no hang, no traceback;
* no marker file appears, also when the loaded object is then used as the attack intends (for attacks that
  silently replace a library method: the method is called after the load);
* nothing is written outside gitpack's cache (the working tree and git state, ``$HOME`` and ``$TMPDIR``);
* where the gate's dry run can see the construct, ``gitpack scan`` refuses it too (exit 1), quickly.

Run against the worktree's code: ``PYTHONPATH=<worktree> python3 -m pytest tests/test_gate_redteam.py`` (the
children run inside the project's repository, so an installed gitpack elsewhere would be imported instead).
"""

from __future__ import annotations

import io
import subprocess
import sys
import types
from pathlib import Path

import pickle_asm as asm
import pytest
import test_gate
from conftest import SEED, commit_files, git, init_repo, run, user_git_state
from forging import forge
from test_gate import attempt

import gitpack
from gitpack.archive import ArchiveReader

# ----------------------------------------------------------------------------- helpers
# Children run in the project's repository, not here: make them import the gitpack under test.
CODE_ENV = {"PYTHONPATH": str(Path(gitpack.__file__).resolve().parents[1])}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """test_gate's victim project (pkg.model.Box, pkg.helpers.save_text / Logger, the unused script
    pkg.prepare_data) and a legit archive saved from it."""
    root = tmp_path_factory.mktemp("redteam")
    repo = init_repo(root / "repo")
    commit_files(repo, {"pkg/__init__.py": "", "pkg/model.py": test_gate.MODEL, "pkg/helpers.py": test_gate.HELPERS,
                        "pkg/prepare_data.py": test_gate.PREPARE, "save.py": test_gate.SAVE,
                        ".gitignore": "*.gitpack\n"}, "model")
    proc = run(repo, sys.executable, "save.py", str(root / "base.gitpack"),
               env={"GITPACK_CACHE": str(root / "cache"), **CODE_ENV})
    assert proc.returncode == 0, proc.stderr
    return types.SimpleNamespace(repo=repo, base=root / "base.gitpack", root=root)


CHILD = r'''
import os, resource, sys
archive, use = sys.argv[1], sys.argv[2]
import gitpack
from gitpack.errors import GitpackError
try:
    obj = gitpack.load(archive)
except GitpackError as exc:
    print("gitpack: error:", exc, file=sys.stderr)
    sys.exit(1)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(f"LOADED a {type(obj).__qualname__} (peak RSS {peak} MB)", flush=True)
if use:
    try:
        exec(use, {"obj": obj, "MARKER": os.environ["GATE_MARKER"]})
    except Exception as exc:
        print(f"using it raised {type(exc).__name__}: {str(exc)[:200]}", flush=True)
sys.exit(0)
'''


def _entries(directory: Path) -> list[str]:
    """Every file and directory under *directory* (a directory created there counts as a write)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _scan(project, archive: Path, env: dict, timeout: int) -> None:
    try:
        scan = run(project.repo, sys.executable, "-m", "gitpack", "scan", str(archive), env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`gitpack scan` (the gate's dry run alone) ran over {timeout} s on a "
                    f"{archive.stat().st_size // 1024} KB archive: the gate itself hangs")
    assert scan.returncode == 1, f"`gitpack scan` does not flag it (exit {scan.returncode}):\n{scan.stdout[-1500:]}"


def expect_refused(project, tmp_path, data: bytes, *, use: str = "", manifest_changes: dict | None = None,
                   timeout: int = 60, scan: bool = True, scan_first: bool = False, scan_timeout: int = 60) -> str:
    """Forge an archive around *data*, load it in a child process and assert the safe outcome (module docstring).

    *use*: Python run in the child after a load that succeeded (``obj`` is the loaded object, ``MARKER`` the
    marker path): how the attack would fire.  *scan_first*: run ``gitpack scan`` before the load (for
    attacks whose load would hang or eat memory, so the test fails fast while the gate lets them through).
    """
    archive = forge(project.base, tmp_path / "evil.gitpack", project.repo, data, manifest_changes=manifest_changes)
    marker = tmp_path / "MARKER"
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    env = {"GATE_MARKER": str(marker), "HOME": str(home), "TMPDIR": str(scratch),
           "GITPACK_CACHE": str(tmp_path / "cache"), **CODE_ENV}
    before = (user_git_state(project.repo), _entries(home), _entries(scratch))
    if scan and scan_first:
        _scan(project, archive, env, scan_timeout)
    try:
        proc = run(project.repo, sys.executable, "-c", CHILD, str(archive), use, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the load ran over {timeout} s (a hang)")
    outcome = f"exit {proc.returncode}\nstdout: {proc.stdout[-1500:]}\nstderr: {proc.stderr[-1500:]}"
    assert proc.returncode >= 0, f"the loader was killed by signal {-proc.returncode}: {outcome}"
    assert not marker.exists(), f"the payload ran (marker: {marker.read_text()[:80]!r}): {outcome}"
    assert proc.returncode == 1, f"the archive loaded: {outcome}"
    assert proc.stderr.startswith("gitpack: error:") and "Traceback" not in proc.stderr, outcome
    after = (user_git_state(project.repo), _entries(home), _entries(scratch))
    assert after == before, f"something was written outside the cache: {set(after[2]) - set(before[2])}"
    if scan and not scan_first:
        _scan(project, archive, env, scan_timeout)
    return proc.stderr


def _np_dtype(code: str) -> bytes:
    """numpy.dtype(code, align=False, copy=True)."""
    return asm.call(asm.glob("numpy", "dtype"), asm.s(code), asm.FALSE, asm.TRUE)


def _dtype_state(byteorder: str, subarray: bytes = asm.NONE, elsize: int = -1, alignment: int = -1,
                 names: bytes = asm.NONE, fields: bytes = asm.NONE) -> bytes:
    return asm.tup(asm.i(3), asm.s(byteorder), subarray, names, fields, asm.i(elsize), asm.i(alignment), asm.i(0))


def _partial(*args: str) -> bytes:
    """functools.partial(pkg.helpers.save_text, *args), built as pickle builds a partial (REDUCE, then BUILD)."""
    fn = asm.snapshot_function("pkg.helpers", "save_text")
    return asm.build(asm.call(asm.glob("functools", "partial"), fn),
                     asm.tup(fn, asm.tup(*(asm.s(a) for a in args)), asm.NONE, asm.NONE))


def _marker(tmp_path) -> str:
    return str(tmp_path / "MARKER")


def _module_entry(name: str) -> dict:
    return {"path": name.replace(".", "/") + ".py", "root": ""}


# ============================================================================= bypasses (each FAILS today)
# ----------------------------------------------------------------------------- crash
def test_numpy_dtype_state_cannot_make_a_subarray_larger_than_its_item(project, tmp_path):
    """SIGSEGV.  A ``V8`` dtype is given, by BUILD, the sub-array ``(float64, (10**8,))`` while its state keeps
    ``elsize=8``; numpy takes both.  ``_frombuffer`` over 8 bytes then yields an array of 10**8 float64 (800 MB
    of out-of-bounds view, shape ``(1, 10**8)``), and ``_rebuild_device_tensor_from_numpy(.., float32, ..)``
    copies it: the loader dies reading unmapped memory.  rules._dtype_state checks the sub-array's dtype and
    shape but never that ``elsize`` equals ``itemsize * prod(shape)`` (nor that field offsets fit)."""
    f8 = asm.build(_np_dtype("f8"), _dtype_state("<"))
    void = asm.build(_np_dtype("V8"), _dtype_state("|", asm.tup(f8, asm.tup(asm.i(10**8))), elsize=8, alignment=1))
    array = asm.call(asm.glob("numpy._core.numeric", "_frombuffer"), asm.b(b"\x41" * 8), void,
                     asm.tup(asm.i(1), asm.i(10**8)), asm.s("C"))
    tensor = asm.call(asm.glob("torch._utils", "_rebuild_device_tensor_from_numpy"), array,
                      asm.glob("torch", "float32"), asm.s("cpu"), asm.FALSE)
    expect_refused(project, tmp_path, asm.program(tensor))


# ----------------------------------------------------------------------------- memory
def test_a_numpy_scalar_cannot_size_an_allocation(project, tmp_path):
    """A 150-byte pickle allocates about 1 GB.  ``numpy.dtype('V8')`` gets ``elsize=500_000_000`` from its
    BUILD state (or simply ``dtype('V999999999')``: the code regex allows 9 digits), and
    ``numpy._core.multiarray.scalar(dtype)`` with no bytes argument mallocs and zero-fills ``elsize`` bytes, then
    copies them into the void scalar.  The memo repeats it at 2 bytes a time.  rules._np_scalar admits a
    one-argument call and rules._numpy_dtype / _dtype_state put no bound on the item size."""
    scalar = asm.glob("numpy._core.multiarray", "scalar")
    dtype = asm.build(_np_dtype("V8"), _dtype_state("|", elsize=500_000_000, alignment=1)) + asm.memo_put(0)
    expect_refused(project, tmp_path, asm.program(asm.lst(asm.call(scalar, dtype))), scan_first=True)


def test_library_classes_are_not_called_even_without_arguments(project, tmp_path):
    """An 80-byte pickle allocates ~180 MB (and 0.7 s of CPU) per REDUCE: ``torch.nn.Transformer()``.  "Library
    classes are built empty" holds for NEWOBJ (``cls.__new__``), but REDUCE of a CLASS with no arguments runs
    ``__init__`` with its defaults: d_model=512, 6+6 layers, 44 M parameters, initialised.  rules.check_call
    (category CLASS) only refuses arguments; it should refuse REDUCE (``how == 'call'``) on a CLASS altogether
    (pickle itself builds library objects with NEWOBJ / copyreg)."""
    transformer = asm.glob("torch.nn.modules.transformer", "Transformer") + asm.memo_put(0)
    data = asm.program(asm.lst(asm.call(transformer), asm.call(b"h\x00"), asm.call(b"h\x00")))
    expect_refused(project, tmp_path, data, scan_first=True)


# ----------------------------------------------------------------------------- hangs
def test_rnn_state_cannot_drive_its_setstate_loop(project, tmp_path):
    """A 200-byte pickle hangs the loader (quadratic: 5,000 layers take 4 s, 20,000 take 34 s, 10**6 would take
    a day).  BUILD on an ``nn.LSTM`` runs ``RNNBase.__setstate__``, which, when ``_all_weights[0][0]`` is not a
    str (the pre-1.x format), rebuilds the weight names for ``num_layers`` layers, each ``+=`` going through
    ``RNNBase.__setattr__``'s linear scan of ``_flat_weights_names``.  The keys are plain attribute names that
    shadow nothing, so rules.check_state lets them through: library ``__setstate__`` overrides run on
    attacker ints unchecked."""
    state = asm.dct((asm.s("_all_weights"), asm.lst(asm.lst(asm.i(0)))), (asm.s("num_layers"), asm.i(10**6)),
                    (asm.s("bidirectional"), asm.TRUE), (asm.s("bias"), asm.TRUE), (asm.s("proj_size"), asm.i(1)))
    data = asm.program(asm.build(asm.new(asm.glob("torch.nn.modules.rnn", "LSTM")), state))
    expect_refused(project, tmp_path, data, scan_first=True, timeout=30)


def test_a_fraction_cannot_be_parsed_from_a_huge_exponent(project, tmp_path):
    """A 60-byte pickle hangs the loader: ``fractions.Fraction('1e1000000000')`` computes ``10**1000000000``
    (1e7 takes 6 s here, growing as n**1.6).  rules._plain_args admits any str for Fraction (and Decimal);
    the exponent (and the size of int arguments, whose gcd is quadratic) must be bounded, or Fraction
    taken only from two small ints."""
    data = asm.program(asm.call(asm.glob("fractions", "Fraction"), asm.s("1e1000000000")))
    expect_refused(project, tmp_path, data, scan_first=True, timeout=30)


def test_the_dry_run_is_not_quadratic_in_colliding_int_keys(project, tmp_path):
    """The gate's own dry run hangs: a set of 60,000 ints that are all multiples of ``2**61 - 1`` (so
    ``hash()`` is 0 for each; int hashing is not randomised) makes every insertion probe all earlier ones:
    0.5 s for 10k, 5 s for 30k, ~21 s for 60k (720 KB), minutes for a few MB.  Dry run and real run both
    build the set with real ints.  Nothing in opcodes.check / gate.Trace.run bounds it; the byte pass could
    count the hashes of numeric constants (ints, floats) and refuse a pickle where many distinct ones collide."""
    modulus = 2**61 - 1
    items = b"".join(asm.i(k * modulus) for k in range(1, 60_001))
    data = asm.program(b"\x8f" + asm.MARK + items + b"\x90")  # EMPTY_SET, MARK, ..., ADDITEMS
    expect_refused(project, tmp_path, data, scan_first=True, scan_timeout=8, timeout=8)


def test_nested_pickle_scanning_is_bounded(project, tmp_path):
    """The gate's own report-only scan of nested pickles hangs: a 100 KB nested pickle (50,000 NONE/POP
    opcodes) kept in the memo and passed 2,000 times to a refused global (2 bytes of BINGET each) is dry-run
    2,000 times: ~36 s from 114 KB, 15 ms more per 8 bytes added (and each nested pickle can do the same one
    level down, up to MAX_NESTING=3).  gate.Trace._scan_nested scans every argument of every refused call
    again: it should scan each distinct bytes object once and bound the total bytes scanned."""
    inner = asm.program(b"N0" * 50_000 + asm.NONE)
    data = asm.program(asm.glob("builtins", "eval") + asm.memo_put(0) + asm.b(inner) + asm.memo_put(1) + b"0"
                       + (asm.call(b"h\x00", b"h\x01") + b"0") * 2_000 + asm.NONE)
    expect_refused(project, tmp_path, data, scan_first=True, scan_timeout=8, timeout=8)


# ----------------------------------------------------------------------------- a file outside the cache
def test_a_storage_dtype_name_is_checked_before_torch_is_asked_for_it(project, tmp_path):
    """``$TMPDIR/torchinductor_<user>`` is created (and ~2 s of imports run) before the load is refused.  The
    storage persistent id ``('storage', '_dynamo', ...)`` passes rules.persistent_ref (any str is a dtype), and
    tensors.StorageLoader.load does ``getattr(torch, dtype_name)``: torch's module ``__getattr__`` imports its
    lazy submodules ``_dynamo`` / ``_inductor`` / ``_export`` / ``onnx`` by that name, and importing
    ``torch._dynamo`` makes the inductor cache directory.  The dtype must come from a fixed table (the
    policy's _TORCH_DTYPES), checked in the dry run; the location likewise."""
    pid = asm.pid(asm.s("storage"), asm.s("_dynamo"), asm.s("0"), asm.s("cpu"), asm.i(4))
    expect_refused(project, tmp_path, asm.program(pid))


# ----------------------------------------------------------------------------- snapshot code the object does not use
def test_the_manifest_cannot_widen_the_modules_a_load_imports(project, tmp_path):
    """The marker appears: ``pkg/prepare_data.py`` (a script with top-level effects that the saved object never
    used) runs.  The pickle names ``('module', 'pkg.prepare_data')`` and the forged manifest simply lists it
    under ``modules``: the attacker's vouching commit vouches for the manifest digest too, so the "modules the
    manifest records as used" check (rules._unrecorded, Resolver._check_recorded) is attacker-controlled.
    The set of importable modules has to come from something the attacker cannot write (e.g. refuse snapshot
    modules with top-level side effects, judged from the tree's source, unless trusted)."""
    with ArchiveReader(project.base) as reader:
        modules = dict(reader.manifest["modules"])
    modules["pkg.prepare_data"] = _module_entry("pkg.prepare_data")
    expect_refused(project, tmp_path, asm.program(asm.snapshot_module("pkg.prepare_data")),
                   manifest_changes={"modules": modules}, scan=False)


def test_the_manifest_cannot_allow_a_snapshot_to_shadow_an_installed_package(project, tmp_path):
    """The marker appears (and the load dies with a traceback): the pushed tree adds a root ``torch.py`` as in
    test_gate's shadowing test, and the forged manifest adds ``"torch"`` to ``imported``.
    SnapshotNamespace._check_shadowing lets through every top in ``shadows_ok``, which namespace_for fills
    from the manifest's ``imported`` and ``modules``: attacker data.  The same list silences scan's check."""
    repo = project.repo
    with ArchiveReader(project.base) as reader:
        data, tree, imported = reader.read("pickle"), reader.manifest["tree"], list(reader.manifest["imported"])
    evil = "import os, pathlib\npathlib.Path(os.environ['GATE_MARKER']).write_text('fake torch ran')\n"
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input=evil, capture_output=True,
                          text=True, check=True).stdout.strip()
    entries = git(repo, "ls-tree", tree).splitlines() + [f"100644 blob {blob}\ttorch.py"]
    new_tree = subprocess.run(["git", "mktree"], cwd=repo, input="\n".join(entries) + "\n", capture_output=True,
                              text=True, check=True).stdout.strip()
    expect_refused(project, tmp_path, data, manifest_changes={"tree": new_tree, "imported": imported + ["torch"]})


# ----------------------------------------------------------------------------- library methods silently replaced
def test_bytesio_state_may_not_replace_its_methods(project, tmp_path):
    """``io.BytesIO().read`` is a partial of the victim's ``save_text``: calling ``read()`` writes the marker.
    BytesIO's ``__setstate__`` puts state[2] in the instance ``__dict__`` (by reference), where it beats the
    type's method descriptors.  rules._bytesio_state checks that its keys are plain names but, unlike the
    generic state rule, makes no Deferred 'state' shadowing check (nor does rules._sentencepiece_state)."""
    state = asm.tup(asm.b(b"hello"), asm.i(0), asm.dct((asm.s("read"), _partial(_marker(tmp_path), "pwned"))))
    data = asm.program(asm.build(asm.new(asm.glob("_io", "BytesIO")), state))
    expect_refused(project, tmp_path, data, use="obj.read()")


def test_sentencepiece_options_may_not_replace_its_methods(project, tmp_path):
    """``SentencePieceProcessor._resolve_return_type`` (a method) becomes ``builtins.str``; any ``_name`` key
    matching ``_[a-z_]+`` is accepted, including ``_processor`` (the C++ object every call goes through).
    rules._sentencepiece_state validates the value types only, never that a key shadows a method."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter((SEED / "corpus.txt").read_text().splitlines()),
                                   model_writer=model, vocab_size=60, minloglevel=2)
    str_type = asm.call(asm.glob("dill._dill", "_load_type"), asm.s("str"))
    state = asm.dct((asm.s("model_proto"), asm.b(model.getvalue())), (asm.s("_resolve_return_type"), str_type))
    data = asm.program(asm.build(asm.new(asm.glob("sentencepiece", "SentencePieceProcessor")), state))
    expect_refused(project, tmp_path, data, use="print('replaced:', obj._resolve_return_type); obj.encode('lorem')")


def test_module_state_may_not_set_compiled_call_impl(project, tmp_path):
    """Calling the loaded ``nn.Linear`` writes the marker.  ``nn.Module._wrapped_call_impl`` (its ``__call__``)
    calls ``self._compiled_call_impl`` whenever it is not None; the class declares it as plain data
    (``_compiled_call_impl = None``), so rules.shadows_method says a state key of that name replaces nothing,
    and a partial of the victim's ``save_text`` becomes the layer's whole forward.  (The same holds for every
    snapshot nn.Module.)  Class-level hooks that are called must count as behaviour."""
    layer = asm.build(asm.new(asm.glob("torch.nn.modules.linear", "Linear")),
                      asm.dct((asm.s("_compiled_call_impl"), _partial(_marker(tmp_path)))))
    expect_refused(project, tmp_path, asm.program(layer), use="obj('written by calling the layer')")


def test_a_state_judged_once_as_data_is_judged_again_once_a_callable_exists(project, tmp_path):
    """Calling the second ``nn.Linear`` writes the marker.  The gate judges a state whose values are all data by
    its class and keys, once: thousands of layers give the same few.  A first Linear given
    ``_compiled_call_impl = None`` (data, fine) makes that entry; the second gives the same key a partial of
    ``save_text``.  A memo keyed on class and keys alone would pass it as already judged."""
    linear = asm.glob("torch.nn.modules.linear", "Linear")
    first = asm.build(asm.new(linear), asm.dct((asm.s("_compiled_call_impl"), asm.NONE)))
    second = asm.build(asm.new(linear), asm.dct((asm.s("_compiled_call_impl"), _partial(_marker(tmp_path)))))
    expect_refused(project, tmp_path, asm.program(asm.tup(first, second)), use="obj[1]('written by the layer')")


def test_the_shadowing_check_is_not_deduplicated_away(project, tmp_path):
    """The second ``nn.Linear``'s ``forward`` is a partial of ``save_text``: calling it writes the marker.
    The gate once deduplicated deferred checks by ``repr(detail)[:200]``; a first Linear given a harmless
    250-character attribute name makes a 'state' check whose repr starts like the second's, whose sorted keys
    are that name and then ``forward``, so the second check is dropped at load.  (``gitpack scan``, which
    dedupes exactly, does refuse it.)"""
    linear = asm.glob("torch.nn.modules.linear", "Linear")
    padding = asm.s("a" * 250)
    first = asm.build(asm.new(linear), asm.dct((padding, asm.NONE)))
    second = asm.build(asm.new(linear), asm.dct((padding, asm.NONE), (asm.s("forward"), _partial(_marker(tmp_path)))))
    expect_refused(project, tmp_path, asm.program(asm.tup(first, second)),
                   use="obj[1].forward('written by forward')")


def _defaultdict_calling(factory: bytes) -> bytes:
    """A defaultdict whose default_factory is set by BUILD slot state, after the factory rule looked."""
    return asm.build(asm.call(asm.glob("collections", "defaultdict")),
                     asm.tup(asm.NONE, asm.dct((asm.s("default_factory"), factory))))


def test_defaultdict_slot_state_cannot_set_the_default_factory(project, tmp_path):
    """The victim's ``save_text`` runs DURING ``gitpack load`` and writes the marker.  rules._defaultdict refuses
    a factory that is not a plain type, but BUILD with slot state ``(None, {'default_factory': partial})``
    sets any factory afterwards: ``default_factory`` is a member descriptor, which rules.shadows_method treats
    as a slot that "state is exactly for", so rules._attribute_state's Deferred check passes.  Library code
    that indexes its state during BUILD fires it: ``RNNBase.__setstate__`` reads ``self._all_weights[0][0]``,
    so an ``nn.LSTM`` whose ``_all_weights`` is that defaultdict calls the factory inside the load.  (A plain
    defaultdict fires on the first missing-key read.)  Fixing RNN state alone is not enough either:
    rules._defaultdict admits any CLASS factory, e.g. ``nn.Transformer``, which the same read would build."""
    factory = _partial(_marker(tmp_path), "written during gitpack load")
    state = asm.dct((asm.s("_all_weights"), _defaultdict_calling(factory)), (asm.s("_flat_weights"), asm.lst()))
    lstm = asm.build(asm.new(asm.glob("torch.nn.modules.rnn", "LSTM")), state)
    expect_refused(project, tmp_path, asm.program(lstm))
    plain = tmp_path / "plain"
    plain.mkdir()
    factory = _partial(_marker(plain), "written at the first missing key")
    expect_refused(project, plain, asm.program(_defaultdict_calling(factory)), use="obj['missing']")


def test_a_tensor_view_cannot_grow_its_storage(project, tmp_path):
    """The archive's 16-byte storage becomes a 4 GB one (10**9 float32; the first in-place op on it makes the
    4 GB resident: measured 4 GB RSS after ``add_(1)``; with ``map_location='cuda'`` the storage is already on
    the device when it grows: measured 4.0 GB of GPU memory allocated at once, torch 2.11+cu130 on an H200.
    Grown by small amounts the new bytes are uninitialised heap: freed data of the process shows in the
    loaded tensor).  ``_rebuild_tensor_v2(storage, 0, (10**9,), (1,), ...)``: torch's ``set_`` does
    not refuse a view past the end of a *resizable* storage, it reallocates it, and the storages
    tensors.StorageLoader hands out are resizable (``torch.empty(n).untyped_storage()``).  rules._rebuild_tensor
    and guards._tensor check that offset, size and stride are non-negative ints, never that
    ``offset + sum((size-1)*stride) + 1`` fits the storage's numel (known from its persistent id)."""
    tensor = asm.call(asm.glob("torch._utils", "_rebuild_tensor_v2"),
                      asm.pid(asm.s("storage"), asm.s("float32"), asm.s("0"), asm.s("cpu"), asm.i(4)),
                      asm.i(0), asm.tup(asm.i(10**9)), asm.tup(asm.i(1)), asm.FALSE, asm.NONE)
    expect_refused(project, tmp_path, asm.program(tensor),
                   use="print('storage bytes after load:', obj.untyped_storage().nbytes())")


# ============================================================================= strong attacks the gate stops
def _np_object_dtype_class_as_dtype() -> bytes:
    # numpy.dtypes.ObjectDType is an allowed CLASS; built empty it *is* dtype('O').  Used where a dtype goes:
    object_dtype = asm.new(asm.glob("numpy.dtypes", "ObjectDType"))
    return asm.call(asm.glob("numpy._core.numeric", "_frombuffer"), asm.b(b"\x41" * 8), object_dtype,
                    asm.tup(asm.i(1)), asm.s("C"))


def _hooks_filled_before_use() -> bytes:
    # backward hooks: an OrderedDict filled with a snapshot function *before* it is passed to the tensor
    hooks = asm.call(asm.glob("collections", "OrderedDict"))
    hooks = hooks + asm.MARK + asm.i(0) + asm.snapshot_function("pkg.helpers", "save_text") + b"u"
    return asm.call(asm.glob("torch._utils", "_rebuild_tensor_v2"),
                    asm.pid(asm.s("storage"), asm.s("float32"), asm.s("0"), asm.s("cpu"), asm.i(4)),
                    asm.i(0), asm.tup(asm.i(4)), asm.tup(asm.i(1)), asm.FALSE, hooks)


def _calling_a_built_partial() -> bytes:
    # REDUCE whose callable is an object the pickle built (a partial of the victim's helper)
    return asm.call(_partial("/tmp/gitpack-redteam-should-not-exist", "pwned"))


def _legacy_function_through_copyreg() -> bytes:
    # copyreg._reconstructor of a legacy ('global', m, q) reference that is a function
    return asm.call(asm.glob("copyreg", "_reconstructor"), asm.pid(asm.s("global"), asm.s("pkg.helpers"),
                                                                   asm.s("save_text")),
                    asm.glob("builtins", "object"), asm.NONE)


def _defaultdict_of_a_snapshot_function() -> bytes:
    # the direct way to the factory that the slot-state bypass above takes: refused
    return asm.call(asm.glob("collections", "defaultdict"), asm.snapshot_function("pkg.helpers", "save_text"))


@pytest.mark.parametrize("data,fragment,scan_fragment", [
    (_np_object_dtype_class_as_dtype(), "numpy's _frombuffer with malformed arguments", None),
    (_hooks_filled_before_use(), "with backward hooks", None),
    (_calling_a_built_partial(), "malformed pickle (TypeError", None),
    (_legacy_function_through_copyreg(), "calls the snapshot function pkg.helpers.save_text", None),
    (_defaultdict_of_a_snapshot_function(), "default factory that is not a plain type", None),
], ids=["numpy ObjectDType class as a dtype", "hooks filled before use", "calling a built partial",
        "legacy function via copyreg", "defaultdict of a snapshot function"])
def test_attacks_the_gate_stops(project, tmp_path, data, fragment, scan_fragment):
    attempt(project, tmp_path, asm.program(data), fragment, scan_fragment=scan_fragment, extra_env=CODE_ENV)

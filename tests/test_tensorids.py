"""The gate's check of tensor persistent ids: exact types, and views that lie inside their storage.

``tensorids.problem`` is written for speed (it runs for every tensor a model names); here it is held to a
plain reference written for clarity, over ids hypothesis builds with the values a forger would try (bools
and floats that compare equal to ints, negative numbers, views one item past the end), and through the
gate on real pickles.
"""

from __future__ import annotations

import io
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitpack.pickling import gate, tensorids
from gitpack.pickling.policy import TORCH_DTYPE_SIZES

GOOD = ("tensor", "float32", "pack-0:64", "cpu", 64, 0, (8, 8), (8, 1), True, "parameter")


def reference(pid: tuple) -> str | None:
    """What the check must decide, written plainly: None (fine), "malformed" or "beyond"."""
    _, dtype, key, location, numel, offset, size, stride, requires_grad, what = pid
    exact = [(dtype, str), (key, str), (location, str), (numel, int), (offset, int), (size, tuple),
             (stride, tuple), (requires_grad, bool), (what, str)]
    if any(type(value) is not wanted for value, wanted in exact):
        return "malformed"
    if any(type(d) is not int for d in size + stride) or len(size) != len(stride):
        return "malformed"
    if what not in ("tensor", "parameter") or dtype not in TORCH_DTYPE_SIZES or numel < 0 \
            or offset < 0 or min(size + stride, default=0) < 0 or not tensorids.LOCATION.fullmatch(location):
        return "malformed"
    last = offset + sum((d - 1) * s for d, s in zip(size, stride, strict=True)) if 0 not in size else offset - 1
    return "beyond" if last >= numel else None


def decided(pid: tuple) -> str | None:
    found = tensorids.problem(pid)
    if found is None:
        return None
    return "beyond" if "beyond its storage" in found else "malformed" if found.startswith("malformed") else found


# what a forger puts where an int belongs: equal to an int, but not one
ints = st.one_of(st.integers(-3, 80), st.sampled_from([True, False, 1.0, 0.0, 2**70, None, "8"]))
dims = st.lists(ints, max_size=4).map(tuple)


@settings(max_examples=1500, deadline=None)
@given(dtype=st.sampled_from(["float32", "int8", "float64", "object", 1, "float32 "]),
       location=st.sampled_from(["cpu", "cuda:0", "CPU", "cpu;rm", "", 0]),
       numel=ints, offset=ints, size=dims, stride=dims,
       requires_grad=st.sampled_from([True, False, 1, 0, None]),
       what=st.sampled_from(["tensor", "parameter", "module", b"tensor", None]))
def test_the_fast_check_decides_what_the_plain_reference_decides(dtype, location, numel, offset, size, stride,
                                                                  requires_grad, what):
    pid = ("tensor", dtype, "pack-0:0", location, numel, offset, size, stride, requires_grad, what)
    assert decided(pid) == reference(pid), pid


@pytest.mark.parametrize("field,value", [
    (4, 64.0), (5, False), (5, 0.0), (6, (8, 8.0)), (7, (8, True)), (7, (8.0, 1)), (8, 1),
])
def test_values_equal_to_the_right_ones_but_of_another_type_are_refused(field, value):
    """``True == 1`` and ``(8, 1.0) == (8, 1)``: a check that compared before it looked at types would pass them."""
    pid = GOOD[:field] + (value,) + GOOD[field + 1:]
    assert pid == GOOD  # the forger's id compares equal to the honest one
    assert tensorids.problem(GOOD) is None
    assert (tensorids.problem(pid) or "").startswith("malformed tensor reference")


def test_a_view_one_item_past_its_storage_is_refused_and_one_that_ends_at_it_is_not():
    ends_at_end = GOOD[:4] + (64, 0, (8, 8), (8, 1)) + GOOD[8:]
    one_past = GOOD[:4] + (64, 1, (8, 8), (8, 1)) + GOOD[8:]
    assert tensorids.problem(ends_at_end) is None
    assert "beyond its storage" in (tensorids.problem(one_past) or "")


def _pickle_naming(*pids: tuple) -> bytes:
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return pids[obj - 1000] if type(obj) is int and obj >= 1000 else None

    out = io.BytesIO()
    Pickler(out, protocol=5).dump([1000 + i for i in range(len(pids))])
    return out.getvalue()


def test_the_gate_refuses_a_pickle_whose_thousandth_tensor_id_is_forged_and_names_every_storage():
    honest = [GOOD[:2] + (f"pack-0:{64 * i}",) + GOOD[3:] for i in range(1000)]
    forged = GOOD[:6] + ((8, 9),) + GOOD[7:]  # 72 items from a 64-item storage
    assert gate.trace(_pickle_naming(*honest)).safe
    trace = gate.trace(_pickle_naming(*honest, forged))
    assert not trace.safe and any("beyond its storage" in v for v in trace.violations)
    assert [s[2] for s in trace.storages] == [p[2] for p in honest] + ["pack-0:64"]
    assert [r.kind for r in trace.refs] == ["tensor"] * 1001

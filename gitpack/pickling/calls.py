"""What each allowed global may be called with: REDUCE and NEWOBJ, judged on the dry run's record.

Only the reconstructors pickle itself uses may be called, every argument
checked (a tensor's storage is one of the archive's, a numpy dtype is never an
object dtype, torch's backward hooks are empty), and value types with
plain-data arguments (``bytes(10**12)`` is not plain data: an int would size
an allocation).  Library classes are built empty (``nn.Linear(20000, 20000)``
from a 2 KB pickle allocated 1.6 GB).  Snapshot classes take arguments only
when they declare that they rebuild that way (checked against the class by
:mod:`.classchecks`); snapshot *functions* are never called.  Persistent ids
are checked here too: their shapes, and that they name only modules the
manifest records.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from . import columns, tensorids
from .policy import CLASS, RECONSTRUCTOR, TORCH_DTYPE_SIZES, TRUSTED, VALUE, VALUE_TYPE
from .standins import Buffer, Deferred, Made, Ref, made_of, ref_of, tensor_ref
from .verdicts import (
    ALLOWED,
    CONTAINERS,
    DOTTED,
    LOCATION,
    QUALNAME,
    SAFE_DTYPE,
    TENSOR_RECONSTRUCTORS,
    Verdict,
    callable_value,
    dtype_itemsize,
    is_dunder,
    is_shape,
    is_storage_ref,
    plain,
    plain_or_container,
    refuse,
    safe_dtype,
    short,
    state_items,
    tensor_fits,
)


# ----------------------------------------------------------------------------- persistent ids
def persistent_ref(pid: Any, modules: frozenset[str] | None) -> tuple[Ref, str | None]:
    """The :class:`Ref` a persistent id stands for, and why it is refused (None when it is fine)."""
    if not isinstance(pid, tuple) or not pid or not isinstance(pid[0], str):
        return Ref("bad", name=short(repr(pid)[:60])), f"malformed persistent id {short(repr(pid)[:60])}"
    kind, rest = pid[0], pid[1:]
    if kind in ("class", "function", "global") and len(rest) == 2 and all(isinstance(p, str) for p in rest):
        module, qualname = rest
        ref = Ref("legacy" if kind == "global" else kind, module, qualname, parts=pid)
        if not (DOTTED.match(module) and QUALNAME.match(qualname)):
            return ref, f"malformed snapshot reference {short(module)}:{short(qualname)}"
        return ref, _unrecorded(module, modules)
    if kind == "module" and len(rest) == 1 and isinstance(rest[0], str):
        ref = Ref("module", rest[0], parts=pid)
        if not DOTTED.match(rest[0]):
            return ref, f"malformed snapshot module name {short(rest[0])}"
        return ref, _unrecorded(rest[0], modules)
    if kind == "storage" and len(rest) == 4:
        dtype, key, location, numel = rest
        ref = Ref("storage", name=str(key)[:40], parts=pid)
        if not (dtype in TORCH_DTYPE_SIZES and isinstance(key, str) and isinstance(location, str)
                and LOCATION.fullmatch(location) and type(numel) is int and numel >= 0):
            return ref, f"malformed tensor storage reference {short(repr(pid))}"
        return ref, None
    if kind == tensorids.KIND and len(rest) == 9:
        return tensor_ref(pid), tensorids.problem(pid)
    if kind == columns.KIND:
        ref = Ref("columns", name=str(pid[1])[:20] if len(pid) > 1 else "?", parts=())
        return ref, None if columns.is_valid(pid) else "malformed columns container"
    if kind == "rebuild" and not rest:
        return Ref("rebuild", "gitpack", "rebuild", parts=pid), None
    return Ref("bad", name=short(kind)), f"unknown persistent id kind {short(kind)!r}"


def _unrecorded(module: str, modules: frozenset[str] | None) -> str | None:
    if modules is None or module in modules:
        return None
    return (f"a reference into snapshot module {short(module)}, which the archive's manifest does not record as "
            "used (only modules the saved object uses are imported)")


# ----------------------------------------------------------------------------- calls
def check_call(trace: Any, made: Made) -> Verdict:
    """Judge one REDUCE (``made.how == 'call'``) or NEWOBJ (``'new'``)."""
    callee = made.callee
    args, kwargs = made.args, made.kwargs
    if callee.kind == "global":
        category = callee.category
        if category is None:
            return ALLOWED  # refused by the policy: already reported
        if category == TRUSTED:
            return ALLOWED
        key = callee.module_and_name()
        if category == RECONSTRUCTOR:
            return _RECONSTRUCTORS[key](trace, made)
        if category == VALUE_TYPE:
            rule = _VALUE_TYPES.get(key, _plain_args)
            return rule(made) if not kwargs else refuse(f"{short(callee.dotted)} called with keyword arguments")
        if category == CLASS:
            if made.how == "call":  # runs __init__ with its defaults: nn.Transformer() is 180 MB from 83 bytes
                return refuse(f"calls {short(callee.dotted)} (a library class is only ever built empty with "
                              "NEWOBJ, then given its state; calling it runs its __init__)")
            if args or kwargs:
                return refuse(f"constructs {short(callee.dotted)} with arguments (a library class is only ever built "
                              "empty, then given its state)")
            return ALLOWED
        return refuse(f"calls {short(callee.dotted)}, which may only appear as a value")
    if callee.kind == "class":
        if made.how == "call":
            return Verdict(deferred=[Deferred("call", callee, len(args) + len(kwargs))])
        return Verdict(deferred=[Deferred("new", callee)] if args or kwargs else [])
    if callee.kind == "legacy":
        return Verdict(deferred=[Deferred("legacy-" + made.how, callee, len(args) + len(kwargs))])
    if callee.kind == "function":
        return refuse(f"calls the snapshot function {short(callee.dotted)} (snapshot functions may be values, "
                   "never called by the pickle)")
    if callee.kind == "module":
        return refuse(f"calls the snapshot module {short(callee.dotted)}")
    if callee.kind == "rebuild":
        return _rebuild(trace, made)
    if callee.kind == "result":  # a class a reconstructor returned: a namedtuple, or a builtin type from dill
        if callee.name == "namedtuple":
            return Verdict() if not kwargs else refuse("a namedtuple built with keyword arguments")
        result_rule = _VALUE_TYPES.get(callee.module_and_name())
        return result_rule(made) if result_rule is not None and not kwargs else _never_called(made)
    return refuse(f"calls {short(callee.dotted)}")


def _never_called(made: Made) -> Verdict:
    return refuse(f"calls {short(made.callee.dotted)}")


# ---- value types: plain-data arguments only
def _plain_args(made: Made) -> Verdict:
    if all(plain(a) for a in made.args):
        return Verdict()
    return refuse(f"{short(made.callee.dotted)} called with something other than plain data")


def _from_container(made: Made) -> Verdict:
    """``list(x)``, ``set(x)``, ``dict(x)``, ``OrderedDict(x)``: x is a container the pickle built, not an object
    whose iteration could run code."""
    if not made.args or (len(made.args) == 1 and type(made.args[0]) in CONTAINERS):
        return ALLOWED
    return refuse(f"{short(made.callee.dotted)} called with something other than one plain container")


def _text_or_bytes(made: Made) -> Verdict:
    """``bytes(x)``, ``bytearray(x)``, ``str(x)``: never an int (that would size an allocation) or an object."""
    if len(made.args) <= 3 and all(type(a) in (bytes, bytearray, str) for a in made.args):
        return Verdict()
    return refuse(f"{short(made.callee.dotted)} called with something other than text or bytes (an int would "
               "size an allocation)")


def _number(made: Made) -> Verdict:
    if len(made.args) <= 2 and all(type(a) in (int, float, str, bytes, bool) for a in made.args):
        return Verdict()
    return refuse(f"{short(made.callee.dotted)} called with something other than a number or text")


def _empty(made: Made) -> Verdict:
    return Verdict() if not made.args else refuse(f"{short(made.callee.dotted)} called with arguments")


def _ints(made: Made) -> Verdict:
    if len(made.args) <= 3 and all(a is None or type(a) is int for a in made.args):
        return Verdict()
    return refuse(f"{short(made.callee.dotted)} called with something other than ints")


# Default factories a defaultdict may hold besides plain types: library functions that build an empty value.
_FACTORIES = {("torch.amp.grad_scaler", "_refresh_per_optimizer_state")}  # GradScaler's per-optimizer state


def _defaultdict(made: Made) -> Verdict:
    factory = made.args[0] if made.args else None
    ref = ref_of(factory)
    plain_type = ref is not None and ref.kind in ("global", "result") and ref.category == VALUE_TYPE \
        and ref.module in ("builtins", "collections")
    known_factory = ref is not None and ref.kind == "global" and (ref.module, ref.name) in _FACTORIES
    if factory is not None and not (plain_type or known_factory):
        return refuse("collections.defaultdict with a default factory that is not a plain type")
    if len(made.args) > 2 or (len(made.args) == 2 and type(made.args[1]) not in CONTAINERS):
        return refuse("collections.defaultdict called with something other than a factory and a container")
    return Verdict()


def _deque(made: Made) -> Verdict:
    if len(made.args) <= 2 and (not made.args or type(made.args[0]) in CONTAINERS) and \
            (len(made.args) < 2 or made.args[1] is None or type(made.args[1]) is int):
        return Verdict()
    return refuse("collections.deque called with something other than a container and a length")


def _partial(made: Made) -> Verdict:
    if len(made.args) == 1 and callable_value(made.args[0]):
        return Verdict(kind="partial")
    return refuse("functools.partial of something that is not an allowed function or class")


def _method(made: Made) -> Verdict:
    if len(made.args) == 2 and callable_value(made.args[0]):
        return Verdict(kind="method")
    return refuse("a bound method of something that is not an allowed function")


def _timezone(made: Made) -> Verdict:
    offset = made_of(made.args[0]) if made.args else None
    if offset is not None and offset.cls is not None and offset.cls.dotted == "datetime.timedelta" \
            and len(made.args) <= 2 and all(type(a) is str for a in made.args[1:]):
        return Verdict()
    return refuse("datetime.timezone called with something other than a timedelta and a name")


def _datetime(made: Made) -> Verdict:
    """``datetime(b'...', tz)`` or ``datetime(2020, 1, 1, ...)``: plain values and at most a timezone."""
    for a in made.args:
        if plain(a):
            continue
        inner = made_of(a)
        if inner is None or inner.cls is None or inner.cls.dotted != "datetime.timezone":
            return refuse(f"{short(made.callee.dotted)} called with something other than plain values and a timezone")
    return Verdict()


def _torch_size(made: Made) -> Verdict:
    if len(made.args) == 1 and type(made.args[0]) in (tuple, list) and \
            all(type(d) is int and d >= 0 for d in made.args[0]):
        return Verdict()
    return refuse("torch.Size of something other than non-negative ints")


def _torch_device(made: Made) -> Verdict:
    if 1 <= len(made.args) <= 2 and type(made.args[0]) in (str, int) and \
            (len(made.args) == 1 or made.args[1] is None or type(made.args[1]) is int):
        return Verdict()
    return refuse("torch.device of something other than a device name and an index")


_RATIONAL = re.compile(r"\s*[-+]?\d{1,1000}(/\d{1,1000})?\s*")
_BIG = 1 << 4096


def _fraction(made: Made) -> Verdict:
    """``Fraction('3/4')`` or ``Fraction(3, 4)`` with modest numbers: ``Fraction('1e1000000000')`` computes
    ``10**1e9`` (a hang), and huge ints make its gcd quadratic."""
    a = made.args
    if len(a) == 1 and type(a[0]) is str and _RATIONAL.fullmatch(a[0]):
        return Verdict()
    if 1 <= len(a) <= 2 and all(type(x) is int and -_BIG < x < _BIG for x in a):
        return Verdict()
    return refuse("fractions.Fraction of something other than a plain ratio of modest integers")


def _numpy_dtype(made: Made) -> Verdict:
    code = made.args[0] if made.args else None
    if not (isinstance(code, str) and SAFE_DTYPE.match(code)) or not all(type(a) is bool for a in made.args[1:3]) \
            or len(made.args) > 3:
        return refuse(f"numpy.dtype {short(code)!r} (an object dtype would turn pickle bytes into object pointers)")
    return Verdict(kind="dtype")


_VALUE_TYPES: dict[tuple[str, str], Callable[[Made], Verdict]] = {
    **{("builtins", n): _from_container for n in ("set", "frozenset", "list", "tuple", "dict")},
    **{("builtins", n): _text_or_bytes for n in ("bytes", "bytearray", "str")},
    **{("builtins", n): _number for n in ("int", "float", "complex", "bool")},
    ("builtins", "object"): _empty,
    ("builtins", "slice"): _ints,
    ("builtins", "range"): _ints,
    ("collections", "OrderedDict"): _from_container,
    ("collections", "Counter"): _from_container,
    ("collections", "defaultdict"): _defaultdict,
    ("collections", "deque"): _deque,
    ("functools", "partial"): _partial,
    ("types", "MethodType"): _method,
    ("datetime", "timezone"): _timezone,
    **{("datetime", n): _datetime for n in ("date", "datetime", "time")},
    ("datetime", "timedelta"): _number,
    ("decimal", "Decimal"): _plain_args,
    ("fractions", "Fraction"): _fraction,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("numpy", "dtype"): _numpy_dtype,
}


# ---- reconstructors: the functions pickle itself uses, every argument checked
def _arg(made: Made, i: int, default: Any = None) -> Any:
    return made.args[i] if len(made.args) > i else default


def _empty_hooks(value: Any) -> bool:
    """torch's backward hooks: an empty OrderedDict (hooks would run code during backward)."""
    made = made_of(value)
    return (made is not None and made.cls is not None and made.cls.dotted == "collections.OrderedDict"
            and not made.args and made.mutations == 0) or value is None


def _is_torch_dtype(value: Any) -> bool:
    ref = ref_of(value)
    return ref is not None and ref.kind == "global" and ref.module == "torch" and ref.category == VALUE


def _rebuild_tensor(trace: Any, made: Made) -> Verdict:
    name = made.callee.name
    a = made.args
    wanted = {"_rebuild_tensor": 4, "_rebuild_tensor_v2": 6, "_rebuild_tensor_v3": 7}[name or ""]
    if made.kwargs or not (wanted <= len(a) <= wanted + 1):
        return refuse(f"torch._utils.{name} with {len(a)} arguments")
    if not is_storage_ref(a[0]):
        return refuse(f"torch._utils.{name} of something that is not one of the archive's tensor storages")
    if not (type(a[1]) is int and a[1] >= 0 and type(a[2]) is tuple and type(a[3]) is tuple and is_shape(a[2])
            and is_shape(a[3]) and len(a[2]) == len(a[3])):
        return refuse(f"torch._utils.{name} with a malformed offset, size or stride")
    storage_ref = ref_of(a[0])
    assert storage_ref is not None  # is_storage_ref(a[0]) above
    storage = storage_ref.parts  # ('storage', dtype, key, location, numel)
    dtype_ref = ref_of(a[6]) if wanted == 7 else None
    tensor_dtype = dtype_ref.name if dtype_ref is not None else storage[1]
    if tensor_dtype is None or not tensor_fits(storage[4], storage[1], a[1], a[2], a[3], tensor_dtype):
        return refuse(f"torch._utils.{name} with a view beyond its storage (torch would grow the storage)")
    if wanted >= 6:
        if type(a[4]) is not bool or not _empty_hooks(a[5]):
            return refuse(f"torch._utils.{name} with backward hooks (they would run code during backward) or a "
                       "malformed requires_grad")
        if wanted == 7 and not _is_torch_dtype(a[6]):
            return refuse(f"torch._utils.{name} with a dtype that is not a torch dtype")
        metadata = _arg(made, wanted)
        if metadata is not None and not (type(metadata) is dict and all(type(k) is str and plain(v)
                                                                        for k, v in metadata.items())):
            return refuse(f"torch._utils.{name} with malformed tensor metadata")
    return Verdict(kind="tensor")


def _is_tensor(value: Any) -> bool:
    """A tensor the pickle built by an allowed reconstructor, or one of gitpack's tensor persistent ids."""
    made = made_of(value)
    if made is not None:
        return made.kind == "tensor"
    ref = ref_of(value)
    return ref is not None and ref.kind == "tensor"


def _rebuild_parameter(trace: Any, made: Made) -> Verdict:
    a = made.args
    with_state = made.callee.name == "_rebuild_parameter_with_state"
    if made.kwargs or len(a) != (4 if with_state else 3):
        return refuse(f"torch._utils.{made.callee.name} with {len(a)} arguments")
    if not _is_tensor(a[0]) or type(a[1]) is not bool or not _empty_hooks(a[2]):
        return refuse(f"torch._utils.{made.callee.name} of something other than a tensor, or with backward hooks")
    verdict = Verdict(kind="tensor")
    if with_state:
        items = state_items(a[3])
        if items is None:
            return refuse("torch._utils._rebuild_parameter_with_state with state that is not attribute data")
        verdict.deferred.append(Deferred("state", Ref("global", "torch.nn.parameter", "Parameter", CLASS), items))
    return verdict


def _rebuild_from_type(trace: Any, made: Made) -> Verdict:
    a = made.args
    if made.kwargs or len(a) != 4:
        return refuse(f"torch._tensor._rebuild_from_type_v2 with {len(a)} arguments")
    func, new_type, inner_args, state = a
    func_ref = ref_of(func)
    if not (func_ref is not None and func_ref.kind == "global" and func_ref.module == "torch._utils"
            and func_ref.name in TENSOR_RECONSTRUCTORS | {"_rebuild_parameter"}) or type(inner_args) is not tuple:
        return refuse("torch._tensor._rebuild_from_type_v2 of something other than a tensor reconstructor")
    inner = Made(trace, made.seq, func_ref, "call", inner_args, {})
    verdict = _RECONSTRUCTORS[(func_ref.module, func_ref.name)](trace, inner)
    if verdict.problem:
        return verdict
    type_ref = ref_of(new_type)
    keys = state_items(state) if state is not None else ()
    if type_ref is None or keys is None:
        return refuse("torch._tensor._rebuild_from_type_v2 with a type that is not a class, or state that is not "
                   "attribute data")
    out = Verdict(kind="tensor")
    if type_ref.kind == "global" and type_ref.category == TRUSTED:
        return out
    if not (type_ref.kind in ("class", "legacy") or (type_ref.kind == "global" and type_ref.category == CLASS)):
        return refuse(f"torch._tensor._rebuild_from_type_v2 of {short(type_ref.dotted)}, which is not a class")
    out.deferred.append(Deferred("tensor-type", type_ref))
    if keys:
        out.deferred.append(Deferred("state", type_ref, keys))
    return out


def _device_from_numpy(trace: Any, made: Made) -> Verdict:
    a = made.args
    array = made_of(a[0]) if a else None
    if made.kwargs or len(a) != 4 or array is None or array.kind != "ndarray" or not _is_torch_dtype(a[1]) \
            or type(a[2]) is not str or type(a[3]) is not bool:
        return refuse("torch._utils._rebuild_device_tensor_from_numpy with malformed arguments")
    return Verdict(kind="tensor")


def _get_layout(trace: Any, made: Made) -> Verdict:
    if len(made.args) == 1 and type(made.args[0]) is str and not made.kwargs:
        return Verdict(kind="value")
    return refuse("torch.serialization._get_layout of something other than a layout name")


def _np_reconstruct(trace: Any, made: Made) -> Verdict:
    a = made.args
    subtype = ref_of(a[0]) if a else None
    if made.kwargs or len(a) != 3 or subtype is None or subtype.dotted != "numpy.ndarray" or a[1] != (0,) \
            or type(a[2]) is not bytes or len(a[2]) > 8:
        return refuse(
            "numpy's _reconstruct with anything but an empty ndarray (a shape there would size an allocation)"
        )
    return Verdict(kind="ndarray", cls=subtype)


def _np_frombuffer(trace: Any, made: Made) -> Verdict:
    a = made.args
    if made.kwargs or len(a) != 4 or type(a[0]) not in (bytes, bytearray, Buffer) or not safe_dtype(a[1]) \
            or not is_shape(a[2]) or a[3] not in ("C", "F", "A"):
        return refuse("numpy's _frombuffer with malformed arguments or a dtype that is not plain data")
    return Verdict(kind="ndarray")


def _np_scalar(trace: Any, made: Made) -> Verdict:
    """``scalar(dtype, bytes)``: exactly one item's bytes (without them numpy allocates the dtype's item size,
    which the pickle sets)."""
    a = made.args
    if made.kwargs or len(a) != 2 or not safe_dtype(a[0]) or type(a[1]) is not bytes:
        return refuse("numpy scalar with a dtype that is not plain data (an object scalar reads a pointer from the "
                      "pickle) or without its bytes")
    if dtype_itemsize(a[0]) != len(a[1]):
        return refuse("numpy scalar whose bytes are not one item of its dtype")
    return Verdict(kind="value")


def _copyreg_reconstructor(trace: Any, made: Made) -> Verdict:
    a = made.args
    cls, base = (ref_of(a[0]), ref_of(a[1])) if len(a) == 3 else (None, None)
    if made.kwargs or cls is None or base is None or base.dotted not in (
            "builtins.object", "builtins.list", "builtins.dict", "builtins.set", "builtins.tuple") \
            or not (a[2] is None or plain_or_container(a[2])):
        return refuse("copyreg._reconstructor with malformed arguments")
    if cls.kind == "global" and cls.category in (CLASS, TRUSTED) or cls.kind in ("class", "legacy"):
        return Verdict(cls=cls, deferred=[Deferred("legacy-new", cls, 0)] if cls.kind == "legacy" else [])
    return refuse(f"copyreg._reconstructor of {short(cls.dotted)}, which is not an allowed class")


_DILL_TYPES = {  # dill's _load_type names the gate admits, and the global each one is
    **{n: ("builtins", n) for n in "bool bytearray bytes complex dict float frozenset int list object range set "
                                   "slice str tuple".split()},
    "NoneType": ("builtins", "NoneType"), "EllipsisType": ("builtins", "ellipsis"),
    "NotImplementedType": ("builtins", "NotImplementedType"),
    "PartialType": ("functools", "partial"), "MethodType": ("types", "MethodType"),
}


def _dill_load_type(trace: Any, made: Made) -> Verdict:
    name = _arg(made, 0)
    if len(made.args) != 1 or name not in _DILL_TYPES:
        return refuse(f"dill's _load_type of {short(name)!r}, which is not a plain data type")
    module, qual = _DILL_TYPES[name]
    category = VALUE_TYPE if (module, qual) in _VALUE_TYPES else VALUE
    return Verdict(result=Ref("result", module, qual, category, parts=("dill-type", name)))


def _dill_namedtuple(trace: Any, made: Made) -> Verdict:
    a = made.args
    ok = 3 <= len(a) <= 4 and isinstance(a[0], str) and a[0].isidentifier() and isinstance(a[2], str) \
        and DOTTED.match(a[2]) and type(a[1]) in (tuple, list) and all(isinstance(f, str) and f.isidentifier()
                                                                         for f in a[1]) \
        and (len(a) < 4 or a[3] is None or type(a[3]) in (tuple, list))
    if not ok:
        return refuse("dill's _create_namedtuple with malformed arguments")
    return Verdict(result=Ref("result", a[2], "namedtuple", VALUE_TYPE, parts=("namedtuple", a[0], made.seq)))


def _rebuild(trace: Any, made: Made) -> Verdict:
    """gitpack's rebuilder of repo lambdas and nested functions, from the snapshot's own source."""
    a = made.args
    module = ref_of(a[0]) if a else None
    ok = len(a) == 7 and not made.kwargs and module is not None and module.kind == "module" \
        and isinstance(a[1], str) and QUALNAME.match(a[1]) and type(a[2]) is int and a[2] > 0 \
        and (a[3] is None or type(a[3]) is tuple) and (a[4] is None or type(a[4]) is dict) \
        and (a[5] is None or type(a[5]) is tuple) \
        and (a[6] is None or (type(a[6]) is dict and all(isinstance(k, str) and not is_dunder(k) for k in a[6])))
    if not ok:
        return refuse("gitpack's function rebuilder with malformed arguments")
    assert module is not None  # part of ok
    trace.functions.append((module.module, a[1], a[2]))
    return Verdict(kind="function")


_RECONSTRUCTORS: dict[tuple[str, str], Callable[[Any, Made], Verdict]] = {
    **{("torch._utils", n): _rebuild_tensor for n in TENSOR_RECONSTRUCTORS},
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): _device_from_numpy,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.serialization", "_get_layout"): _get_layout,
    **{(m + ".multiarray", "_reconstruct"): _np_reconstruct for m in ("numpy.core", "numpy._core")},
    **{(m + ".multiarray", "scalar"): _np_scalar for m in ("numpy.core", "numpy._core")},
    **{(m + ".numeric", "_frombuffer"): _np_frombuffer for m in ("numpy.core", "numpy._core")},
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("dill._dill", "_load_type"): _dill_load_type,
    ("dill._dill", "_create_namedtuple"): _dill_namedtuple,
    ("gitpack.pickling", "rebuild_function"): _rebuild,
}



"""What each allowed global may be given: the rules the trust gate applies to every call, state and fill.

The policy (:mod:`gitpack.policy`) says which globals a pickle may name and in
which role; these rules check what it then does with them, on the dry run's
record (:mod:`gitpack.gate`), before anything real runs:

* **calls** (REDUCE, NEWOBJ): only reconstructors pickle itself uses, with
  every argument checked (a tensor's storage is one of the archive's, a numpy
  dtype is never an object or structured dtype, torch's backward hooks are
  empty), and value types with plain-data arguments (``bytes(10**12)`` is not
  plain data: an int would size an allocation).  Library classes are built
  empty (their ``__init__`` never sees pickle data: ``nn.Linear(20000, 20000)``
  from a 2 KB pickle allocated 1.6 GB).  Snapshot classes take arguments only
  when they declare that they rebuild that way (their own ``__reduce__`` or
  ``__getnewargs__``); snapshot *functions* are never called.
* **state** (BUILD): only on objects the pickle built, once, before the object
  is handed to anything else; keys are plain attribute names that do not
  replace a method (a ``read_bytes`` key on a path, a ``forward`` on a layer);
  dtype, BytesIO, sentencepiece and ndarray states have their exact shapes.
* **fills** (SETITEM, APPEND, ADD on non-builtins): only on the dict-, list- and
  deque-like value types and on snapshot classes.

Every rule returns a :class:`Verdict`; class-dependent parts come back as
:class:`~gitpack.standins.Deferred` items checked once load has the classes.
"""

from __future__ import annotations

import inspect
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable

from . import columns
from .policy import CLASS, RECONSTRUCTOR, TRUSTED, VALUE, VALUE_TYPE
from .standins import Buffer, Deferred, Made, Ref, is_stand_in, made_of, ref_of

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_QUALNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.(<locals>|<lambda>|[A-Za-z_][A-Za-z0-9_]*))*$")
# numpy dtype codes that hold plain bytes: never object ('O') or void/structured ('V') types
# (a void 'V' code is raw bytes; its fields, set by BUILD, are checked to be plain dtypes too)
_SAFE_DTYPE = re.compile(r"^[<>|=]?([?bBhHiIlLqQpPefdgFDG]|[iufcb][1248]|c16|f16|c32|[SUaV]\d{0,9}|[mM]8(\[\w+\])?)$")
_DTYPE_OBJECT_FLAGS = 0x01 | 0x02 | 0x04  # numpy's NPY_ITEM_REFCOUNT, NPY_LIST_PICKLE, NPY_ITEM_IS_POINTER
_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_CONTAINERS = (list, tuple, dict, set, frozenset)
_TENSOR_RECONSTRUCTORS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"}
_SHORT = 120


@dataclass
class Verdict:
    problem: str | None = None
    deferred: list[Deferred] = field(default_factory=list)
    result: Ref | None = None  # a reconstructor that returns a class: what the dry run continues with
    kind: str = "instance"  # what a call returns: "instance", "tensor", "ndarray", "dtype", "function", ...
    cls: Ref | None = None  # the class of what a call returns, when it is not the callee


def _no(problem: str) -> Verdict:
    return Verdict(problem)


def _short(text: str) -> str:
    text = str(text).encode("ascii", "backslashreplace").decode()
    return text if len(text) <= _SHORT else text[: _SHORT - 3] + "..."


def _is_dunder(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("__") and key.endswith("__")


# ----------------------------------------------------------------------------- persistent ids
def persistent_ref(pid: Any, modules: frozenset[str] | None) -> tuple[Ref, str | None]:
    """The :class:`Ref` a persistent id stands for, and why it is refused (None when it is fine)."""
    if not isinstance(pid, tuple) or not pid or not isinstance(pid[0], str):
        return Ref("bad", name=_short(repr(pid)[:60])), f"malformed persistent id {_short(repr(pid)[:60])}"
    kind, rest = pid[0], pid[1:]
    if kind in ("class", "function", "global") and len(rest) == 2 and all(isinstance(p, str) for p in rest):
        module, qualname = rest
        ref = Ref("legacy" if kind == "global" else kind, module, qualname, parts=pid)
        if not (_DOTTED.match(module) and _QUALNAME.match(qualname)):
            return ref, f"malformed snapshot reference {_short(module)}:{_short(qualname)}"
        return ref, _unrecorded(module, modules)
    if kind == "module" and len(rest) == 1 and isinstance(rest[0], str):
        ref = Ref("module", rest[0], parts=pid)
        if not _DOTTED.match(rest[0]):
            return ref, f"malformed snapshot module name {_short(rest[0])}"
        return ref, _unrecorded(rest[0], modules)
    if kind == "storage" and len(rest) == 4:
        dtype, key, location, numel = rest
        ref = Ref("storage", name=str(key)[:40], parts=pid)
        if not (isinstance(dtype, str) and isinstance(key, str) and isinstance(location, str)
                and type(numel) is int and numel >= 0):
            return ref, f"malformed tensor storage reference {_short(repr(pid))}"
        return ref, None
    if kind == "tensor" and len(rest) == 9:
        dtype, key, location, numel, offset, size, stride, requires_grad, what = rest
        ref = Ref("tensor", name=str(key)[:40], parts=pid)
        if not (isinstance(dtype, str) and isinstance(key, str) and isinstance(location, str) and type(numel) is int
                and numel >= 0 and type(offset) is int and offset >= 0 and _is_shape(size) and _is_shape(stride)
                and len(size) == len(stride) and type(requires_grad) is bool and what in ("tensor", "parameter")):
            return ref, f"malformed tensor reference {_short(repr(pid))}"
        return ref, None
    if kind == columns.KIND:
        ref = Ref("columns", name=str(pid[1])[:20] if len(pid) > 1 else "?", parts=())
        return ref, None if columns.is_valid(pid) else "malformed columns container"
    if kind == "rebuild" and not rest:
        return Ref("rebuild", "gitpack", "rebuild", parts=pid), None
    return Ref("bad", name=_short(kind)), f"unknown persistent id kind {_short(kind)!r}"


def _unrecorded(module: str, modules: frozenset[str] | None) -> str | None:
    if modules is None or module in modules:
        return None
    return (f"a reference into snapshot module {_short(module)}, which the archive's manifest does not record as "
            "used (only modules the saved object uses are imported)")


# ----------------------------------------------------------------------------- calls
def check_call(trace: Any, made: Made) -> Verdict:
    """Judge one REDUCE (``made.how == 'call'``) or NEWOBJ (``'new'``)."""
    callee = made.callee
    args, kwargs = made.args, made.kwargs
    if callee.kind == "global":
        category = callee.category
        if category is None:
            return Verdict()  # refused by the policy: already reported
        if category == TRUSTED:
            return Verdict()
        key = (callee.module, callee.name)
        if category == RECONSTRUCTOR:
            return _RECONSTRUCTORS[key](trace, made)
        if category == VALUE_TYPE:
            rule = _VALUE_TYPES.get(key, _plain_args)
            return rule(made) if not kwargs else _no(f"{_short(callee.dotted)} called with keyword arguments")
        if category == CLASS:
            if args or kwargs:
                return _no(f"{'constructs' if made.how == 'new' else 'calls'} {_short(callee.dotted)} with arguments "
                           "(a library class is only ever built empty, then given its state)")
            return Verdict()
        return _no(f"calls {_short(callee.dotted)}, which may only appear as a value")
    if callee.kind == "class":
        if made.how == "call":
            return Verdict(deferred=[Deferred("call", callee, len(args) + len(kwargs))])
        return Verdict(deferred=[Deferred("new", callee)] if args or kwargs else [])
    if callee.kind == "legacy":
        return Verdict(deferred=[Deferred("legacy-" + made.how, callee, len(args) + len(kwargs))])
    if callee.kind == "function":
        return _no(f"calls the snapshot function {_short(callee.dotted)} (snapshot functions may be values, "
                   "never called by the pickle)")
    if callee.kind == "module":
        return _no(f"calls the snapshot module {_short(callee.dotted)}")
    if callee.kind == "rebuild":
        return _rebuild(trace, made)
    if callee.kind == "result":  # a class a reconstructor returned: a namedtuple, or a builtin type from dill
        if callee.name == "namedtuple":
            return Verdict() if not kwargs else _no("a namedtuple built with keyword arguments")
        rule = _VALUE_TYPES.get((callee.module, callee.name))
        return rule(made) if rule is not None and not kwargs else _never_called(made)
    return _no(f"calls {_short(callee.dotted)}")


def _never_called(made: Made) -> Verdict:
    return _no(f"calls {_short(made.callee.dotted)}")


# ---- value types: plain-data arguments only
def _plain(value: Any) -> bool:
    return type(value) in _PLAIN


def _plain_or_container(value: Any) -> bool:
    return type(value) in _PLAIN or type(value) in _CONTAINERS


def _plain_args(made: Made) -> Verdict:
    if all(_plain(a) for a in made.args):
        return Verdict()
    return _no(f"{_short(made.callee.dotted)} called with something other than plain data")


def _from_container(made: Made) -> Verdict:
    """``list(x)``, ``set(x)``, ``dict(x)``, ``OrderedDict(x)``: x is a container the pickle built, not an object
    whose iteration could run code."""
    if len(made.args) <= 1 and all(type(a) in _CONTAINERS for a in made.args):
        return Verdict()
    return _no(f"{_short(made.callee.dotted)} called with something other than one plain container")


def _text_or_bytes(made: Made) -> Verdict:
    """``bytes(x)``, ``bytearray(x)``, ``str(x)``: never an int (that would size an allocation) or an object."""
    if len(made.args) <= 3 and all(type(a) in (bytes, bytearray, str) for a in made.args):
        return Verdict()
    return _no(f"{_short(made.callee.dotted)} called with something other than text or bytes (an int would "
               "size an allocation)")


def _number(made: Made) -> Verdict:
    if len(made.args) <= 2 and all(type(a) in (int, float, str, bytes, bool) for a in made.args):
        return Verdict()
    return _no(f"{_short(made.callee.dotted)} called with something other than a number or text")


def _empty(made: Made) -> Verdict:
    return Verdict() if not made.args else _no(f"{_short(made.callee.dotted)} called with arguments")


def _ints(made: Made) -> Verdict:
    if len(made.args) <= 3 and all(a is None or type(a) is int for a in made.args):
        return Verdict()
    return _no(f"{_short(made.callee.dotted)} called with something other than ints")


def _defaultdict(made: Made) -> Verdict:
    factory = made.args[0] if made.args else None
    ref = ref_of(factory)
    if factory is not None and not (ref is not None and ref.kind in ("global", "result")
                                    and ref.category in (VALUE_TYPE, CLASS)):
        return _no("collections.defaultdict with a default factory that is not a plain type")
    if len(made.args) > 2 or (len(made.args) == 2 and type(made.args[1]) not in _CONTAINERS):
        return _no("collections.defaultdict called with something other than a factory and a container")
    return Verdict()


def _deque(made: Made) -> Verdict:
    if len(made.args) <= 2 and (not made.args or type(made.args[0]) in _CONTAINERS) and \
            (len(made.args) < 2 or made.args[1] is None or type(made.args[1]) is int):
        return Verdict()
    return _no("collections.deque called with something other than a container and a length")


def _callable_value(value: Any) -> bool:
    """A function, class or bound callable the policy admits as a value (calling it is not done here)."""
    ref = ref_of(value)
    if ref is not None:
        return ref.kind in ("function", "class", "legacy", "result") or \
            (ref.kind == "global" and ref.category in (VALUE, CLASS, VALUE_TYPE, TRUSTED))
    made = made_of(value)
    return made is not None and made.kind in ("function", "partial", "method")


def _partial(made: Made) -> Verdict:
    if len(made.args) == 1 and _callable_value(made.args[0]):
        return Verdict(kind="partial")
    return _no("functools.partial of something that is not an allowed function or class")


def _method(made: Made) -> Verdict:
    if len(made.args) == 2 and _callable_value(made.args[0]):
        return Verdict(kind="method")
    return _no("a bound method of something that is not an allowed function")


def _timezone(made: Made) -> Verdict:
    offset = made_of(made.args[0]) if made.args else None
    if offset is not None and offset.cls is not None and offset.cls.dotted == "datetime.timedelta" \
            and len(made.args) <= 2 and all(type(a) is str for a in made.args[1:]):
        return Verdict()
    return _no("datetime.timezone called with something other than a timedelta and a name")


def _datetime(made: Made) -> Verdict:
    """``datetime(b'...', tz)`` or ``datetime(2020, 1, 1, ...)``: plain values and at most a timezone."""
    for a in made.args:
        if _plain(a):
            continue
        inner = made_of(a)
        if inner is None or inner.cls is None or inner.cls.dotted != "datetime.timezone":
            return _no(f"{_short(made.callee.dotted)} called with something other than plain values and a timezone")
    return Verdict()


def _torch_size(made: Made) -> Verdict:
    if len(made.args) == 1 and type(made.args[0]) in (tuple, list) and \
            all(type(d) is int and d >= 0 for d in made.args[0]):
        return Verdict()
    return _no("torch.Size of something other than non-negative ints")


def _torch_device(made: Made) -> Verdict:
    if 1 <= len(made.args) <= 2 and type(made.args[0]) in (str, int) and \
            (len(made.args) == 1 or made.args[1] is None or type(made.args[1]) is int):
        return Verdict()
    return _no("torch.device of something other than a device name and an index")


def _numpy_dtype(made: Made) -> Verdict:
    code = made.args[0] if made.args else None
    if not (isinstance(code, str) and _SAFE_DTYPE.match(code)) or not all(type(a) is bool for a in made.args[1:3]) \
            or len(made.args) > 3:
        return _no(f"numpy.dtype {_short(code)!r} (an object dtype would turn pickle bytes into object pointers)")
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
    ("fractions", "Fraction"): _plain_args,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("numpy", "dtype"): _numpy_dtype,
}


# ---- reconstructors: the functions pickle itself uses, every argument checked
def _arg(made: Made, i: int, default: Any = None) -> Any:
    return made.args[i] if len(made.args) > i else default


def _is_storage(value: Any) -> bool:
    ref = ref_of(value)
    return ref is not None and ref.kind == "storage"


def _is_shape(value: Any) -> bool:
    if type(value) in (tuple, list):
        return all(type(d) is int and d >= 0 for d in value)
    made = made_of(value)
    return made is not None and made.cls is not None and made.cls.dotted == "torch.Size"


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
        return _no(f"torch._utils.{name} with {len(a)} arguments")
    if not _is_storage(a[0]):
        return _no(f"torch._utils.{name} of something that is not one of the archive's tensor storages")
    if not (type(a[1]) is int and a[1] >= 0 and _is_shape(a[2]) and _is_shape(a[3])):
        return _no(f"torch._utils.{name} with a malformed offset, size or stride")
    if wanted >= 6:
        if type(a[4]) is not bool or not _empty_hooks(a[5]):
            return _no(f"torch._utils.{name} with backward hooks (they would run code during backward) or a "
                       "malformed requires_grad")
        if wanted == 7 and not _is_torch_dtype(a[6]):
            return _no(f"torch._utils.{name} with a dtype that is not a torch dtype")
        metadata = _arg(made, wanted)
        if metadata is not None and not (type(metadata) is dict and all(type(k) is str and _plain(v)
                                                                        for k, v in metadata.items())):
            return _no(f"torch._utils.{name} with malformed tensor metadata")
    return Verdict(kind="tensor")


def _is_tensor(value: Any) -> bool:
    made = made_of(value)
    return made is not None and made.kind == "tensor"


def _rebuild_parameter(trace: Any, made: Made) -> Verdict:
    a = made.args
    with_state = made.callee.name == "_rebuild_parameter_with_state"
    if made.kwargs or len(a) != (4 if with_state else 3):
        return _no(f"torch._utils.{made.callee.name} with {len(a)} arguments")
    if not _is_tensor(a[0]) or type(a[1]) is not bool or not _empty_hooks(a[2]):
        return _no(f"torch._utils.{made.callee.name} of something other than a tensor, or with backward hooks")
    verdict = Verdict(kind="tensor")
    if with_state:
        keys = _state_keys(a[3])
        if keys is None:
            return _no("torch._utils._rebuild_parameter_with_state with state that is not attribute data")
        verdict.deferred.append(Deferred("state", Ref("global", "torch.nn.parameter", "Parameter", CLASS), keys))
    return verdict


def _rebuild_from_type(trace: Any, made: Made) -> Verdict:
    a = made.args
    if made.kwargs or len(a) != 4:
        return _no(f"torch._tensor._rebuild_from_type_v2 with {len(a)} arguments")
    func, new_type, inner_args, state = a
    func_ref = ref_of(func)
    if not (func_ref is not None and func_ref.kind == "global" and func_ref.module == "torch._utils"
            and func_ref.name in _TENSOR_RECONSTRUCTORS | {"_rebuild_parameter"}) or type(inner_args) is not tuple:
        return _no("torch._tensor._rebuild_from_type_v2 of something other than a tensor reconstructor")
    inner = Made(trace, made.seq, func_ref, "call", inner_args, {})
    verdict = _RECONSTRUCTORS[(func_ref.module, func_ref.name)](trace, inner)
    if verdict.problem:
        return verdict
    type_ref = ref_of(new_type)
    keys = _state_keys(state) if state is not None else ()
    if type_ref is None or keys is None:
        return _no("torch._tensor._rebuild_from_type_v2 with a type that is not a class, or state that is not "
                   "attribute data")
    out = Verdict(kind="tensor")
    if type_ref.kind == "global" and type_ref.category == TRUSTED:
        return out
    if not (type_ref.kind in ("class", "legacy") or (type_ref.kind == "global" and type_ref.category == CLASS)):
        return _no(f"torch._tensor._rebuild_from_type_v2 of {_short(type_ref.dotted)}, which is not a class")
    out.deferred.append(Deferred("tensor-type", type_ref))
    if keys:
        out.deferred.append(Deferred("state", type_ref, keys))
    return out


def _device_from_numpy(trace: Any, made: Made) -> Verdict:
    a = made.args
    array = made_of(a[0]) if a else None
    if made.kwargs or len(a) != 4 or array is None or array.kind != "ndarray" or not _is_torch_dtype(a[1]) \
            or type(a[2]) is not str or type(a[3]) is not bool:
        return _no("torch._utils._rebuild_device_tensor_from_numpy with malformed arguments")
    return Verdict(kind="tensor")


def _get_layout(trace: Any, made: Made) -> Verdict:
    if len(made.args) == 1 and type(made.args[0]) is str and not made.kwargs:
        return Verdict(kind="value")
    return _no("torch.serialization._get_layout of something other than a layout name")


def _safe_dtype(value: Any) -> bool:
    """A numpy dtype built by this pickle from a plain code (never object or structured), its state already set."""
    made = made_of(value)
    return made is not None and made.kind == "dtype" and made.built


def _np_reconstruct(trace: Any, made: Made) -> Verdict:
    a = made.args
    subtype = ref_of(a[0]) if a else None
    if made.kwargs or len(a) != 3 or subtype is None or subtype.dotted != "numpy.ndarray" or a[1] != (0,) \
            or type(a[2]) is not bytes or len(a[2]) > 8:
        return _no("numpy's _reconstruct with anything but an empty ndarray (a shape there would size an allocation)")
    return Verdict(kind="ndarray", cls=subtype)


def _np_frombuffer(trace: Any, made: Made) -> Verdict:
    a = made.args
    if made.kwargs or len(a) != 4 or type(a[0]) not in (bytes, bytearray, Buffer) or not _safe_dtype(a[1]) \
            or not _is_shape(a[2]) or a[3] not in ("C", "F", "A"):
        return _no("numpy's _frombuffer with malformed arguments or a dtype that is not plain data")
    return Verdict(kind="ndarray")


def _np_scalar(trace: Any, made: Made) -> Verdict:
    a = made.args
    if made.kwargs or not 1 <= len(a) <= 2 or not _safe_dtype(a[0]) or (len(a) == 2 and type(a[1]) is not bytes):
        return _no("numpy scalar with a dtype that is not plain data (an object scalar reads a pointer from the "
                   "pickle)")
    return Verdict(kind="value")


def _copyreg_reconstructor(trace: Any, made: Made) -> Verdict:
    a = made.args
    cls, base = (ref_of(a[0]), ref_of(a[1])) if len(a) == 3 else (None, None)
    if made.kwargs or cls is None or base is None or base.dotted not in (
            "builtins.object", "builtins.list", "builtins.dict", "builtins.set", "builtins.tuple") \
            or not (a[2] is None or _plain_or_container(a[2])):
        return _no("copyreg._reconstructor with malformed arguments")
    if cls.kind == "global" and cls.category in (CLASS, TRUSTED) or cls.kind in ("class", "legacy"):
        return Verdict(cls=cls, deferred=[Deferred("legacy-new", cls, 0)] if cls.kind == "legacy" else [])
    return _no(f"copyreg._reconstructor of {_short(cls.dotted)}, which is not an allowed class")


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
        return _no(f"dill's _load_type of {_short(name)!r}, which is not a plain data type")
    module, qual = _DILL_TYPES[name]
    category = VALUE_TYPE if (module, qual) in _VALUE_TYPES else VALUE
    return Verdict(result=Ref("result", module, qual, category, parts=("dill-type", name)))


def _dill_namedtuple(trace: Any, made: Made) -> Verdict:
    a = made.args
    ok = 3 <= len(a) <= 4 and isinstance(a[0], str) and a[0].isidentifier() and isinstance(a[2], str) \
        and _DOTTED.match(a[2]) and type(a[1]) in (tuple, list) and all(isinstance(f, str) and f.isidentifier()
                                                                         for f in a[1]) \
        and (len(a) < 4 or a[3] is None or type(a[3]) in (tuple, list))
    if not ok:
        return _no("dill's _create_namedtuple with malformed arguments")
    return Verdict(result=Ref("result", a[2], "namedtuple", VALUE_TYPE, parts=("namedtuple", a[0], made.seq)))


def _rebuild(trace: Any, made: Made) -> Verdict:
    """gitpack's rebuilder of repo lambdas and nested functions, from the snapshot's own source."""
    a = made.args
    module = ref_of(a[0]) if a else None
    ok = len(a) == 7 and not made.kwargs and module is not None and module.kind == "module" \
        and isinstance(a[1], str) and _QUALNAME.match(a[1]) and type(a[2]) is int and a[2] > 0 \
        and (a[3] is None or type(a[3]) is tuple) and (a[4] is None or type(a[4]) is dict) \
        and (a[5] is None or type(a[5]) is tuple) \
        and (a[6] is None or (type(a[6]) is dict and all(isinstance(k, str) and not _is_dunder(k) for k in a[6])))
    if not ok:
        return _no("gitpack's function rebuilder with malformed arguments")
    trace.functions.append((module.module, a[1], a[2]))
    return Verdict(kind="function")


_RECONSTRUCTORS: dict[tuple[str, str], Callable[[Any, Made], Verdict]] = {
    **{("torch._utils", n): _rebuild_tensor for n in _TENSOR_RECONSTRUCTORS},
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


# ----------------------------------------------------------------------------- state (BUILD)
def _state_keys(state: Any) -> tuple[str, ...] | None:
    """The attribute names a dict or ``(dict, slots)`` state sets; None when it is not that shape or a key is
    not a plain, non-dunder name."""
    parts = state if type(state) is tuple and len(state) == 2 else (state,)
    keys: list[str] = []
    for part in parts:
        if part is None and len(parts) == 2:
            continue
        if type(part) is not dict:
            return None
        for key in part:
            if not isinstance(key, str) or _is_dunder(key) or not key.isidentifier():
                return None
            keys.append(key)
    return tuple(sorted(set(keys)))


def check_state(trace: Any, made: Made, state: Any) -> Verdict:
    """Judge one BUILD on an object the pickle built."""
    cls = made.cls
    if made.kind in ("tensor", "function", "value", "method") or cls is None:
        return _no(f"BUILD on the {made.kind} returned by {_short(made.callee.dotted)}")
    if cls.kind == "global" and cls.category == TRUSTED:
        return Verdict()
    special = _STATES.get(cls.dotted)
    if special is not None:
        return special(made, state)
    if cls.kind in ("class", "legacy") or (cls.kind == "global" and cls.category == CLASS):
        keys = _state_keys(state)
        if keys is None:
            if cls.kind in ("class", "legacy"):
                return Verdict(deferred=[Deferred("custom-state", cls)])
            return _no(f"state of {_short(cls.dotted)} that is not plain attribute data (a dict of names)")
        return Verdict(deferred=[Deferred("state", cls, keys)] if keys else [])
    return _no(f"BUILD on {_short(cls.dotted)}, which takes no state")


def _dtype_state(made: Made, state: Any) -> Verdict:
    """``(3|4, byteorder, subdtype, names, fields, elsize, alignment, flags[, metadata])``: fields and sub-arrays
    only of plain dtypes built before (never an object field: its bytes would be read as pointers)."""
    ok = type(state) is tuple and len(state) in (8, 9) and state[0] in (3, 4) and state[1] in ("<", ">", "|", "=") \
        and all(type(x) is int for x in state[5:8]) and not state[7] & _DTYPE_OBJECT_FLAGS
    if ok:
        sub, names, fields = state[2], state[3], state[4]
        ok = sub is None or (type(sub) is tuple and len(sub) == 2 and _safe_dtype(sub[0]) and _is_shape(sub[1]))
        ok = ok and (names is None) == (fields is None)
        if ok and names is not None:
            ok = type(names) is tuple and type(fields) is dict and set(names) == set(fields) and all(
                type(f) is tuple and 2 <= len(f) <= 3 and _safe_dtype(f[0]) and type(f[1]) is int and f[1] >= 0
                and (len(f) == 2 or f[2] is None or type(f[2]) is str) for f in fields.values())
    if ok and len(state) == 9:
        meta = state[8]
        ok = meta is None or (type(meta) is tuple and len(meta) == 2 and (meta[0] is None or type(meta[0]) is dict)
                              and type(meta[1]) is tuple and all(_plain(x) for x in meta[1]))
    return Verdict() if ok else _no("numpy dtype state with object items, or fields and sub-arrays that are not plain "
                                    "dtypes")


def _ndarray_state(made: Made, state: Any) -> Verdict:
    ok = made.kind == "ndarray" and type(state) is tuple and len(state) == 5 and type(state[0]) is int \
        and _is_shape(state[1]) and _safe_dtype(state[2]) and type(state[3]) is bool \
        and type(state[4]) in (bytes, bytearray, Buffer)
    return Verdict() if ok else _no("numpy array state that is not raw bytes of a plain dtype")


def _bytesio_state(made: Made, state: Any) -> Verdict:
    ok = type(state) is tuple and len(state) == 3 and type(state[0]) in (bytes, bytearray) \
        and type(state[1]) is int and state[1] >= 0 and (state[2] is None or _state_keys(state[2]) is not None)
    return Verdict() if ok else _no("io.BytesIO state that is not its bytes and a position")


_SPM_OPTIONS = re.compile(r"^_[a-z_]+$")


def _builtin_type(value: Any) -> bool:
    """``int``, ``str`` and the like, named as a global or returned by dill's ``_load_type``."""
    ref = ref_of(value)
    return ref is not None and ref.kind in ("global", "result") and ref.module == "builtins" and ref.category is not None


def _sentencepiece_state(made: Made, state: Any) -> Verdict:
    """The serialized model proto (bytes), never a path: the processor would open whatever it names."""
    if type(state) is bytes:
        return Verdict()
    if type(state) is dict and type(state.get("model_proto")) is bytes and all(
            k == "model_proto" or (isinstance(k, str) and _SPM_OPTIONS.match(k) and
                                   (_plain(v) or _builtin_type(v)))
            for k, v in state.items()):
        return Verdict()
    return _no("sentencepiece state other than a serialized model proto and its options")


def _partial_state(made: Made, state: Any) -> Verdict:
    ok = type(state) is tuple and len(state) == 4 and _callable_value(state[0]) and type(state[1]) is tuple \
        and (state[2] is None or type(state[2]) is dict) and (state[3] is None or _state_keys(state[3]) is not None)
    return Verdict() if ok else _no("functools.partial state with something other than an allowed callable")


def _attribute_state(made: Made, state: Any) -> Verdict:
    """Plain attributes on a dict-like value (``state_dict()``'s OrderedDict carries ``_metadata``)."""
    keys = _state_keys(state)
    if keys is None:
        return _no(f"state of {_short(made.cls.dotted if made.cls else '?')} that is not plain attribute data")
    return Verdict(deferred=[Deferred("state", made.cls, keys)] if keys and made.cls else [])


def _no_state(made: Made, state: Any) -> Verdict:
    return _no(f"BUILD on a {_short(made.cls.dotted if made.cls else '?')} (torch's pickles never set one's state)")


_STATES: dict[str, Callable[[Made, Any], Verdict]] = {
    "numpy.dtype": _dtype_state,
    "numpy.ndarray": _ndarray_state,
    "_io.BytesIO": _bytesio_state,
    "io.BytesIO": _bytesio_state,
    "sentencepiece.SentencePieceProcessor": _sentencepiece_state,
    "functools.partial": _partial_state,
    "collections.OrderedDict": _attribute_state,
    "collections.Counter": _attribute_state,
    "collections.defaultdict": _attribute_state,
    "torch.Tensor": _no_state,
    "torch.nn.parameter.Parameter": _no_state,
    "torch.nn.parameter.Buffer": _no_state,
}


# ----------------------------------------------------------------------------- fills (SETITEM, APPEND, ADD)
_FILLABLE = {
    "collections.OrderedDict": {"setitem"}, "collections.defaultdict": {"setitem"}, "collections.Counter": {"setitem"},
    "builtins.dict": {"setitem"}, "collections.deque": {"append", "extend"}, "builtins.list": {"append", "extend"},
    "builtins.set": {"add"},
}


def check_mutation(trace: Any, made: Made, how: str) -> Verdict:
    cls = made.cls
    if cls is None or made.kind != "instance":
        return _no(f"fills the {made.kind} returned by {_short(made.callee.dotted)} with items")
    if cls.kind in ("class", "legacy") or (cls.kind == "global" and cls.category == TRUSTED):
        return Verdict()
    if how in _FILLABLE.get(cls.dotted, ()):
        return Verdict()
    return _no(f"fills {_short(cls.dotted)} with items ({how})")


# ----------------------------------------------------------------------------- checks against the real classes
def check_deferred(item: Deferred, obj: Any) -> str | None:
    """Judge a :class:`Deferred` check against *obj*, the real class (or function) its reference resolves to."""
    name = _short(item.ref.dotted)
    if item.what.startswith("legacy-"):
        if not isinstance(obj, type):
            return f"calls the snapshot function {name} (snapshot functions may be values, never called by the pickle)"
        how = item.what.removeprefix("legacy-")
        if how == "call":
            return _snapshot_call(obj, name, item.detail)
        return _snapshot_new(obj, name) if item.detail else None
    if not isinstance(obj, type):
        return f"{name} is not a class"
    if item.what == "call":
        return _snapshot_call(obj, name, item.detail)
    if item.what == "new":
        return _snapshot_new(obj, name)
    if item.what == "tensor-type":
        import torch

        return None if issubclass(obj, torch.Tensor) else f"{name} is not a tensor type"
    if item.what == "custom-state":
        return None if _declares(obj, "__setstate__") else f"state of {name} that is not plain attribute data"
    if item.what == "state":
        for key in item.detail or ():
            if shadows_method(obj, key):
                return f"state key {_short(key)!r} of {name} would replace its method or property {_short(key)!r}"
        return None
    return f"unknown check {item.what} on {name}"


def check_deferred_source(item: Deferred, found: Any, library: Callable[[str], Any] | None = None) -> str | None:
    """The same judgement as :func:`check_deferred`, from a snapshot class's source (``gitpack scan``, which never
    imports): *found* is its :class:`gitpack.classfacts.Facts`.  Returns None when the source answers "fine"; the
    string ``"pending"`` when only the imported class can tell.  *library* resolves a base class imported from a
    library (``torch.nn.Module``) to the class, or None when it will not import it."""
    name = _short(item.ref.dotted)
    if found is None:
        return "pending"
    if item.what.startswith("legacy-"):
        if found.kind == "function":
            return f"calls the snapshot function {name} (snapshot functions may be values, never called by the pickle)"
        what = item.what.removeprefix("legacy-")
        if what == "new" and not item.detail:
            return None
        item = Deferred(what, item.ref, item.detail)
    if found.kind != "class":
        return f"{name} is not a class"
    if item.what == "call":
        if found.is_enum:
            return None if item.detail == 1 else f"calls the enum {name} with {item.detail} arguments"
        if found.declares("__reduce__", "__reduce_ex__"):
            return None
        return (f"calls the snapshot class {name} (runs its __init__; only classes that define their own __reduce__ "
                "are rebuilt by a call)")
    if item.what == "new":
        if found.declares("__getnewargs__", "__getnewargs_ex__", "__new__") or found.is_tuple:
            return None
        return f"constructs the snapshot class {name} with arguments (only classes that define __getnewargs__ take them)"
    if item.what == "custom-state":
        return None if found.declares("__setstate__") else f"state of {name} that is not plain attribute data"
    if item.what == "state":
        for key in item.detail or ():
            if found.declares(key):
                return f"state key {_short(key)!r} of {name} would replace its method or property {_short(key)!r}"
        bases = [library(b) for b in found.all_imported_bases()] if library is not None else [None]
        if any(not isinstance(b, type) for b in bases):
            return "pending"  # a base only the imported class can show: load checks it
        for key in item.detail or ():
            if any(shadows_method(b, key) for b in bases):
                return f"state key {_short(key)!r} of {name} would replace its method or property {_short(key)!r}"
        return None
    return "pending"


def _declares(cls: type, *names: str) -> bool:
    """Whether a *snapshot* class in *cls*'s MRO defines one of *names* itself (library classes do not count)."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("__gitpack_") and any(n in vars(klass) for n in names):
            return True
    return False


def _snapshot_call(cls: type, name: str, count: Any) -> str | None:
    import enum

    if issubclass(cls, enum.Enum):
        return None if count == 1 else f"calls the enum {name} with {count} arguments"
    if _declares(cls, "__reduce__", "__reduce_ex__"):
        return None
    return (f"calls the snapshot class {name} (runs its __init__; only classes that define their own __reduce__ "
            "are rebuilt by a call)")


def _snapshot_new(cls: type, name: str) -> str | None:
    if _declares(cls, "__getnewargs__", "__getnewargs_ex__", "__new__") or issubclass(cls, tuple):
        return None
    return f"constructs the snapshot class {name} with arguments (only classes that define __getnewargs__ take them)"


def shadows_method(cls: type, key: str) -> bool:
    """Whether an instance attribute *key* would replace behaviour *cls* defines: a method written in a class
    body (or a function of the class's own module assigned there), a property or other descriptor, a static or
    class method, a builtin method.  Slots, plain class-level data and other modules' callables assigned to a
    class attribute (``act = F.relu``) are not behaviour."""
    for klass in cls.__mro__:
        if key not in vars(klass):
            continue
        attr = vars(klass)[key]
        if isinstance(attr, types.MemberDescriptorType):
            return False  # a slot: state is exactly what it is for
        if isinstance(attr, (staticmethod, classmethod, property, types.MethodDescriptorType,
                             types.WrapperDescriptorType, types.GetSetDescriptorType)):
            return True
        if inspect.isfunction(attr):  # written in the class body, or a function of the class's own module
            return getattr(attr, "__qualname__", "") == f"{klass.__qualname__}.{key}" or \
                getattr(attr, "__module__", None) == klass.__module__
        return hasattr(type(attr), "__set__")  # another data descriptor
    return False

"""Constructor-argument capture: what every repo object was built with, with no change to user code.

While capture is on (``with gitpack.capture():``, a plain ``gitpack.capture()``
call at program start, or ``gitpack save TARGET`` around the import of TARGET),
each Python ``__init__`` call is seen: through ``sys.monitoring`` on Python
3.12+ (every other function is switched off after its first call, so the cost
is close to nothing), else through a profile hook (``sys.setprofile`` +
``threading.setprofile``; it slows pure-Python call-heavy code several times
over, and threads that already run are not seen, so prefer the ``with`` form
around model building there).  For the outermost ``__init__`` of every object whose class
lives in a file outside the standard library and site-packages, it records the
arguments *as they were at call time* (before the body can mutate them), which
parameters were left at their defaults (read from the caller's call
instruction, so ``f(vocab_size=100)`` is explicit even though 100 is also the
default), and references to other such objects.  Records are keyed by object
identity and dropped when the object dies.  Whether a class really is repo code
is decided at save, against the snapshot.

At save, :func:`build_tree` turns the records of the objects the pickler met into
a JSON tree keyed by each object's path from the saved root (``$``,
``$.layer``, ``$.blocks[0]``); other repo objects become ``{"$ref": path}``.
Objects without a record (built before capture was on, or loaded) get their
arguments inferred from the ``__init__`` signature matched against instance
attributes, and are marked ``"origin": "inferred"``.
"""

from __future__ import annotations

import dis
import inspect
import json
import math
import os
import reprlib
import sys
import threading
import types
import warnings
import weakref
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator

MAX_ITEMS = 1000  # containers longer than this are described, not copied
MAX_STR = 10_000
REPR_LIMIT = 120
SMALL_TENSOR = 8  # tensors and arrays with at most this many elements also get their values
CAPTURED = "captured"
INFERRED = "inferred"

_CO_VARARGS = inspect.CO_VARARGS
_CO_VARKEYWORDS = inspect.CO_VARKEYWORDS
_MISSING = object()
_SCALARS = (type(None), bool, int, str)
_CALL_OPS = frozenset({"CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW", "CALL_KW"})
_SHORT = reprlib.Repr()
_SHORT.maxstring = REPR_LIMIT
_SHORT.maxother = REPR_LIMIT


# --------------------------------------------------------------------------- which classes to record
def _library_dirs() -> tuple[str, ...]:
    import site
    import sysconfig

    dirs = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            dirs.add(paths[key])
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # some virtualenv builds lack it
        pass
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user_site:
        dirs.add(user_site)
    dirs.add(os.path.dirname(os.path.abspath(__file__)))  # gitpack's own classes are never the user's
    return tuple(os.path.realpath(d).rstrip(os.sep) + os.sep for d in dirs)


_library_dirs_cache: tuple[str, ...] | None = None  # computed on first use: sysconfig is slow to import
_verdicts: "weakref.WeakKeyDictionary[type, bool]" = weakref.WeakKeyDictionary()


def library_dirs() -> tuple[str, ...]:
    """The standard library's and site-packages' directories (each ending in a separator), computed once."""
    global _library_dirs_cache
    if _library_dirs_cache is None:
        _library_dirs_cache = _library_dirs()
    return _library_dirs_cache


def _is_candidate(cls: type) -> bool:
    """Whether instances of *cls* may be repo objects: its module comes from a file outside the libraries."""
    try:
        return _verdicts[cls]
    except KeyError:
        pass
    except TypeError:
        return False
    verdict = False
    name = getattr(cls, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    file = getattr(module, "__file__", None)
    if isinstance(file, str) and file:
        verdict = not os.path.realpath(file).startswith(library_dirs())
    try:
        _verdicts[cls] = verdict
    except TypeError:
        pass
    return verdict


# --------------------------------------------------------------------------- records
class _Ref:
    """An argument that is itself a (possible) repo object: a weak reference plus that object's own record."""

    __slots__ = ("cls", "key", "ref", "record")

    def __init__(self, obj: Any):
        self.cls = type(obj)
        self.key = id(obj)  # for objects that cannot be weakly referenced (__slots__ without __weakref__)
        try:
            self.ref = weakref.ref(obj)
        except TypeError:
            self.ref = None
        self.record = record_for(obj)

    def target(self) -> Any:
        return self.ref() if self.ref is not None else None


class _Record:
    """One object's constructor call: its class, described arguments and which of them were defaults."""

    __slots__ = ("cls", "ref", "args", "defaults", "frame")

    def __init__(self, obj: Any, frame: Any):
        self.cls = type(obj)
        self.frame = frame  # the outermost __init__ frame while it runs, then None
        self.args: dict[str, Any] = {}
        self.defaults: list[str] = []
        key = id(obj)

        def forget(ref: Any, key: int = key) -> None:
            current = _records.get(key)
            if current is not None and current.ref is ref:
                _records.pop(key, None)

        try:
            self.ref = weakref.ref(obj, forget)
        except TypeError:
            self.ref = None

    def is_for(self, obj: Any) -> bool:
        if self.ref is not None:
            return self.ref() is obj
        return self.cls is type(obj)


_records: dict[int, _Record] = {}


def record_for(obj: Any) -> _Record | None:
    """The capture record of *obj*, if its construction was seen."""
    rec = _records.get(id(obj))
    return rec if rec is not None and rec.is_for(obj) else None


# --------------------------------------------------------------------------- describing values
def qualified_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None) or '?'}:{getattr(obj, '__qualname__', None) or getattr(obj, '__name__', '?')}"


def _short(value: Any) -> str:
    try:
        return _SHORT.repr(value)
    except Exception:  # a broken __repr__ must not break a save
        return "<unrepresentable>"


def _safe_repr_type(t: type) -> bool:
    """Types whose repr is cheap, side-effect free and informative: stdlib/builtin values."""
    module = (getattr(t, "__module__", "") or "").partition(".")[0]
    return module == "builtins" or module in getattr(sys, "stdlib_module_names", ()) or module in ("torch", "numpy")


def describe(value: Any, as_ref: Callable[[Any], Any], depth: int = 0) -> Any:
    """*value* as JSON where it is JSON, a typed description where it is not.

    *as_ref* turns a possible repo object into a reference (or returns None).
    """
    t = type(value)
    if t in _SCALARS:
        if t is str and len(value) > MAX_STR:
            return {"type": "str", "len": len(value), "repr": _short(value)}
        return value
    if t is float:
        return value if math.isfinite(value) else {"type": "float", "repr": repr(value)}
    if depth > 32:
        return {"type": qualified_name(t), "repr": "<nested too deeply>"}
    if t is list or t is tuple:
        if len(value) > MAX_ITEMS:
            return {"type": t.__name__, "len": len(value), "repr": _short(value)}
        return [describe(v, as_ref, depth + 1) for v in value]
    if t is dict:
        if len(value) > MAX_ITEMS or not all(type(k) is str for k in value):
            return {"type": "dict", "len": len(value), "repr": _short(value)}
        return {k: describe(v, as_ref, depth + 1) for k, v in value.items()}
    if isinstance(value, type):
        return {"type": "class", "name": qualified_name(value)}
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return {"type": "function", "name": qualified_name(value)}
    ref = as_ref(value)
    if ref is not None:
        return ref
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _describe_tensor(value, torch)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        out = {"type": qualified_name(t), "shape": list(value.shape), "dtype": str(value.dtype)}
        if value.size <= SMALL_TENSOR and not value.dtype.hasobject:
            out["repr"] = _short(value.tolist())
        return out
    out = {"type": qualified_name(t)}
    if t in (set, frozenset) and len(value) <= MAX_ITEMS:
        items = [describe(v, as_ref, depth + 1) for v in value]
        try:
            items.sort(key=lambda x: json.dumps(x, sort_keys=True, default=str))
        except TypeError:
            pass
        out["items"] = items
    elif _safe_repr_type(t) and (not hasattr(value, "__len__") or _len(value) <= MAX_ITEMS):
        out["repr"] = _short(value)
    return out


def _len(value: Any) -> int:
    try:
        return len(value)
    except Exception:
        return MAX_ITEMS + 1


def _describe_tensor(value: Any, torch: Any) -> dict:
    out = {
        "type": qualified_name(type(value)),
        "shape": list(value.shape),
        "dtype": str(value.dtype).removeprefix("torch."),
        "device": str(value.device),
        "requires_grad": bool(value.requires_grad),
    }
    try:
        if value.device.type == "cpu" and value.layout == torch.strided and value.numel() <= SMALL_TENSOR:
            out["repr"] = _short(value.detach().tolist())
    except Exception:  # fake, lazy or uninitialised tensors have no values to show
        pass
    return out


def _capture_ref(value: Any) -> _Ref | None:
    return _Ref(value) if _is_candidate(type(value)) else None


# --------------------------------------------------------------------------- the profile hook
_site_cache: dict[int, tuple[types.CodeType, dict[int, tuple[int, tuple[str, ...]]]]] = {}


def _call_sites(code: types.CodeType) -> dict[int, tuple[int, tuple[str, ...]]]:
    """Offset of each call instruction in *code* -> (argument count, keyword names)."""
    entry = _site_cache.get(id(code))
    if entry is not None and entry[0] is code:
        return entry[1]
    table: dict[int, tuple[int, tuple[str, ...]]] = {}
    pending_kw: tuple[str, ...] | None = None
    previous = None
    for ins in dis.get_instructions(code):
        op = ins.opname
        if op in _CALL_OPS and isinstance(ins.arg, int):
            kw: tuple[str, ...] = ()
            if op == "CALL" and pending_kw is not None:
                kw = pending_kw
            elif op in ("CALL_FUNCTION_KW", "CALL_KW"):
                if previous is None or previous.opname != "LOAD_CONST" or not isinstance(previous.argval, tuple):
                    pending_kw, previous = None, ins
                    continue
                kw = previous.argval
            table[ins.offset] = (ins.arg, tuple(kw))
            pending_kw = None
        elif op == "KW_NAMES" and isinstance(ins.arg, int):
            names = code.co_consts[ins.arg]
            pending_kw = tuple(names) if isinstance(names, tuple) else None
        elif op not in ("PRECALL", "CACHE", "EXTENDED_ARG"):
            pending_kw = None
        previous = ins
    _site_cache[id(code)] = (code, table)
    return table


def _passed_names(caller: Any, positional: tuple[str, ...], kwonly: tuple[str, ...],
                  varargs: str | None, varkw: str | None) -> set[str] | None:
    """Which parameters the caller passed explicitly, from its call instruction; None when unknowable."""
    if caller is None:
        return None
    site = _call_sites(caller.f_code).get(caller.f_lasti)
    if site is None:
        return None  # f(*args, **kwargs), or a call made from C (map, partial, ...)
    argc, kwnames = site
    npos = argc - len(kwnames)
    if npos < 0 or (npos > len(positional) and varargs is None):
        return None
    named = set(positional) | set(kwonly)
    first = set(positional[:npos])
    for name in kwnames:
        if (name not in named and varkw is None) or name in first:
            return None  # the instruction does not call this __init__ (a C intermediary did)
    return first | (set(kwnames) & named)


def _init_function(cls: type, code: types.CodeType) -> Any:
    for klass in cls.__mro__:
        fn = klass.__dict__.get("__init__")
        while fn is not None:
            if getattr(fn, "__code__", None) is code:
                return fn
            fn = getattr(fn, "__wrapped__", None)
    return None


def _same_value(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def _record_call(frame: Any, code: types.CodeType, f_locals: dict, obj: Any) -> _Record:
    rec = _Record(obj, frame)
    names = code.co_varnames
    nargs, nkw = code.co_argcount, code.co_kwonlyargcount
    positional = tuple(names[1:nargs])
    kwonly = tuple(names[nargs : nargs + nkw])
    i = nargs + nkw
    varargs = varkw = None
    if code.co_flags & _CO_VARARGS:
        varargs = names[i]
        i += 1
    if code.co_flags & _CO_VARKEYWORDS:
        varkw = names[i]
    fn = _init_function(type(obj), code)
    defaults: dict[str, Any] = {}
    if fn is not None:
        pos_defaults = getattr(fn, "__defaults__", None) or ()
        if pos_defaults:
            for name, value in zip(names[:nargs][-len(pos_defaults):], pos_defaults):
                defaults[name] = value
        defaults.update(getattr(fn, "__kwdefaults__", None) or {})
    passed = _passed_names(frame.f_back, positional, kwonly, varargs, varkw)
    for name in positional + kwonly:
        value = f_locals.get(name, _MISSING)
        if value is _MISSING:
            continue
        rec.args[name] = describe(value, _capture_ref)
        if name in defaults:
            default = defaults[name]
            if (value is default) if passed is None else (name not in passed and _same_value(value, default)):
                rec.defaults.append(name)
    if varargs and f_locals.get(varargs):
        rec.args["*" + varargs] = describe(f_locals[varargs], _capture_ref)
    if varkw and f_locals.get(varkw):
        rec.args["**" + varkw] = describe(f_locals[varkw], _capture_ref)
    return rec


def _on_init(frame: Any, event: str) -> None:
    code = frame.f_code
    if not code.co_argcount:
        return
    f_locals = frame.f_locals
    obj = f_locals.get(code.co_varnames[0], _MISSING)
    if obj is _MISSING or not _is_candidate(type(obj)):
        return
    key = id(obj)
    rec = _records.get(key)
    if event == "return":
        if rec is not None and rec.frame is frame:
            rec.frame = None
        return
    if rec is not None and rec.frame is not None and rec.is_for(obj):
        return  # super().__init__() inside the outermost call: only the outermost class's call counts
    _records[key] = _record_call(frame, code, f_locals, obj)


def _hook(frame: Any, event: str, arg: Any) -> None:
    if (event == "call" or event == "return") and frame.f_code.co_name == "__init__":
        try:
            _on_init(frame, event)
        except Exception:  # capture is best effort; it must never break the user's program
            pass


class _Chained:
    """Our hook after a Python-level profile function that was already installed."""

    def __init__(self, previous: Callable):
        self.previous = previous

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        self.previous(frame, event, arg)
        _hook(frame, event, arg)


# Python 3.12+: sys.monitoring reports only function starts and returns, and each function that is not
# an __init__ is switched off after its first call, so capture costs next to nothing once warmed up.
_MONITORING = getattr(sys, "monitoring", None)
_MONITORING_TOOLS = (4, 3, 5)  # 0, 1 and 2 are the ids reserved for debuggers, coverage and profilers
_MONITORED = "sys.monitoring"


def _monitor(event: str):
    """A sys.monitoring callback for *event* ('call' at PY_START, 'return' at PY_RETURN) of ``__init__`` frames.

    Any other function is switched off after its first call, which is what makes capture nearly free on 3.12+.
    """

    def callback(code: types.CodeType, offset: int, *_value: Any) -> Any:
        if code.co_name != "__init__":
            return _MONITORING.DISABLE
        try:
            _on_init(sys._getframe(1), event)
        except Exception:
            pass
        return None

    return callback


_on_start = _monitor("call")
_on_return = _monitor("return")


_state_lock = threading.RLock()
_depth = 0
_installed: Any = None
_previous: Any = None
_previous_threading: Any = None
_tool: int | None = None
_monitored_before = False


def _start_monitoring() -> bool:
    global _tool, _monitored_before
    m = _MONITORING
    for tool in _MONITORING_TOOLS:
        if m.get_tool(tool) is None:
            break
    else:
        return False
    m.use_tool_id(tool, "gitpack.capture")
    m.register_callback(tool, m.events.PY_START, _on_start)
    m.register_callback(tool, m.events.PY_RETURN, _on_return)
    m.set_events(tool, m.events.PY_START | m.events.PY_RETURN)
    if _monitored_before:
        m.restart_events()  # functions switched off by an earlier capture report again
    _tool, _monitored_before = tool, True
    return True


def _stop_monitoring() -> None:
    global _tool
    m = _MONITORING
    m.set_events(_tool, 0)
    m.register_callback(_tool, m.events.PY_START, None)
    m.register_callback(_tool, m.events.PY_RETURN, None)
    m.free_tool_id(_tool)
    _tool = None


def _start() -> None:
    global _depth, _installed, _previous, _previous_threading
    with _state_lock:
        _depth += 1
        if _depth > 1:
            return
        if _MONITORING is not None and _start_monitoring():
            _installed = _MONITORED
            return
        previous = sys.getprofile()
        if previous is not None and not callable(previous):
            warnings.warn("gitpack.capture: another profiler is active, so constructor arguments are not captured "
                          "(they will be inferred at save)", RuntimeWarning, stacklevel=3)
            return
        _previous = previous
        _previous_threading = threading.getprofile() if hasattr(threading, "getprofile") else None
        _installed = _hook if previous is None else _Chained(previous)
        sys.setprofile(_installed)
        threading.setprofile(_installed)


def _stop() -> None:
    global _depth, _installed
    with _state_lock:
        if _depth == 0:
            return
        _depth -= 1
        if _depth or _installed is None:
            return
        if _installed is _MONITORED:
            _stop_monitoring()
        else:
            if sys.getprofile() is _installed:
                sys.setprofile(_previous)
            threading.setprofile(_previous_threading)
        _installed = None


class Capture:
    """An active capture: a context manager, or a handle whose :meth:`stop` ends it."""

    def __init__(self) -> None:
        self._active = True
        _start()

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        if self._active:
            self._active = False
            _stop()


def capture() -> Capture:
    """Record the constructor arguments of repo objects built from now on.

    ``with gitpack.capture(): model = build()`` captures inside the block; a plain
    ``gitpack.capture()`` at program start keeps it on until the process ends.
    """
    return Capture()


def is_capturing() -> bool:
    return _installed is not None


@contextmanager
def paused() -> Iterator[None]:
    """Turn the hook off in this thread for the duration (gitpack's own work need not be watched)."""
    current = sys.getprofile()
    if current is None or current is not _installed:  # (sys.monitoring needs no pause: it is nearly free)
        yield
        return
    sys.setprofile(_previous)
    try:
        yield
    finally:
        sys.setprofile(current)


# --------------------------------------------------------------------------- the tree, at save
def _class_name(cls: type, module_map: Any) -> str:
    module = module_map.canonical(getattr(cls, "__module__", None)) if module_map is not None else None
    return f"{module or cls.__module__}:{cls.__qualname__}"


def _attribute(obj: Any, name: str) -> Any:
    """The instance attribute that most likely holds constructor argument *name*, or _MISSING."""
    attrs = getattr(obj, "__dict__", None)
    containers = [attrs] if isinstance(attrs, dict) else []
    if isinstance(attrs, dict):
        for internal in ("_modules", "_parameters", "_buffers"):  # torch.nn.Module keeps these apart
            if isinstance(attrs.get(internal), dict):
                containers.append(attrs[internal])
    for candidate in (name, "_" + name):
        for container in containers:
            if candidate in container:
                return container[candidate]
    return _MISSING


def _inferred(obj: Any) -> tuple[dict[str, Any], list[str]]:
    try:
        params = list(inspect.signature(type(obj)).parameters.values())
    except (TypeError, ValueError):
        params = []
    args: dict[str, Any] = {}
    unknown: list[str] = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = _attribute(obj, p.name)
        if value is _MISSING:
            unknown.append(p.name)
        else:
            args[p.name] = describe(value, _capture_ref)
    return args, unknown


def build_tree(instances: dict[int, Any], paths: dict[int, tuple[str, Any]], module_map: Any) -> dict[str, Any]:
    """The capture tree of the repo objects the pickler met (*instances*, id -> object).

    *paths* maps object ids to their path from the saved root (see
    :func:`gitpack.structure.object_paths`); objects it lacks are named after
    their class.  A referenced repo object that is not part of the saved graph
    (an argument that was only read) gets its own entry, named after the
    argument that carried it.
    """
    keys: dict[int, str] = {}
    queue: deque[tuple[str, Any, _Record | None]] = deque()
    for obj_id, (path, obj) in paths.items():
        if obj_id in instances:
            keys[obj_id] = path
            queue.append((path, obj, record_for(obj)))
    unnamed: dict[str, int] = {}
    for obj_id, obj in instances.items():
        if obj_id not in keys:
            name = type(obj).__qualname__
            unnamed[name] = unnamed.get(name, 0) + 1
            keys[obj_id] = f"<{name} #{unnamed[name]}>"
            queue.append((keys[obj_id], obj, record_for(obj)))

    def is_repo(cls: type) -> bool:
        return module_map.canonical(getattr(cls, "__module__", None)) is not None

    def resolve(value: Any, owner: str, where: str) -> Any:
        if isinstance(value, _Ref):
            target = value.target()
            if value.ref is None and type(instances.get(value.key)) is value.cls:
                target = instances[value.key]
            if target is not None and id(target) in keys:
                return {"$ref": keys[id(target)]}
            if is_repo(value.cls) and (value.record is not None or target is not None):
                key = f"{owner}({where})"
                if target is not None:
                    keys[id(target)] = key
                record = value.record if value.record is not None and value.record.cls is value.cls else None
                queue.append((key, target, record))
                return {"$ref": key}
            return {"type": _class_name(value.cls, module_map)}
        if isinstance(value, list):
            return [resolve(v, owner, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: resolve(v, owner, f"{where}[{json.dumps(k)}]") for k, v in value.items()}
        return value

    objects: dict[str, Any] = {}
    while queue:
        key, obj, rec = queue.popleft()
        if key in objects:
            continue
        cls = rec.cls if rec is not None else type(obj)
        if rec is not None:
            entry = {"class": _class_name(cls, module_map), "origin": CAPTURED,
                     "args": {}, "defaults": list(rec.defaults)}
            raw = rec.args
            unknown = None
        else:
            raw, unknown = _inferred(obj)
            entry = {"class": _class_name(cls, module_map), "origin": INFERRED, "args": {}, "defaults": []}
        objects[key] = entry
        entry["args"] = {name: resolve(value, key, name) for name, value in raw.items()}
        if unknown:
            entry["unknown"] = unknown
    return {"objects": objects}


# --------------------------------------------------------------------------- reading it back
def format_value(value: Any, limit: int = 200) -> str:
    if isinstance(value, dict) and set(value) == {"$ref"}:
        return str(value["$ref"])
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_call(entry: dict[str, Any], limit: int = 300) -> str:
    """``package:MyLayer(n_symbols=100, n_embed=64 (default))``; inferred entries say so."""
    defaults = set(entry.get("defaults") or ())
    parts = []
    for name, value in (entry.get("args") or {}).items():
        parts.append(f"{name}={format_value(value, 80)}" + (" (default)" if name in defaults else ""))
    parts += [f"{name}=?" for name in entry.get("unknown") or ()]
    text = f"{entry.get('class', '?')}({', '.join(parts)})"
    if entry.get("origin") == INFERRED:
        text += " (inferred)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summary_lines(tree: dict[str, Any] | None, max_lines: int = 40) -> list[str]:
    """One line per captured object, for the snapshot commit message."""
    objects = (tree or {}).get("objects") or {}
    lines = [f"{key} = {format_call(entry)}" for key, entry in objects.items()]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... {len(lines) - max_lines} more in the archive manifest"]
    return lines

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
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .describe import capture_ref, describe
from .records import MISSING, Record, is_candidate, records

_CO_VARARGS = inspect.CO_VARARGS
_CO_VARKEYWORDS = inspect.CO_VARKEYWORDS
_CALL_OPS = frozenset({"CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW", "CALL_KW"})


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


_LOADS = frozenset({"LOAD_FAST", "LOAD_DEREF", "LOAD_NAME", "LOAD_GLOBAL", "LOAD_CLOSURE", "LOAD_FAST_CHECK"})
_ex_cache: dict[int, tuple[types.CodeType, dict[int, tuple]]] = {}


def _ex_sites(code: types.CodeType) -> dict[int, tuple]:
    """Offset of each ``f(*args, **kwargs)`` call (CALL_FUNCTION_EX) in *code* -> how to read what it passes:
    ``(positional, keywords)``, each ``("const", n)``, ``("name", var)`` (a variable holding the tuple or dict),
    ``("list", n, var)`` (``f(a, b, *var)``) or ``("none",)``; ``("unknown",)`` for any other shape."""
    entry = _ex_cache.get(id(code))
    if entry is not None and entry[0] is code:
        return entry[1]
    ins = [i for i in dis.get_instructions(code) if i.opname not in ("CACHE", "EXTENDED_ARG", "NOP")]
    table: dict[int, tuple] = {}
    for k, call in enumerate(ins):
        if call.opname != "CALL_FUNCTION_EX" or not isinstance(call.arg, int):
            continue
        j = k - 1
        keywords: tuple = ("none",)
        if call.arg & 1:
            keywords = ("unknown",)
            if j >= 2 and ins[j].opname == "DICT_MERGE" and ins[j - 1].opname in _LOADS \
                    and ins[j - 2].opname == "BUILD_MAP" and ins[j - 2].arg == 0:
                keywords, j = ("name", ins[j - 1].argval), j - 3
            elif j >= 0 and ins[j].opname in _LOADS:
                keywords, j = ("name", ins[j].argval), j - 1
            else:
                j = -1
        positional: tuple = ("unknown",)
        if j >= 0 and ins[j].opname == "LOAD_CONST" and isinstance(ins[j].argval, tuple):
            positional = ("const", len(ins[j].argval))
        elif j >= 0 and ins[j].opname in _LOADS:
            positional = ("name", ins[j].argval)
        elif j >= 3 and ins[j].opname == "LIST_TO_TUPLE" and ins[j - 1].opname == "LIST_EXTEND" \
                and ins[j - 2].opname in _LOADS and ins[j - 3].opname == "BUILD_LIST":
            positional = ("list", ins[j - 3].arg, ins[j - 2].argval)
        table[call.offset] = (positional, keywords)
    _ex_cache[id(code)] = (code, table)
    return table


def _variable(frame: Any, name: Any) -> Any:
    if not isinstance(name, str):
        return MISSING
    for scope in (frame.f_locals, frame.f_globals, frame.f_builtins):
        if name in scope:
            return scope[name]
    return MISSING


def _ex_site(caller: Any) -> tuple[int, tuple[str, ...]] | None:
    """``(argument count, keyword names)`` of the ``f(*args, **kwargs)`` call the caller is making, read from the
    variables it unpacks (still as they were: the caller waits on this call); None when that is not readable."""
    spec = _ex_sites(caller.f_code).get(caller.f_lasti)
    if spec is None:
        return None
    positional, keywords = spec
    if positional[0] == "const":
        npos = positional[1]
    elif positional[0] in ("name", "list"):
        value = _variable(caller, positional[-1])
        if type(value) not in (tuple, list):
            return None
        npos = len(value) + (positional[1] if positional[0] == "list" else 0)
    else:
        return None
    names: tuple[str, ...] = ()
    if keywords[0] == "name":
        value = _variable(caller, keywords[1])
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            return None
        names = tuple(value)
    elif keywords[0] != "none":
        return None
    return npos + len(names), names


def _passed_names(caller: Any, positional: tuple[str, ...], kwonly: tuple[str, ...],
                  varargs: str | None, varkw: str | None) -> set[str] | None:
    """Which parameters the caller passed explicitly, from its call instruction (for ``f(**kwargs)``, from the
    dict it unpacks); None when unknowable."""
    if caller is None:
        return None
    site = _call_sites(caller.f_code).get(caller.f_lasti) or _ex_site(caller)
    if site is None:
        return None  # a call made from C (map, partial, ...), or an unpacking this cannot read
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


def _record_call(frame: Any, code: types.CodeType, f_locals: dict, obj: Any) -> Record:
    rec = Record(obj, frame)
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
            # Not strict: __defaults__ can be reassigned to any tuple, and capturing must not fail the caller.
            for name, value in zip(names[:nargs][-len(pos_defaults):], pos_defaults, strict=False):
                defaults[name] = value
        defaults.update(getattr(fn, "__kwdefaults__", None) or {})
    passed = _passed_names(frame.f_back, positional, kwonly, varargs, varkw)
    for name in positional + kwonly:
        value = f_locals.get(name, MISSING)
        if value is MISSING:
            continue
        rec.args[name] = describe(value, capture_ref)
        if name in defaults:
            default = defaults[name]
            if (value is default) if passed is None else (name not in passed and _same_value(value, default)):
                rec.defaults.append(name)
    if varargs and f_locals.get(varargs):
        rec.args["*" + varargs] = describe(f_locals[varargs], capture_ref)
    if varkw and f_locals.get(varkw):
        rec.args["**" + varkw] = describe(f_locals[varkw], capture_ref)
    return rec


def _on_init(frame: Any, event: str) -> None:
    code = frame.f_code
    if not code.co_argcount:
        return
    f_locals = frame.f_locals
    obj = f_locals.get(code.co_varnames[0], MISSING)
    if obj is MISSING or not is_candidate(type(obj)):
        return
    key = id(obj)
    rec = records.get(key)
    if event == "return":
        if rec is not None and rec.frame is frame:
            rec.frame = None
        return
    if rec is not None and rec.frame is not None and rec.is_for(obj):
        return  # super().__init__() inside the outermost call: only the outermost class's call counts
    records[key] = _record_call(frame, code, f_locals, obj)


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
# Any: mypy checks against Python 3.10, whose stubs have no sys.monitoring; None before 3.12.
_MONITORING: Any = getattr(sys, "monitoring", None)
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

    def __enter__(self) -> Capture:
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



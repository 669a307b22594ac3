"""Stand-ins: what a global, a persistent id or a built object is during the gate's dry run.

The dry run (:mod:`gitpack.pickling.gate`) hands the C unpickler these instead of real
objects.  A stand-in for a global is a *class* (so NEWOBJ, which requires a
type, works on it) whose metaclass records REDUCE and BUILD; an object the
pickle builds is a :class:`_Made` that records BUILD, SETITEM, APPEND and ADD.
Each keeps a record (:class:`Ref`, :class:`Made`) that :mod:`gitpack.pickling.calls`
judges.  None of them can do anything but record: no real class, function or
module is ever reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeGuard

from ..errors import PolicyError

# The recording side (:class:`gitpack.pickling.gate.Trace`) provides _called, _built and _mutated; duck-typed here so
# this module imports nothing else of gitpack's.

@dataclass(frozen=True)
class Ref:
    """A global or persistent id the pickle names, as the gate sees it (never the real object).

    *kind*: ``global`` (module, name from GLOBAL/STACK_GLOBAL), or from a persistent id: ``class``,
    ``function``, ``module``, ``legacy`` (a pre-0.2 snapshot reference, class or function), ``storage``,
    ``rebuild`` (gitpack's rebuilder of lambdas) or ``result`` (a class a reconstructor returned).
    *category* is the policy's verdict for globals (see :mod:`gitpack.pickling.policy`).
    """

    kind: str
    module: str | None = None
    name: str | None = None
    category: str | None = None
    refused: str | None = None  # why the policy refuses this global
    parts: tuple = ()  # a persistent id as the pickle wrote it

    @cached_property
    def dotted(self) -> str:  # computed once: the gate asks for it at every call and BUILD it judges
        if self.module is None:
            return f"<{self.name}>"
        return f"{self.module}.{self.name}" if self.name else self.module

    @property
    def snapshot(self) -> bool:
        return self.kind in ("class", "function", "legacy")

    def module_and_name(self) -> tuple[str, str]:
        """``(module, name)`` of a global or of a class a reconstructor returned, which always carry both.

        A None here is a bug in the gate, never something a pickle can cause (in the dry run it refuses the load).
        """
        if self.module is None or self.name is None:
            raise PolicyError(f"the gate lost the module or name of {self.dotted}")
        return self.module, self.name


class StandInType(type):
    """Metaclass of every stand-in for a global or persistent id: REDUCE and BUILD on one are recorded."""

    _gate_ref: Ref
    _gate_trace: Any

    def __call__(cls, *args, **kwargs):  # REDUCE
        return cls._gate_trace._called(cls, args, kwargs, "call")

    def __setstate__(cls, state):  # BUILD whose target is the global itself, not an instance
        cls._gate_trace._built(cls, state)

    def __repr__(cls) -> str:
        return f"<{cls._gate_ref.dotted}>"


def _new(cls, *args, **kwargs):  # NEWOBJ / NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)
    return cls._gate_trace._called(cls, args, kwargs, "new")


class _Made:
    """Stand-in for an object the pickle builds (by calling a stand-in); records what is done to it."""

    __slots__ = ("_gate_record",)
    _gate_record: Made  # set by made_object() right after construction

    def __setstate__(self, state):  # BUILD
        self._gate_record.trace._built(self, state)

    def __setitem__(self, key, value):  # SETITEM(S) on something that is not a plain dict
        self._gate_record.trace._mutated(self, "setitem", (key, value))

    def append(self, item):  # APPEND(S) on something that is not a plain list (when it has no extend)
        self._gate_record.trace._mutated(self, "append", (item,))

    def extend(self, items):
        self._gate_record.trace._mutated(self, "extend", tuple(items))

    def add(self, item):  # ADDITEMS on something that is not a set
        self._gate_record.trace._mutated(self, "add", (item,))

    def __repr__(self) -> str:
        r = self._gate_record
        return f"<{r.cls.dotted if r.cls else '?'} built by the pickle>"


class Buffer(bytes):
    """Stand-in for an out-of-band buffer (pickle protocol 5) during the dry run; holds no data."""


@dataclass(eq=False)
class Made:
    """What the gate knows of one object the pickle builds."""

    trace: Any  # the recording Trace
    seq: int  # position in the trace's event order
    callee: Ref  # what was called (for NEWOBJ: the class)
    how: str  # "call" (REDUCE) or "new" (NEWOBJ)
    args: tuple
    kwargs: dict
    cls: Ref | None = None  # the class of the result, when known (what BUILD and mutation rules apply to)
    kind: str = "instance"  # "instance", or what a reconstructor returns: "tensor", "ndarray", "dtype", ...
    built: bool = False
    used_at: int | None = None  # first time it was passed to a call
    mutations: int = 0


@dataclass(frozen=True)
class Deferred:
    """A check that needs the real class: run by :meth:`Trace.check_classes` at load."""

    what: str  # "call", "new", "state", "mutate", "tensor-type", "param-state"
    ref: Ref  # the class (or legacy reference) to resolve
    detail: Any = None  # state keys, mutation name, ...


class ValueStandIn:
    """Stand-in for a persistent id that is plain data once loaded (a storage, a tensor, a columns container):
    a value only, never called, filled or given state."""

    __slots__ = ("ref",)

    def __init__(self, ref: Ref):
        self.ref = ref

    def __repr__(self) -> str:
        return f"<{self.ref.kind} {self.ref.name}>"


def stand_in(ref: Ref, recorder: Any) -> StandInType:
    """A new stand-in class for *ref*, whose calls and state go to *recorder*."""
    return StandInType(f"stand-in {ref.dotted}", (), {"__new__": _new, "_gate_ref": ref, "_gate_trace": recorder})


def made_object(record: Made) -> _Made:
    obj = _Made()
    obj._gate_record = record
    return obj


def is_stand_in(value: Any) -> TypeGuard[StandInType]:
    return isinstance(value, StandInType)


def ref_of(value: Any) -> Ref | None:
    """The :class:`Ref` a dry-run value stands for, when it is a global or persistent id (else None)."""
    if isinstance(value, StandInType):
        return value._gate_ref
    if type(value) is ValueStandIn:
        return value.ref
    return None


def made_of(value: Any) -> Made | None:
    """The :class:`Made` record of an object the pickle built (else None)."""
    return value._gate_record if type(value) is _Made else None



"""Stand-ins: what a global, a persistent id or a built object is during the gate's dry run.

The dry run (:mod:`gitpack.pickling.gate`) hands the C unpickler these instead of real
objects.  A stand-in for a global is a *class* (so NEWOBJ, which requires a
type, works on it) whose metaclass records REDUCE and BUILD, with a :class:`Ref`
naming it; an object the pickle builds is a :class:`Made`, which records BUILD,
SETITEM, APPEND and ADD and is itself the record :mod:`gitpack.pickling.calls`
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

    def __hash__(self) -> int:  # computed once: the gate dedupes its deferred checks by the Ref they name
        found = self.__dict__.get("_hash")
        if found is None:
            found = hash((self.kind, self.module, self.name, self.category, self.refused, self.parts))
            object.__setattr__(self, "_hash", found)
        return found

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


def _no_state(self, state):
    """BUILD on a value a persistent id or buffer stands for.  Without a ``__setstate__`` the C unpickler would set
    slot state on the stand-in itself (a tensor id's relabelled a storage of any size): the dry run stops here,
    and the gate refuses the pickle."""
    raise PolicyError(f"BUILD on {self!r} (state is only ever set on objects the pickle builds)")


class Buffer(bytes):
    """Stand-in for an out-of-band buffer (pickle protocol 5) during the dry run; holds no data."""

    __slots__ = ()
    __setstate__ = _no_state

    def __repr__(self) -> str:
        return "<out-of-band buffer>"


class Made:
    """An object the pickle builds (by calling a stand-in): what the gate knows of it, and what the C unpickler
    holds in its place, recording the BUILD, SETITEM, APPEND and ADD done to it.

    One slotted object for both: a model pickle builds tens of thousands, and the gate must cost a fraction
    of the unpickling it guards.
    """

    __slots__ = ("trace", "seq", "callee", "how", "args", "kwargs", "cls", "kind", "built", "used_at", "mutations")

    def __init__(self, trace: Any, seq: int, callee: Ref, how: str, args: tuple, kwargs: dict,
                 cls: Ref | None = None):
        self.trace = trace  # the recording Trace
        self.seq = seq  # position in the trace's event order
        self.callee = callee  # what was called (for NEWOBJ: the class)
        self.how = how  # "call" (REDUCE) or "new" (NEWOBJ)
        self.args = args
        self.kwargs = kwargs
        self.cls = cls  # the class of the result, when known (what BUILD and mutation rules apply to)
        self.kind = "instance"  # "instance", or what a reconstructor returns: "tensor", "ndarray", "dtype", ...
        self.built = False
        self.used_at: int | None = None  # first time it was passed to a call
        self.mutations = 0

    def __setstate__(self, state):  # BUILD
        self.trace._built(self, state)

    def __setitem__(self, key, value):  # SETITEM(S) on something that is not a plain dict
        self.trace._mutated(self, "setitem", (key, value))

    def append(self, item):  # APPEND(S) on something that is not a plain list (when it has no extend)
        self.trace._mutated(self, "append", (item,))

    def extend(self, items):
        self.trace._mutated(self, "extend", tuple(items))

    def add(self, item):  # ADDITEMS on something that is not a set
        self.trace._mutated(self, "add", (item,))

    def __repr__(self) -> str:
        return f"<{self.cls.dotted if self.cls else '?'} built by the pickle>"


@dataclass(frozen=True)
class Deferred:
    """A check that needs the real class: run by :meth:`Trace.check_classes` at load."""

    what: str  # "call", "new", "state", "mutate", "tensor-type", "param-state"
    ref: Ref  # the class (or legacy reference) to resolve
    detail: Any = None  # state keys, mutation name, ...


class ValueStandIn:
    """Stand-in for a persistent id that is plain data once loaded (a storage, a tensor, a columns container):
    a value only, never called, filled or given state.  A tensor's :class:`Ref` is made only when something
    asks for it (a model names thousands of tensors; the gate's rules ask for a few)."""

    __slots__ = ("pid", "_ref")
    __setstate__ = _no_state

    def __init__(self, pid: tuple, ref: Ref | None = None):
        self.pid = pid
        self._ref = ref  # None: a tensor id

    @property
    def ref(self) -> Ref:
        if self._ref is None:
            self._ref = tensor_ref(self.pid)
        return self._ref

    def __repr__(self) -> str:
        return f"<{self.ref.kind} {self.ref.name}>"


def tensor_ref(pid: tuple) -> Ref:
    """The :class:`Ref` of a tensor persistent id (:mod:`.tensorids`), made only when a rule or a report asks."""
    return Ref("tensor", name=str(pid[2])[:40], parts=pid)


def stand_in(ref: Ref, recorder: Any) -> StandInType:
    """A new stand-in class for *ref*, whose calls and state go to *recorder*."""
    return StandInType(f"stand-in {ref.dotted}", (), {"__new__": _new, "_gate_ref": ref, "_gate_trace": recorder})


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
    """*value* when it is an object the pickle built (else None)."""
    return value if type(value) is Made else None



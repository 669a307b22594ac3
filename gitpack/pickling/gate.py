"""The trust gate: every call, construction and state change a pickle would make, proven allowed before it runs.

``find_class`` alone cannot make unpickling safe: what the pickle *does* with
the globals it gets (calls them with arguments, sets state on them with BUILD,
fills them with SETITEM) is where attacks live.  So before the real unpickling,
the pickle runs once through CPython's own C unpickler with every global and
persistent id replaced by an inert stand-in (:mod:`gitpack.pickling.standins`).
The stand-ins record each REDUCE, NEWOBJ, BUILD, APPEND, SETITEM and ADD in the
order the real run will perform them, and :mod:`gitpack.pickling.calls` judges
each one.  Because it is the same C unpickler over
the same bytes, the record is exact (no re-implementation of the pickle machine
that could disagree with the real one) and runs at C speed for data; nothing is
imported or executed.  :mod:`gitpack.pickling.opcodes` first bounds the one thing the C
unpickler does before any stand-in is reached (memo table growth).

Checks that need the real class (does a snapshot class declare its own
``__reduce__``?  does a state key shadow one of its methods?) are collected as
:class:`Deferred` items and run by :meth:`Trace.check_classes` once load has
resolved the classes; ``scan``, which never imports, reports them as pending.
"""

from __future__ import annotations

import io
import pickle
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import PolicyError
from . import calls, classchecks, opcodes, refusals, states, tensorids
from .gcpause import gc_paused
from .policy import Policy
from .standins import (
    Buffer,
    Deferred,
    Made,
    Ref,
    StandInType,
    ValueStandIn,
    is_stand_in,
    made_of,
    stand_in,
    tensor_ref,
)
from .tensortable import TensorTable
from .verdicts import ALLOWED, CALLABLE_KINDS, short

MAX_NESTING = 3  # pickles inside bytes arguments of refused calls, scanned for the report only
NESTED_BUDGET = 8 << 20  # bytes of nested pickles one trace scans, all depths together
MAX_NESTED = 16  # nested pickles one trace scans
_BY_VALUE_CODE = ("dill._dill", "_create_code")  # bytecode carried in the pickle (only --trust loads it)


# ----------------------------------------------------------------------------- the trace
@dataclass
class _NestedBudget:
    """What is left for scanning nested pickles: one budget shared by a trace and every trace nested in it."""

    bytes_left: int = NESTED_BUDGET
    pickles_left: int = MAX_NESTED
    seen: set[int] = field(default_factory=set)  # id() of every bytes object already scanned


@dataclass
class Trace:
    """Everything one pickle (and, for the report, pickles nested in it) would do, and what is refused."""

    policy: Policy
    modules: frozenset[str] | None = None  # snapshot modules the manifest records as used (None: not checked)
    depth: int = 0
    # every global and persistent id, in order; a tensor id as the pid tuple itself (a model names thousands: a
    # Ref each is made only when a report asks, see refs)
    named: list[Ref | tuple] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    deferred: list[Deferred] = field(default_factory=list)
    # repo lambdas rebuilt: (module, qualname, line)
    functions: list[tuple[str, str, int]] = field(default_factory=list)
    code: list[tuple] = field(default_factory=list)  # by-value code objects: dill _create_code arguments
    nested: list[Trace] = field(default_factory=list)
    error: str | None = None
    count_opcodes: bool = False  # scan reports how many opcodes the pickle holds; a load never asks
    table: TensorTable | None = None  # format 3: the archive's tensor table, whose rows the pickle names by number
    opcodes: int = 0  # counted with count_opcodes only (0 when the byte pass refused the pickle)
    _seq: int = 0
    _rows: int = 0  # rows of the tensor table
    _stand_ins: dict = field(default_factory=dict)
    _deferred_seen: set = field(default_factory=set)  # the deferred checks queued, to queue each once
    states_checked: set = field(default_factory=set)  # (class, state keys) of all-data states, checked already
    callables_built: int = 0  # objects the pickle built as functions, partials or methods so far
    # How often the pickle calls each stand-in (see calls).  The records of what the calls build are not kept past
    # the dry run: the millions of objects a big pickle describes die with it
    _bare_calls: dict = field(default_factory=dict)  # (stand-in, how) -> [verdict, count], calls without arguments
    _calls_with_arguments: dict = field(default_factory=dict)  # (stand-in, how) -> count
    _user_allowed: set = field(default_factory=set)  # globals --allow admits, each given one resolving check
    _budget: _NestedBudget | None = None  # what is left for nested pickles, shared by all depths

    # ---------------------------------------------------------------- results
    @property
    def calls(self) -> Counter[tuple[Ref, str, bool]]:
        """How often the pickle makes each call: (callee, "call" or "new", whether it passes arguments) -> count."""
        out: Counter[tuple[Ref, str, bool]] = Counter()
        for (callee, how), (_, n) in self._bare_calls.items():
            out[callee._gate_ref, how, False] += n
        for (callee, how), n in self._calls_with_arguments.items():
            out[callee._gate_ref, how, True] += n
        return out

    @property
    def refs(self) -> list[Ref]:
        """Every global and persistent id the pickle names, in order."""
        return [r if isinstance(r, Ref) else tensor_ref(r) for r in self.named]

    @property
    def globals(self) -> list[Ref]:
        return [r for r in self.named if isinstance(r, Ref) and r.kind == "global"]

    @property
    def refused(self) -> list[Ref]:
        return [r for r in self.globals if r.refused]

    @property
    def storages(self) -> list[tuple]:
        """The storage persistent ids, in order (what load reads and verifies before unpickling)."""
        return [r.parts if isinstance(r, Ref) else ("storage",) + r[1:5]
                for r in self.named if not isinstance(r, Ref) or r.kind == "storage"]

    @property
    def safe(self) -> bool:
        return not self.violations and self.error is None

    def refusal(self) -> str | None:
        """One line naming every refused global and the first few other refused constructs, or None."""
        return refusals.summary(self)

    def raise_if_refused(self, where: str) -> None:
        text = self.refusal()
        if text is not None:
            raise PolicyError(f"{where}: the load policy refuses {text}{refusals.hint(self)}")

    # ---------------------------------------------------------------- dry run
    def run(self, data: bytes, *, buffers: int = 0) -> Trace:
        if self.table is not None:
            problem = self.table.problem()  # every row at once, before the pickle can name one
            if problem:
                self.violations.append(problem)
        self._rows = self.table.rows if self.table is not None else 0
        try:
            counted, unwanted = opcodes.check(data, count=self.count_opcodes)
            self.opcodes = counted or 0
        except opcodes.OpcodeError as exc:
            self.error = str(exc)
            return self
        self.violations += [f"opcode {what} (protocol 0/1 and extension opcodes gitpack never writes)"
                            for what in unwanted[:3]]
        try:
            with gc_paused():
                _DryRun(data, self, buffers).load()
        except RecursionError:
            self.error = "nested too deeply"
        except Exception as exc:  # the pickle machine's own complaint about malformed input
            self.error = f"{type(exc).__name__}: {str(exc)[:160]}"
        return self

    def _event(self) -> int:
        self._seq += 1
        return self._seq

    def _stand_in(self, ref: Ref) -> StandInType:
        key = (ref.kind, ref.module, ref.name, ref.parts if ref.kind in ("storage", "result") else ())
        found = self._stand_ins.get(key)
        if found is None:
            found = stand_in(ref, self)
            self._stand_ins[key] = found
            self.named.append(ref)
        return found

    def _global(self, module: Any, name: Any) -> StandInType:
        module, name = str(module), str(name)
        why = self.policy.refusal(module, name)
        ref = Ref("global", module, name, None if why else self.policy.category(module, name), why)
        if why:
            self.violations.append(f"global {short(ref.dotted)} ({why})")
        elif self.policy.user_allowed(module, name) and (module, name) not in self._user_allowed:
            self._user_allowed.add((module, name))
            self._defer([Deferred("allowed-global", ref)])  # resolving it checks it (Policy.find_class)
        return self._stand_in(ref)

    def _persistent(self, pid: Any) -> Any:
        if type(pid) is int:  # format 3: a row of the tensor table (judged with the table), nearly every id of a model
            if 0 <= pid < self._rows:
                return _ROW
            row = pid if -(10**12) < pid < 10**12 else "beyond 10**12"  # (str() of a 5,000-digit int raises)
            self.violations.append(f"tensor row {row} of a tensor table of {self._rows} rows" if self.table is not None
                                   else "a tensor row in an archive with no tensor table")
            return _ROW
        if type(pid) is tuple and len(pid) == 10 and pid[0] == tensorids.KIND:  # nearly every id of a model
            problem = tensorids.problem(pid)
            if problem:
                self.violations.append(problem)
            self.named.append(pid)
            return ValueStandIn(pid)
        ref, problem = calls.persistent_ref(pid, self.modules)
        if problem:
            self.violations.append(problem)
        if ref.kind in ("storage", "columns"):
            self.named.append(ref)
            return ValueStandIn(ref.parts, ref)
        return self._stand_in(ref)

    def _called(self, stand_in: StandInType, args: tuple, kwargs: dict, how: str) -> Any:
        callee = stand_in._gate_ref
        self._seq += 1
        made = Made(self, self._seq, callee, how, args, kwargs, callee)
        if args or kwargs:
            for value in _direct(args, kwargs):
                record = made_of(value)
                if record is not None and record.used_at is None:
                    record.used_at = made.seq
            verdict = calls.check_call(self, made)
            counts = self._calls_with_arguments
            counts[stand_in, how] = counts.get((stand_in, how), 0) + 1
        else:  # most calls a module pickle makes (OrderedDict(), NEWOBJ of a layer): judged by the callee alone
            bare = self._bare_calls.get((stand_in, how))
            if bare is None:
                bare = self._bare_calls[stand_in, how] = [calls.check_call(self, made), 0]
            bare[1] += 1
            verdict = bare[0]
        if verdict is not ALLOWED:
            if verdict.problem:
                self.violations.append(verdict.problem)
            if verdict.deferred:
                self._defer(verdict.deferred)
            if verdict.result is not None:  # a reconstructor that returns a class (dill's _load_type, namedtuples)
                return self._stand_in(verdict.result)
            made.kind = verdict.kind
            if verdict.kind in CALLABLE_KINDS:
                self.callables_built += 1
            if verdict.cls is not None:
                made.cls = verdict.cls
        if callee.refused:
            if (callee.module, callee.name) == _BY_VALUE_CODE:
                self.code.append(args)
            elif self.depth < MAX_NESTING:
                self._scan_nested(args)
        return made

    def _built(self, target: Any, state: Any) -> None:
        self._seq += 1
        seq = self._seq
        record = made_of(target)
        if record is None:
            self._built_elsewhere(target)
            return
        if record.built:
            self.violations.append(f"state set twice on {short(_name(record))}")
        if record.used_at is not None and record.used_at < seq:
            self.violations.append(f"state set on {short(_name(record))} after it was passed to another call")
        record.built = True
        verdict = states.check_state(self, record, state)
        if verdict.problem:
            self.violations.append(verdict.problem)
        if verdict.deferred:
            self._defer(verdict.deferred)

    def _built_elsewhere(self, target: Any) -> None:
        """BUILD on something the pickle did not build: a global or persistent id's stand-in (the C unpickler
        reaches nothing else), refused."""
        if is_stand_in(target):
            ref = target._gate_ref
            what = "module" if ref.kind == "module" else "function" if ref.kind == "function" else "global"
            self.violations.append(f"BUILD on the {what} {short(ref.dotted)} itself (state is only ever set on "
                                   "objects the pickle builds)")
        else:
            self.violations.append("BUILD on an object the gate does not know")

    def _mutated(self, target: Any, how: str, items: tuple) -> None:
        seq = self._event()
        record = made_of(target)
        assert record is not None  # only Made objects have the methods the C unpickler calls here
        if record.used_at is not None and record.used_at < seq:
            self.violations.append(f"{short(_name(record))} changed after it was passed to another call")
        record.mutations += 1
        verdict = states.check_mutation(self, record, how)
        if verdict.problem:
            self.violations.append(verdict.problem)
        if verdict.deferred:
            self._defer(verdict.deferred)

    def _defer(self, items: list[Deferred]) -> None:
        """Queue class checks, each once (a model of 10,000 layers makes the same few thousands of times).  Every
        detail is hashable (counts, names, tuples of names), so a check is the same check only when it is equal."""
        seen = self._deferred_seen
        for item in items:
            if item not in seen:
                seen.add(item)
                self.deferred.append(item)

    def _scan_nested(self, args: tuple) -> None:
        """Dry-run pickles passed as bytes to a refused call (the payload of a ``pickle.loads`` gadget), for the
        report: each distinct object once, within a budget shared by all depths (the gate must not be the DoS)."""
        budget = self._budget if self._budget is not None else _NestedBudget()
        for value in args:
            if not (isinstance(value, (bytes, bytearray)) and _looks_like_pickle(value)) or id(value) in budget.seen:
                continue
            budget.seen.add(id(value))
            if len(value) > budget.bytes_left or budget.pickles_left <= 0:
                self.violations.append("nested pickles beyond what the gate scans (refused unscanned)")
                return
            budget.bytes_left -= len(value)
            budget.pickles_left -= 1
            inner = Trace(self.policy, self.modules, depth=self.depth + 1, count_opcodes=self.count_opcodes,
                          _budget=budget)
            self.nested.append(inner.run(bytes(value)))
        self._budget = budget

    # ---------------------------------------------------------------- the checks that read the snapshot's source
    def check_sources(self, source_for: Callable[[str], bytes | None]) -> None:
        """Check every snapshot reference against the source of the module it names, before anything is imported.

        *source_for* gives a snapshot module's source as the import would find it (None: no such module).  A
        class or function must be defined there (and be what the reference says); a module may be referenced
        only when the pickle also uses something defined in it: a reference to a module alone would only run
        its top level (a data-preparation script imported as a gadget).  The manifest's module list, which a
        pushed commit can widen, is not what decides this.
        """
        from .classfacts import facts

        sources: dict[str, bytes | None] = {}
        defined_in: set[str] = set()

        def source(module: str) -> bytes | None:
            if module not in sources:
                sources[module] = source_for(module)
            return sources[module]

        refs = [r for r in self.named if isinstance(r, Ref)]
        for ref in refs:
            if ref.kind not in ("class", "function", "legacy") or ref.module is None or ref.name is None:
                continue
            code = source(ref.module)
            found = facts(code, ref.name) if code is not None else None
            if found is None:
                self.violations.append(f"{short(ref.dotted)}, which the snapshot's source of {short(ref.module)} "
                                       "does not define (refusing to import it)")
            elif {"class": "function", "function": "class"}.get(ref.kind) == found.kind:
                self.violations.append(f"{short(ref.dotted)} named as a {ref.kind} but defined as a {found.kind}")
            else:
                defined_in.add(ref.module)
        for module, qualname, _ in self.functions:
            code = source(module)
            top = qualname.split(".")[0]  # a lambda at module level has no name to look up: its line decides
            if code is None or (top != "<lambda>" and facts(code, top) is None):
                self.violations.append(f"a function rebuilt from {short(module)}:{short(qualname)}, which the "
                                       "snapshot's source does not define")
            else:
                defined_in.add(module)
        for ref in refs:
            if ref.kind == "module" and ref.module not in defined_in:
                self.violations.append(f"a reference to snapshot module {short(ref.module or '?')} while the pickle "
                                       "uses nothing defined in it (importing it would only run its top level)")

    # ---------------------------------------------------------------- the checks that need classes
    def check_classes(self, resolve: Callable[[Ref], Any]) -> None:
        """Run the deferred checks against the real classes; *resolve* maps a :class:`Ref` to its object."""
        for item in self.deferred:
            problem = classchecks.check_deferred(item, resolve(item.ref))
            if problem:
                self.violations.append(problem)


class _DryRun(pickle.Unpickler):
    """CPython's C unpickler, every global and persistent id it meets answered by the trace's stand-ins."""

    def __init__(self, data: bytes, trace: Trace, buffers: int):
        super().__init__(io.BytesIO(data), buffers=(Buffer() for _ in range(buffers)))
        self._trace = trace
        # the trace's own method, called by the C unpickler for each of the thousands of tensor ids with no
        # Python frame between (the base class's setter; a method defined here would shadow it)
        self.persistent_load = trace._persistent  # type: ignore[method-assign]

    def find_class(self, module: str, name: str) -> Any:
        return self._trace._global(module, name)


def trace(
    data: bytes, policy: Policy | None = None, *, modules: Iterable[str] | None = None, buffers: int = 0,
    table: TensorTable | None = None, count_opcodes: bool = False,
) -> Trace:
    """Dry-run *data* and judge every construct; nothing is imported or executed.

    Args:
        data: the pickle.
        policy: the load policy (default: :class:`Policy` with no extra allows).
        modules: the snapshot modules the archive's manifest records as used; a persistent id naming any
            other module is refused (None: not checked, for pickles without a manifest).
        buffers: how many out-of-band buffers the pickle takes.
        table: the archive's tensor table (format 3), judged whole; the pickle names its rows by number.
        count_opcodes: count the pickle's opcodes too (:attr:`Trace.opcodes`; ``scan`` reports them).
    Returns:
        The :class:`Trace`; ``trace.safe`` says whether the static checks passed.
    """
    return Trace(policy or Policy(), frozenset(modules) if modules is not None else None,
                 count_opcodes=count_opcodes, table=table).run(data, buffers=buffers)


# ----------------------------------------------------------------------------- helpers
# What every tensor row is in the dry run: one value stand-in (the rules ask only whether a value is a tensor).
_ROW = ValueStandIn(("tensor-row",), Ref("tensor", name="tensor table row", parts=("tensor-row",)))


def _direct(args: tuple, kwargs: dict):
    """Arguments of a call, and the items of tuples and lists among them: what the callee may keep or use."""
    for value in list(args) + list(kwargs.values()):
        yield value
        if type(value) in (tuple, list):
            yield from value[:64]


def _name(record: Made) -> str:
    return record.cls.dotted if record.cls is not None else record.callee.dotted


def _looks_like_pickle(value: bytes | bytearray) -> bool:
    return len(value) >= 4 and value[0] == 0x80 and value[1] <= 5 and value[-1:] == b"."

"""What the gate's refusal says: every refused global at once, the flags to paste, and the one-flag alternative.

A model of a third-party library names a dozen of its classes.  Naming them one
failed load at a time, or only the first few, sends people to ``--trust``; so
the error (and the warning a save gives) lists every refused global, the exact
``--allow module:Name`` flags that admit them, and, where the library's
refused globals are only ever used the way classes are (built empty, given
state, held as values), the package-level allow that admits its classes
without trusting its functions.
"""

from __future__ import annotations

import sys
from typing import Any

from .verdicts import short

MAX_GLOBALS = 100  # refused globals named in one message (a forged pickle may name thousands)
MAX_OTHER = 6  # other refused constructs named in one message
NAME_LIMIT = 160  # characters of one global's name in a message
_NEVER_PACKAGES = frozenset({"builtins", "dill", "__main__", "gitpack"})


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def problems(trace: Any) -> tuple[list[str], list[str]]:
    """(``global X (why)`` for every refused global, every other refused construct), each once, in order."""
    refused = trace.refused
    names = _unique([f"global {short(r.dotted, NAME_LIMIT)} ({r.refused})" for r in refused])
    others = ([f"malformed pickle ({trace.error})"] if trace.error else []) + \
        [v for v in _unique(trace.violations) if v not in names]
    return names, others


def summary(trace: Any) -> str | None:
    """Every refused global (grouped by why), then the first few other refused constructs; None when nothing
    is refused."""
    names, others = problems(trace)
    if not names and not others:
        return None
    by_reason: dict[str, list[str]] = {}
    for r in trace.refused:
        listed = by_reason.setdefault(r.refused, [])
        if short(r.dotted, NAME_LIMIT) not in listed:
            listed.append(short(r.dotted, NAME_LIMIT))
    shown = []
    for why, dotted in by_reason.items():
        more = f", and {len(dotted) - MAX_GLOBALS} more (gitpack scan lists them all)" \
            if len(dotted) > MAX_GLOBALS else ""
        shown.append(f"global {dotted[0]} ({why})" if len(dotted) == 1 else
                     f"{len(dotted)} globals ({why}): {', '.join(dotted[:MAX_GLOBALS])}{more}")
    shown += others[:MAX_OTHER]
    if len(others) > MAX_OTHER:
        shown.append(f"and {len(others) - MAX_OTHER} more")
    return "; ".join(shown)


def allow_flags(trace: Any) -> list[str]:
    """``--allow module:Name`` for every refused global that names a plain attribute of a module."""
    return _unique([f"--allow {r.module}:{r.name}" for r in trace.refused
                    if r.module and r.name and "." not in r.name
                    and "not on the allowlist" in r.refused])


def class_like_packages(trace: Any) -> list[str]:
    """Top-level packages whose refused globals the pickle uses only as classes are used (built empty with
    NEWOBJ, or held as values): a package-level allow would admit them.  Never the standard library's."""
    refused = [r for r in trace.refused if r.module]
    tops = _unique([r.module.split(".")[0] for r in refused])
    called = set()
    for callee, how, with_arguments in trace.calls:
        if callee.kind == "global" and callee.refused and (how == "call" or with_arguments):
            called.add((callee.module or "").split(".")[0])
    stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    return [t for t in tops if t not in called and t not in stdlib and t not in _NEVER_PACKAGES
            and t.isidentifier()]


def hint(trace: Any) -> str:
    """What to do: ``--trust`` for code and dill constructors, else the flags (and the package alternative)."""
    refused = trace.refused
    if any((r.module or "").startswith("dill") for r in refused) or trace.code:
        return "; it carries code or dill constructors: load it only if you trust its author (--trust / trust=True)"
    names, others = problems(trace)
    flags = allow_flags(trace)
    if not flags or others or len(flags) != len(names):
        return "; if you trust the archive's author, load it with --trust (trust=True)"
    text = f"; if you trust the archive, allow {'them' if len(flags) > 1 else 'it'}: {' '.join(flags[:MAX_GLOBALS])}"
    packages = class_like_packages(trace)
    if packages:
        one = " ".join(f"--allow {p}" for p in packages)
        config = "; ".join(f"git config --add gitpack.allow {p}" for p in packages)
        text += (f"; or allow the classes (not the functions) of a library you trust in one: {one} "
                 f"(for every load in this repository: {config})")
    return text

"""What an archive's pickle may name: the strict default policy for unpickling.

Repo code never appears here: it reaches the unpickler as persistent ids that
resolve inside the snapshot namespace.  Every other global must be an exact
``(module, qualname)`` pair on the allowlist (or a ``torch.nn`` module class),
is checked *before* anything is imported or resolved, and must say of itself
that it lives where the pickle claims (``__module__`` agrees).  There is no
dotted attribute walking: ``('pkg.model', 'os.system')`` is just an unknown pair.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from ..errors import PolicyError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Every torch dtype name a storage or tensor may have, with its item size in bytes (read without importing torch).
TORCH_DTYPE_SIZES: dict[str, int] = {
    "float16": 2, "float32": 4, "float64": 8, "bfloat16": 2, "complex32": 4, "complex64": 8, "complex128": 16,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "bool": 1,
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
}
_TORCH_DTYPES = (
    "float16 float32 float64 bfloat16 complex32 complex64 complex128 uint8 uint16 uint32 uint64 int8 int16 int32 int64 "
    "bool qint8 quint8 qint32 quint4x2 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz half float double "
    "long int short cfloat cdouble"
).split()

# What each allowed global may be used for (the trust gate, gitpack.pickling.gate, enforces it):
RECONSTRUCTOR = "reconstructor"  # a function REDUCE may call; gitpack.pickling.calls checks every argument
VALUE_TYPE = "value type"  # a class REDUCE may call with (checked) arguments: it builds a plain value
CLASS = "class"  # built with no constructor arguments (NEWOBJ), then given plain-data state
VALUE = "value"  # may appear as a value only, never be called: dtypes, tensor-math functions
TRUSTED = "trusted"  # allowed by the user by exact name (--allow module:Qual): any use

_BUILTIN_VALUES = "set frozenset list dict tuple bytearray bytes complex slice range object int float str bool"
_NUMPY_CORE = ("numpy.core", "numpy._core")

_CATEGORIES: dict[tuple[str, str], str] = {
    # builtins and the standard library's inert value types
    **{("builtins", n): VALUE_TYPE for n in _BUILTIN_VALUES.split()},
    ("collections", "OrderedDict"): VALUE_TYPE,
    ("collections", "defaultdict"): VALUE_TYPE,
    ("collections", "deque"): VALUE_TYPE,
    ("collections", "Counter"): VALUE_TYPE,
    # functools.partial only binds arguments; calling it needs a callable that passed this policy
    ("functools", "partial"): VALUE_TYPE,
    **{("datetime", n): VALUE_TYPE for n in ("date", "datetime", "time", "timedelta", "timezone")},
    ("decimal", "Decimal"): VALUE_TYPE,
    ("fractions", "Fraction"): VALUE_TYPE,
    ("uuid", "UUID"): CLASS,
    **{("pathlib", n): VALUE_TYPE for n in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")},
    ("_io", "BytesIO"): CLASS,
    ("io", "BytesIO"): CLASS,
    ("copyreg", "_reconstructor"): RECONSTRUCTOR,
    # torch tensors, storages, dtypes
    ("torch._utils", "_rebuild_tensor"): RECONSTRUCTOR,
    ("torch._utils", "_rebuild_tensor_v2"): RECONSTRUCTOR,
    ("torch._utils", "_rebuild_tensor_v3"): RECONSTRUCTOR,
    ("torch._utils", "_rebuild_parameter"): RECONSTRUCTOR,
    ("torch._utils", "_rebuild_parameter_with_state"): RECONSTRUCTOR,
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): RECONSTRUCTOR,
    ("torch._tensor", "_rebuild_from_type_v2"): RECONSTRUCTOR,
    ("torch.serialization", "_get_layout"): RECONSTRUCTOR,
    ("torch", "Tensor"): CLASS,
    ("torch", "Size"): VALUE_TYPE,
    ("torch", "device"): VALUE_TYPE,
    ("torch", "dtype"): VALUE,
    ("torch", "layout"): VALUE,
    ("torch", "strided"): VALUE,
    ("torch", "memory_format"): VALUE,
    ("torch", "contiguous_format"): VALUE,
    ("torch", "channels_last"): VALUE,
    ("torch.nn.parameter", "Parameter"): CLASS,
    ("torch.nn.parameter", "Buffer"): CLASS,
    **{("torch", n): VALUE for n in _TORCH_DTYPES},
    # numpy arrays, scalars and dtypes (never object or structured dtypes with object fields: gitpack.pickling.states)
    ("numpy", "ndarray"): CLASS,
    ("numpy", "dtype"): VALUE_TYPE,
    **{(m + ".multiarray", "_reconstruct"): RECONSTRUCTOR for m in _NUMPY_CORE},
    **{(m + ".multiarray", "scalar"): RECONSTRUCTOR for m in _NUMPY_CORE},
    **{(m + ".numeric", "_frombuffer"): RECONSTRUCTOR for m in _NUMPY_CORE},
    # the sentencepiece processor (its state is the serialized model proto)
    ("sentencepiece", "SentencePieceProcessor"): CLASS,
    # training state: the AMP gradient scaler (optimizers and LR schedulers are a class family below)
    ("torch.amp.grad_scaler", "GradScaler"): CLASS,
    ("torch.amp.grad_scaler", "_refresh_per_optimizer_state"): VALUE,  # its state's defaultdict factory
    # dill helpers that rebuild types, never code (archives written by gitpack 0.1)
    ("dill._dill", "_load_type"): RECONSTRUCTOR,
    ("dill._dill", "_create_namedtuple"): RECONSTRUCTOR,  # replaced by _safe_namedtuple: dill's imports by name
    # gitpack 0.1's rebuilder of repo lambdas (archives written since use a persistent id, never a global)
    ("gitpack.pickling", "rebuild_function"): RECONSTRUCTOR,
}
_ALLOW: set[tuple[str, str]] = set(_CATEGORIES)

# Module families whose classes are all plain building blocks of models: any class
# defined in ``torch.nn.modules.*`` or ``numpy.dtypes`` (and only classes).
_CLASS_FAMILIES = ("torch.nn.modules.", "numpy.dtypes.", "torch.optim.")
_CLASS_MODULES = ("numpy.dtypes",)
# Modules whose public functions are tensor math (a model may hold one, e.g. a TransformerEncoderLayer
# keeps F.relu): any public function *defined* there is allowed, nothing they merely import.
_FUNCTION_MODULES = ("torch.nn.functional", "torch._C._nn")

# Type objects dill may name by value: plain data types only, never code or I/O types.
_DILL_SAFE_TYPES = set(
    "NoneType EllipsisType NotImplementedType bool bytearray bytes complex dict float frozenset int list "
    "object range set slice str tuple PartialType MethodType".split()
)


_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class AllowList:
    """What ``--allow`` / ``allow=`` / ``git config gitpack.allow`` entries admit beyond the default policy.

    *exact* pairs are trusted fully (any use), as an exact name is a deliberate choice; a *package* admits
    only the classes defined in it and its sub-packages, and only as the default policy admits library
    classes (:data:`CLASS`: built empty, given plain attribute state), never its functions.
    """

    exact: frozenset[tuple[str, str]] = frozenset()
    packages: frozenset[str] = frozenset()


def parse_allow(entries: Iterable[str | tuple[str, str]], where: str = "allow entry") -> AllowList:
    """``module:qualname``, the dotted ``module.qualname`` that ``gitpack scan`` prints, a package name
    (``transformers``), or ``(module, qualname)`` pairs, to an :class:`AllowList`.

    A dotted entry ``a.b.C`` means both the global ``a.b:C`` and the classes of a package ``a.b.C``: which one
    applies is told by what the pickle names, so nothing is imported to decide.  (Should ``a.b:C`` turn out to
    be a module, :meth:`Policy.find_class` refuses it: a package allow never trusts a module object.)
    """
    exact: set[tuple[str, str]] = set()
    packages: set[str] = set()
    for entry in entries:
        if isinstance(entry, tuple) and len(entry) == 2:
            module, name = entry
        elif isinstance(entry, str) and ":" in entry:
            module, _, name = entry.partition(":")
        elif isinstance(entry, str) and _DOTTED.match(entry.strip()):
            dotted = entry.strip()
            packages.add(dotted)
            parent, _, last = dotted.rpartition(".")
            if parent:
                exact.add((parent, last))
            continue
        else:
            module = name = ""
        if not (isinstance(module, str) and isinstance(name, str) and _DOTTED.match(module) and _DOTTED.match(name)):
            raise PolicyError(f"{where} {entry!r} must look like module:qualname (mylib.layers:Norm), its dotted form "
                              "(mylib.layers.Norm) or a package whose classes to allow (mylib)")
        exact.add((module, name))
    return AllowList(frozenset(exact), frozenset(packages))


def _in_package(module: str, packages: AbstractSet[str]) -> bool:
    if not packages:
        return False
    parts = module.split(".")
    return any(".".join(parts[:i]) in packages for i in range(1, len(parts) + 1))


def _in_class_family(module: str) -> bool:
    return module in _CLASS_MODULES or module.startswith(_CLASS_FAMILIES)


class Policy:
    """Resolves globals for the unpickler, refusing anything not explicitly allowed."""

    def __init__(self, extra: Iterable[tuple[str, str] | str] | AllowList = ()):
        allowed = extra if isinstance(extra, AllowList) else parse_allow(extra)
        self.extra: frozenset[tuple[str, str]] = allowed.exact
        self.packages: frozenset[str] = allowed.packages

    def category(self, module: str, name: str) -> str:
        """How an allowed global may be used: :data:`RECONSTRUCTOR`, :data:`VALUE_TYPE`, :data:`CLASS`,
        :data:`VALUE` or :data:`TRUSTED` (an exact ``--allow``).  Only for pairs :meth:`refusal` allows.
        A class of an allowed package is a :data:`CLASS`, as torch's own layers are."""
        if (module, name) in self.extra and (module, name) not in _CATEGORIES:
            return TRUSTED
        found = _CATEGORIES.get((module, name))
        if found is not None:
            return found
        if module in _FUNCTION_MODULES:
            return VALUE
        return CLASS  # the class families, and the classes of allowed packages

    def from_package(self, module: str, name: str) -> bool:
        """Whether the pair is allowed only because its module lies in an allowed package (so it must turn out
        to be a plain class defined there: :meth:`find_class` checks)."""
        return ((module, name) not in _ALLOW and (module, name) not in self.extra and not _in_class_family(module)
                and not (module in _FUNCTION_MODULES and not name.startswith("_"))
                and _IDENT.match(name) is not None and _in_package(module, self.packages))

    def user_allowed(self, module: str, name: str) -> bool:
        """Whether the pair is allowed by ``--allow`` (exactly or by its package) rather than by the default
        policy: resolving it, which the gate then does before anything runs, checks what it turned out to be."""
        return ((module, name) in self.extra and (module, name) not in _ALLOW) or self.from_package(module, name)

    def allows(self, module: str, name: str) -> bool:
        """Static check (no import): is this pair allowed?  Used by ``scan`` too."""
        return self.refusal(module, name) is None

    def refusal(self, module: Any, name: Any) -> str | None:
        """Why the pair is refused (one short phrase), or None when it is allowed; never imports."""
        if not (isinstance(module, str) and isinstance(name, str)):
            return "not a constant (module, name) pair"
        if (module, name) in _ALLOW or (module, name) in self.extra:
            return None
        if _in_class_family(module) and _IDENT.match(name):
            return None
        if module in _FUNCTION_MODULES and _IDENT.match(name) and not name.startswith("_"):
            return None
        if "." in name:
            return "dotted name: attribute walking is not allowed"
        if _IDENT.match(name) and _in_package(module, self.packages):
            return None
        return "not on the allowlist"

    def find_class(self, module: str, name: str) -> Any:
        if not (isinstance(module, str) and isinstance(name, str)):
            raise PolicyError("the pickle names a global with a non-string name; the archive is malicious or corrupt")
        why = self.refusal(module, name)
        if why is not None:
            shown = f"{module}.{name}" if len(module) + len(name) < 200 else f"{module[:80]}...{name[:80]}"
            if module.startswith("dill"):  # dill's constructors of code and types: allowing one is trusting the archive
                hint = "it builds code, so only --trust (trust=True) can load it, for an archive whose author you trust"
            else:
                hint = f"if you trust the archive, allow it explicitly (--allow {module}:{name})"
            raise PolicyError(
                f"the archive's pickle asks for global {shown} ({why}), which the load policy refuses; {hint}"
            )
        if module == "dill._dill" and name == "_load_type":
            return _dill_load_type
        if module == "dill._dill" and name == "_create_namedtuple":
            return _safe_namedtuple
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            raise PolicyError(
                f"{module}.{name} named by the archive does not exist here; is a package version different?"
            ) from None
        if isinstance(obj, types.ModuleType):  # never a module object, however it was allowed: BUILD would rewrite it
            raise PolicyError(f"{module}.{name} is a module, not a class or function; refusing it")
        if _in_class_family(module) and (module, name) not in _ALLOW and (module, name) not in self.extra:
            if not isinstance(obj, type):
                raise PolicyError(f"{module}.{name} is not a class; refusing it")
        if module in _FUNCTION_MODULES and (module, name) not in self.extra:
            if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)) or getattr(obj, "__module__", None) != module:
                raise PolicyError(f"{module}.{name} is not a function defined in {module}; refusing it")
        if self.from_package(module, name):
            _check_package_class(obj, module, name)
        declared = getattr(obj, "__module__", None) if isinstance(obj, type) or callable(obj) else None
        if isinstance(declared, str) and declared != module and not _same_module(declared, module):
            raise PolicyError(
                f"{module}.{name} says it lives in {declared}; refusing a global whose module does not agree"
            )
        return obj


# Where a class of an allowed package may inherit what runs on an empty instance from: object and the builtin
# types, and torch's layers (nn.Module.__setstate__ only fills in defaults).
_PLAIN_PROTOCOL = ("__new__", "__setstate__", "__del__")


def _check_package_class(obj: Any, module: str, name: str) -> None:
    """A global admitted only as a class of an allowed package: a class *defined* there, whose construction
    (``__new__``), state (``__setstate__``) and finalisation (``__del__``) are plain.

    Classes a package defines are built the way torch's layers are (empty, then given attribute state), so
    what the pickle can reach must be only that: ``subprocess.Popen`` is a class, but an empty one given
    state runs its ``__del__`` with that state; a function of the package is never admitted this way.
    """
    where = module.split(".")[0]
    if not isinstance(obj, type):
        raise PolicyError(f"{module}.{name} is not a class: allowing package {where} admits its classes only; "
                          f"a function needs its exact name (--allow {module}:{name}), if you trust the archive")
    if obj.__module__ != module or obj.__qualname__ != name:
        raise PolicyError(f"{module}.{name} is {obj.__module__}.{obj.__qualname__}, not a class defined in {module}; "
                          "refusing it")
    for method in _PLAIN_PROTOCOL:
        definer = next((k for k in obj.__mro__ if method in vars(k)), None)
        if definer is None or definer.__module__ == "builtins" or _in_class_family(definer.__module__):
            continue
        raise PolicyError(f"{module}.{name} defines its own {method} (in {definer.__module__}."
                          f"{definer.__qualname__}), which a pickle could drive with state it chooses; allowing "
                          f"package {where} admits only plain classes (--allow {module}:{name} if you trust the "
                          "archive)")


def _same_module(declared: str, claimed: str) -> bool:
    # numpy.core is an alias of numpy._core; io re-exports _io.
    aliases = {"numpy.core": "numpy._core", "io": "_io"}

    def norm(m: str) -> str:
        return next((m.replace(a, b, 1) for a, b in aliases.items() if m == a or m.startswith(a + ".")), m)

    return norm(declared) == norm(claimed) or claimed in ("numpy", "torch") and declared.startswith(claimed + ".")


def _dill_load_type(name: str) -> type:
    import dill._dill as dd

    if name not in _DILL_SAFE_TYPES:
        raise PolicyError(f"the archive asks dill for type {name!r}, which the load policy does not allow")
    return dd._load_type(name)


def _safe_namedtuple(name: Any, fieldnames: Any, modulename: Any, defaults: Any = None) -> type:
    """dill's ``_create_namedtuple`` without its import-by-name.

    dill first tries ``import modulename.name`` and returns whatever type or
    module it finds there, so ``('Popen', [], 'subprocess')`` would hand the
    pickle ``subprocess.Popen``.  Here a namedtuple is only ever *created*.
    """
    import collections

    if not (isinstance(name, str) and _IDENT.match(name) and isinstance(modulename, str) and _DOTTED.match(modulename)):
        raise PolicyError(
            "the archive asks dill for a namedtuple with an invalid name; the archive is malicious or corrupt"
        )
    if not (isinstance(fieldnames, (list, tuple)) and all(isinstance(f, str) and _IDENT.match(f) for f in fieldnames)):
        raise PolicyError(
            f"namedtuple {name} in the archive has invalid field names; the archive is malicious or corrupt"
        )
    if defaults is not None and not isinstance(defaults, (list, tuple)):
        raise PolicyError(f"namedtuple {name} in the archive has invalid defaults; the archive is malicious or corrupt")
    return collections.namedtuple(name, fieldnames, defaults=defaults, module=modulename)

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
import re
from typing import Any, Iterable

from .errors import PolicyError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_TORCH_DTYPES = (
    "float16 float32 float64 bfloat16 complex32 complex64 complex128 uint8 uint16 uint32 uint64 int8 int16 int32 int64 "
    "bool qint8 quint8 qint32 quint4x2 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz half float double "
    "long int short cfloat cdouble"
).split()

_ALLOW: set[tuple[str, str]] = {
    # builtins that only build plain data
    *(("builtins", n) for n in "set frozenset list dict tuple bytearray bytes complex slice range object int float str bool".split()),
    ("copyreg", "_reconstructor"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("collections", "deque"),
    ("collections", "Counter"),
    ("_io", "BytesIO"),
    ("io", "BytesIO"),
    # torch tensors, storages, dtypes
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "dtype"),
    ("torch", "layout"),
    ("torch", "strided"),
    ("torch", "memory_format"),
    ("torch", "contiguous_format"),
    ("torch", "channels_last"),
    ("torch.serialization", "_get_layout"),
    ("torch.nn.parameter", "Parameter"),
    ("torch.nn.parameter", "Buffer"),
    *(("torch", n) for n in _TORCH_DTYPES),
    # numpy arrays, scalars and dtypes
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    # the sentencepiece processor (its state is the serialized model proto)
    ("sentencepiece", "SentencePieceProcessor"),
    # dill helpers that rebuild data, never code
    ("dill._dill", "_load_type"),
    ("dill._dill", "_create_namedtuple"),
    ("dill._dill", "_create_dtypemeta"),
    ("dill._dill", "_create_array"),
    # gitpack's own: rebuilds repo functions from the snapshot's compiled source
    ("gitpack.pickling", "rebuild_function"),
}

# Module families whose classes are all plain building blocks of models.
_CLASS_FAMILIES = ("torch.nn.modules.", "numpy.dtypes")

# Type objects dill may name by value: plain data types only, never code or I/O types.
_DILL_SAFE_TYPES = set(
    "NoneType EllipsisType NotImplementedType bool bytearray bytes complex dict float frozenset int list "
    "object range set slice str tuple".split()
)


def parse_allow(entries: Iterable[str]) -> set[tuple[str, str]]:
    """``module:qualname`` strings (as typed on the CLI) to pairs."""
    pairs = set()
    for entry in entries:
        module, sep, name = entry.partition(":")
        if not sep or not module or not name:
            raise PolicyError(f"--allow {entry!r} must look like module:qualname, e.g. mylib.layers:Norm")
        pairs.add((module, name))
    return pairs


class Policy:
    """Resolves globals for the unpickler, refusing anything not explicitly allowed."""

    def __init__(self, extra: Iterable[tuple[str, str]] = ()):
        self.extra = set(extra)

    def allows(self, module: str, name: str) -> bool:
        """Static check (no import): is this pair allowed?  Used by ``scan`` too."""
        if (module, name) in _ALLOW or (module, name) in self.extra:
            return True
        if any(module.startswith(f) for f in _CLASS_FAMILIES) and _IDENT.match(name):
            return True
        return False

    def find_class(self, module: str, name: str) -> Any:
        if not (isinstance(module, str) and isinstance(name, str)):
            raise PolicyError("the pickle names a global with a non-string name; the archive is malicious or corrupt")
        if not self.allows(module, name):
            raise PolicyError(
                f"the archive's pickle asks for {module}.{name}, which the load policy does not allow; "
                f"if you trust it, allow it explicitly (--allow {module}:{name})"
            )
        if module == "dill._dill" and name == "_load_type":
            return _dill_load_type
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            raise PolicyError(f"{module}.{name} named by the archive does not exist here; is a package version different?") from None
        if any(module.startswith(f) for f in _CLASS_FAMILIES) and (module, name) not in self.extra:
            if not isinstance(obj, type):
                raise PolicyError(f"{module}.{name} is not a class; refusing it")
        declared = getattr(obj, "__module__", None) if isinstance(obj, type) or callable(obj) else None
        if isinstance(declared, str) and declared != module and not _same_module(declared, module):
            raise PolicyError(f"{module}.{name} says it lives in {declared}; refusing a global whose module does not agree")
        return obj


def _same_module(declared: str, claimed: str) -> bool:
    # numpy.core is an alias of numpy._core; io re-exports _io.
    aliases = {"numpy.core": "numpy._core", "io": "_io"}
    norm = lambda m: next((m.replace(a, b, 1) for a, b in aliases.items() if m == a or m.startswith(a + ".")), m)
    return norm(declared) == norm(claimed) or claimed in ("numpy", "torch") and declared.startswith(claimed)


def _dill_load_type(name: str) -> type:
    import dill._dill as dd

    if name not in _DILL_SAFE_TYPES:
        raise PolicyError(f"the archive asks dill for type {name!r}, which the load policy does not allow")
    return dd._load_type(name)

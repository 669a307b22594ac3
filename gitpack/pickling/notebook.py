"""Code typed into a notebook (or IPython), pinned like any file: its cells become a module of the snapshot.

A model class defined in a Jupyter cell has no file, so pickle can only carry
it as bytecode (dill), which runs nowhere but with ``--trust`` and is pinned
nowhere.  But the kernel knows every cell it ran.  So the cells, in the order
they ran, become one module, ``.gitpack/notebooks/notebook_<hash>.py`` in the
snapshot tree, and the session's classes and functions are referenced there
like any repo code: the archive holds no bytecode, loads without trust in
plain Python, and runs side by side with other snapshots.  At load only the
module's definitions run (:mod:`gitpack.isolation.scripts`), never the cells'
statements.

Line numbers: a lambda defined in cell 7 is found by the rebuilder at its line
in the combined module; :meth:`Notebook.line` translates.
"""

from __future__ import annotations

import ast
import hashlib
import linecache
import os
import sys
from dataclasses import dataclass, field
from typing import Any

ROOT = ".gitpack/notebooks"


@dataclass
class Notebook:
    """The session's cells as one module."""

    name: str  # the module's name in the snapshot
    source: bytes
    offsets: dict[str, int] = field(default_factory=dict)  # a cell's code file name -> its first line - 1
    path: str | None = None  # the notebook file, when the kernel says which (repo-relative when in the repo)
    cells: list[tuple[int, str]] = field(default_factory=list)  # (first line - 1 in the module, text) per cell
    _defined: set[str] | None = field(default=None, repr=False)

    @property
    def rel(self) -> str:
        return f"{ROOT}/{self.name}.py"

    def line(self, filename: str, lineno: int) -> int:
        """Where line *lineno* of the cell compiled as *filename* is in the module."""
        return self.offsets.get(filename, 0) + lineno

    def has_source(self, obj: Any) -> bool:
        """Whether *obj* (a class or function of the session) was defined by a cell, so that the module has its
        source; code made by ``exec`` of a string has none, and stays by value (behind ``--trust``)."""
        code = getattr(obj, "__code__", None)
        if code is not None:
            return code.co_filename in self.offsets
        return obj.__qualname__.partition(".")[0] in self.defined

    @property
    def defined(self) -> set[str]:
        """Names of the classes and functions the cells define at top level."""
        if self._defined is None:
            try:
                body = ast.parse(self.source).body
            except SyntaxError:
                body = []
            self._defined = {n.name for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef,
                                                                        ast.AsyncFunctionDef))}
        return self._defined

    def describe(self) -> dict[str, Any]:
        return {"module": self.name, "file": self.rel, "notebook": self.path, "cells": len(self.cells)}


def from_session() -> Notebook | None:
    """The running IPython/Jupyter session's cells as a :class:`Notebook`; None outside IPython."""
    ipython_module = sys.modules.get("IPython")
    shell = ipython_module.get_ipython() if ipython_module is not None else None
    if shell is None:
        return None
    cells = [c for c in shell.user_ns.get("In", [])[1:] if isinstance(c, str)]
    texts: list[str] = []
    cell_list: list[tuple[int, str]] = []
    offsets: dict[str, int] = {}
    line = 0
    known = _cell_files()
    for raw in cells:
        try:
            text = shell.transform_cell(raw)  # magics become plain Python calls (skipped at load)
        except Exception:
            continue
        if not text.endswith("\n"):
            text += "\n"
        try:
            ast.parse(text)
        except SyntaxError:  # a cell that failed to run (or uses top-level await): no definitions to keep
            continue
        for filename in known.get(text, ()):
            offsets[filename] = line
        texts.append(text)
        cell_list.append((line, text))
        line += text.count("\n")
    if not texts:
        return None
    source = "".join(texts).encode()
    name = "notebook_" + hashlib.sha256(source).hexdigest()[:12]
    # Jupyter tells the kernel its notebook through JPY_SESSION_NAME (IPython shows it as __session__); VS Code
    # through __vsc_ipynb_file__.
    path = (shell.user_ns.get("__session__") or shell.user_ns.get("__vsc_ipynb_file__")
            or os.environ.get("JPY_SESSION_NAME"))
    return Notebook(name, source, offsets, path if isinstance(path, str) and path else None, cell_list)


def _cell_files() -> dict[str, list[str]]:
    """Cell text -> the file names IPython compiled it under (it keeps each cell's lines in ``linecache``)."""
    out: dict[str, list[str]] = {}
    for filename, entry in list(linecache.cache.items()):
        if not isinstance(entry, tuple) or len(entry) < 3:
            continue
        if "ipykernel_" in filename or filename.startswith("<ipython-input-"):
            out.setdefault("".join(entry[2]), []).append(filename)
    return out

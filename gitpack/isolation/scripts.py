"""Scripts and notebooks as snapshot modules: a load runs their definitions, never their statements.

An object whose class or lambda was defined in the script that saved it
(``train.py`` run as ``__main__``) or in a notebook cell lives, at load, in a
module made of that script's or notebook's source.  Executing it whole would
re-run the script: train a model, write files, save checkpoints.  So such a
module (the manifest lists them as ``scripts``) runs only what defines things:
imports, ``def`` and ``class`` statements, assignments whose values call
nothing (``batch_size = 12``, ``ACT = F.gelu``), docstrings.  Everything else
(``model = GPT()``, the training loop, ``if __name__ == "__main__":``) is
skipped.  Lambdas inside skipped statements are still found by the function
rebuilder, which compiles the whole source and looks code up by name and line.
"""

from __future__ import annotations

import ast
import types

_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_ASSIGNMENTS = (ast.Assign, ast.AnnAssign, ast.AugAssign)
_RUNS_CODE = (ast.Call, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr, ast.ListComp, ast.SetComp, ast.DictComp,
              ast.GeneratorExp)


def run_definitions(module: types.ModuleType, source: bytes, filename: str) -> None:
    """Execute only the defining statements of *source* in *module*'s namespace (see the module docstring).

    Statements run one at a time, in order.  An assignment that fails (its value names something a skipped
    statement would have made) is itself skipped: it was data, and the name stays undefined.  A failing
    ``def``, ``class`` or import is an error of the module, as it would be in a plain import.
    """
    tree = ast.parse(source, filename)
    for node in tree.body:
        if not is_definition(node):
            continue
        code = compile(ast.Module(body=[node], type_ignores=[]), filename, "exec", dont_inherit=True)
        if isinstance(node, _ASSIGNMENTS):
            try:
                exec(code, module.__dict__)
            except Exception:
                continue
        else:
            exec(code, module.__dict__)


def is_definition(node: ast.stmt) -> bool:
    """Whether a top-level statement only defines something (and so runs when a script's module is loaded):
    an import, ``def``, ``class``, docstring, or an assignment to plain names of a value that calls nothing."""
    if isinstance(node, _DEFINITIONS):
        return True
    if isinstance(node, ast.Expr):
        return isinstance(node.value, ast.Constant)  # a docstring
    if isinstance(node, _ASSIGNMENTS):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        value = node.value
        return (value is not None and all(_names_only(t) for t in targets)
                and not any(isinstance(n, _RUNS_CODE) for n in ast.walk(value)))
    return False


def _names_only(target: ast.expr) -> bool:
    """``x`` or ``a, b``: an assignment that binds names, never one that changes an object (``m.post = f``)."""
    if isinstance(target, ast.Name):
        return True
    if isinstance(target, (ast.Tuple, ast.List)):
        return all(_names_only(e) for e in target.elts)
    return False

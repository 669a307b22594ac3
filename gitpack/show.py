"""Rendering manifests for people (rich), kept apart from the CLI's wiring."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.tree import Tree


def _add(node: Tree, value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                _add(node.add(f"[bold]{key}[/]"), item)
            else:
                node.add(f"[bold]{key}[/] = {json.dumps(item, default=str)}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, (dict, list)) and item:
                _add(node.add(f"[{i}]"), item)
            else:
                node.add(json.dumps(item, default=str))
    else:
        node.add(json.dumps(value, default=str))


def _capture(node: Tree, tree: dict[str, Any]) -> None:
    """One branch per object: its class, then each argument, defaults and references marked."""
    from .capturing import INFERRED, format_value

    for key, entry in tree["objects"].items():
        inferred = entry.get("origin") == INFERRED
        label = f"[bold]{escape(key)}[/]  {escape(str(entry.get('class')))}"
        obj = node.add(label + ("  [yellow](inferred from attributes; capture was off)[/]" if inferred else ""))
        defaults = set(entry.get("defaults") or ())
        for name, value in (entry.get("args") or {}).items():
            if isinstance(value, dict) and set(value) == {"$ref"}:
                obj.add(f"{escape(name)} -> [bold]{escape(str(value['$ref']))}[/]")
            else:
                obj.add(f"{escape(name)} = {escape(format_value(value))}" + ("  [dim](default)[/]" if name in defaults else ""))
        for name in entry.get("unknown") or ():
            obj.add(f"{escape(name)} = [dim]? (no attribute of that name)[/]")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _counts(entry: dict[str, Any]) -> str:
    params = entry.get("parameters") or {}
    text = f"{params.get('total', 0):,} params"
    if params.get("trainable", 0) != params.get("total", 0):
        text += f" ({params.get('trainable', 0):,} trainable)"
    buffers = entry.get("buffers") or {}
    if buffers.get("total"):
        text += f", {buffers['total']:,} buffer elements"
    return text + f", {_size(int(entry.get('bytes') or 0))}"


def _structure(root: Tree, structure: dict[str, Any]) -> None:
    """torch modules nested by path, each with its counts and its own tensors."""
    node = root.add(f"[bold]structure[/]  {_counts(structure.get('total') or {})}")
    nodes: dict[str, Tree] = {}
    for entry in structure["modules"]:
        path = str(entry.get("path"))
        parent = node
        prefix = path
        while "." in prefix:
            prefix = prefix.rsplit(".", 1)[0]
            if prefix in nodes:
                parent = nodes[prefix]
                break
        extra = f"({entry.get('extra_repr')})" if entry.get("extra_repr") else ""
        label = f"[bold]{escape(path)}[/]  {escape(str(entry.get('class')) + extra)}  [dim]{_counts(entry)}[/]"
        nodes[path] = parent.add(label)
        for name, t in (entry.get("tensors") or {}).items():
            shape = "x".join(str(d) for d in t.get("shape") or []) or "scalar"
            frozen = "" if t.get("requires_grad") or t.get("kind") != "parameter" else " frozen"
            nodes[path].add(escape(f"{name}  {t.get('kind')}{frozen} {shape} {t.get('dtype')} on {t.get('device')}"))


def _environment(node: Tree, env: dict[str, Any]) -> None:
    node.add(escape(f"python {env.get('python')} ({env.get('implementation')}) on {env.get('platform')}"))
    packages = env.get("packages") or {}
    if packages:
        node.add(escape(", ".join(f"{k} {v}" for k, v in packages.items() if v) or "no tracked packages"))
    for key, value in env.items():
        if key not in ("python", "implementation", "platform", "packages"):
            _add(node.add(f"[bold]{escape(str(key))}[/]"), value) if isinstance(value, (dict, list)) and value else \
                node.add(escape(f"{key} {json.dumps(value, default=str)}"))


def manifest(m: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    root = Tree(f"[bold]{m.get('object', {}).get('type', '?')}[/]  saved {m.get('created', '?')}")
    src = root.add("[bold]source[/]")
    src.add(f"commit {m.get('commit')}  tree {m.get('tree')}")
    src.add(f"from {m.get('head_branch') or 'detached HEAD'} at {m.get('head') or '(no commits)'}" + ("  [yellow](dirty)[/]" if m.get("dirty") else ""))
    if m.get("remote_url"):
        src.add(f"remote {m['remote_url']}")
    if m.get("params"):
        _add(root.add("[bold]parameters[/]"), m["params"])
    if (m.get("capture") or {}).get("objects"):
        _capture(root.add("[bold]constructed with[/]"), m["capture"])
    if m.get("stale_code"):
        stale = root.add("[bold yellow]saved with stale code[/] (--allow-stale)")
        for s in m["stale_code"]:
            stale.add(escape(f"{s.get('module')}:{s.get('qualname')} ({s.get('reason')})"))
    if (m.get("structure") or {}).get("modules"):
        _structure(root, m["structure"])
    if m.get("environment"):
        _environment(root.add("[bold]environment[/]"), m["environment"])
    integrity = root.add("[bold]integrity[/]")
    integrity.add(f"payload {m.get('payload_digest')}")
    integrity.add(f"{len(m.get('members', []))} members, {sum(x.get('size', 0) for x in m.get('members', []))} bytes")
    console.print(root)


def artifact_table(versions) -> list[str]:
    """``gitpack list``: one aligned row per stored version."""
    rows = [(v.name, f"v{v.number}", ",".join(v.aliases), v.date, v.snapshot[:12], _size(v.size), v.object_type) for v in versions]
    header = ("NAME", "VERSION", "ALIASES", "DATE", "SNAPSHOT", "SIZE", "OBJECT")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]


def scan_lines(report) -> list[str]:
    """``gitpack scan``: what the pickle would resolve, one line each, then a count."""
    lines = []
    seen: dict[tuple, int] = {}
    for g in report.globals:
        key = (g.dotted, g.refused, g.depth)
        seen[key] = seen.get(key, 0) + 1
    for (dotted, refused, depth), count in seen.items():
        where = "  (in a nested pickle)" if depth else ""
        times = f" x{count}" if count > 1 else ""
        lines.append(f"{'REFUSED' if refused else 'allowed'}  global    {dotted}{times}{f'  -- {refused}' if refused else ''}{where}")
    for p in report.persistent_ids:
        if p.kind == "storage":
            continue
        shown = ":".join(str(x) for x in p.parts[1:]) if p.known else repr(p.parts)[:120]
        lines.append(f"{'snapshot' if p.known else 'UNKNOWN '}  {p.kind or 'id':9} {shown}")
    for f in report.functions:
        lines.append(f"snapshot  function  {f.module}:{f.qualname} (line {f.line}, rebuilt from the snapshot's source)")
    for c in report.code:
        uses = f", uses {' '.join(c.names[:12])}" if c.names else ""
        lines.append(f"BY-VALUE  code      {c.qualname or c.name or '?'} from {c.filename or '?'}{uses}")
    refused_globals = {f"global {g.dotted}" for g in report.refused}
    for problem in report.violations:
        if not any(problem.startswith(g + " (") for g in refused_globals):
            lines.append(f"REFUSED  {problem}")
    if report.pending:
        lines.append(f"pending   {report.pending} check(s) need the snapshot's classes; `gitpack load` makes them "
                     "(run scan inside a clone that has the snapshot to read them from source)")
    storages = sum(1 for p in report.persistent_ids if p.kind == "storage")
    lines.append(f"{len(report.globals)} globals ({len(report.refused)} refused), {storages} tensor storages, "
                 f"{len(report.functions)} rebuilt functions, {len(report.code)} by-value code objects"
                 + (f", {report.nested} nested pickles" if report.nested else ""))
    return lines

"""Rendering manifests for people (rich), kept apart from the CLI's wiring."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
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


def manifest(m: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    root = Tree(f"[bold]{m.get('object', {}).get('type', '?')}[/]  saved {m.get('created', '?')}")
    src = root.add("[bold]source[/]")
    src.add(f"commit {m.get('commit')}  tree {m.get('tree')}")
    src.add(f"from {m.get('head_branch') or 'detached HEAD'} at {m.get('head') or '(no commits)'}" + ("  [yellow](dirty)[/]" if m.get("dirty") else ""))
    if m.get("remote_url"):
        src.add(f"remote {m['remote_url']}")
    for title, key in (("parameters", "params"), ("captured arguments", "capture"), ("structure", "structure"), ("environment", "environment")):
        if m.get(key):
            _add(root.add(f"[bold]{title}[/]"), m[key])
    integrity = root.add("[bold]integrity[/]")
    integrity.add(f"payload {m.get('payload_digest')}")
    integrity.add(f"{len(m.get('members', []))} members, {sum(x.get('size', 0) for x in m.get('members', []))} bytes")
    console.print(root)

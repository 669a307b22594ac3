"""Rendering manifests for people (rich), kept apart from the CLI's wiring.

A manifest is whatever the archive's author wrote: every field may be any JSON
type, nested to any depth, holding any characters.  Rendering therefore
builds rich ``Text`` objects (never markup strings, so ``[/]`` in a key is just
text), escapes control characters (:mod:`gitpack.textsafe`), shows a value of
the wrong type as what it is instead of failing, and stops nesting at
:data:`RENDER_DEPTH` levels.  It never raises for any JSON manifest.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from .. import textsafe

RENDER_DEPTH = 12  # levels of nested values shown under a section; deeper: a placeholder (--json has it all)
VALUE_LIMIT = 1000  # characters of one rendered value
LIST_LIMIT = 2000  # entries of one container shown


def _text(*parts: Any) -> Text:
    """A ``Text`` from plain parts: ``str`` or ``(str, style)``; every str is escaped to one line."""
    out = Text()
    for part in parts:
        if isinstance(part, tuple):
            out.append(textsafe.line(part[0], VALUE_LIMIT), style=part[1])
        else:
            out.append(textsafe.line(part, VALUE_LIMIT))
    return out


def _value(value: Any) -> str:
    return textsafe.json_value(value, VALUE_LIMIT)


def _d(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _s(value: Any, missing: str = "?") -> str:
    """A field meant to be a string: as it is, else its JSON (a list where a name belongs is shown, not used)."""
    if value is None:
        return missing
    return value if isinstance(value, str) else _value(value)


def _more(node: Tree, shown: int, total: int) -> None:
    if total > shown:
        node.add(_text((f"... {total - shown} more (gitpack inspect --json shows all)", "dim")))


def _add(node: Tree, value: Any, depth: int = 0) -> None:
    """Nested JSON as a tree: keys bold, scalars as JSON; deeper than RENDER_DEPTH, a placeholder."""
    if depth >= RENDER_DEPTH and isinstance(value, (dict, list)) and value:
        node.add(_text((f"... nested deeper than {RENDER_DEPTH} levels (gitpack inspect --json shows it)", "dim")))
        return
    if isinstance(value, dict):
        items = list(value.items())
        for key, item in items[:LIST_LIMIT]:
            if isinstance(item, (dict, list)) and item:
                _add(node.add(_text((key, "bold"))), item, depth + 1)
            else:
                node.add(_text((key, "bold"), " = ", _value(item)))
        _more(node, LIST_LIMIT, len(items))
    elif isinstance(value, list):
        for i, item in enumerate(value[:LIST_LIMIT]):
            if isinstance(item, (dict, list)) and item:
                _add(node.add(_text(f"[{i}]")), item, depth + 1)
            else:
                node.add(_text(_value(item)))
        _more(node, LIST_LIMIT, len(value))
    else:
        node.add(_text(_value(value)))


def _format_arg(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"$ref"}:
        return _s(value["$ref"])
    return _value(value)


def _code_notes(root: Tree, m: dict[str, Any]) -> None:
    """Where the pinned code is not simply the working tree's: files pinned as imported, repo modules imported
    from elsewhere (not pinned), compiled modules saved as their originals, a notebook's cells."""
    pinned = _l(m.get("pinned"))
    if pinned:
        node = root.add(_text(("pinned as imported", "bold"), " (edited on disk after import; the snapshot holds "
                                                              "the code that ran)"))
        for rel in pinned[:LIST_LIMIT]:
            node.add(_text(_s(rel)))
    unpinned = _l(m.get("unpinned"))
    if unpinned:
        node = root.add(_text(("not pinned", "bold yellow"), " (imported from outside this repository, and different)"))
        for u in unpinned[:LIST_LIMIT]:
            u = _d(u) if isinstance(u, dict) else {"module": u}
            node.add(_text(f"{_s(u.get('module'))} from {_s(u.get('file'))}"))
    compiled = _l(m.get("compiled"))
    if compiled:
        node = root.add(_text(("compiled", "bold"), " (saved as the original module; compile again after a load)"))
        for c in compiled[:LIST_LIMIT]:
            c = _d(c) if isinstance(c, dict) else {"class": c}
            options = ", ".join(f"{_s(k)}={_s(v)}" for k, v in c.items() if k != "class" and v is not None)
            node.add(_text(f"{_s(c.get('class'))}  {options}"))
    notebook = m.get("notebook")
    if isinstance(notebook, dict):
        nb = _d(notebook)
        where = f" from {_s(nb.get('notebook'))}" if nb.get("notebook") else ""
        root.add(_text(("notebook", "bold"), f" {_s(nb.get('cells'))} cells{where} as {_s(nb.get('file'))}"))


def _capture(node: Tree, tree: dict[str, Any]) -> None:
    """One branch per object: its class, then each argument, defaults and references marked."""
    from ..capturing import INFERRED

    objects = list(_d(tree.get("objects")).items())
    for key, entry in objects[:LIST_LIMIT]:
        if not isinstance(entry, dict):
            node.add(_text((key, "bold"), "  ", _value(entry), ("  (not an object entry)", "yellow")))
            continue
        label = _text((key, "bold"), "  ", _s(entry.get("class")))
        if entry.get("origin") == INFERRED:
            label.append("  (inferred from attributes; capture was off)", style="yellow")
        obj = node.add(label)
        defaults = {d for d in _l(entry.get("defaults")) if isinstance(d, str)}
        args = entry.get("args")
        if isinstance(args, dict):
            for name, value in list(args.items())[:LIST_LIMIT]:
                if isinstance(value, dict) and set(value) == {"$ref"}:
                    obj.add(_text(name, " -> ", (_s(value["$ref"]), "bold")))
                else:
                    line = _text(name, " = ", _format_arg(value))
                    if name in defaults:
                        line.append("  (default)", style="dim")
                    obj.add(line)
        elif args is not None:
            obj.add(_text("args = ", _value(args)))
        for name in _l(entry.get("unknown"))[:LIST_LIMIT]:
            obj.add(_text(_s(name), " = ", ("? (no attribute of that name)", "dim")))
    _more(node, LIST_LIMIT, len(objects))


def _size(n: float) -> str:
    from ..sizes import binary_size_text

    return binary_size_text(n)


def _count(value: Any) -> str:
    n = _int(value)
    return f"{n:,}" if n is not None else _value(value)


def _counts(entry: Any) -> str:
    entry = _d(entry)
    params = _d(entry.get("parameters"))
    total, trainable = params.get("total", 0), params.get("trainable", 0)
    text = f"{_count(total)} params"
    if trainable != total:
        text += f" ({_count(trainable)} trainable)"
    buffers = _d(entry.get("buffers"))
    if buffers.get("total"):
        text += f", {_count(buffers['total'])} buffer elements"
    size = _int(entry.get("bytes"))
    if size is not None and size >= 0:
        return text + f", {_size(size)}"
    return text + (f", {_value(entry.get('bytes'))} bytes" if entry.get("bytes") is not None else ", 0 B")


SCREEN = 30  # module and tensor lines the default `inspect` shows of a structure: a summary that fits a screen


def path_depth(path: str) -> int:
    """How deep a path from the saved root is: ``$`` 0, ``$.bert`` 1, ``$.blocks[0].attn`` 3."""
    return path.count(".") + path.count("[")


def _shown_depth(entries: list[dict], depth: int | None, full: bool) -> tuple[int | None, bool]:
    """(the deepest level of modules shown, None for all; whether each module's tensors are shown).

    ``--full`` shows everything; ``--depth N`` the modules down to N levels; by default everything when it fits
    a screen, else the deepest levels of modules that do, without tensors."""
    if full:
        return None, True
    deepest = max((path_depth(_s(e.get("path"))) for e in entries), default=0)
    if depth is not None:
        return depth, depth >= deepest
    tensors = sum(len(_d(e.get("tensors"))) for e in entries)
    if len(entries) + tensors <= SCREEN:
        return None, True
    counts: dict[int, int] = {}
    for e in entries:
        d = path_depth(_s(e.get("path")))
        counts[d] = counts.get(d, 0) + 1
    shown, total = 1, 0
    for level in range(deepest + 1):
        total += counts.get(level, 0)
        if total > SCREEN:
            break
        shown = max(level, 1)
    return shown, False


def _structure(root: Tree, structure: dict[str, Any], depth: int | None = None, full: bool = False) -> None:
    """torch modules nested by path, each with its counts and its own tensors; deeper levels folded into a count
    on their nearest shown module when the whole tree would not fit (see :func:`_shown_depth`)."""
    node = root.add(_text(("structure", "bold"), "  ", _counts(structure.get("total"))))
    nodes: dict[str, Tree] = {}
    modules = _l(structure.get("modules"))
    limit, with_tensors = _shown_depth([e for e in modules[:LIST_LIMIT] if isinstance(e, dict)], depth, full)
    hidden: dict[str, int] = {}  # shown path -> modules folded below it
    labels: dict[str, Text] = {}
    for entry in modules[:LIST_LIMIT]:
        if not isinstance(entry, dict):
            node.add(_text(_value(entry), ("  (not a module entry)", "yellow")))
            continue
        path = _s(entry.get("path"))
        parent = node
        parent_path = None
        prefix = path
        for _ in range(RENDER_DEPTH):  # the nearest ancestor shown; a path of thousands of dots costs no more
            if "." not in prefix:
                break
            prefix = prefix.rsplit(".", 1)[0]
            if prefix in nodes:
                parent, parent_path = nodes[prefix], prefix
                break
        if limit is not None and path_depth(path) > limit:
            if parent_path is not None:
                hidden[parent_path] = hidden.get(parent_path, 0) + 1
            continue
        extra = entry.get("extra_repr")
        extra = f"({_s(extra)})" if extra else ""
        name = path[len(parent_path) + 1:] if parent_path is not None else path  # the tree shows the rest
        label = _text((name, "bold"), "  ", _s(entry.get("class")) + extra, "  ", (_counts(entry), "dim"))
        labels[path] = label
        nodes[path] = parent.add(label)
        if not with_tensors:
            continue
        tensors = entry.get("tensors")
        for name, t in list(_d(tensors).items())[:LIST_LIMIT]:
            if not isinstance(t, dict):
                nodes[path].add(_text(name, "  ", _value(t)))
                continue
            shape = t.get("shape")
            shape = "x".join(_s(d) for d in shape) if isinstance(shape, list) else _value(shape) if shape else ""
            frozen = "" if t.get("requires_grad") or t.get("kind") != "parameter" else " frozen"
            nodes[path].add(_text(f"{_s(name)}  {_s(t.get('kind'))}{frozen} {shape or 'scalar'} "
                                  f"{_s(t.get('dtype'))} on {_s(t.get('device'))}"))
    for path, count in hidden.items():
        labels[path].append(f"  (+{count} submodule{'s' if count > 1 else ''})", style="dim")
    _more(node, LIST_LIMIT, len(modules))
    if limit is not None or not with_tensors:
        where = f"down to depth {limit}" if limit is not None else "without their tensors"
        node.add(_text((f"modules shown {where}: gitpack inspect --depth N for more levels, --full for every module "
                        "and tensor", "dim")))


def _environment(node: Tree, env: dict[str, Any]) -> None:
    node.add(_text(f"python {_s(env.get('python'))} ({_s(env.get('implementation'))}) on {_s(env.get('platform'))}"))
    packages = env.get("packages")
    if isinstance(packages, dict) and packages:
        listed = ", ".join(f"{k} {_s(v)}" for k, v in list(packages.items())[:LIST_LIMIT] if v)
        node.add(_text(listed or "no tracked packages"))
    elif packages:
        node.add(_text("packages ", _value(packages)))
    for key, value in env.items():
        if key in ("python", "implementation", "platform", "packages"):
            continue
        if isinstance(value, (dict, list)) and value:
            _add(node.add(_text((key, "bold"))), value, 1)
        else:
            node.add(_text(key, " ", _value(value)))


def _members(members: Any) -> str:
    if not isinstance(members, list):
        return f"member table is not a list: {_value(members)}"
    sizes = [_int(_d(m).get("size")) for m in members]
    known = [n for n in sizes if n is not None]
    text = f"{len(members)} members, {sum(known)} bytes"
    if len(known) != len(members):
        text += f" ({len(members) - len(known)} without a readable size)"
    return text


def manifest(m: Any, console: Console | None = None, *, depth: int | None = None, full: bool = False) -> None:
    """Print manifest *m* (any JSON value) as a tree; shows what it can, never fails on a field's shape.

    The structure is summarised to fit a screen unless *full*, or shown to *depth* levels of modules."""
    console = console or Console(highlight=False)
    if not isinstance(m, dict):
        console.print(_text(("not a manifest object: ", "bold"), _value(m)))
        return
    obj = m.get("object")
    type_name = obj.get("type") if isinstance(obj, dict) else obj
    root = Tree(_text((_s(type_name), "bold"), f"  saved {_s(m.get('created'))}"))
    src = root.add(_text(("source", "bold")))
    src.add(_text(f"commit {_s(m.get('commit'))}  tree {_s(m.get('tree'))}"))
    origin = _text(f"from {_s(m.get('head_branch') or 'detached HEAD')} at {_s(m.get('head') or '(no commits)')}")
    if m.get("dirty"):
        origin.append("  (dirty)", style="yellow")
    src.add(origin)
    if m.get("remote_url"):
        src.add(_text(f"remote {_s(m['remote_url'])}"))
    if m.get("params"):
        _add(root.add(_text(("parameters", "bold"))), m["params"], 1)
    if m.get("message"):
        root.add(_text(("message", "bold"), " ", _s(m["message"])))
    capture = m.get("capture")
    if isinstance(capture, dict) and capture.get("objects"):
        _capture(root.add(_text(("constructed with", "bold"))), capture)
    elif capture and not isinstance(capture, dict):
        root.add(_text(("constructed with", "bold"), " ", _value(capture)))
    stale_code = m.get("stale_code")
    if stale_code:
        stale = root.add(_text(("saved with stale code", "bold yellow"), " (--allow-stale)"))
        for s in _l(stale_code)[:LIST_LIMIT] if isinstance(stale_code, list) else [stale_code]:
            s = _d(s) if isinstance(s, dict) else {"module": s}
            stale.add(_text(f"{_s(s.get('module'))}:{_s(s.get('qualname'))} ({_s(s.get('reason'))})"))
    _code_notes(root, m)
    structure = m.get("structure")
    if isinstance(structure, dict) and structure.get("modules"):
        _structure(root, structure, depth, full)
    elif structure and not isinstance(structure, dict):
        root.add(_text(("structure", "bold"), " ", _value(structure)))
    env = m.get("environment")
    if isinstance(env, dict) and env:
        _environment(root.add(_text(("environment", "bold"))), env)
    elif env:
        root.add(_text(("environment", "bold"), " ", _value(env)))
    integrity = root.add(_text(("integrity", "bold")))
    integrity.add(_text(f"payload {_s(m.get('payload_digest'))}"))
    integrity.add(_text(_members(m.get("members", []))))
    console.print(root)


def log_lines(entries) -> list[str]:
    """``gitpack log``: one line per save (sha, date, object, archive, up to four parameters), all escaped."""
    lines = []
    for e in entries:
        if e.params_note:
            params = f"params=<not shown: {textsafe.line(e.params_note, 200)}>"
        else:
            shown = list(e.shown_params().items())[:4]
            params = " ".join(f"{textsafe.line(k, 60)}={textsafe.json_value(v, 60)}" for k, v in shown)
        fields = (textsafe.line(e.commit[:12]), textsafe.line(e.date, 40), textsafe.line(e.object_type, 200),
                  textsafe.line(e.archive, 200), params)
        lines.append("  ".join(fields).rstrip())
    return lines


INCOMING_PATHS = 8  # paths named per incoming commit; the rest are counted


def incoming_lines(report) -> list[str]:
    """``gitpack pull``/``push``: one line per commit brought in, with the paths it changes (shortened), escaped."""
    lines = []
    for item in report.incoming:
        names = []
        for status, path, old in item.changes[:INCOMING_PATHS]:
            where = textsafe.line(path, 200)
            if old is not None:
                where = f"{textsafe.line(old, 200)} -> {where}"
            names.append(f"{textsafe.line(status[:1], 2)} {where}")
        rest = len(item.changes) - INCOMING_PATHS
        if rest > 0:
            base = item.parent[:12] if item.parent else "--root"
            names.append(f"... and {rest} more (git diff-tree -r --name-status {base} {item.commit[:12]})")
        lines.append(f"new {item.kind} {item.commit[:12]}: {', '.join(names) if names else '(no file changes)'}")
    if report.incoming_left_out:
        lines.append(f"... and {report.incoming_left_out} more new commits (gitpack log, git log --first-parent)")
    return lines


def artifact_table(versions) -> list[str]:
    """``gitpack list``: one aligned row per stored version."""
    def cells(v) -> tuple[str, ...]:
        size = _size(v.size) if _int(v.size) is not None else "?"
        row = (v.name, f"v{v.number}", ",".join(v.aliases), v.date, v.snapshot[:12], size, v.object_type)
        return tuple(textsafe.line(cell, 200) for cell in row)

    rows = [cells(v) for v in versions]
    header = ("NAME", "VERSION", "ALIASES", "DATE", "SNAPSHOT", "SIZE", "OBJECT")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header] + rows]


def scan_lines(report) -> list[str]:
    """``gitpack scan``: what the pickle would resolve, one line each, then a count (names from the pickle escaped)."""
    lines = []
    seen: dict[tuple, int] = {}
    for g in report.globals:
        key = (g.dotted, g.refused, g.depth)
        seen[key] = seen.get(key, 0) + 1
    for (dotted, refused, depth), count in seen.items():
        where = "  (in a nested pickle)" if depth else ""
        times = f" x{count}" if count > 1 else ""
        verdict = "REFUSED" if refused else "allowed"
        why = f"  -- {refused}" if refused else ""
        lines.append(f"{verdict}  global    {dotted}{times}{why}{where}")
    for p in report.persistent_ids:
        if p.kind in ("storage", "tensor"):
            continue  # counted below
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
    storages = sum(1 for p in report.persistent_ids if p.kind in ("storage", "tensor"))  # ids, before format 3
    lines.append(f"{len(report.globals)} globals ({len(report.refused)} refused), {report.tensor_rows} tensors in "
                 f"the tensor table, {storages} tensor and storage ids, "
                 f"{len(report.functions)} rebuilt functions, {len(report.code)} by-value code objects"
                 + (f", {report.nested} nested pickles" if report.nested else ""))
    return [textsafe.line(line) for line in lines]

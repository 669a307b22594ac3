"""The ``gitpack`` command: a thin typer layer over :mod:`gitpack.api`.

Errors that gitpack raises on purpose become one line on stderr and exit
status 1; usage errors one line and status 2.  Set ``GITPACK_DEBUG=1`` to see
tracebacks.  Nothing here imports torch unless the command needs it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any, Optional, Protocol, cast

import typer

from .. import api, textsafe
from ..errors import GitpackError
from . import store_commands
from .output import Quiet, note, out, set_quiet

app = typer.Typer(
    name="gitpack",
    help="Model files that carry, pinned in git, the exact code and parameters that built them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


# Declared once for the commands that read an archive, so that their help cannot drift apart.
_ArchiveRef = Annotated[str, typer.Argument(help="archive file, or stored artifact NAME[@VERSION]")]


@app.command()
def save(
    target: Annotated[
        str,
        typer.Argument(help="module:attr or path/to/file.py:attr; a function or class is called with the -p values"),
    ],
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="archive file to write")] = None,
    name: Annotated[
        Optional[str],
        typer.Option("--name", help="also (or, without -o, only) store it as the next version of artifact NAME"),
    ] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option("-p", "--param", help="key=value (JSON where it parses, else a string); repeatable"),
    ] = None,
    message: Annotated[
        Optional[str], typer.Option("-m", "--message", help="note recorded in the snapshot commit")
    ] = None,
    branch: Annotated[
        Optional[str],
        typer.Option("--branch", help="snapshot branch (default: gitpack, or git config gitpack.branch)"),
    ] = None,
    size_cap: Annotated[
        Optional[str],
        typer.Option("--size-cap", help="leave untracked files larger than this out of the snapshot (bytes, or 10m; "
                     "default 10 MB, git config gitpack.sizecap)"),
    ] = None,
    untracked_budget: Annotated[
        Optional[str],
        typer.Option("--untracked-budget", help="at most this much of untracked files in all, the largest left out "
                     "first (default 20 MB, git config gitpack.untrackedBudget)"),
    ] = None,
    include: Annotated[
        Optional[list[str]],
        typer.Option("--include", help="snapshot this untracked path (file, directory or glob) whatever its size; "
                     "repeatable (also: git config --add gitpack.include PATH)"),
    ] = None,
    quiet: Quiet = False,
    sign: Annotated[
        bool,
        typer.Option("--sign", help="sign the snapshot commit with your git signing key (also: git config "
                     "commit.gpgsign)"),
    ] = False,
    allow_stale: Annotated[
        bool,
        typer.Option("--allow-stale", help="save even if code changed on disk after it was imported (recorded in "
                     "the archive and commit)"),
    ] = False,
) -> None:
    """Snapshot the working tree and save TARGET's object with its code pinned to that commit.

    Constructor arguments of repo objects are captured while TARGET is imported and called.
    """
    import warnings

    from ..errors import GitpackWarning
    from . import targets

    set_quiet(quiet)
    params = targets.parse_params(param or [])
    cap, budget = targets.parse_size_option("--size-cap", size_cap), \
        targets.parse_size_option("--untracked-budget", untracked_budget)
    with api.capture():  # on before TARGET is imported, so module-level construction is seen too
        obj = targets.resolve(target, params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GitpackWarning)  # printed below, once, as gitpack's own lines
        info = api.save(obj, output, name=name, params=params, message=message, branch=branch, size_cap=cap,
                        sign=sign, allow_stale=allow_stale, include=include or [], untracked_budget=budget)
    _left_out(info.excluded)
    for warning in info.warnings:
        note(f"warning: {warning}")
    if info.path is not None:
        out(f"saved {info.object_type} to {info.path}")
    if info.artifact is not None:
        out(f"stored {info.object_type} as {info.artifact}")
    out(f"snapshot {info.commit} on {info.branch}")
    out(f"digest {info.digest}")


LEFT_OUT_SHOWN = 20  # files left out of a snapshot named one per line; the rest are counted


def _left_out(excluded: list[tuple[str, str]]) -> None:
    """One line per file a save left out (the first LEFT_OUT_SHOWN), then how to take them anyway."""
    from ..snapshot.exclude import is_size_exclusion

    for path, reason in excluded[:LEFT_OUT_SHOWN]:
        note(f"left out of the snapshot: {path} ({reason})")
    if len(excluded) > LEFT_OUT_SHOWN:
        note(f"... and {len(excluded) - LEFT_OUT_SHOWN} more left out (gitpack inspect --json lists them all)")
    by_size = [p for p, why in excluded if is_size_exclusion(why)]
    if len(by_size) > 1:
        note(f"{len(by_size)} untracked files left out by size; to snapshot one anyway: --include PATH, or for every "
              "save: git config --add gitpack.include PATH (or raise --untracked-budget / --size-cap)")


@app.command()
def load(
    path: Annotated[str, typer.Argument(help="archive file, or stored artifact NAME, NAME@v2, NAME@latest")],
    apply: Annotated[
        Optional[str],
        typer.Option("--apply", help="run preprocess -> forward (batch of one) -> postprocess on INPUT, print JSON; "
                     "a torch module without them takes INPUT as JSON (a number or nested lists) on a batch of one"),
    ] = None,
    map_location: Annotated[
        Optional[str], typer.Option("--map-location", help="device for tensors, e.g. cpu or cuda:0")
    ] = None,
    mmap: Annotated[
        bool, typer.Option("--mmap", help="map tensor data from the archive instead of reading it")
    ] = False,
    trust: Annotated[
        bool, typer.Option("--trust", help="allow any global and by-value code (only for archives you trust)")
    ] = False,
    allow: Annotated[
        Optional[list[str]],
        typer.Option("--allow", help="also allow global module:qualname (or module.qualname), or the classes of a "
                     "package (--allow transformers); repeatable; also: git config --add gitpack.allow ENTRY"),
    ] = None,
    require_signed: Annotated[
        bool,
        typer.Option("--require-signed", help="refuse unless the snapshot commit has a trusted signature (also: git "
                     "config gitpack.requireSigned)"),
    ] = False,
    fetch: Annotated[bool, typer.Option("--fetch", help="`gitpack pull` first, then load")] = False,
    remote: Annotated[
        Optional[str],
        typer.Option("--remote", help="remote for --fetch and for Git LFS downloads (default: upstream, else origin)"),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Load an archive (a file or a stored artifact) against the code it was saved with, in isolation."""
    from ..pickling.policy import parse_allow

    set_quiet(quiet)
    allow = allow or []
    parse_allow(allow)  # a bad --allow fails before anything is fetched
    if fetch:  # pull first, here, so that the code each new snapshot brings is listed before it is loaded
        report = api.pull(remote)
        store_commands.report_notes(report)
        store_commands.report_incoming(report)
    obj = api.load(path, map_location=map_location, mmap=mmap, trust=trust, allow=allow,
                   require_signed=require_signed or None, remote=remote)
    if apply is not None:
        out(json.dumps(api.apply(obj, apply), default=str))
        return
    manifest = api.inspect(path)
    kind = manifest.get("object")
    out(f"object  {textsafe.line(kind.get('type') if isinstance(kind, dict) else kind)}")
    source = api.source_of(obj) or type(obj).__module__
    out(f"class   {textsafe.line(type(obj).__qualname__)} from {textsafe.line(source)}")
    out(f"commit  {textsafe.line(manifest.get('commit'))}")
    out(f"params  {textsafe.json_value(manifest.get('params') or {}, limit=None, max_depth=64)}")


@app.command()
def scan(
    path: _ArchiveRef,
    allow: Annotated[
        Optional[list[str]],
        typer.Option("--allow", help="count global module:qualname (or a package's classes) as allowed; repeatable"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="everything found, as JSON")] = False,
) -> None:
    """List every global, repo reference and by-value code the archive's pickle would use, without running it.

    Exits 1 when the default policy (plus --allow) would refuse something.
    """
    from ..pickling.policy import parse_allow

    allow = allow or []
    parse_allow(allow)
    report = api.scan(path, allow=allow)
    if as_json:
        out(json.dumps(report.as_json(), indent=2))
    else:
        from . import render as show

        for line in show.scan_lines(report):
            out(line)
    report.raise_if_unsafe()


@app.command()
def verify(
    path: _ArchiveRef,
    require_signed: Annotated[
        bool, typer.Option("--require-signed", help="fail unless the snapshot commit has a trusted signature")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="what was checked, as JSON")] = False,
) -> None:
    """Check every byte of an archive, the snapshot commit that vouches for it, and its signature."""
    report = api.verify(path, require_signed=require_signed or None)
    if as_json:
        out(json.dumps(report.as_json(), indent=2))
        return
    out(f"archive    ok: {report.members} members, {report.size} bytes, every digest matches")
    if report.portable and report.signature is None:
        out(f"source     ok: embedded snapshot {report.commit[:12]} matches git's hashes")
    else:
        out(f"commit     {textsafe.line(report.commit)} holds tree {textsafe.line(report.tree[:12])} and vouches for "
             f"{textsafe.line(report.payload_digest, 200)}"
             + (" and the manifest" if report.manifest_vouched else ""))
    out(f"signature  {report.signature.describe() if report.signature else 'not checked (no repository)'}")


@app.command()
def inspect(
    path: _ArchiveRef,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole manifest as JSON")] = False,
    depth: Annotated[
        Optional[int],
        typer.Option("--depth", min=0, help="show torch modules down to N levels (default: a summary that fits a "
                     "screen)"),
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="show every module and tensor")] = False,
) -> None:
    """Show what an archive records (code, parameters, environment) without unpickling it."""
    manifest = api.inspect(path)
    if as_json:
        try:
            text = json.dumps(manifest, indent=2, sort_keys=True)
        except RecursionError:  # nested too deeply for the indenting encoder: the compact one
            text = json.dumps(manifest, sort_keys=True)
        out(text)
        return
    from . import render as show

    show.manifest(manifest, depth=depth, full=full)


@app.command()
def log(
    as_json: Annotated[bool, typer.Option("--json", help="all fields, as JSON")] = False,
    branch: Annotated[Optional[str], typer.Option("--branch", help="snapshot branch")] = None,
    limit: Annotated[Optional[int], typer.Option("-n", "--limit", help="show at most this many saves")] = None,
) -> None:
    """List the saves recorded on the snapshot branch, newest first."""
    entries = api.log(branch=branch, limit=limit)
    if as_json:
        out(json.dumps([{**e.as_json(), "capture": e.capture()} for e in entries], indent=2))
        return
    from . import render as show

    for line in show.log_lines(entries):
        out(line)


@app.command()
def diff(
    a: _ArchiveRef,
    b: Annotated[
        Optional[str], typer.Argument(help="second archive; without it, A is compared with the working tree")
    ] = None,
    all_files: Annotated[
        bool, typer.Option("--all", help="code diff of every file, not only the repo modules the objects use")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="everything, as JSON")] = False,
) -> None:
    """Compare two saves: parameters, environment and code. Reads manifests and git only; never unpickles."""
    report = api.diff(a, b, all_files=all_files)
    if as_json:
        out(json.dumps(report.as_json(), indent=2, default=str))
        return
    from ..compare import format_text

    sys.stdout.write(format_text(report))


store_commands.register(app)  # list, alias, push, pull, export: here, so `gitpack --help` lists them in this order


@app.command()
def init(
    lfs: Annotated[
        bool, typer.Option("--lfs", help="also store committed *.gitpack files with Git LFS (needs git-lfs)")
    ] = False,
) -> None:
    """Set this repository up for archives: .gitattributes (binary, -delta, diff=gitpack) and git config."""
    done = api.init(lfs=lfs)
    for line in done:
        out(line)
    if not done:
        out("already set up")


cache_app = typer.Typer(
    help="The load cache: materialised snapshots and copies of stored archives (every entry can be rebuilt).",
    no_args_is_help=False, rich_markup_mode=None,
)
app.add_typer(cache_app, name="cache")


@cache_app.callback(invoke_without_command=True)
def cache(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="every entry, as JSON")] = False,
) -> None:
    """Show the load cache's size, its entries in use, and its limit (git config gitpack.cacheMaxSize)."""
    if ctx.invoked_subcommand is not None:
        return
    from ..sizes import size_text

    usage, limit = api.cache_usage()
    if as_json:
        out(json.dumps({**usage.as_json(), "max_size": limit}, indent=2))
        return
    out(f"cache    {usage.root}")
    for kind, label in (("tree", "snapshot trees"), ("archive", "stored archives")):
        entries = [e for e in usage.entries if e.kind == kind]
        busy = sum(1 for e in entries if e.in_use)
        out(f"{kind + 's':<9}{len(entries)} {label}, {size_text(sum(e.size for e in entries))}"
             + (f" ({busy} in use)" if busy else ""))
    out(f"total    {size_text(usage.size)} of at most {size_text(limit)} (git config gitpack.cacheMaxSize); "
         "`gitpack cache prune` frees it")


@cache_app.command("prune")
def cache_prune(
    older_than: Annotated[
        Optional[str],
        typer.Option("--older-than", help="remove entries unused for this long: 30d, 12h, 90m (a plain number is "
                     "days)"),
    ] = None,
    max_size: Annotated[
        Optional[str],
        typer.Option("--max-size", help="then remove the least recently used until the cache fits: 1g, 500MB"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="what was removed and kept, as JSON")] = False,
) -> None:
    """Remove cache entries no process is using (with no option: all of them). Loads rebuild what they need."""
    from ..errors import GitpackError
    from ..sizes import parse_duration, size_text
    from . import targets

    try:
        age = parse_duration(older_than) if older_than is not None else None
    except ValueError:
        raise GitpackError(f"--older-than {older_than!r} is not a duration; give e.g. 30d, 12h or 90m") from None
    limit = targets.parse_size_option("--max-size", max_size)
    pruned = api.cache_prune(older_than=age, max_size=limit)
    if as_json:
        out(json.dumps(pruned.as_json(), indent=2))
        return
    trees = sum(1 for e in pruned.removed if e.kind == "tree")
    archives = len(pruned.removed) - trees
    out(f"removed {trees} snapshot trees and {archives} stored archives ({size_text(pruned.freed)})"
         + (f"; kept {len(pruned.kept_in_use)} in use" if pruned.kept_in_use else "")
         + f"; the cache now holds {size_text(pruned.size_after)}")


@app.command()
def repair(
    branch: Annotated[
        Optional[str], typer.Option("--branch", help="snapshot branch (default: gitpack.branch or gitpack)")
    ] = None,
) -> None:
    """Mend snapshot and artifact refs that point at missing objects (e.g. after `git gc --prune=now` raced a save).

    A damaged snapshot branch moves back to its newest intact snapshot (or is removed); a damaged stored
    version is removed and `latest` moves back.  Each change is one line saying what was lost.
    """
    done = api.repair(branch=branch)
    for item in done:
        out(item.note)
    if not done:
        out("nothing to repair: every snapshot and artifact ref points at intact objects")


@app.command()
def textconv(path: Annotated[str, typer.Argument(help="archive file (git passes a temp file)")]) -> None:
    """Print an archive's manifest as text, for git diff (never unpickles, never imports torch)."""
    sys.stdout.write(api.textconv(path))


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """Click's exception classes, from typer's vendored copy and from click itself (typer versions differ)."""
    import importlib

    found: list[type[BaseException]] = []
    for module_name in ("typer._click.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module_name), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


class _ClickProblem(Protocol):
    """What main() reads of a click exception.

    typer's vendored click and click itself are unrelated class hierarchies, so the except clauses below can only
    name them as BaseException; this is the part of their interface main() relies on.
    """

    ctx: Any  # click.Context | None, on NoArgsIsHelpError and UsageError
    exit_code: int  # on ClickException

    def format_message(self) -> str: ...


def _click_problem(exc: BaseException) -> _ClickProblem:
    return cast(_ClickProblem, exc)


_NO_ARGS = _click_classes("NoArgsIsHelpError")
_USAGE = _click_classes("UsageError")
_CLICK_ERROR = _click_classes("ClickException")
_ABORT = _click_classes("Abort") + (typer.Abort,)
_EXIT = _click_classes("Exit") + (typer.Exit,)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn errors into one-line messages."""
    debug = bool(os.environ.get("GITPACK_DEBUG"))
    try:
        result = app(args=argv, prog_name="gitpack", standalone_mode=False)
    except GitpackError as exc:
        if debug:
            raise
        note(f"error: {exc}")  # one line, whatever text of an archive or commit the message quotes
        sys.exit(1)
    except _NO_ARGS as exc:  # `gitpack` alone prints help
        problem = _click_problem(exc)
        if problem.ctx is not None:
            out(problem.ctx.get_help())
        sys.exit(0)
    except _USAGE as exc:
        problem = _click_problem(exc)
        command = problem.ctx.command_path if problem.ctx is not None else "gitpack"
        note(f"error: {problem.format_message()} (see `{command} --help`)")
        sys.exit(2)
    except _CLICK_ERROR as exc:
        problem = _click_problem(exc)
        note(f"error: {problem.format_message()}")
        sys.exit(problem.exit_code or 1)
    except _ABORT:
        note("aborted")
        sys.exit(130)
    except _EXIT as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except KeyboardInterrupt:
        note("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as exc:  # one gitpack did not foresee: still one line, naming the path and what to do
        if debug:
            raise
        from ..errors import disk_advice

        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or str(exc)
        note(f"error: {where}{reason}; {disk_advice(reason) or 'check the path and try again'}")
        sys.exit(1)
    if isinstance(result, int):
        sys.exit(result)

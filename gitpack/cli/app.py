"""The ``gitpack`` command: a thin typer layer over :mod:`gitpack.api`.

Errors that gitpack raises on purpose become one line on stderr and exit
status 1; usage errors one line and status 2.  Set ``GITPACK_DEBUG=1`` to see
tracebacks.  Nothing here imports torch unless the command needs it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional, Protocol, cast

import typer

from .. import api, textsafe
from ..errors import GitpackError

app = typer.Typer(
    name="gitpack",
    help="Model files that carry, pinned in git, the exact code and parameters that built them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _out(text: str) -> None:
    """One or more lines on stdout; control characters that reached them anyway are shown escaped."""
    sys.stdout.write(textsafe.block(text) + "\n")


def _note(text: str) -> None:
    """One line on stderr (a message quoting an archive's or a commit's text cannot break it or drive the terminal)."""
    sys.stderr.write(f"gitpack: {textsafe.line(text)}\n")


@app.command()
def save(
    target: str = typer.Argument(
        ..., help="module:attr or path/to/file.py:attr; a function or class is called with the -p values"
    ),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="archive file to write"),
    name: Optional[str] = typer.Option(
        None, "--name", help="also (or, without -o, only) store it as the next version of artifact NAME"
    ),
    param: list[str] = typer.Option(
        [], "-p", "--param", help="key=value (JSON where it parses, else a string); repeatable"
    ),
    message: Optional[str] = typer.Option(None, "-m", "--message", help="note recorded in the snapshot commit"),
    branch: Optional[str] = typer.Option(
        None, "--branch", help="snapshot branch (default: gitpack, or git config gitpack.branch)"
    ),
    size_cap: Optional[int] = typer.Option(
        None, "--size-cap", help="leave files larger than this many bytes out of the snapshot"
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress bar"),
    sign: bool = typer.Option(
        False, "--sign", help="sign the snapshot commit with your git signing key (also: git config commit.gpgsign)"
    ),
    allow_stale: bool = typer.Option(
        False,
        "--allow-stale",
        help="save even if code changed on disk after it was imported (recorded in the archive and commit)",
    ),
) -> None:
    """Snapshot the working tree and save TARGET's object with its code pinned to that commit.

    Constructor arguments of repo objects are captured while TARGET is imported and called.
    """
    from . import targets

    _quiet(quiet)
    params = targets.parse_params(param)
    with api.capture():  # on before TARGET is imported, so module-level construction is seen too
        obj = targets.resolve(target, params)
    info = api.save(obj, output, name=name, params=params, message=message, branch=branch, size_cap=size_cap, sign=sign,
                    allow_stale=allow_stale)
    for path, reason in info.excluded:
        _note(f"left out of the snapshot: {path} ({reason})")
    for warning in info.warnings:
        _note(f"warning: {warning}")
    if info.path is not None:
        _out(f"saved {info.object_type} to {info.path}")
    if info.artifact is not None:
        _out(f"stored {info.object_type} as {info.artifact}")
    _out(f"snapshot {info.commit} on {info.branch}")
    _out(f"digest {info.digest}")


@app.command()
def load(
    path: str = typer.Argument(..., help="archive file, or stored artifact NAME, NAME@v2, NAME@latest"),
    apply: Optional[str] = typer.Option(
        None, "--apply", help="run preprocess -> forward (batch of one) -> postprocess on INPUT, print JSON"
    ),
    map_location: Optional[str] = typer.Option(None, "--map-location", help="device for tensors, e.g. cpu or cuda:0"),
    mmap: bool = typer.Option(False, "--mmap", help="map tensor data from the archive instead of reading it"),
    trust: bool = typer.Option(
        False, "--trust", help="allow any global and by-value code (only for archives you trust)"
    ),
    allow: list[str] = typer.Option([], "--allow", help="also allow global module:qualname; repeatable"),
    require_signed: bool = typer.Option(
        False,
        "--require-signed",
        help="refuse unless the snapshot commit has a trusted signature (also: git config gitpack.requireSigned)",
    ),
    fetch: bool = typer.Option(False, "--fetch", help="`gitpack pull` first, then load"),
    remote: Optional[str] = typer.Option(
        None, "--remote", help="remote for --fetch and for Git LFS downloads (default: upstream, else origin)"
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress bar"),
) -> None:
    """Load an archive (a file or a stored artifact) against the code it was saved with, in isolation."""
    from ..pickling.policy import parse_allow

    _quiet(quiet)
    allowed = parse_allow(allow)  # a bad --allow fails before anything is fetched
    if fetch:  # pull first, here, so that the code each new snapshot brings is listed before it is loaded
        report = api.pull(remote)
        _report(report)
        _incoming(report)
    obj = api.load(path, map_location=map_location, mmap=mmap, trust=trust, allow=allowed,
                   require_signed=require_signed or None, remote=remote)
    if apply is not None:
        _out(json.dumps(api.apply(obj, apply), default=str))
        return
    manifest = api.inspect(path)
    kind = manifest.get("object")
    _out(f"object  {textsafe.line(kind.get('type') if isinstance(kind, dict) else kind)}")
    source = api.source_of(obj) or type(obj).__module__
    _out(f"class   {textsafe.line(type(obj).__qualname__)} from {textsafe.line(source)}")
    _out(f"commit  {textsafe.line(manifest.get('commit'))}")
    _out(f"params  {textsafe.json_value(manifest.get('params') or {}, limit=None, max_depth=64)}")


@app.command()
def scan(
    path: str = typer.Argument(..., help="archive file, or stored artifact NAME[@VERSION]"),
    allow: list[str] = typer.Option([], "--allow", help="count global module:qualname as allowed; repeatable"),
    as_json: bool = typer.Option(False, "--json", help="everything found, as JSON"),
) -> None:
    """List every global, repo reference and by-value code the archive's pickle would use, without running it.

    Exits 1 when the default policy (plus --allow) would refuse something.
    """
    from ..pickling.policy import parse_allow

    report = api.scan(path, allow=parse_allow(allow))
    if as_json:
        _out(json.dumps(report.as_json(), indent=2))
    else:
        from . import render as show

        for line in show.scan_lines(report):
            _out(line)
    report.raise_if_unsafe()


@app.command()
def verify(
    path: str = typer.Argument(..., help="archive file, or stored artifact NAME[@VERSION]"),
    require_signed: bool = typer.Option(
        False, "--require-signed", help="fail unless the snapshot commit has a trusted signature"
    ),
    as_json: bool = typer.Option(False, "--json", help="what was checked, as JSON"),
) -> None:
    """Check every byte of an archive, the snapshot commit that vouches for it, and its signature."""
    report = api.verify(path, require_signed=require_signed or None)
    if as_json:
        _out(json.dumps(report.as_json(), indent=2))
        return
    _out(f"archive    ok: {report.members} members, {report.size} bytes, every digest matches")
    if report.portable and report.signature is None:
        _out(f"source     ok: embedded snapshot {report.commit[:12]} matches git's hashes")
    else:
        _out(f"commit     {textsafe.line(report.commit)} holds tree {textsafe.line(report.tree[:12])} and vouches for "
             f"{textsafe.line(report.payload_digest, 200)}"
             + (" and the manifest" if report.manifest_vouched else ""))
    _out(f"signature  {report.signature.describe() if report.signature else 'not checked (no repository)'}")


@app.command()
def inspect(
    path: str = typer.Argument(..., help="archive file, or stored artifact NAME[@VERSION]"),
    as_json: bool = typer.Option(False, "--json", help="print the whole manifest as JSON"),
) -> None:
    """Show what an archive records (code, parameters, environment) without unpickling it."""
    manifest = api.inspect(path)
    if as_json:
        try:
            text = json.dumps(manifest, indent=2, sort_keys=True)
        except RecursionError:  # nested too deeply for the indenting encoder: the compact one
            text = json.dumps(manifest, sort_keys=True)
        _out(text)
        return
    from . import render as show

    show.manifest(manifest)


@app.command()
def log(
    as_json: bool = typer.Option(False, "--json", help="all fields, as JSON"),
    branch: Optional[str] = typer.Option(None, "--branch", help="snapshot branch"),
    limit: Optional[int] = typer.Option(None, "-n", "--limit", help="show at most this many saves"),
) -> None:
    """List the saves recorded on the snapshot branch, newest first."""
    entries = api.log(branch=branch, limit=limit)
    if as_json:
        _out(json.dumps([{**e.as_json(), "capture": e.capture()} for e in entries], indent=2))
        return
    from . import render as show

    for line in show.log_lines(entries):
        _out(line)


@app.command()
def diff(
    a: str = typer.Argument(..., help="archive file, or stored artifact NAME[@VERSION]"),
    b: Optional[str] = typer.Argument(None, help="second archive; without it, A is compared with the working tree"),
    all_files: bool = typer.Option(
        False, "--all", help="code diff of every file, not only the repo modules the objects use"
    ),
    as_json: bool = typer.Option(False, "--json", help="everything, as JSON"),
) -> None:
    """Compare two saves: parameters, environment and code. Reads manifests and git only; never unpickles."""
    report = api.diff(a, b, all_files=all_files)
    if as_json:
        _out(json.dumps(report.as_json(), indent=2, default=str))
        return
    from ..compare import format_text

    sys.stdout.write(format_text(report))


def _quiet(quiet: bool) -> None:
    from .. import progress

    progress.set_quiet(quiet)


@app.command("list")
def list_(
    name: Optional[str] = typer.Argument(None, help="only this artifact"),
    as_json: bool = typer.Option(False, "--json", help="all fields, as JSON"),
) -> None:
    """List the stored artifacts: names, versions, aliases, dates, snapshot commits and sizes."""
    versions = api.list_artifacts(name)
    if as_json:
        _out(json.dumps([v.as_json() for v in versions], indent=2))
        return
    if not versions:
        _note("no artifacts here yet (`gitpack save TARGET --name NAME` stores one, `gitpack pull` fetches others')")
        return
    from . import render as show

    for line in show.artifact_table(versions):
        _out(line)


@app.command("alias")
def alias_(
    ref: str = typer.Argument(..., help="the version: NAME@v2 (or NAME@ALIAS)"),
    alias_name: str = typer.Argument(..., metavar="ALIAS", help="alias to point at it, e.g. prod"),
) -> None:
    """Point NAME@ALIAS at a stored version (aliases move; versions never do)."""
    version = api.alias(ref, alias_name)
    _out(f"{version.name}@{alias_name} -> {version.label}")


def _report(report) -> None:
    for note in report.notes:
        _note(note)


def _incoming(report) -> None:
    """One line per commit the pull brought in: its sha and the paths it changes (code nobody here has seen yet)."""
    if report.incoming or report.incoming_left_out:
        from . import render as show

        for line in show.incoming_lines(report):
            _out(line)


@app.command()
def push(
    remote: Optional[str] = typer.Argument(
        None, help="remote name or URL (default: the branch's upstream, else origin)"
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress bar"),
) -> None:
    """Push the snapshot branch and the artifacts (merging others' saves first; never force)."""
    _quiet(quiet)
    report = api.push(remote)
    _report(report)
    _incoming(report)
    if report.pushed:
        _out(f"pushed {len(report.pushed)} ref(s) to {report.remote}")
    else:
        _out(f"{report.remote} is up to date")


@app.command()
def pull(
    remote: Optional[str] = typer.Argument(
        None, help="remote name or URL (default: the branch's upstream, else origin)"
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress bar"),
) -> None:
    """Fetch the snapshot branch and the artifacts and merge them into this clone's."""
    _quiet(quiet)
    report = api.pull(remote)
    _report(report)
    _incoming(report)
    if report.notes or report.incoming:
        _out(f"pulled from {report.remote}")
    else:
        _out(f"already up to date with {report.remote}")


@app.command()
def export(
    ref: str = typer.Argument(..., help="stored artifact NAME[@VERSION], or an archive file"),
    output: str = typer.Option(..., "-o", "--output", help="file to write"),
    portable: bool = typer.Option(
        False, "--portable", help="embed the snapshot's source: loads with no repository at all"
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress bar"),
) -> None:
    """Write a stored artifact to a file; --portable embeds its source, verified by git hashes at load."""
    _quiet(quiet)
    path = api.export(ref, output, portable=portable)
    _out(f"wrote {'portable ' if portable else ''}archive {path}")


@app.command()
def init(
    lfs: bool = typer.Option(False, "--lfs", help="also store committed *.gitpack files with Git LFS (needs git-lfs)"),
) -> None:
    """Set this repository up for archives: .gitattributes (binary, -delta, diff=gitpack) and git config."""
    done = api.init(lfs=lfs)
    for line in done:
        _out(line)
    if not done:
        _out("already set up")


@app.command()
def textconv(path: str = typer.Argument(..., help="archive file (git passes a temp file)")) -> None:
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
        _note(f"error: {exc}")  # one line, whatever text of an archive or commit the message quotes
        sys.exit(1)
    except _NO_ARGS as exc:  # `gitpack` alone prints help
        problem = _click_problem(exc)
        if problem.ctx is not None:
            _out(problem.ctx.get_help())
        sys.exit(0)
    except _USAGE as exc:
        problem = _click_problem(exc)
        command = problem.ctx.command_path if problem.ctx is not None else "gitpack"
        _note(f"error: {problem.format_message()} (see `{command} --help`)")
        sys.exit(2)
    except _CLICK_ERROR as exc:
        problem = _click_problem(exc)
        _note(f"error: {problem.format_message()}")
        sys.exit(problem.exit_code or 1)
    except _ABORT:
        _note("aborted")
        sys.exit(130)
    except _EXIT as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except KeyboardInterrupt:
        _note("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    if isinstance(result, int):
        sys.exit(result)

"""The commands for stored artifacts and their exchange with remotes: list, alias, push, pull, export.

They are plain functions here; :func:`register` adds them to the ``gitpack`` app at the point of ``app.py`` where
they belong in ``gitpack --help``'s list of commands (typer lists commands in the order they are added).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .. import api
from .output import Quiet, note, out, set_quiet

if TYPE_CHECKING:
    from ..sync import SyncReport

Remote = Annotated[
    Optional[str], typer.Argument(help="remote name or URL (default: the branch's upstream, else origin)")
]


def register(app: typer.Typer) -> None:
    """Add this module's commands to *app*, in the order ``gitpack --help`` lists them."""
    app.command("list")(list_)
    app.command("alias")(alias_)
    app.command()(push)
    app.command()(pull)
    app.command()(export)


def list_(
    name: Annotated[Optional[str], typer.Argument(help="only this artifact")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="all fields, as JSON")] = False,
) -> None:
    """List the stored artifacts: names, versions, aliases, dates, snapshot commits and sizes."""
    versions = api.list_artifacts(name)
    if as_json:
        out(json.dumps([v.as_json() for v in versions], indent=2))
        return
    if not versions:
        note("no artifacts here yet (`gitpack save TARGET --name NAME` stores one, `gitpack pull` fetches others')")
        return
    from . import render as show

    for line in show.artifact_table(versions):
        out(line)


def alias_(
    ref: Annotated[str, typer.Argument(help="the version: NAME@v2 (or NAME@ALIAS)")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="alias to point at it, e.g. prod")],
) -> None:
    """Point NAME@ALIAS at a stored version (aliases move; versions never do)."""
    version = api.alias(ref, alias_name)
    out(f"{version.name}@{alias_name} -> {version.label}")


def report_notes(report: SyncReport) -> None:
    """What a push or pull has to say besides its result (what it merged, skipped or uploaded), one line each."""
    for line in report.notes:
        note(line)


def report_incoming(report: SyncReport) -> None:
    """One line per commit the pull brought in: its sha and the paths it changes (code nobody here has seen yet)."""
    if report.incoming or report.incoming_left_out:
        from . import render as show

        for line in show.incoming_lines(report):
            out(line)


def push(remote: Remote = None, quiet: Quiet = False) -> None:
    """Push the snapshot branch and the artifacts (merging others' saves first; never force)."""
    set_quiet(quiet)
    report = api.push(remote)
    report_notes(report)
    report_incoming(report)
    if report.pushed:
        out(f"pushed {len(report.pushed)} ref(s) to {report.remote}")
    else:
        out(f"{report.remote} is up to date")


def pull(remote: Remote = None, quiet: Quiet = False) -> None:
    """Fetch the snapshot branch and the artifacts and merge them into this clone's."""
    set_quiet(quiet)
    report = api.pull(remote)
    report_notes(report)
    report_incoming(report)
    if report.notes or report.incoming:
        out(f"pulled from {report.remote}")
    else:
        out(f"already up to date with {report.remote}")


def export(
    ref: Annotated[str, typer.Argument(help="stored artifact NAME[@VERSION], or an archive file")],
    output: Annotated[str, typer.Option("-o", "--output", help="file to write")],
    portable: Annotated[
        bool, typer.Option("--portable", help="embed the snapshot's source: loads with no repository at all")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Write a stored artifact to a file; --portable embeds its source, verified by git hashes at load."""
    set_quiet(quiet)
    path = api.export(ref, output, portable=portable)
    out(f"wrote {'portable ' if portable else ''}archive {path}")

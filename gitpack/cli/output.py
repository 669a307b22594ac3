"""What every command writes: lines on stdout, one-line notes on stderr, and the ``-q`` switch for progress bars.

Text that comes from an archive or a commit reaches the terminal only through :func:`out` and :func:`note`, which
escape control characters, so a crafted manifest cannot break a line or drive the terminal.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import textsafe


def out(text: str) -> None:
    """One or more lines on stdout; control characters that reached them anyway are shown escaped."""
    sys.stdout.write(textsafe.block(text) + "\n")


def note(text: str) -> None:
    """One line on stderr (a message quoting an archive's or a commit's text cannot break it or drive the terminal)."""
    sys.stderr.write(f"gitpack: {textsafe.line(text)}\n")


# Declared once for every command that shows progress, so that its flags and help cannot drift apart.
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="no progress bar")]


def set_quiet(quiet: bool) -> None:
    """``-q``: no progress bars for the rest of this command (progress imports rich only when it draws one)."""
    from .. import progress

    progress.set_quiet(quiet)

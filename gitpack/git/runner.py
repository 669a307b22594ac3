"""The one place gitpack starts a process: git, with its failures turned into one line that says why.

Every git command gitpack runs goes through :func:`run` (wait for it) or
:func:`start` (a long-lived or streaming one: ``cat-file --batch-command``,
``mktree --batch``, a fetch whose progress drives a bar).  A failure becomes a
:class:`GitFailed` whose message is git's own last ``fatal:``/``error:`` line,
prefixed by the subcommand (never by ``-c``), and carrying git's advice when it
gives some (``safe.directory``).  A ruff rule (``TID251``) keeps ``subprocess``
out of every other module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import GitError, disk_advice

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL


class GitFailed(GitError):
    """A git command exited non-zero; ``str()`` is one line naming the subcommand and git's reason."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: bytes | str, cwd: str | os.PathLike | None = None):
        self.argv = list(args)
        self.returncode = returncode
        self.stderr = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
        self.detail = failure_detail(self.stderr) or f"exit status {returncode}"
        advice = disk_advice(self.stderr)
        if advice is None:
            super().__init__(f"git {subcommand(self.argv)} failed: {self.detail}")
        else:  # a full disk, a read-only .git, no permission: say where, and what to do
            where = f" in {cwd}" if cwd is not None else ""
            super().__init__(f"git {subcommand(self.argv)} could not write{where}: {self.detail}; {advice}")


def subcommand(args: Sequence[str]) -> str:
    """The git subcommand in *args* (``update-ref`` in ``-c core.x=y update-ref ...``)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-c", "-C", "--git-dir", "--work-tree"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return "?"


def failure_detail(stderr: str) -> str:
    """git's reason, in one line: the last ``fatal:``/``error:`` line and what continues it, hints folded in."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(("fatal:", "error:")):
            head = lines[i].split(":", 1)[1].strip()
            rest = [line.removeprefix("hint:").strip() for line in lines[i + 1:]]
            cause = next((line.split(":", 1)[1].strip() for line in lines[:i] if disk_advice(line)), None)
            if cause and not disk_advice(head):
                head = f"{head} ({cause})"  # git's last line says what failed, an earlier one why
            suggestion = "git config --global --add safe.directory"
            if "safe.directory" in stderr and not any(suggestion in part for part in [head, *rest]):
                rest.append(next((line.strip() for line in lines if suggestion in line), ""))
            return " ".join(part for part in [head, *rest] if part)
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "surrogateescape")


def _env(extra: dict[str, str] | None) -> dict[str, str] | None:
    if not extra:
        return None
    env = dict(os.environ)
    env.update(extra)
    return env


def network_env() -> dict[str, str]:
    """The environment of a command that talks to a remote: C messages (gitpack reads git's and git-lfs's
    reasons), and no password prompt when stdin is not a terminal, since nobody could answer it."""
    env = {"LC_ALL": "C", "LANGUAGE": "C"}
    if not sys.stdin or not sys.stdin.isatty():
        env["GIT_TERMINAL_PROMPT"] = "0"
    return env


# A concurrent `git gc` is safe for writers (only `--prune=now` is not), yet it has windows: its prune-packed
# may remove an empty objects/xx/ directory between git creating it and creating a temp file there, and a
# repack may retire the pack an object was just found in before the new pack is seen.  Writing an object
# again is harmless (same content, same id), so a command failing that way is run again after a pause.
GC_RACES = ("unable to create temporary file: No such file or directory", "is unavailable", "is not a valid object",
            "nonexistent object")
GC_RACE_RETRIES = 8


def gc_race(stderr: str | bytes) -> bool:
    """Whether git failed in one of the windows a concurrent ``git gc`` opens (see :data:`GC_RACES`)."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    return any(race in text for race in GC_RACES)


def gc_pause(attempt: int) -> None:
    time.sleep(0.02 * (attempt + 1))


def run(args: Sequence[str], *, cwd: str | os.PathLike, env: dict[str, str] | None = None, input: bytes | None = None,
        stdin: IO | None = None, check: bool = True) -> Result:
    """Run ``git *args`` in *cwd* and wait; raise :class:`GitFailed` when it fails (unless not *check*)."""
    for attempt in range(GC_RACE_RETRIES):
        try:
            proc = subprocess.run(["git", *args], cwd=cwd, env=_env(env), input=input,
                                  stdin=stdin if input is None else None, capture_output=True)
        except FileNotFoundError as exc:
            raise _not_started(cwd, exc) from None
        if proc.returncode == 0 or not gc_race(proc.stderr) or (stdin is not None and not stdin.seekable()):
            break
        gc_pause(attempt)
        if stdin is not None:
            stdin.seek(0)
    if check and proc.returncode != 0:
        raise GitFailed(args, proc.returncode, proc.stderr, cwd)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _not_started(cwd: str | os.PathLike, exc: FileNotFoundError) -> GitError:
    if not Path(cwd).is_dir():
        return GitError(f"{cwd} does not exist (was the directory deleted?); cd into a git working tree")
    return GitError(f"git is not installed or not on PATH ({exc.strerror}); install git")


class Process:
    """A running git command with pipes (see :func:`start`)."""

    def __init__(self, args: Sequence[str], popen: subprocess.Popen, cwd: str | os.PathLike | None = None):
        self.args = list(args)
        self.cwd = cwd
        self.popen = popen
        self.stdin = popen.stdin
        self.stdout = popen.stdout
        self.stderr = popen.stderr

    def finish(self, input: bytes | None = None) -> bytes:
        """Write *input* (if any), close stdin, read the rest of stdout, wait, and raise :class:`GitFailed` if it
        failed; returns stdout."""
        out, err = self.popen.communicate(input)
        if self.popen.returncode != 0:
            raise GitFailed(self.args, self.popen.returncode, err or b"", self.cwd)
        return out or b""

    def close(self) -> None:
        """Close stdin (git then exits on its own) and wait; never raises."""
        try:
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        except OSError:
            pass
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self) -> int:
        return self.popen.wait()

    def exits_within(self, seconds: float) -> bool:
        """Wait at most *seconds* for git to exit; whether it did (for commands that must not hold a caller)."""
        try:
            self.popen.wait(timeout=max(0.0, seconds))
        except subprocess.TimeoutExpired:
            return False
        return True


def start(args: Sequence[str], *, cwd: str | os.PathLike, env: dict[str, str] | None = None, stdin: bool = False,
          stderr: bool = True) -> Process:
    """Start ``git *args`` with stdout (and stdin, stderr) piped, without waiting."""
    try:
        popen = subprocess.Popen(["git", *args], cwd=cwd, env=_env(env), stdin=PIPE if stdin else DEVNULL,
                                 stdout=PIPE, stderr=PIPE if stderr else DEVNULL)
    except FileNotFoundError as exc:
        raise _not_started(cwd, exc) from None
    return Process(args, popen, cwd)

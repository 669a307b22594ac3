"""Reading and writing git objects: one long-lived ``cat-file --batch-command`` per repository, one ``mktree``.

Materialising a snapshot reads hundreds of small blobs and trees, and a save
asks for HEAD's commit and tree while ``git status`` runs.  Starting a process
per object would dominate both, so every read goes through one
``git cat-file --batch-command --buffer`` that takes many requests per round
trip (``info`` for a type and size, ``contents`` for the bytes), and every tree
a snapshot writes goes through one ``git mktree --batch``.  Also here: parsing
raw tree and commit objects, and git's object id of given bytes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import GitError
from . import runner


@dataclass(frozen=True)
class TreeEntry:
    mode: str
    kind: str  # "blob", "tree" or "commit"
    sha: str
    name: str


class NeedsIndex(Exception):
    """A name git's line-based plumbing would misread: the caller must take another way (an index)."""


class ObjectReader:
    """One ``git cat-file --batch-command --buffer``, taking many requests per round trip.

    Requests go in batches far below a pipe's buffer, so writing never blocks on
    git while git waits for us to read.
    """

    BATCH = 256

    def __init__(self, root: Path):
        self._root = root
        self._proc: runner.Process | None = None
        self._lock = threading.Lock()

    def contents(self, names: list[str], *, with_names: bool = False) -> list:
        """For each name, ``(type, bytes)`` (or ``(sha, type, bytes)`` *with_names*); None when it is missing."""
        return self._ask("contents", names, with_names)

    def info(self, names: list[str]) -> list[tuple[str, str, int] | None]:
        """For each name, ``(sha, type, size)``; None when it is missing."""
        return self._ask("info", names, True)

    def _ask(self, command: str, names: list[str], with_names: bool) -> list:
        for name in names:
            if not name or "\n" in name or "\0" in name:
                raise GitError(f"malformed object name {name[:80]!r}")
        out: list = []
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = runner.start(["cat-file", "--batch-command", "--buffer"], cwd=self._root, stdin=True,
                                          stderr=False)
            stdin, stdout = self._proc.stdin, self._proc.stdout
            assert stdin is not None and stdout is not None
            try:
                for start in range(0, len(names), self.BATCH):
                    batch = names[start:start + self.BATCH]
                    stdin.write(b"".join(f"{command} ".encode() + n.encode("utf-8", "surrogateescape") + b"\n"
                                         for n in batch) + b"flush\n")
                    stdin.flush()
                    for _ in batch:
                        header = stdout.readline().split()
                        if len(header) != 3:
                            if not header:
                                raise GitError("git cat-file stopped answering")
                            out.append(None)  # "<name> missing" or "<name> ambiguous"
                            continue
                        sha, kind, size = header[0].decode(), header[1].decode(), int(header[2])
                        if command == "info":
                            out.append((sha, kind, size))
                            continue
                        data = stdout.read(size)
                        stdout.read(1)
                        out.append((sha, kind, data) if with_names else (kind, data))
            except (OSError, ValueError):
                self._close_locked()
                raise GitError("git cat-file stopped answering") from None
        return out

    def _close_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.close()

    def close(self) -> None:
        with self._lock:
            self._close_locked()


class TreeWriter:
    """One ``git mktree --batch`` for every tree of a snapshot, written bottom-up."""

    def __init__(self, root: Path):
        self._proc = runner.start(["mktree", "--batch"], cwd=root, stdin=True)

    def write(self, entries: dict[str, tuple[str, str, str]]) -> str:
        """A tree of ``{name: (mode, kind, sha)}``; its sha."""
        lines = []
        for name, (mode, kind, sha) in entries.items():
            if "\n" in name or name.startswith('"'):
                raise NeedsIndex("a name mktree would misread")
            lines.append(f"{mode} {kind} {sha}\t".encode() + os.fsencode(name) + b"\n")
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(b"".join(lines) + b"\n")
        stdin.flush()
        sha = stdout.readline().strip().decode()
        if not sha:
            stderr = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
            raise runner.GitFailed(["mktree"], self._proc.wait(), stderr or "fatal: no tree written")
        return sha

    def close(self) -> None:
        self._proc.close()


def parse_tree(data: bytes) -> list[TreeEntry]:
    """Parse a raw git tree object: ``<mode> <name>\\0<20-byte sha>`` repeated."""
    entries = []
    i = 0
    n = len(data)
    while i < n:
        sp = data.index(b" ", i)
        nul = data.index(b"\0", sp)
        mode = data[i:sp].decode()
        name = os.fsdecode(data[sp + 1:nul])
        sha = data[nul + 1:nul + 21].hex()
        kind = "tree" if mode == "40000" else "commit" if mode == "160000" else "blob"
        entries.append(TreeEntry(mode, kind, sha, name))
        i = nul + 21
    return entries


def parse_commit_object(raw: bytes) -> tuple[dict[str, list[str]], str]:
    """Headers (tree, parent, gpgsig, ...) and message of a raw commit object."""
    text = raw.decode("utf-8", "replace")
    head, _, message = text.partition("\n\n")
    headers: dict[str, list[str]] = {}
    key = None
    for line in head.splitlines():
        if line.startswith(" ") and key:
            headers[key][-1] += "\n" + line[1:]
            continue
        key, _, value = line.partition(" ")
        headers.setdefault(key, []).append(value)
    return headers, message


def git_object_id(kind: str, data: bytes) -> str:
    """The id git gives an object of *kind* with content *data* (SHA-1 repositories)."""
    h = hashlib.sha1()
    h.update(b"%s %d\0" % (kind.encode(), len(data)))
    h.update(data)
    return h.hexdigest()

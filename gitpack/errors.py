"""gitpack's exception hierarchy.

Every error raised on purpose is a :class:`GitpackError` whose message says what
is wrong *and* what to do about it, in one line, so that the CLI can print it
as-is without a traceback.
"""

from __future__ import annotations


class GitpackError(Exception):
    """Base class of every error gitpack raises on purpose."""


class GitpackWarning(UserWarning):
    """Something a save or load did that its caller should know, though nothing failed (code that is not
    pinned, what the default load policy would refuse, files left out of the snapshot); the CLI prints the
    same text as a ``warning:`` line."""


class NotARepoError(GitpackError):
    """The current directory is not inside a git working tree."""


class CwdGoneError(GitpackError):
    """The current directory was deleted: there is nowhere to look for a repository or a file."""


class RepoRefusedError(GitpackError):
    """git refuses to work in the repository (another user owns it: ``safe.directory``), so gitpack cannot either."""


class GitError(GitpackError):
    """A git command failed in a way the user must act on."""


class MissingCommitError(GitpackError):
    """The archive's snapshot commit is not in this repository."""


class ArchiveError(GitpackError):
    """The archive is missing, truncated, corrupt or tampered with."""


class PicklingError(GitpackError):
    """The object cannot be pickled."""


class UnpicklingError(GitpackError):
    """The pickle could not be turned back into an object."""


class PolicyError(UnpicklingError):
    """The pickle asks for a global or code that the load policy refuses."""


class TargetError(GitpackError):
    """A CLI TARGET (``module:attr`` or ``file.py:attr``) cannot be resolved."""


class StaleCodeError(GitpackError):
    """Code in memory differs from the source being snapshotted."""


class SignatureError(GitpackError):
    """A snapshot commit's signature is missing or not trusted."""


class StoreError(GitpackError):
    """A named artifact or version is unknown, or the store cannot be updated."""


class BranchNotOursError(GitpackError):
    """The snapshot branch is someone else's, or checked out in a worktree: gitpack will not move it."""


class DamagedRefError(GitpackError):
    """A snapshot or artifact ref points at a missing or broken object (`gitpack repair` mends it)."""


class DiskError(GitpackError):
    """A file could not be written or read: no space, a read-only filesystem, no permission."""


_DISK_ADVICE = (
    (("No space left on device", "Disk quota exceeded"), "free some space there and try again"),
    (("Read-only file system",), "make that filesystem writable or use another location"),
    (("Permission denied", "insufficient permission", "Operation not permitted"),
     "you lack permission to write there; fix its owner or permissions"),
    (("File too large",), "a file size limit (ulimit -f) or the filesystem refused a file that large; "
                          "raise the limit or use another location"),
)


def disk_advice(text: str) -> str | None:
    """What to do about the disk problem *text* (an OS error or git's message) describes, or None if it is none."""
    for needles, advice in _DISK_ADVICE:
        if any(needle in text for needle in needles):
            return advice
    return None


class FilterError(GitpackError):
    """A snapshot file behind a clean/smudge filter whose real content cannot be produced here."""

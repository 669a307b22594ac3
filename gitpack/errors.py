"""gitpack's exception hierarchy.

Every error raised on purpose is a :class:`GitpackError` whose message says what
is wrong *and* what to do about it, in one line, so that the CLI can print it
as-is without a traceback.
"""

from __future__ import annotations


class GitpackError(Exception):
    """Base class of every error gitpack raises on purpose."""


class NotARepoError(GitpackError):
    """The current directory is not inside a git working tree."""


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


class GitpackWarning(UserWarning):
    """Something a save or load did that the caller should know about, though nothing failed: what the default
    load policy would refuse in an archive just saved, files left out of its snapshot."""


class StoreError(GitpackError):
    """A named artifact or version is unknown, or the store cannot be updated."""

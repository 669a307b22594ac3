"""Git, the only process gitpack starts: one runner, one object reader per repository, one ``Repo``."""

from .objects import TreeEntry, git_object_id, parse_commit_object, parse_tree
from .repo import DEFAULT_BRANCH, START_MESSAGE, ZERO_SHA, RefUpdateFailed, Repo, branch_ref, plain_branch
from .runner import GitFailed

__all__ = ["DEFAULT_BRANCH", "START_MESSAGE", "ZERO_SHA", "GitFailed", "RefUpdateFailed", "Repo", "TreeEntry",
           "branch_ref", "git_object_id", "plain_branch", "parse_commit_object", "parse_tree"]

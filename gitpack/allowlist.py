"""The allow entries a user keeps in git config (``gitpack.allow``), merged with those of one call.

``git config --add gitpack.allow transformers`` (in a repository, or ``--global`` for every one) saves
typing the same ``--allow`` on every load.  The repository's own config is the user's, never a clone's
(git does not copy it), so what it admits was chosen here.  Entries have the syntax of ``--allow``
(:func:`gitpack.pickling.policy.parse_allow`); a bad one is an error that names the setting.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import GitpackError
from .git import Repo
from .git.repo import config_all
from .pickling.policy import AllowList, parse_allow

CONFIG_KEY = "gitpack.allow"


def configured(repo: Repo | None) -> list[str]:
    """Every ``gitpack.allow`` value git sees: the repository's, the user's and the system's; without a
    repository, the user's and the system's."""
    return [v for v in config_all(repo, CONFIG_KEY) if v.strip()]


def merged(given: Iterable[str | tuple[str, str]], repo: Repo | None) -> AllowList:
    """The entries of one call plus the configured ones (each set checked, the configured ones naming the key)."""
    mine = parse_allow(given)
    more = parse_allow(configured(repo), where=f"git config {CONFIG_KEY} entry")
    return AllowList(mine.exact | more.exact, mine.packages | more.packages)


def for_path(given: Iterable[str | tuple[str, str]], repo: str | os.PathLike | Repo | None = None) -> AllowList:
    """:func:`merged` for the repository containing *repo* (default: the current directory), if any."""
    try:
        git_repo = Repo.discover(repo)
    except GitpackError:
        return merged(given, None)
    with git_repo:
        return merged(given, git_repo)

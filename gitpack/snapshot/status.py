"""Reading ``git status --porcelain=v2 --branch -z``: which paths differ, and where HEAD is.

Both ways of building a snapshot start here: the overlay (:mod:`.overlay`)
and the index copy (:mod:`.index`).  Status runs with ``GIT_OPTIONAL_LOCKS=0``
so that it never even refreshes the user's index.
"""

from __future__ import annotations

STATUS_ARGS = ("status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all", "--no-renames",
               "--ignore-submodules=none")
READ_ONLY = {"GIT_OPTIONAL_LOCKS": "0"}  # status must not even refresh the user's index


def staged_only(out: str) -> set[str]:
    """Paths whose worktree matches the index: nothing to add (``git rm``'d ones would even fail)."""
    settled, untracked = set(), set()
    for record in out.split("\0"):
        if record.startswith("1 ") and record[3] == ".":
            settled.add(record.split(" ", 8)[8])
        elif record.startswith("? "):
            untracked.add(record[2:])  # `git rm --cached` leaves a path both deleted and untracked
    return settled - untracked


def untracked_paths(out: str) -> set[str]:
    """Paths ``git status`` reports untracked (not ignored): what the snapshot's budget bounds."""
    return {record[2:] for record in out.split("\0") if record.startswith("? ") and not record.endswith("/")}


def branch_headers(out: str) -> tuple[str | None, str | None]:
    """HEAD's commit (None when unborn) and branch ref (None when detached) from porcelain v2 ``--branch`` headers."""
    head = head_branch = None
    for record in out.split("\0"):
        if not record.startswith("# "):
            if record:
                break  # headers come first
            continue
        key, _, value = record[2:].partition(" ")
        if key == "branch.oid" and value != "(initial)":
            head = value
        elif key == "branch.head" and value != "(detached)":
            head_branch = "refs/heads/" + value
    return head, head_branch


def changed_paths(out: str) -> tuple[list[str], list[str], str | None, str | None]:
    """From ``git status --porcelain=v2 --branch -z``: the paths that differ from HEAD or the index
    (modified, staged, deleted, unmerged, untracked), warnings about nested repositories, HEAD's
    commit (None when unborn) and HEAD's branch as a full ref (None when detached)."""
    changed: list[str] = []
    warnings: list[str] = []
    head, head_branch = branch_headers(out)
    for record in out.split("\0"):
        kind = record[:2]
        if kind == "1 ":
            fields = record.split(" ", 8)
            changed.append(fields[8])
            sub = fields[2]  # "N..." for a file, "S<c><m><u>" for a submodule
            if sub.startswith("S") and (sub[2] == "M" or sub[3] == "U"):
                what = " and ".join(w for w, on in (("modified", sub[2] == "M"), ("untracked", sub[3] == "U")) if on)
                warnings.append(
                    f"submodule {fields[8]} has {what} files that cannot be captured (the snapshot records only its "
                    "commit); commit them in the submodule and save again"
                )
        elif kind == "u ":
            changed.append(record.split(" ", 10)[10])
        elif kind == "2 ":  # not produced with --no-renames; the path comes first, then the old one
            changed.append(record.split(" ", 9)[9])
        elif kind == "? ":
            path = record[2:]
            if path.endswith("/"):
                # An untracked nested repository: git cannot snapshot into it.
                warnings.append(f"{path} is a nested git repository and is not captured")
                continue
            changed.append(path)
    return changed, warnings, head, head_branch

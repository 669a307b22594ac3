"""Signed snapshots: the user's own git signing setup vouches for a save.

The snapshot commit's message carries the archive's payload and manifest
digests, so a signature on that commit covers every byte the loader uses:
the code (the tree), the pickle, the tensors and the manifest.  Signing is
git's: ``user.signingkey`` with ``gpg.format`` openpgp, x509 or ssh.  Saves
are signed with ``--sign`` or when ``commit.gpgsign`` (or ``gitpack.sign``)
is on; ``git commit-tree`` ignores ``commit.gpgsign``, so gitpack reads it
and passes ``-S`` itself.

Verification is git's too (``%G?``): for ssh keys only keys listed in
``gpg.ssh.allowedSignersFile`` give a good signature ("G"); a key outside it
gives "U" and is refused when a signature is required (``--require-signed``
or ``gitpack.requireSigned``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import GitError, SignatureError
from .git import parse_commit_object

SIGN_CONFIG = "gitpack.sign"
REQUIRE_CONFIG = "gitpack.requireSigned"

_CODES = {
    "G": "good signature",
    "U": "good signature from a key that is not trusted (for ssh: not in gpg.ssh.allowedSignersFile)",
    "X": "good signature that has expired",
    "Y": "good signature from an expired key",
    "R": "good signature from a revoked key",
    "B": "bad signature: the commit was changed after it was signed",
    "E": "signature that cannot be checked (the signer's key is missing)",
    "N": "no signature",
}


@dataclass(frozen=True)
class Signature:
    """A snapshot commit's signature as git sees it."""

    commit: str
    code: str  # git's %G?: G, U, X, Y, R, B, E or N
    signed: bool  # the commit object carries a signature at all
    signer: str | None = None  # %GS: the principal / user id
    key: str | None = None  # %GF: the key's fingerprint
    detail: str | None = None  # why git could not check it, when it could not

    @property
    def trusted(self) -> bool:
        return self.code == "G"

    @property
    def status(self) -> str:
        if self.signed and self.code == "N":
            return "signature that git cannot check" + (f" ({self.detail})" if self.detail else "")
        return _CODES.get(self.code, f"unknown signature status {self.code!r}")

    def describe(self) -> str:
        """One line for people: the status, then who signed and with which key."""
        parts = (f"signer {self.signer}" if self.signer else "", f"key {self.key}" if self.key else "")
        who = ", ".join(x for x in parts if x)
        return f"{self.status}{f' ({who})' if who else ''}"

    def as_json(self) -> dict:
        return {"commit": self.commit, "code": self.code, "signed": self.signed, "trusted": self.trusted,
                "status": self.status, "signer": self.signer, "key": self.key}


def config_bool(repo, key: str) -> bool | None:
    """A boolean git setting as git reads it, None when unset (or not a boolean).

    Read from the repository's cached configuration, so a save or load asks git once however many
    settings it consults.
    """
    value = repo.config(key)
    if value is None:
        return None
    text = value.strip().lower()
    if text in ("true", "yes", "on"):
        return True
    if text in ("false", "no", "off", ""):
        return False
    try:
        return int(text) != 0
    except ValueError:
        return None


def wants_signing(repo, sign: bool = False) -> bool:
    """Sign this save: asked for, or git's ``commit.gpgsign`` / ``gitpack.sign`` is on."""
    return bool(sign or config_bool(repo, "commit.gpgsign") or config_bool(repo, SIGN_CONFIG))


def requires_signature(repo, require: bool | None = None) -> bool:
    """Refuse unsigned or untrusted snapshots: asked for, or ``gitpack.requireSigned`` is on."""
    if require is not None and require:
        return True
    return bool(config_bool(repo, REQUIRE_CONFIG))


def signature(repo, commit: str) -> Signature:
    """What git says about *commit*'s signature (runs gpg or ssh-keygen through git, never anything else)."""
    _, raw = repo.read_object(commit)
    headers, _ = parse_commit_object(raw)
    signed = "gpgsig" in headers or "gpgsig-sha256" in headers
    if not signed:
        return Signature(commit, "N", False)
    out = repo.git("log", "-1", "--no-show-signature", "--format=%G?%x1f%GS%x1f%GF%x1f%GK", commit)
    code, signer, fingerprint, key = (out.split("\x1f") + ["", "", "", ""])[:4]
    detail = None
    if code == "N":
        try:
            repo.git("verify-commit", commit)
        except GitError as exc:
            detail = str(exc).removeprefix("git verify-commit failed: ").removeprefix("error: ")
    return Signature(commit, code or "N", True, signer or None, fingerprint or key or None, detail)


def check(repo, commit: str, *, require: bool | None = None) -> Signature | None:
    """Enforce the signing policy for loading *commit*; return its signature when it was checked."""
    if not requires_signature(repo, require):
        return None
    sig = signature(repo, commit)
    if sig.trusted:
        return sig
    short = commit[:12]
    if not sig.signed:
        raise SignatureError(
            f"snapshot commit {short} is not signed and signed snapshots are required (--require-signed / "
            f"{REQUIRE_CONFIG}); ask its author to save with --sign, or load without requiring a signature"
        )
    if sig.code == "N":
        raise SignatureError(
            f"snapshot commit {short} is signed but git cannot check the signature "
            f"({sig.detail or 'no verifier configured'}); "
            "configure gpg.ssh.allowedSignersFile (ssh) or import the signer's key (gpg)"
        )
    if sig.code == "U":
        raise SignatureError(
            f"snapshot commit {short} is signed by key {sig.key or '?'}, which is not trusted (for ssh keys: not in "
            "gpg.ssh.allowedSignersFile); add the signer's key there if you trust it"
        )
    raise SignatureError(f"snapshot commit {short} has a {sig.status}; refusing to load it")


def explain_signing_failure(exc: GitError) -> SignatureError:
    """A failed ``commit-tree -S`` as an error that says how to fix the signing setup."""
    detail = str(exc).removeprefix("git commit-tree failed: ")
    return SignatureError(
        f"could not sign the snapshot commit ({detail}); check user.signingkey and gpg.format "
        f"(or turn off commit.gpgsign / {SIGN_CONFIG} for gitpack saves)"
    )

"""Signed snapshots with the user's own git signing setup (ssh keys made here with ssh-keygen).

The snapshot commit's message vouches for the archive's payload and manifest
digests, so a trusted signature on the commit vouches for the whole archive.
"""

from __future__ import annotations

import shutil
import subprocess
import types
from pathlib import Path

import pytest
from conftest import git, gitpack_cli, init_repo

import gitpack
from gitpack.errors import SignatureError

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is needed to make signing keys")


def _keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)
    return path


@pytest.fixture
def signed_repo(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    trusted = _keygen(keys / "trusted", "test@example.com")
    stranger = _keygen(keys / "stranger", "stranger@example.com")
    allowed = keys / "allowed_signers"
    allowed.write_text(f"test@example.com {(keys / 'trusted.pub').read_text()}")
    repo = init_repo(tmp_path / "repo")
    git(repo, "config", "gpg.format", "ssh")
    git(repo, "config", "user.signingkey", str(trusted))
    git(repo, "config", "gpg.ssh.allowedSignersFile", str(allowed))
    (repo / "weights.py").write_text("DATA = {'w': [1, 2, 3]}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "weights")
    return types.SimpleNamespace(repo=repo, trusted=trusted, stranger=stranger, allowed=allowed, out=tmp_path)


def test_ssh_signed_save_verifies_and_loads_under_require_signed(signed_repo):
    s = signed_repo
    info = gitpack.save({"w": [1, 2, 3]}, s.out / "signed.gitpack", sign=True, repo=s.repo)
    assert subprocess.run(["git", "verify-commit", info.commit], cwd=s.repo, capture_output=True).returncode == 0

    report = gitpack.verify(s.out / "signed.gitpack", repo=s.repo, require_signed=True)
    assert report.signature.trusted and report.signature.code == "G"
    assert report.signature.signer == "test@example.com"
    assert gitpack.load(s.out / "signed.gitpack", repo=s.repo, require_signed=True) == {"w": [1, 2, 3]}

    proc = gitpack_cli(s.repo, "verify", str(s.out / "signed.gitpack"), "--require-signed")
    assert proc.returncode == 0, proc.stderr
    assert "signature  good signature (signer test@example.com, key SHA256:" in proc.stdout
    proc = gitpack_cli(s.repo, "load", str(s.out / "signed.gitpack"), "--require-signed")
    assert proc.returncode == 0, proc.stderr


def test_unsigned_save_is_refused_under_require_signed(signed_repo):
    s = signed_repo
    gitpack.save({"w": 1}, s.out / "unsigned.gitpack", repo=s.repo)
    assert gitpack.load(s.out / "unsigned.gitpack", repo=s.repo) == {"w": 1}  # no signature needed by default
    with pytest.raises(SignatureError, match="is not signed and signed snapshots are required"):
        gitpack.load(s.out / "unsigned.gitpack", repo=s.repo, require_signed=True)

    proc = gitpack_cli(s.repo, "load", str(s.out / "unsigned.gitpack"), "--require-signed")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "is not signed" in proc.stderr, proc.stderr
    proc = gitpack_cli(s.repo, "verify", str(s.out / "unsigned.gitpack"))
    assert proc.returncode == 0 and "signature  no signature" in proc.stdout
    assert gitpack_cli(s.repo, "verify", str(s.out / "unsigned.gitpack"), "--require-signed").returncode == 1

    # The setting does what the flag does.
    git(s.repo, "config", "gitpack.requireSigned", "true")
    with pytest.raises(SignatureError, match="is not signed"):
        gitpack.load(s.out / "unsigned.gitpack", repo=s.repo)
    proc = gitpack_cli(s.repo, "load", str(s.out / "unsigned.gitpack"))
    assert proc.returncode == 1 and "gitpack.requireSigned" in proc.stderr


def test_a_key_outside_allowed_signers_is_refused(signed_repo):
    s = signed_repo
    git(s.repo, "config", "user.signingkey", str(s.stranger))
    info = gitpack.save({"w": 2}, s.out / "stranger.gitpack", sign=True, repo=s.repo)
    report = gitpack.verify(s.out / "stranger.gitpack", repo=s.repo)
    assert report.signature.signed and report.signature.code == "U" and not report.signature.trusted
    with pytest.raises(SignatureError, match="not trusted .*allowedSignersFile"):
        gitpack.load(s.out / "stranger.gitpack", repo=s.repo, require_signed=True)
    proc = gitpack_cli(s.repo, "load", str(s.out / "stranger.gitpack"), "--require-signed")
    assert proc.returncode == 1 and "not trusted" in proc.stderr and proc.stderr.count("\n") == 1
    assert info.commit in git(s.repo, "rev-list", "refs/heads/gitpack")


def test_commit_gpgsign_and_cli_sign_both_sign(signed_repo):
    s = signed_repo
    git(s.repo, "config", "commit.gpgsign", "true")  # git commit-tree ignores this; gitpack must not
    gitpack.save({"w": 3}, s.out / "config.gitpack", repo=s.repo)
    assert gitpack.verify(s.out / "config.gitpack", repo=s.repo).signature.trusted
    git(s.repo, "config", "commit.gpgsign", "false")

    proc = gitpack_cli(s.repo, "save", "weights:DATA", "-o", str(s.out / "cli.gitpack"), "--sign", "-q")
    assert proc.returncode == 0, proc.stderr
    assert gitpack.verify(s.out / "cli.gitpack", repo=s.repo, require_signed=True).signature.code == "G"


def test_a_signature_git_cannot_check_is_refused_with_the_reason(signed_repo):
    s = signed_repo
    gitpack.save({"w": 4}, s.out / "signed.gitpack", sign=True, repo=s.repo)
    git(s.repo, "config", "--unset", "gpg.ssh.allowedSignersFile")
    with pytest.raises(SignatureError, match="signed but git cannot check the signature .*allowedSignersFile"):
        gitpack.load(s.out / "signed.gitpack", repo=s.repo, require_signed=True)


def test_a_broken_signing_setup_fails_the_save_cleanly(signed_repo):
    s = signed_repo
    gitpack.save({"w": 5}, s.out / "model.gitpack", repo=s.repo)
    old = (s.out / "model.gitpack").read_bytes()
    tip = git(s.repo, "rev-parse", "refs/heads/gitpack")
    git(s.repo, "config", "user.signingkey", str(s.out / "no-such-key"))
    with pytest.raises(SignatureError, match="could not sign the snapshot commit .*user.signingkey"):
        gitpack.save({"w": 6}, s.out / "model.gitpack", sign=True, repo=s.repo)
    assert (s.out / "model.gitpack").read_bytes() == old
    assert git(s.repo, "rev-parse", "refs/heads/gitpack") == tip
    assert not [p for p in s.out.iterdir() if ".gitpack-tmp-" in p.name]


def test_a_portable_archive_is_checked_where_its_commit_is_known(signed_repo, tmp_path):
    s = signed_repo
    gitpack.save({"w": 7}, s.out / "signed.gitpack", sign=True, repo=s.repo)
    gitpack.api.export(s.out / "signed.gitpack", s.out / "portable.gitpack", portable=True, repo=s.repo)

    report = gitpack.verify(s.out / "portable.gitpack", repo=s.repo, require_signed=True)
    assert report.portable and report.manifest_vouched and report.signature.code == "G"
    assert gitpack.load(s.out / "portable.gitpack", repo=s.repo, require_signed=True) == {"w": 7}

    # Outside any repository the embedded source still verifies, but a signature cannot be checked.
    elsewhere = tmp_path / "no-repo"
    elsewhere.mkdir()
    proc = gitpack_cli(elsewhere, "verify", str(s.out / "portable.gitpack"))
    assert proc.returncode == 0 and "signature  not checked (no repository)" in proc.stdout, proc.stderr
    proc = gitpack_cli(elsewhere, "load", str(s.out / "portable.gitpack"), "--require-signed")
    assert proc.returncode == 1 and "outside any repository" in proc.stderr and proc.stderr.count("\n") == 1

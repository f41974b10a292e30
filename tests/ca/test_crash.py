"""Acceptance 4: a crash at any point of an operation leaves all or nothing.

Each test kills a real ``python -m certgate.ca`` process with ``os._exit``
at a named point (``CERTGATE_TEST_FAULT``), so no cleanup code runs, then
checks what is on disk and that the next operation finds it consistent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgate.ca import CertificateAuthority

from .conftest import Result


def crash(proc: Callable[..., Result], point: str, *args: str | Path) -> None:
    result = proc(*args, env={"CERTGATE_TEST_FAULT": point})
    assert result.code == 1, (result.out, result.err)
    assert "issued" not in result.out  # died before reporting success


def names(proc: Callable[..., Result]) -> dict[str, str]:
    listing = proc("list", "--json")
    assert listing.code == 0, listing.err
    return {row["name"]: row["status"] for row in json.loads(listing.out)}


def leftovers(*dirs: Path) -> list[Path]:
    return [p for d in dirs for p in d.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("point", ["issue-after-key", "issue-after-stage"])
def test_crash_before_commit_leaves_nothing(
    ca: CertificateAuthority, proc: Callable[..., Result], out_dir: Path, point: str
) -> None:
    crash(proc, point, "issue", "alice", "--role", "admin", "--p12", "--out", out_dir)
    assert not any(out_dir.glob("alice.*"))
    if point == "issue-after-stage":  # staged, not published: hidden names only
        assert len(leftovers(out_dir)) == 4
    assert names(proc) == {}  # the next operation recovers...
    assert leftovers(out_dir, ca.layout.staging_dir) == []  # ...and removes staged files
    assert list(ca.layout.staging_dir.iterdir()) == []
    again = proc("issue", "alice", "--out", out_dir)
    assert again.code == 0, again.err
    assert names(proc) == {"alice": "valid"}
    assert proc("audit", "verify").out.strip() == "OK, 2 entries"


def test_crash_after_commit_rolls_forward(
    ca: CertificateAuthority, proc: Callable[..., Result], out_dir: Path
) -> None:
    crash(proc, "issue-after-commit", "issue", "bob", "--out", out_dir)
    assert names(proc) == {"bob": "valid"}
    assert leftovers(out_dir) == []
    cert = x509.load_pem_x509_certificate((out_dir / "bob.crt").read_bytes())
    key = serialization.load_pem_private_key((out_dir / "bob.key").read_bytes(), None)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, pub) == (
        key.public_key().public_bytes(serialization.Encoding.DER, pub)
    )
    # The audit entry queued with the commit is flushed exactly once.
    assert proc("audit", "verify").out.strip() == "OK, 2 entries"
    assert proc("issue", "bob", "--out", out_dir).code == 1  # it really exists


def test_crash_after_revoke_commit_still_publishes_crl(
    ca: CertificateAuthority, proc: Callable[..., Result]
) -> None:
    issued = ca.issue_client("carol")
    crash(proc, "revoke-after-commit", "revoke", "carol", "--reason", "keyCompromise")
    assert names(proc) == {"carol": "revoked"}
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None


def test_crash_during_rotate_keeps_old_intermediate(
    ca: CertificateAuthority, proc: Callable[..., Result]
) -> None:
    before = ca.issuing_cert_path.read_bytes()
    keys_before = sorted(ca.layout.keys_dir.iterdir())
    crash(proc, "rotate-after-stage", "rotate")
    assert proc("list").code == 0
    assert ca.issuing_cert_path.read_bytes() == before
    assert sorted(ca.layout.keys_dir.iterdir()) == keys_before
    assert proc("rotate").code == 0
    assert ca.issuing_cert_path.read_bytes() != before


def test_crash_between_audit_append_and_record_does_not_duplicate(
    ca: CertificateAuthority, proc: Callable[..., Result], out_dir: Path
) -> None:
    crash(proc, "audit-after-append", "issue", "dan", "--out", out_dir)
    assert (out_dir / "dan.crt").is_file()  # files were published before the audit flush
    assert proc("audit", "verify").out.strip() == "OK, 2 entries"
    assert proc("issue", "eve", "--out", out_dir).code == 0
    assert proc("audit", "verify").out.strip() == "OK, 3 entries"


def test_crash_during_init_allows_a_fresh_init(
    state: Path, proc: Callable[..., Result]
) -> None:
    crash(proc, "init-after-stage", "init")
    assert not CertificateAuthority.exists(state)
    result = proc("init")
    assert result.code == 0, result.err
    assert len(list((state / "ca" / "keys").iterdir())) == 2
    assert [p for p in (state / "ca" / "keys").iterdir() if p.name.startswith(".")] == []


def test_concurrent_operations_are_serialised(
    ca: CertificateAuthority, state: Path, out_dir: Path
) -> None:
    """Four processes issuing at once: the flock orders them, the log stays a chain."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "certgate.ca", "issue", f"p{i}", "--out", str(out_dir),
             "--state", str(state)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    for child in procs:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    assert ca.verify_audit() == 5
    assert {rec.name for rec in ca.certificates().records} == {"p0", "p1", "p2", "p3"}

"""Acceptance 3: revocation and the CRL, checked by openssl."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from certgate.ca import CertificateAuthority
from certgate.ca.crl import load_crls

from .conftest import Result, openssl


def crl_number(path: Path) -> int:
    crl = x509.load_pem_x509_crl(path.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_revoke_writes_signed_crl_with_reason(
    ca: CertificateAuthority, cli: Callable[..., Result], out_dir: Path
) -> None:
    issued = ca.issue_client("mallory")
    before = crl_number(ca.crl_path)
    result = cli("revoke", "mallory", "--reason", "keyCompromise")
    assert result.code == 0, result.err
    proc = openssl("crl", "-in", ca.crl_path, "-CAfile", ca.issuing_cert_path, "-noout", "-text")
    assert "verify OK" in proc.stderr
    (out_dir / "m.crt").write_bytes(issued.cert_pem)
    # openssl's spelling of the serial (even number of hex digits).
    serial_hex = openssl("x509", "-noout", "-serial", "-in", out_dir / "m.crt").stdout
    serial_hex = serial_hex.strip().removeprefix("serial=")
    assert f"Serial Number: {serial_hex}" in proc.stdout
    entry = proc.stdout.split(f"Serial Number: {serial_hex}")[1]
    assert "Key Compromise" in entry.split("Serial Number:")[0]
    assert crl_number(ca.crl_path) > before
    match = re.search(r"X509v3 CRL Number: \n\s*(\d+)", proc.stdout)
    assert match
    assert int(match.group(1)) == crl_number(ca.crl_path)
    # A relying party now rejects the certificate.
    rejected = openssl(
        "verify", "-crl_check", "-CAfile", ca.trust_bundle_path, "-CRLfile", ca.crl_path,
        out_dir / "m.crt", check=False,
    )
    assert rejected.returncode != 0
    assert "revoked" in rejected.stdout + rejected.stderr
    assert ca.roles_for_serial(issued.serial) == ()
    status = {row["name"]: row for row in cli("list", "--json").json()}["mallory"]
    assert status["serial"] == serial_hex.lower()  # ca list matches openssl
    assert status["status"] == "revoked"
    assert status["revocation_reason"] == "keyCompromise"


def test_revoking_twice_is_an_error(
    ca: CertificateAuthority, cli: Callable[..., Result]
) -> None:
    issued = ca.issue_client("twice")
    assert cli("revoke", f"{issued.serial:x}", "--reason", "superseded").code == 0
    again = cli("revoke", f"{issued.serial:x}")
    assert again.code == 1
    assert "already revoked" in again.err
    assert cli("revoke", "twice").code == 1
    assert cli("revoke", "nobody").code == 1


def test_crl_command_resigns_and_increments(
    ca: CertificateAuthority, cli: Callable[..., Result]
) -> None:
    first = crl_number(ca.crl_path)
    assert cli("crl").code == 0
    assert crl_number(ca.crl_path) == first + 1
    assert cli("crl", "--next-update", "2d").code == 0
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=2)
    # The period is remembered for later CRLs.
    ca.issue_client("x")
    assert cli("revoke", "x").code == 0
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=2)


def test_default_next_update_is_seven_days(ca: CertificateAuthority) -> None:
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=7)


def test_old_intermediate_keeps_a_crl_after_rotation(
    ca: CertificateAuthority, cli: Callable[..., Result], out_dir: Path
) -> None:
    old = ca.issue_client("before")
    old_issuer = ca.issuing_cert_path.read_bytes()
    assert cli("rotate").code == 0
    assert cli("revoke", "before", "--reason", "cessationOfOperation").code == 0
    crls = load_crls(ca.crl_path.read_bytes())
    assert len(crls) == 2
    new_issuer = x509.load_pem_x509_certificate(ca.issuing_cert_path.read_bytes())
    assert crls[0].issuer == new_issuer.subject  # current issuer first
    old_cert = x509.load_pem_x509_certificate(old_issuer)
    assert crls[1].issuer == old_cert.subject
    assert crls[1].get_revoked_certificate_by_serial_number(old.serial) is not None
    assert crls[1].is_signature_valid(old_cert.public_key())

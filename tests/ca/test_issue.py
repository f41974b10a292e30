"""Acceptance 1: client certificates as openssl sees them, plus the profile."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certgate.ca import CertificateAuthority, Delivery
from certgate.ca.keys import parse_serial, serial_hex
from certgate.errors import UsageError

from .conftest import Result, openssl


def test_openssl_verifies_client_chain_and_profile(
    ca: CertificateAuthority, cli: Callable[..., Result], out_dir: Path
) -> None:
    result = cli("issue", "alice", "--role", "admin", "--out", out_dir)
    assert result.code == 0, result.err
    crt = out_dir / "alice.crt"
    verified = openssl(
        "verify", "-CAfile", ca.root_cert_path, "-untrusted", ca.issuing_cert_path, crt
    )
    assert verified.stdout.strip() == f"{crt}: OK"
    # The chain file alone (leaf + intermediate) also builds to the root.
    openssl("verify", "-CAfile", ca.root_cert_path, "-untrusted", out_dir / "alice.chain.pem", crt)
    text = openssl("x509", "-in", crt, "-noout", "-text").stdout
    assert "TLS Web Client Authentication" in text
    assert "TLS Web Server Authentication" not in text
    assert "CA:FALSE" in text
    eku_line = text.split("X509v3 Extended Key Usage:")[1].splitlines()[1].strip()
    assert eku_line == "TLS Web Client Authentication"
    assert "X509v3 Key Usage: critical" in text
    assert text.split("X509v3 Key Usage: critical")[1].splitlines()[1].strip() == (
        "Digital Signature"
    )
    assert "Subject Key Identifier" in text
    assert "Authority Key Identifier" in text
    # Key file private, chain file holds leaf + intermediate.
    assert stat.S_IMODE((out_dir / "alice.key").stat().st_mode) == 0o600
    chain = x509.load_pem_x509_certificates((out_dir / "alice.chain.pem").read_bytes())
    assert [c.subject.rfc4514_string() for c in chain] == [
        "CN=alice",
        "CN=Test CA Issuing I1,O=Test CA",
    ]


def test_profile_details(ca: CertificateAuthority) -> None:
    issued = ca.issue_client(
        "bob", roles=["ops"], hours=12, email="bob@example.com", uri="urn:x:bob", dns="bob.lan"
    )
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.serial_number == issued.serial
    assert 1 << 120 <= issued.serial < 1 << 128
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert not basic.value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["bob@example.com"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:x:bob"]
    assert san.get_values_for_type(x509.DNSName) == ["bob.lan"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 12 * 3600 <= lifetime.total_seconds() <= 12 * 3600 + 600
    with pytest.raises(x509.ExtensionNotFound):  # no crl-url configured at init
        cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert ca.roles_for_serial(issued.serial) == ("ops",)
    # The API writes no client key into the state directory.
    assert not any(p.read_bytes() == issued.key_pem for p in ca.state_dir.rglob("*") if p.is_file())


def test_serials_are_16_or_17_der_octets(ca: CertificateAuthority) -> None:
    for index in range(8):
        issued = ca.issue_client(f"s{index}")
        der_len = (issued.serial.bit_length() + 8) // 8  # + sign octet when top bit set
        assert der_len in (16, 17)


def test_crl_distribution_point(state: Path) -> None:
    ca = CertificateAuthority.init(state, crl_url="http://ca.lan/crl.pem")
    cert = x509.load_pem_x509_certificate(ca.issue_client("carol").cert_pem)
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name == [x509.UniformResourceIdentifier("http://ca.lan/crl.pem")]


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".hidden", "a\nb", "tab\tname", ""])
def test_unsafe_names_are_refused(ca: CertificateAuthority, bad: str) -> None:
    with pytest.raises(UsageError):
        ca.issue_client(bad)


def test_names_unique_among_valid(
    ca: CertificateAuthority, cli: Callable[..., Result], out_dir: Path
) -> None:
    assert cli("issue", "dave", "--out", out_dir).code == 0
    again = cli("issue", "dave", "--out", out_dir)
    assert again.code == 1
    assert "already exists" in again.err
    assert cli("revoke", "dave").code == 0
    assert cli("issue", "dave", "--out", out_dir).code == 0


def test_a_refused_issue_leaves_no_out_directory_behind(
    ca: CertificateAuthority, proc: Callable[..., Result], tmp_path: Path
) -> None:
    """`ca issue 'bad/name' --out DIR` and a second `ca issue NAME --out DIR2`
    (the name is taken) made DIR and DIR2 (0700, empty) before refusing."""
    bad = proc("issue", "bad/name", "--out", tmp_path / "made" / "for-bad")
    assert bad.code == 2, bad.err
    assert not (tmp_path / "made").exists()
    assert proc("issue", "erin", "--out", tmp_path / "first").code == 0
    taken = proc("issue", "erin", "--out", tmp_path / "second")
    assert taken.code == 1, taken.err
    assert "already exists" in taken.err
    assert not (tmp_path / "second").exists()
    assert (tmp_path / "first" / "erin.key").exists()  # a success keeps its directory


def test_default_out_is_current_directory(
    ca: CertificateAuthority, proc: Callable[..., Result], tmp_path: Path
) -> None:
    result = proc("issue", "erin")
    assert result.code == 0, result.err
    assert (tmp_path / "erin.key").is_file()
    help_text = proc("issue", "--help").out
    assert "the current directory, not the state directory" in " ".join(help_text.split())


def test_server_certificate(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.issue_server(["proxy.lan", "*.apps.lan", "192.168.1.2", "::1"])
    fullchain, key = ca.layout.server_files(issued.name)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = openssl("x509", "-in", fullchain, "-noout", "-text").stdout
    assert "TLS Web Server Authentication" in text
    assert "TLS Web Client Authentication" not in text
    wanted = ("DNS:proxy.lan", "DNS:*.apps.lan", "IP Address:192.168.1.2", "IP Address:0:0:0:0:")
    for want in wanted:
        assert want in text
    openssl(
        "verify", "-CAfile", ca.root_cert_path, "-untrusted", fullchain,
        "-verify_hostname", "x.apps.lan", "-purpose", "sslserver", fullchain,
    )
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == 90


def test_ensure_server_certificate_reuses(ca: CertificateAuthority) -> None:
    first = ca.ensure_server_certificate(["proxy.lan", "10.0.0.1"])
    first_pem = first[0].read_bytes()
    again = ca.ensure_server_certificate(["10.0.0.1", "proxy.lan"])
    assert first == again
    assert first[0].read_bytes() == first_pem
    # A certificate that covers more than was asked for is not reused: it
    # would name proxy.lan to every client of 10.0.0.1 (issue #12).
    narrower = ca.ensure_server_certificate(["10.0.0.1"])
    assert narrower != first
    leaf = x509.load_pem_x509_certificates(narrower[0].read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    assert all(path.is_relative_to(ca.state_dir) for path in first)
    wider = ca.ensure_server_certificate(["proxy.lan", "other.lan"])
    assert wider != first
    assert first[0].read_bytes() == first_pem  # the other route keeps its certificate
    chain = x509.load_pem_x509_certificates(wider[0].read_bytes())
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"proxy.lan", "other.lan"}


def test_p12_empty_password_refused_before_issuing(
    ca: CertificateAuthority, cli: Callable[..., Result], out_dir: Path
) -> None:
    result = cli("issue", "frank", "--p12", "--p12-password", "", "--out", out_dir)
    assert result.code == 2
    assert "empty PKCS#12 password is refused" in result.err
    assert list(out_dir.iterdir()) == []
    with pytest.raises(UsageError, match="empty"):
        ca.issue_client("frank", delivery=Delivery(out_dir, p12_password=""))
    assert ca.certificates().records == ()


def test_serial_spelling_matches_openssl() -> None:
    assert serial_hex(0xABC) == "0abc"
    assert serial_hex(0xABCD) == "abcd"
    assert parse_serial("0A:BC") == parse_serial("abc") == 0xABC
    assert parse_serial("0xabc") == 0xABC
    assert parse_serial("alice") is None

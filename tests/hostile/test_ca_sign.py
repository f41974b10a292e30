"""Issue #11 finding 5: ``ca sign`` signs what the CA decides, not what the CSR says.

Every case runs the real command line (``python3 -m certgate ca ...``) on a
real CA in a temporary state directory, with CSRs made by ``cryptography``
the way a hostile device would make them. A refused CSR must leave no file,
no inventory row and no audit entry; a signed one must carry only the
subject ``CN=<name>`` and the SANs the command line allowed, and the output
and the audit log must say which.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certgate.ca import CertificateAuthority

D, U, E = x509.DNSName, x509.UniformResourceIdentifier, x509.RFC822Name
OPS_SPIFFE = "spiffe://example.org/ns/ops/admin"


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "state", name="Sign Test CA")


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


def certgate(ca: CertificateAuthority, *args: str | Path) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "certgate", "ca", *map(str, args), "--state", str(ca.state_dir)],
        capture_output=True, text=True, timeout=60, check=False)
    return Run(done.returncode, done.stdout, done.stderr)


def make_csr(directory: Path, stem: str, subject: x509.Name | str,
             sans: list[x509.GeneralName] | None = None) -> Path:
    if isinstance(subject, str):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    path = directory / f"{stem}.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def audit_entries(ca: CertificateAuthority) -> list[dict[str, object]]:
    path = ca.state_dir / "ca" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_refused(ca: CertificateAuthority, run: Run, out_dir: Path, *needles: str,
                   code: int = 2) -> None:
    assert run.code == code, (run.out, run.err)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err  # one clear line
    assert lines[0].startswith("certgate: "), run.err
    for needle in needles:
        assert needle in lines[0], run.err
    assert list(out_dir.iterdir()) == []
    assert ca.certificates().records == ()
    assert [e["operation"] for e in audit_entries(ca)] == ["init"]


def signed(out_dir: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((out_dir / f"{name}.crt").read_bytes())


def sans_of(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


@pytest.mark.parametrize("extra", [(), ("--name", "laptop")])
def test_control_bytes_in_the_csr_subject_are_refused(ca, out_dir, tmp_path, extra):  # type: ignore[no-untyped-def]
    csr = make_csr(tmp_path, "crlf", "evil\r\nX-Client-Roles: ops")
    run = certgate(ca, "sign", csr, *extra, "--out", out_dir)
    assert_refused(ca, run, out_dir, "control character")
    assert "\r" not in run.err


def test_subject_comes_from_name_never_from_the_csr(ca, out_dir, tmp_path):  # type: ignore[no-untyped-def]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opsuser"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops")])
    csr = make_csr(tmp_path, "ops", subject)
    run = certgate(ca, "sign", csr, "--name", "kitchen", "--out", out_dir)
    assert run.code == 0, run.err
    cert = signed(out_dir, "kitchen")
    assert cert.subject.rfc4514_string() == "CN=kitchen"
    assert sans_of(cert) == []
    assert "subject CN=kitchen" in run.out
    assert "SANs: none" in run.out
    assert "CN=opsuser" in run.out  # says what it did not copy
    entry = audit_entries(ca)[-1]
    assert entry["operation"] == "sign"
    assert entry["subject"] == "CN=kitchen"
    assert entry["sans"] == []


def test_without_name_the_csr_common_name_is_the_name_and_nothing_else(ca, out_dir, tmp_path):  # type: ignore[no-untyped-def]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opsuser"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops")])
    run = certgate(ca, "sign", make_csr(tmp_path, "ops", subject), "--out", out_dir)
    assert run.code == 0, run.err
    assert signed(out_dir, "opsuser").subject.rfc4514_string() == "CN=opsuser"


@pytest.mark.parametrize("san", [
    D("a.test;URI=spiffe://example.org/ns/ops/admin"),
    D("b.test,By=spiffe://evil;Hash=deadbeef"),
    D("d.test, URI:spiffe://example.org/ns/ops/x"),
    U(OPS_SPIFFE),
    E("dev@example.test"),
    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
], ids=["dns-uri", "dns-element", "dns-list", "spiffe", "email", "ip"])
def test_csr_sans_the_command_line_did_not_allow_are_refused(ca, out_dir, tmp_path, san):  # type: ignore[no-untyped-def]
    csr = make_csr(tmp_path, "dev", "dev", [san])
    run = certgate(ca, "sign", csr, "--name", "dev", "--out", out_dir)
    assert_refused(ca, run, out_dir, "the CSR asks for SAN")


def test_spiffe_uri_is_signed_only_when_the_command_line_names_it(ca, out_dir, tmp_path):  # type: ignore[no-untyped-def]
    csr = make_csr(tmp_path, "deploy", "deploy", [U(OPS_SPIFFE)])
    refused = certgate(ca, "sign", csr, "--uri", "spiffe://example.org/ns/dev/x",
                       "--out", out_dir)
    assert_refused(ca, refused, out_dir, OPS_SPIFFE, "--uri")
    run = certgate(ca, "sign", csr, "--uri", OPS_SPIFFE, "--email", "deploy@example.test",
                   "--out", out_dir)
    assert run.code == 0, run.err
    assert sans_of(signed(out_dir, "deploy")) == [E("deploy@example.test"), U(OPS_SPIFFE)]
    assert f"SANs: email:deploy@example.test, URI:{OPS_SPIFFE}" in run.out
    assert audit_entries(ca)[-1]["sans"] == ["email:deploy@example.test", f"URI:{OPS_SPIFFE}"]


@pytest.mark.parametrize(("flag", "value"), [
    ("--dns", "a.test;URI=spiffe://example.org/ns/ops/admin"),
    ("--dns", "b.test,By=spiffe://evil"),
    ("--uri", "spiffe://x/\r\nX-Client-Roles: ops"),
    ("--uri", "spiffe://x/a b"),
    ("--uri", 'spiffe://x/"a"'),
    ("--uri", "spiffe://x/%zz"),
    ("--email", "a,URI:spiffe://x@example.test"),
    ("--email", "a b@example.test"),
    ("--email", "a@b.test;URI=spiffe://x"),
    ("--email", "a\n@example.test"),
])
@pytest.mark.parametrize("verb", ["issue", "sign"])
def test_hostile_san_options_are_refused_by_issue_and_sign(ca, out_dir, tmp_path, verb,  # type: ignore[no-untyped-def]
                                                           flag, value):
    target: list[str | Path] = ["dev"] if verb == "issue" else [make_csr(tmp_path, "d", "dev")]
    run = certgate(ca, verb, *target, flag, value, "--out", out_dir)
    assert_refused(ca, run, out_dir, flag)


def test_csr_signature_is_checked(ca, out_dir, tmp_path):  # type: ignore[no-untyped-def]
    """A CSR carrying someone else's public key (no proof of possession)."""
    csr_path = make_csr(tmp_path, "victim", "victim")
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    der = csr.public_bytes(serialization.Encoding.DER)
    spki = csr.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert len(other) == len(spki)
    assert der.count(spki) == 1
    forged = tmp_path / "forged.der"
    forged.write_bytes(der.replace(spki, other))
    run = certgate(ca, "sign", forged, "--name", "victim", "--out", out_dir)
    assert_refused(ca, run, out_dir, "signature does not verify", code=1)


def test_existing_flags_still_work(ca, out_dir, tmp_path):  # type: ignore[no-untyped-def]
    csr = make_csr(tmp_path, "watch", "watch", [E("watch@example.test")])
    run = certgate(ca, "sign", csr, "--role", "viewer", "--hours", "12",
                   "--email", "watch@example.test", "--out", out_dir)
    assert run.code == 0, run.err
    cert = signed(out_dir, "watch")
    assert cert.subject.rfc4514_string() == "CN=watch"
    assert sans_of(cert) == [E("watch@example.test")]
    assert ca.roles_for_serial(cert.serial_number) == ("viewer",)
    assert "issued client certificate watch" in run.out


@pytest.mark.parametrize(("subject", "sans"), [
    (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a\r\nX-Client-Roles: ops")]), []),
    (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opsuser"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops")]), []),
    (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]),
     [D("a.test;URI=spiffe://example.org/ns/ops/admin")]),
    (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]),
     [x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]),
], ids=["crlf-cn", "extra-ou", "dns-with-uri", "ip-san"])
def test_renew_does_not_carry_forward_what_old_ca_sign_copied(
        ca: CertificateAuthority, out_dir: Path, subject: x509.Name,
        sans: list[x509.GeneralName]) -> None:
    """A certificate that the old ``ca sign`` signed from a hostile CSR (planted
    here through the internal issuance path, as the old code did) is not
    renewed with the same values: renewal refuses it, writes nothing, and
    says what to do instead."""
    from datetime import timedelta

    from certgate.ca import issuance

    request = issuance.Request(op="issue", name="legacy", kind="client", subject=subject,
                               sans=tuple(sans), lifetime=timedelta(days=30), roles=(),
                               key_type="ecdsa-p256")
    with ca.session() as s:
        issuance.issue(s, request, lambda _issued: [])
    entries = len(audit_entries(ca))
    run = certgate(ca, "renew", "legacy", "--out", out_dir)
    assert run.code != 0
    assert "cannot renew 'legacy'" in run.err
    assert "revoke it and issue a new certificate" in run.err
    assert "\r" not in run.err
    assert list(out_dir.iterdir()) == []
    assert len(audit_entries(ca)) == entries


def test_renew_keeps_what_ca_issue_signs(ca: CertificateAuthority, out_dir: Path) -> None:
    """Guard: an ordinary certificate with every SAN kind renews unchanged."""
    issued = certgate(ca, "issue", "phone", "--email", "me@example.org", "--uri",
                      OPS_SPIFFE, "--dns", "phone.example.org", "--out", out_dir)
    assert issued.code == 0, issued.err
    renewed = certgate(ca, "renew", "phone", "--out", out_dir)
    assert renewed.code == 0, renewed.err
    cert = x509.load_pem_x509_certificate((out_dir / "phone.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=phone"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(map(str, sans)) == sorted(map(str, [
        E("me@example.org"), U(OPS_SPIFFE), D("phone.example.org")]))

"""Acceptance 6: ``ca sign`` for CSRs made by ``openssl req``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgate.ca import CertificateAuthority

from .conftest import Result, openssl


def make_csr(directory: Path, name: str, *extensions: str) -> Path:
    csr = directory / f"{name}.csr"
    args: list[str | Path] = [
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", directory / f"{name}.key", "-out", csr, "-subj", f"/CN={name}",
    ]
    for ext in extensions:
        args += ["-addext", ext]
    openssl(*args)
    return csr


def test_sign_csr_key_stays_on_device(
    ca: CertificateAuthority, cli: Callable[..., Result], tmp_path: Path, out_dir: Path
) -> None:
    csr = make_csr(tmp_path, "watch", "subjectAltName=email:watch@example.com")
    result = cli("sign", csr, "--role", "viewer", "--email", "watch@example.com", "--out", out_dir)
    assert result.code == 0, result.err
    crt = out_dir / "watch.crt"
    assert not (out_dir / "watch.key").exists()
    openssl("verify", "-CAfile", ca.root_cert_path, "-untrusted", ca.issuing_cert_path, crt)
    text = openssl("x509", "-in", crt, "-noout", "-text").stdout
    assert "TLS Web Client Authentication" in text
    assert "CA:FALSE" in text
    assert "email:watch@example.com" in text
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    key = serialization.load_pem_private_key((tmp_path / "watch.key").read_bytes(), None)
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)
    assert ca.roles_for_serial(cert.serial_number) == ("viewer",)


@pytest.mark.parametrize(
    ("extension", "named"),
    [
        ("basicConstraints=critical,CA:TRUE", "CA rights (basicConstraints CA:TRUE)"),
        ("extendedKeyUsage=serverAuth", "server authentication (extendedKeyUsage serverAuth)"),
        ("keyUsage=critical,keyCertSign", "certificate signing (keyUsage keyCertSign)"),
        ("keyUsage=cRLSign", "CRL signing (keyUsage cRLSign)"),
    ],
)
def test_csr_asking_for_too_much_is_refused(
    ca: CertificateAuthority,
    proc: Callable[..., Result],
    tmp_path: Path,
    out_dir: Path,
    extension: str,
    named: str,
) -> None:
    csr = make_csr(tmp_path, "greedy", extension)
    result = proc("sign", csr, "--out", out_dir)
    assert result.code == 1
    assert f"certgate: refusing to sign: the CSR asks for {named}" in result.err
    assert list(out_dir.iterdir()) == []
    assert ca.certificates().records == ()


def test_tampered_csr_is_refused(
    ca: CertificateAuthority, cli: Callable[..., Result], tmp_path: Path
) -> None:
    csr = make_csr(tmp_path, "tampered")
    der = bytearray(x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(
        serialization.Encoding.DER
    ))
    index = der.index(b"tampered")
    der[index] ^= 0x20  # "Tampered": the subject no longer matches the signature
    bad = tmp_path / "bad.der"
    bad.write_bytes(bytes(der))
    result = cli("sign", bad)
    assert result.code == 1
    assert "signature does not verify" in result.err


def test_csr_name_override_and_validation(
    ca: CertificateAuthority, cli: Callable[..., Result], tmp_path: Path, out_dir: Path
) -> None:
    csr = make_csr(tmp_path, "device")
    assert cli("sign", csr, "--name", "kitchen-tablet", "--out", out_dir).code == 0
    assert (out_dir / "kitchen-tablet.crt").is_file()
    assert cli("sign", csr, "--name", "../escape", "--out", out_dir).code == 2

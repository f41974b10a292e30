"""Acceptance 2: PKCS#12 files that phones import, checked by openssl."""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.serialization import pkcs12

from certgate.ca import CertificateAuthority

from .conftest import Result, openssl


def p12_info(path: Path, password: str) -> str:
    proc = openssl("pkcs12", "-info", "-in", path, "-passin", f"pass:{password}", "-nokeys",
                   check=False)
    if proc.returncode != 0:  # OpenSSL 3 builds without 3DES in the default provider
        proc = openssl("pkcs12", "-legacy", "-info", "-in", path, "-passin", f"pass:{password}",
                       "-nokeys")
    return proc.stdout + proc.stderr


def test_default_p12_is_3des_sha1_with_full_chain(
    ca: CertificateAuthority, cli: Callable[..., Result], out_dir: Path
) -> None:
    result = cli("issue", "phone", "--p12", "--p12-password", "s3cret-pw", "--out", out_dir)
    assert result.code == 0, result.err
    path = out_dir / "phone.p12"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    info = p12_info(path, "s3cret-pw")
    assert "MAC: sha1" in info
    assert re.search(r"PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration (\d+)",
                     info)
    assert re.search(r"Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration (\d+)", info)
    iterations = [int(n) for n in re.findall(r"Iteration (\d+)", info)]
    assert iterations
    assert min(iterations) >= 2048
    subjects = re.findall(r"^subject=(.*)$", info, re.MULTILINE)
    assert subjects == [
        "CN = phone",
        "O = Test CA, CN = Test CA Issuing I1",
        "O = Test CA, CN = Test CA Root R1",
    ]
    loaded = pkcs12.load_pkcs12(path.read_bytes(), b"s3cret-pw")
    assert loaded.key is not None
    assert loaded.cert is not None
    assert len(loaded.additional_certs) == 2


def test_modern_p12_is_aes256(
    ca: CertificateAuthority, cli: Callable[..., Result], out_dir: Path
) -> None:
    result = cli("issue", "laptop", "--p12-modern", "--p12-password", "pw-1234", "--out", out_dir)
    assert result.code == 0, result.err
    info = p12_info(out_dir / "laptop.p12", "pw-1234")
    assert "AES-256-CBC" in info
    assert "MAC: sha256" in info
    assert "TripleDES" not in info
    loaded = pkcs12.load_pkcs12((out_dir / "laptop.p12").read_bytes(), b"pw-1234")
    assert loaded.key is not None


def test_generated_password_printed_once_never_stored(
    ca: CertificateAuthority, cli: Callable[..., Result], out_dir: Path
) -> None:
    result = cli("issue", "tablet", "--p12", "--out", out_dir)
    assert result.code == 0, result.err
    match = re.search(r"PKCS#12 password \(shown only now\): (\S+)", result.out)
    assert match
    password = match.group(1)
    assert len(password) >= 20
    assert result.out.count(password) == 1
    pkcs12.load_pkcs12((out_dir / "tablet.p12").read_bytes(), password.encode())
    for path in ca.state_dir.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_empty_password_refused(
    ca: CertificateAuthority, proc: Callable[..., Result], out_dir: Path
) -> None:
    result = proc("issue", "nopw", "--p12-password", "", "--out", out_dir)
    assert result.code == 2
    assert "certgate: an empty PKCS#12 password is refused" in result.err
    assert not (out_dir / "nopw.p12").exists()

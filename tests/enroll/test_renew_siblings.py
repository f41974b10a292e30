"""``certgate renew`` keeps the three files ``ca issue`` and ``certgate enroll``
write (``NAME.crt`` leaf only, ``NAME.chain.pem``, ``NAME.key``) consistent.

Found by a newcomer trial (session 7, item 3): renewing via the chain file
left ``NAME.crt`` with the superseded certificate beside the new key, so
``curl --cert NAME.crt --key NAME.key`` failed at the first renewal. Real
certgate with its enrollment service, real ``ca issue`` and ``certgate
renew`` subprocesses; the key/certificate match is checked by OpenSSL
(``SSLContext.load_cert_chain``).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support.enrolling import ENROLL_HOST, Enrolling


def _issue(env: Enrolling, out: Path, label: str = "dev") -> tuple[Path, Path, Path]:
    env.ca("issue", label, "--hours", "24", "--out", str(out))
    files = out / f"{label}.crt", out / f"{label}.chain.pem", out / f"{label}.key"
    assert all(p.exists() for p in files)
    return files


def _renew(env: Enrolling, cert: Path, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "certgate", "renew", "--cert", str(cert), "--key", str(key),
         "--url", f"https://{ENROLL_HOST}:{env.port}/renew", "--ca", str(env.root),
         "--force"],
        capture_output=True, text=True, check=False, timeout=60, cwd=cert.parent)


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _belong_together(cert: Path, key: Path) -> None:
    """OpenSSL's own check: load_cert_chain raises when the key is not the cert's."""
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key))


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _no_staged(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if ".next" in p.name]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    directory = tmp_path / "device"
    directory.mkdir()
    return directory


def test_renewing_the_chain_also_rewrites_the_leaf_only_crt(enrolling: Enrolling,
                                                           out: Path) -> None:
    crt, chain, key = _issue(enrolling, out)
    old_serial = _certs(crt)[0].serial_number
    issuing = _certs(chain)[1:]
    crt.chmod(0o640)  # the user's choice; renew keeps it
    result = _renew(enrolling, chain, key)
    assert result.returncode == 0, result.stderr
    assert "renewed dev" in result.stdout
    new_chain = _certs(chain)
    assert new_chain[0].serial_number != old_serial
    assert new_chain[1:] == issuing
    # NAME.crt: still leaf only, now the new leaf, and it belongs to the new key.
    assert [c.serial_number for c in _certs(crt)] == [new_chain[0].serial_number]
    _belong_together(crt, key)
    _belong_together(chain, key)
    assert (_mode(crt), _mode(chain), _mode(key)) == (0o640, 0o644, 0o600)
    _no_staged(out)
    for written in (chain, key, crt):
        assert f"wrote {written}" in result.stdout, result.stdout
    # What the newcomer ran next now works: renewing through the .crt.
    again = _renew(enrolling, crt, key)
    assert again.returncode == 0, again.stderr
    assert _certs(crt)[0].serial_number == _certs(chain)[0].serial_number \
        != new_chain[0].serial_number
    _belong_together(chain, key)


def test_renewing_via_the_crt_updates_the_chain(enrolling: Enrolling, out: Path) -> None:
    crt, chain, key = _issue(enrolling, out)
    old_serial = _certs(crt)[0].serial_number
    issuing = _certs(chain)[1:]
    assert issuing  # leaf + issuing CA: the shape that must be kept
    result = _renew(enrolling, crt, key)
    assert result.returncode == 0, result.stderr
    leaf = _certs(crt)
    assert len(leaf) == 1  # the leaf-only file stays leaf only
    assert leaf[0].serial_number != old_serial
    new_chain = _certs(chain)
    assert new_chain[0].serial_number == leaf[0].serial_number
    assert new_chain[1:] == issuing
    _belong_together(crt, key)
    _belong_together(chain, key)
    assert (_mode(crt), _mode(chain), _mode(key)) == (0o644, 0o644, 0o600)
    _no_staged(out)
    assert f"wrote {chain}" in result.stdout, result.stdout


def test_a_crt_with_other_content_is_left_alone(enrolling: Enrolling, out: Path) -> None:
    _issue(enrolling, out, "other")
    crt, chain, key = _issue(enrolling, out)
    # dev.crt is not dev's old leaf: another device's certificate, and (second
    # round) dev's old leaf with a private key appended, a combined file
    # renew does not know how to rewrite.
    unrelated = (out / "other.crt").read_bytes()
    crt.write_bytes(unrelated)
    result = _renew(enrolling, chain, key)
    assert result.returncode == 0, result.stderr
    assert crt.read_bytes() == unrelated
    _belong_together(chain, key)
    assert f"left {crt} alone" in result.stdout, result.stdout

    old_leaf = _certs(chain)[0].public_bytes(serialization.Encoding.PEM)
    combined = old_leaf + key.read_bytes()
    crt.write_bytes(combined)
    result = _renew(enrolling, chain, key)
    assert result.returncode == 0, result.stderr
    assert crt.read_bytes() == combined
    _belong_together(chain, key)
    _no_staged(out)


def test_a_failed_write_leaves_all_three_old_files(enrolling: Enrolling, out: Path) -> None:
    """The .crt's staging name is taken by a directory: staging it fails after
    the CA has signed. Nothing may change; the next run finishes the job
    with the certificate already issued."""
    crt, chain, key = _issue(enrolling, out)
    before = {p: p.read_bytes() for p in (crt, chain, key)}
    blocker = out / "dev.crt.next"
    blocker.mkdir()
    result = _renew(enrolling, chain, key)
    assert result.returncode == 1, result.stdout
    assert "cannot write" in result.stderr
    assert "nothing was replaced" in result.stderr
    assert {p: p.read_bytes() for p in before} == before
    _belong_together(crt, key)
    _belong_together(chain, key)
    assert not (out / "dev.chain.pem.next").exists()
    blocker.rmdir()
    result = _renew(enrolling, chain, key)
    assert result.returncode == 0, result.stderr
    assert "asked for again" in result.stdout
    assert _certs(crt)[0].serial_number == _certs(chain)[0].serial_number
    _belong_together(crt, key)
    _no_staged(out)

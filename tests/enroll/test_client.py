"""Issue #13 acceptance 6: ``certgate enroll URL --pin`` makes its key on the
device, sends only a CSR, checks the server by the link's fingerprint (or
--ca), and the certificate works through certgate."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgate.ca import CertificateAuthority
from certgate.enroll import client
from certgate.enroll.client import EnrollError

from support.enrolling import ENROLL_HOST, Enrolling, start_enrolling


def _spki(key_or_cert: Any) -> bytes:
    public = key_or_cert.public_key()
    return public.public_bytes(serialization.Encoding.DER,  # type: ignore[no-any-return]
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _whoami(env: Enrolling, cert: Path, key: Path) -> dict[str, Any]:
    proc = subprocess.run(
        ["curl", "-sS", "--cacert", str(env.root), "--cert", str(cert), "--key", str(key),
         "--resolve", f"localhost:{env.port}:127.0.0.1", f"https://localhost:{env.port}/"],
        capture_output=True, text=True, timeout=30, check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, bytes]]:
    """Every request ``certgate enroll`` makes, as it goes out (the real one runs)."""
    seen: list[tuple[str, str, bytes]] = []
    real = client._request

    def spy(link: Any, ctx: Any, method: str, path: str, body: bytes = b"",
            content_type: str = "") -> tuple[int, bytes]:
        seen.append((method, path, body))
        return real(link, ctx, method, path, body, content_type)

    monkeypatch.setattr(client, "_request", spy)
    return seen


def test_key_stays_on_the_device(enrolling: Enrolling, tmp_path: Path,
                                 sent: list[tuple[str, str, bytes]]) -> None:
    env = enrolling
    link = env.enroll("nas", "--role", "backup")
    out = tmp_path / "device"
    written = client.enroll(link.url, link.pin, out)
    names = sorted(p.name for p in written)
    assert names == ["ca.crt", "nas.chain.pem", "nas.crt", "nas.key"]
    key = serialization.load_pem_private_key((out / "nas.key").read_bytes(), None)
    assert stat.S_IMODE(os.stat(out / "nas.key").st_mode) == 0o600

    # What left the device: a GET for the public root, then JSON with the PIN
    # and a CSR for the device's key; no private key.
    posts = [body for method, _path, body in sent if method == "POST"]
    assert len(posts) == 1
    assert b"PRIVATE KEY" not in posts[0]
    doc = json.loads(posts[0])
    assert set(doc) == {"pin", "csr"}
    csr = x509.load_pem_x509_csr(doc["csr"].encode())
    assert csr.is_signature_valid
    assert _spki(csr) == _spki(key)
    leaf = x509.load_pem_x509_certificate((out / "nas.crt").read_bytes())
    assert _spki(leaf) == _spki(key)

    who = _whoami(env, out / "nas.chain.pem", out / "nas.key")
    assert who["cn"] == "nas"
    assert [e["method"] for e in json.loads(env.ca("enroll", "--list", "--json").stdout)] \
        == ["csr"]


def test_cli_writes_the_files(enrolling: Enrolling, tmp_path: Path) -> None:
    env = enrolling
    link = env.enroll("box")
    out = tmp_path / "box"
    proc = subprocess.run([sys.executable, "-m", "certgate", "enroll", link.url, "--pin",
                           link.pin, "--out", str(out)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert link.pin not in proc.stdout + proc.stderr
    assert _whoami(env, out / "box.chain.pem", out / "box.key")["cn"] == "box"
    again = subprocess.run([sys.executable, "-m", "certgate", "enroll", link.url, "--pin",
                            link.pin, "--out", str(tmp_path / "again")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1
    assert "410" in again.stderr
    assert "already been used" in again.stderr
    assert not (tmp_path / "again" / "box.key").exists()


@pytest.mark.parametrize("pin_arg", [["--pin", "-"], []], ids=["dash", "left-out"])
def test_the_pin_can_come_on_standard_input(enrolling: Enrolling, tmp_path: Path,
                                            pin_arg: list[str]) -> None:
    """--pin on the command line lands in shell history and in ps; '--pin -'
    or no --pin reads it from standard input (no terminal here)."""
    link = enrolling.enroll("piped")
    out = tmp_path / "piped"
    proc = subprocess.run([sys.executable, "-m", "certgate", "enroll", link.url, *pin_arg,
                           "--out", str(out)], input=link.pin + "\n",
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert link.pin not in proc.stdout + proc.stderr
    assert _whoami(enrolling, out / "piped.chain.pem", out / "piped.key")["cn"] == "piped"


def test_no_pin_at_all_is_one_line_and_sends_nothing(enrolling: Enrolling,
                                                     tmp_path: Path) -> None:
    link = enrolling.enroll("nopin")
    proc = subprocess.run([sys.executable, "-m", "certgate", "enroll", link.url,
                           "--out", str(tmp_path / "nopin")], input="",
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "no PIN" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "nopin").exists()


def test_wrong_fingerprint_sends_nothing_secret(enrolling: Enrolling, tmp_path: Path,
                                                sent: list[tuple[str, str, bytes]]) -> None:
    env = enrolling
    link = env.enroll("victim")
    forged = link.url.split("fp=")[0] + "fp=" + "ab" * 32
    with pytest.raises(EnrollError, match="does not match the fingerprint"):
        client.enroll(forged, link.pin, tmp_path / "x")
    assert [method for method, _p, _b in sent] == ["GET"]
    assert all(link.pin.encode() not in body for _m, _p, body in sent)
    with pytest.raises(EnrollError, match="no fp="):
        client.enroll(link.url.split("?")[0], link.pin, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_server_certificate_from_elsewhere_needs_ca(tmp_path: Path) -> None:
    """A server certificate that certgate's CA did not sign: the fingerprint
    alone is not enough (it names the client CA, not the server's), --ca is."""
    other = CertificateAuthority.init(tmp_path / "other", name="public-ish CA")
    issued = other.issue_server([ENROLL_HOST], out_dir=tmp_path)
    config = f"""
state_dir: {{state}}
listen: ["127.0.0.1:0"]
access_log: {{{{path: {{log}}}}}}
metrics: {{{{listen: "off"}}}}
tls:
  certificates: [{{{{cert: {issued.files[0]}, key: {issued.files[1]}}}}}]
routes:
  - {{{{host: enroll.localhost, upstream: enroll}}}}
"""
    env = start_enrolling(tmp_path / "run", config)
    try:
        link = env.enroll("laptop")
        with pytest.raises(EnrollError, match="pass --ca"):
            client.enroll(link.url, link.pin, tmp_path / "out")
        # The PIN never reached the server: the link is untouched.
        listed = json.loads(env.ca("enroll", "--list", "--json").stdout)
        assert [(e["state"], e["attempts"]) for e in listed] == [("pending", 0)]
        written = client.enroll(link.url, link.pin, tmp_path / "out", other.root_cert_path)
        assert (tmp_path / "out" / "laptop.key") in written
        # ca.crt is certgate's own root (for the client side), not the server's CA.
        assert (tmp_path / "out" / "ca.crt").read_bytes() == env.root.read_bytes()
    finally:
        env.proxy.stop()

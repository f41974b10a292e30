"""Renewal (issue #13, acceptance 7): ``POST /renew`` on a real certgate and the
``certgate renew`` client against it.

Certificates that are due are made by the CA's own code with its clock set
back (issued 45 minutes ago for an hour), not by sleeping; every other wait
is a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import certgate.ca.session as ca_session
from certgate.ca import CertificateAuthority, Delivery
from certgate.ca.keys import serial_hex
from certgate.ca.timeutil import utcnow

from support.clients import Connection, client_context
from support.forge import make_ca, make_leaf, name, write_client
from support.process import CertgateProcess, wait_until

PREFIX = "/.well-known/certgate"
CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
metrics: {{listen: "off"}}
client_auth:
  trusted_cas: [builtin, {others}]
  crls: [builtin]
routes:
  - {{host: localhost, upstream: whoami}}
  - {{host: localhost, path: {prefix}, upstream: enroll}}
"""


@dataclass
class World:
    dir: Path
    state: Path
    ca: CertificateAuthority
    proc: CertgateProcess

    @property
    def root(self) -> Path:
        return self.state / "ca" / "root.crt"

    @property
    def url(self) -> str:
        return f"https://localhost:{self.proc.port}{PREFIX}/renew"

    def files(self, label: str) -> tuple[Path, Path]:
        return self.dir / f"{label}.chain.pem", self.dir / f"{label}.key"

    def issue(self, label: str, *, hours: int, ago: timedelta = timedelta(0),
              roles: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A certificate of the built-in CA, issued ``ago`` (the CA's clock set back)."""
        real = ca_session.utcnow
        ca_session.utcnow = lambda: real() - ago  # type: ignore[assignment]
        try:
            self.ca.issue_client(label, roles=roles, hours=hours, delivery=Delivery(self.dir))
        finally:
            ca_session.utcnow = real  # type: ignore[assignment]
        return self.files(label)

    def context(self, label: str):  # type: ignore[no-untyped-def]
        cert, key = self.files(label)
        return client_context(self.root, cert, key)

    def renew(self, label: str, *args: str) -> subprocess.CompletedProcess[str]:
        cert, key = self.files(label)
        return subprocess.run(
            [sys.executable, "-m", "certgate", "renew", "--cert", str(cert), "--key", str(key),
             "--url", self.url, "--ca", str(self.root), *args],
            capture_output=True, text=True, check=False, timeout=60, cwd=self.dir)

    def inventory(self) -> dict[str, dict[str, Any]]:
        out = subprocess.run([sys.executable, "-m", "certgate", "ca", "list", "--json",
                              "--state", str(self.state)], capture_output=True, text=True,
                             check=True, timeout=60)
        return {row["serial"]: row for row in json.loads(out.stdout)}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    state = tmp_path / "state"
    ca = CertificateAuthority.init(state, name="renewal test CA")
    issuing = x509.load_pem_x509_certificate(ca.issuing_cert_path.read_bytes())
    # Another trusted CA, and under it a twin of the built-in issuing CA
    # (same subject, same subjectKeyIdentifier, another key: RSA, so that
    # OpenSSL picks the twin and the handshake succeeds, as in the attack).
    other = make_ca(name("Other Trusted CA"))
    ski = issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    twin = make_ca(issuing.subject, issuer=other, ski=ski, algorithm="rsa2048")
    (tmp_path / "others.pem").write_bytes(other.pem)
    world = World(tmp_path, state, ca, None)  # type: ignore[arg-type]
    world.issue("dev", hours=24, roles=("ops",))
    dev = x509.load_pem_x509_certificate(world.files("dev")[0].read_bytes())
    write_client(tmp_path, "twin", make_leaf(twin, name("dev"), serial=dev.serial_number), twin)
    write_client(tmp_path, "foreign", make_leaf(other, name("dev")))
    world.proc = CertgateProcess(CONFIG.format(state=state, others=tmp_path / "others.pem",
                                               prefix=PREFIX), tmp_path).start()
    try:
        yield world
    finally:
        world.proc.stop()


def _csr(key: ec.EllipticCurvePrivateKey | None = None, cn: str = "anything") -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(name(cn)).sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM))


def _post(world: World, ctx: Any, body: bytes, content_type: str = "application/pkcs10"
          ) -> tuple[int, bytes]:
    """POST /renew; (status, body), or (0, b"") when the handshake is refused."""
    try:
        with Connection(world.proc.port, ctx, timeout=10) as conn:
            response = conn.request("POST", f"{PREFIX}/renew", body=body,
                                    headers=[("content-type", content_type)])
    except (ConnectionError, OSError):
        return 0, b""
    return response.status, response.body


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _whoami(world: World, label: str) -> dict[str, Any]:
    with Connection(world.proc.port, world.context(label), timeout=10) as conn:
        response = conn.request("GET", "/")
    assert response.status == 200, response.body
    return json.loads(response.body)  # type: ignore[no-any-return]


def test_renew_replaces_a_one_hour_certificate_before_it_expires(world: World) -> None:
    cert, key = world.issue("hourly", hours=1, ago=timedelta(minutes=45), roles=("family",))
    old = _leaf(cert)
    old_key = key.read_bytes()
    assert int(_whoami(world, "hourly")["serial"], 16) == old.serial_number
    result = world.renew("hourly")
    assert result.returncode == 0, result.stderr
    assert "renewed hourly" in result.stdout
    new = _leaf(cert)
    assert new.serial_number != old.serial_number
    # The same lifetime (one hour from now), where the old one had 15 minutes left.
    assert new.not_valid_after_utc - new.not_valid_before_utc \
        == old.not_valid_after_utc - old.not_valid_before_utc
    assert abs(new.not_valid_after_utc - (utcnow() + timedelta(hours=1))) < timedelta(minutes=1)
    # A new P-256 key, 0600, and nothing left staged.
    assert key.read_bytes() != old_key
    assert key.stat().st_mode & 0o777 == 0o600
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp256r1"
    assert not [p for p in world.dir.iterdir() if p.name.endswith(".next")]
    rows = world.inventory()
    before, after = rows[serial_hex(old.serial_number)], rows[serial_hex(new.serial_number)]
    assert before["status"] == "superseded"
    assert before["superseded_by"] == after["serial"]
    assert after["status"] == "valid"
    assert after["name"] == "hourly"
    assert after["roles"] == ["family"]
    # The new certificate works through certgate, with its roles (the role
    # snapshot follows the inventory within the watcher's 1 s poll).
    wait_until(lambda: _whoami(world, "hourly")["roles"] == ["family"], 10,
               "the renewed certificate to carry its role")
    assert int(_whoami(world, "hourly")["serial"], 16) == new.serial_number
    # Audited, with how it came in.
    entries = [json.loads(line) for line in
               (world.state / "ca" / "audit.jsonl").read_text().splitlines()]
    last = entries[-1]
    assert last["operation"] == "renew"
    assert last["serial"] == after["serial"]
    assert last["supersedes"] == [before["serial"]]
    assert last["via"] == "certificate"
    assert last["client_ip"] == "127.0.0.1"
    # Right after, it is not due: exit 0, nothing changed.
    again = world.renew("hourly")
    assert again.returncode == 0, again.stderr
    assert "not due yet" in again.stdout
    assert _leaf(cert).serial_number == new.serial_number


def test_a_certificate_not_due_yet_is_left_alone(world: World) -> None:
    cert, key = world.files("dev")
    before = (cert.read_bytes(), key.read_bytes())
    result = world.renew("dev")
    assert result.returncode == 0, result.stderr
    assert "not due yet; renewal at" in result.stdout
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert not [p for p in world.dir.iterdir() if p.name.endswith(".next")]


def test_a_24_hour_certificate_renewed_again_and_again_keeps_working(world: World) -> None:
    cert, _ = world.files("dev")
    serials = [_leaf(cert).serial_number]
    for _ in range(3):
        result = world.renew("dev", "--force")
        assert result.returncode == 0, result.stderr
        leaf = _leaf(cert)
        assert leaf.serial_number not in serials
        assert abs(leaf.not_valid_after_utc - (utcnow() + timedelta(hours=24))) \
            < timedelta(minutes=1)
        serials.append(leaf.serial_number)
        seen = _whoami(world, "dev")
        assert int(seen["serial"], 16) == leaf.serial_number
        assert seen["cn"] == "dev"
    rows = world.inventory()
    chain = [rows[serial_hex(s)] for s in serials]
    assert [row["status"] for row in chain] == ["superseded"] * 3 + ["valid"]
    assert [row["superseded_by"] for row in chain[:-1]] == [r["serial"] for r in chain[1:]]
    assert all(row["roles"] == ["ops"] for row in chain)
    wait_until(lambda: _whoami(world, "dev")["roles"] == ["ops"], 10, "the role")


def test_a_revoked_certificate_cannot_renew(world: World) -> None:
    cert, key = world.files("dev")
    subprocess.run([sys.executable, "-m", "certgate", "ca", "revoke", "dev", "--state",
                    str(world.state)], check=True, capture_output=True, timeout=60)
    # The renewal handler refuses it at once (it reads the inventory: 403);
    # once the CRL reaches the proxy, the handshake itself is refused with
    # the certificate_revoked alert (issue #12), which is what renew meets.
    assert _post(world, world.context("dev"), _csr())[0] in (0, 403)
    wait_until(lambda: _post(world, world.context("dev"), _csr())[0] == 0, 10,
               "the revocation to reach the proxy")
    before = (cert.read_bytes(), key.read_bytes())
    result = world.renew("dev", "--force")
    assert result.returncode == 1
    assert "certificate revoked" in result.stderr
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert not [p for p in world.dir.iterdir() if p.name.endswith(".next")]
    assert [r["status"] for r in world.inventory().values() if r["name"] == "dev"] \
        == ["revoked"]


def test_an_expired_certificate_cannot_renew(world: World) -> None:
    world.issue("stale", hours=1, ago=timedelta(hours=2))
    # A new connection: OpenSSL refuses the handshake (certificate_expired).
    assert _post(world, world.context("stale"), _csr()) == (0, b"")
    result = world.renew("stale", "--force")
    assert result.returncode == 1
    assert "expired" in result.stderr
    assert [r["name"] for r in world.inventory().values()].count("stale") == 1


def test_a_certificate_that_expired_on_an_open_connection_cannot_renew(world: World) -> None:
    """The handshake checked the dates; the CA checks them again per renewal,
    so a keep-alive connection that outlived its certificate gets 403."""
    cert, _ = world.issue("brief", hours=1, ago=timedelta(hours=1) - timedelta(seconds=4))
    end = _leaf(cert).not_valid_after_utc
    with Connection(world.proc.port, world.context("brief"), timeout=10) as conn:
        assert conn.request("GET", "/").status == 200
        wait_until(lambda: utcnow() > end + timedelta(seconds=1), 10,
                   "the certificate to expire")
        response = conn.request("POST", f"{PREFIX}/renew", body=_csr(),
                                headers=[("content-type", "application/pkcs10")])
    assert response.status == 403
    assert b"expired" in response.body
    assert [r["name"] for r in world.inventory().values()].count("brief") == 1


@pytest.mark.parametrize("label", ["foreign", "twin"])
def test_a_certificate_of_another_trusted_ca_cannot_renew(world: World, label: str) -> None:
    """Another trusted CA's certificate for the same name, and a leaf with the
    real certificate's serial under a twin of the built-in issuing CA: both
    pass the handshake; neither is the built-in CA's."""
    cert, key = world.files(label)
    ctx = client_context(world.root, cert, key)
    with Connection(world.proc.port, ctx, timeout=10) as conn:
        assert conn.request("GET", "/").status == 200  # trusted: the handshake passed
    status, body = _post(world, ctx, _csr())
    assert status == 403
    assert b"built-in CA" in body
    assert len([r for r in world.inventory().values() if r["name"] == "dev"]) == 1


def test_no_certificate_bad_bodies_and_key_reuse(world: World) -> None:
    anonymous = client_context(world.root)
    assert _post(world, anonymous, _csr())[0] == 403
    # With the right certificate, what is sent must be a CSR, small, typed.
    dev = world.context("dev")
    assert _post(world, dev, _csr(), "application/json")[0] == 415
    assert _post(world, dev, b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n")[0] == 400
    assert _post(world, dev, b"x" * 20_000)[0] == 413
    assert _post(world, dev, b"y" * 70_000)[0] == 413  # over the service's own cap
    # A CSR for the key the certificate already has is not a renewal.
    current = serialization.load_pem_private_key(world.files("dev")[1].read_bytes(), None)
    assert isinstance(current, ec.EllipticCurvePrivateKey)
    status, body = _post(world, dev, _csr(current))
    assert status == 400
    assert b"reuses the key" in body
    assert len([r for r in world.inventory().values() if r["name"] == "dev"]) == 1


def test_a_lost_answer_is_asked_for_again_with_the_same_key(world: World) -> None:
    dev = world.context("dev")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr(key, cn="admin")  # the CSR's name is ignored
    status, first = _post(world, dev, csr)
    assert status == 200
    leaf = x509.load_pem_x509_certificates(first)[0]
    assert leaf.subject == name("dev")
    # The old certificate is superseded now; the same request gets the same
    # certificate, not a second one.
    status, second = _post(world, dev, csr)
    assert status == 200
    assert second == first
    # Another key with the superseded certificate: someone already renewed.
    status, body = _post(world, dev, _csr())
    assert status == 403
    assert b"already renewed" in body
    assert len([r for r in world.inventory().values() if r["name"] == "dev"]) == 2


def test_the_daemon_renews_when_due_and_stops_on_sigterm(world: World) -> None:
    cert, key = world.issue("sidecar", hours=1, ago=timedelta(minutes=50))
    old = _leaf(cert).serial_number
    daemon = subprocess.Popen(
        [sys.executable, "-m", "certgate", "renew", "--cert", str(cert), "--key", str(key),
         "--url", world.url, "--ca", str(world.root), "--daemon"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=world.dir,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        wait_until(lambda: _leaf(cert).serial_number != old, 30, "the daemon to renew")
        assert _whoami(world, "sidecar")["cn"] == "sidecar"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        out, err = daemon.communicate(timeout=10)
    assert "renewed sidecar" in out, err
    assert "next renewal at" in out


def test_the_systemd_unit_command_renews(world: World) -> None:
    """certgate-renew.service's ExecStart, run as written (paths and URL mapped)."""
    unit = Path(__file__).resolve().parents[2] / "systemd" / "certgate-renew.service"
    line = next(v for v in unit.read_text().splitlines() if v.startswith("ExecStart="))
    args = shlex.split(line.removeprefix("ExecStart="))
    home = world.dir / "device"
    home.mkdir()
    # What `certgate enroll --out` writes: NAME.chain.pem, NAME.key, ca.crt.
    cert, key = world.issue("laptop", hours=1, ago=timedelta(minutes=41))
    shutil.copy(cert, home / "laptop.chain.pem")
    shutil.copy(key, home / "laptop.key")
    shutil.copy(world.root, home / "ca.crt")
    old = _leaf(home / "laptop.chain.pem").serial_number
    args = [sys.executable, *(a.replace("/var/lib/certgate-renew", str(home))
                              .replace("${CERTGATE_RENEW_NAME}", "laptop")
                              .replace("${CERTGATE_RENEW_URL}", world.url) for a in args[1:])]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60,
                            cwd=home)
    assert result.returncode == 0, result.stderr
    assert _leaf(home / "laptop.chain.pem").serial_number != old

"""Issue #13 acceptance 1, 2, 3 and 8: a phone's enrollment end to end, on a
real certgate, with httpx, openssl and curl."""

from __future__ import annotations

import json
import plistlib
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from support.enrolling import Enrolling, Link, hidden
from support.process import wait_until


def _choose(env: Enrolling, link: Link) -> tuple[str, str]:
    """GET the page, POST the PIN; (page html, p12 password)."""
    with env.client() as client:
        page = env.request(client, "GET", link.path)
        assert page.status_code == 200, page.text
        assert 'name="pin"' in page.text
        chosen = env.request(client, "POST", link.path, data={"pin": link.pin})
    assert chosen.status_code == 200, chosen.text
    return chosen.text, hidden(chosen.text, "password")


def _download(env: Enrolling, link: Link, kind: str, password: str) -> bytes:
    with env.client() as client:
        got = env.request(client, "POST", f"{link.path}/{kind}",
                          data={"pin": link.pin, "password": password})
    assert got.status_code == 200, got.text
    return got.content


def test_phone_enrollment_end_to_end(enrolling: Enrolling, tmp_path: Path) -> None:
    """Acceptance 1 and 8."""
    env = enrolling
    link = env.enroll("phone", "--role", "family")
    assert link.pin not in link.url
    html, password = _choose(env, link)
    assert "Android" in html
    assert "iPhone" in html
    assert "Windows" in html
    assert password in html
    data = _download(env, link, "p12", password)

    # 3DES bags, SHA-1 MAC, the chain (openssl's own reading of the file).
    p12_path = tmp_path / "phone.p12"
    p12_path.write_bytes(data)
    info = subprocess.run(["openssl", "pkcs12", "-info", "-legacy", "-in", str(p12_path),
                           "-passin", f"pass:{password}", "-nodes"],
                          capture_output=True, text=True, timeout=30, check=True)
    details = info.stderr
    assert "MAC: sha1" in details
    assert details.count("pbeWithSHA1And3-KeyTripleDES-CBC") == 2, details
    bundle = pkcs12.load_pkcs12(data, password.encode())
    assert bundle.key is not None
    assert bundle.cert is not None
    assert bundle.key.curve.name == "secp256r1"  # type: ignore[union-attr]
    chain = [c.certificate for c in bundle.additional_certs]
    root = x509.load_pem_x509_certificate(env.root.read_bytes())
    assert root in chain

    # curl with the extracted key and certificate gets through certgate.
    pem = tmp_path / "phone.pem"
    pem.write_text(info.stdout)

    def whoami() -> dict[str, object]:
        curl = subprocess.run(
            ["curl", "-sS", "--cacert", str(env.root), "--cert", str(pem), "--key", str(pem),
             "--resolve", f"localhost:{env.port}:127.0.0.1", f"https://localhost:{env.port}/"],
            capture_output=True, text=True, timeout=30, check=True)
        return json.loads(curl.stdout)  # type: ignore[no-any-return]

    assert whoami()["cn"] == "phone"
    # Roles come from the inventory, which the proxy re-reads when it changes.
    wait_until(lambda: whoami()["roles"] == ["family"], 20, "the role to reach the proxy",
               interval=0.5)

    listed = json.loads(env.ca("list", "--json").stdout)
    phone = [row for row in listed if row["name"] == "phone"]
    assert phone
    assert phone[0]["roles"] == ["family"]
    assert phone[0]["status"] == "valid"

    # ... and last seen: the curl above, within a minute.
    def last_seen() -> dict[str, object] | None:
        rows = [row for row in json.loads(env.ca("list", "--json").stdout)
                if row["name"] == "phone" and row["last_seen"]]
        return rows[0] if rows else None

    seen = wait_until(last_seen, 60, "phone's last_seen in ca list --json", interval=0.5)
    assert isinstance(seen, dict)
    when = time.mktime(time.strptime(str(seen["last_seen"]), "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(when - time.timezone - time.time()) < 60
    assert seen["last_ip"] == "127.0.0.1"
    assert str(seen["last_user_agent"]).startswith("curl/")
    assert seen["last_route"] == "localhost/"

    # The same URL again: 410.
    with env.client() as client:
        again = env.request(client, "GET", link.path)
        twice = env.request(client, "POST", f"{link.path}/p12",
                            data={"pin": link.pin, "password": password})
    assert again.status_code == 410
    assert "already been used" in again.text
    assert twice.status_code == 410

    ops = [entry["operation"] for entry in env.audit()]
    assert "enroll-create" in ops
    assert "enroll-download" in ops

    # Acceptance 8: no token, PIN or password in anything certgate wrote.
    env.proxy.stop()
    written = {
        "stdout": "".join(env.proxy.stdout_lines),
        "stderr": "".join(env.proxy.stderr_lines),
        "access log": env.access_log.read_text(),
        "audit log": (env.state / "ca" / "audit.jsonl").read_text(),
    }
    assert "/enroll/[token]" in written["access log"]
    for where, text in written.items():
        for secret, what in ((link.token, "token"), (link.pin, "PIN"),
                             (password, "p12 password")):
            assert secret not in text, f"the {what} is in the {where}"


def test_reuse_expiry_and_burning(enrolling: Enrolling) -> None:
    """Acceptance 2: used, expired and burned links are 410; burning is audited."""
    env = enrolling
    expiring = env.enroll("tablet", "--ttl", "2s")
    deadline = time.monotonic() + 15

    def expired() -> bool:
        with env.client() as client:
            status = env.request(client, "GET", expiring.path).status_code
        assert status in (200, 410)
        assert time.monotonic() < deadline
        return status == 410

    wait_until(expired, 15, "the link to expire", interval=0.5)

    burning = env.enroll("laptop")
    wrong = "000000" if burning.pin != "000000" else "111111"
    statuses = []
    with env.client() as client:
        for _ in range(5):
            got = env.request(client, "POST", burning.path, data={"pin": wrong})
            statuses.append(got.status_code)
        after = env.request(client, "POST", burning.path, data={"pin": burning.pin})
        csr = env.request(client, "POST", f"{burning.path}/csr",
                          json={"pin": burning.pin, "csr": "x"})
    assert statuses == [403, 403, 403, 403, 410]
    assert after.status_code == 410
    assert "burned" in after.text
    assert csr.status_code == 410

    ops = [(entry["operation"], entry.get("name")) for entry in env.audit()]
    assert ("enroll-burn", "laptop") in ops
    assert ("enroll-expire", "tablet") in ops
    listed = json.loads(env.ca("enroll", "--list", "--json").stdout)
    states = {row["name"]: row["state"] for row in listed}
    assert states == {"tablet": "expired", "laptop": "burned"}


def test_wrong_pin_says_how_many_attempts_are_left(enrolling: Enrolling) -> None:
    env = enrolling
    link = env.enroll("watch")
    wrong = "000000" if link.pin != "000000" else "111111"
    with env.client() as client:
        got = env.request(client, "POST", link.path, data={"pin": wrong})
        unknown = env.request(client, "GET", "/enroll/" + "A" * 43)
    assert got.status_code == 403
    assert "4 attempts left" in got.text
    assert unknown.status_code == 410


def test_cancelled_link_is_gone(enrolling: Enrolling) -> None:
    env = enrolling
    link = env.enroll("spare")
    env.ca("enroll", "--cancel", link.id)
    with env.client() as client:
        got = env.request(client, "GET", link.path)
    assert got.status_code == 410
    assert "cancelled" in got.text
    assert ("enroll-cancel", "spare") in [(e["operation"], e["name"]) for e in env.audit()]


def test_mobileconfig(enrolling: Enrolling) -> None:
    """Acceptance 3."""
    env = enrolling
    first = env.enroll("ipad")
    _, password = _choose(env, first)
    profile = plistlib.loads(_download(env, first, "mobileconfig", password))
    payloads = {p["PayloadType"]: p for p in profile["PayloadContent"]}
    identity = payloads["com.apple.security.pkcs12"]
    assert "Password" not in identity  # iOS asks for the password shown on the page
    bundle = pkcs12.load_pkcs12(identity["PayloadContent"], password.encode())
    assert bundle.cert is not None
    assert bundle.cert.certificate.subject.rfc4514_string() == "CN=ipad"
    root = x509.load_pem_x509_certificate(env.root.read_bytes())
    # The server certificate is the built-in CA's: the root comes along.
    assert x509.load_der_x509_certificate(payloads["com.apple.security.root"]
                                          ["PayloadContent"]) == root
    uuids = [profile["PayloadUUID"], *(p["PayloadUUID"] for p in profile["PayloadContent"])]
    assert len(set(uuids)) == len(uuids)

    # The same device again (after revoking the first): same identifier, new UUIDs.
    env.ca("revoke", "ipad")
    second = env.enroll("ipad")
    _, password2 = _choose(env, second)
    again = plistlib.loads(_download(env, second, "mobileconfig", password2))
    assert again["PayloadIdentifier"] == profile["PayloadIdentifier"]
    assert again["PayloadUUID"] != profile["PayloadUUID"]
    other = env.enroll("other-phone")
    _, password3 = _choose(env, other)
    third = plistlib.loads(_download(env, other, "mobileconfig", password3))
    assert third["PayloadIdentifier"] != profile["PayloadIdentifier"]

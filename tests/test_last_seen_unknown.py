"""``ca list --unknown`` end to end (issue #17, acceptance 1): a certificate
the built-in CA's key signed that the inventory does not hold gets through
without inventory roles and is listed after one request; sightings belong to
one certificate (its SHA-256), never to a serial.

Real certgate subprocesses, real TLS clients, leaves signed with the real
issuing key from STATE/ca/keys/ (what holding an accidental CA's key
amounts to); every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from certgate.ca import CertificateAuthority
from certgate.ca.keys import serial_hex
from certgate.lastseen import DATABASE, FLUSH_ENV, read_seen

from support.clients import Connection, client_context
from support.process import wait_until
from support.sightings import builtin_leaf

FAST = {FLUSH_ENV: "0.3"}
#: Polls read the file in-process (cheap); the CLI is run once at the end.
POLL = 0.1


def _ca(state: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "certgate", "ca", *args, "--state", str(state)],
                            capture_output=True, text=True, check=False, cwd=state.parent,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _unknown(state: Path) -> list[dict[str, Any]]:
    rows = json.loads(_ca(state, "list", "--unknown", "--json"))
    assert isinstance(rows, list)
    return rows


def _phone(state: Path) -> dict[str, Any]:
    """The phone's ``ca list --json`` row (the proxy adds its server certificate)."""
    [row] = [row for row in json.loads(_ca(state, "list", "--json")) if row["name"] == "phone"]
    assert isinstance(row, dict)
    return row


def _config(state: Path) -> str:
    return f"""
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin], crls: [builtin]}}
routes:
  - {{host: localhost, upstream: whoami}}
"""


class Site:
    """A CA with one inventory device (phone, role family) and client files."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.state = base / "state"
        ca = CertificateAuthority.init(self.state, name="Home CA")
        issued = ca.issue_client("phone", roles=["family"], days=30)
        self.phone_serial = issued.serial
        (base / "phone.chain.pem").write_bytes(issued.chain_pem)
        (base / "phone.key").write_bytes(issued.key_pem)
        (base / "phone.key").chmod(0o600)
        self.root = ca.root_cert_path

    def context(self, label: str, version: str | None = None):  # type: ignore[no-untyped-def]
        return client_context(self.root, self.base / f"{label}.chain.pem",
                              self.base / f"{label}.key", version=version)

    def leaf(self, label: str, cn: str, serial: int | None = None) -> str:
        """An unadopted leaf signed by the built-in issuing key; its fingerprint."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        return builtin_leaf(self.state, self.base, label, subject, serial=serial)[2]

    def sighting(self, fingerprint: str) -> Any:
        return read_seen(self.state).by_fingerprint.get(fingerprint)


def _whoami(port: int, ctx: Any, agent: str) -> dict[str, Any]:
    with Connection(port, ctx, timeout=10) as conn:
        # As UTF-8 bytes: h11 would refuse a str that is not ASCII.
        header: Any = ("user-agent", agent.encode())
        reply = conn.request("GET", "/", headers=[header])
    assert reply.status == 200, reply.body
    doc = json.loads(reply.body)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_an_unadopted_leaf_gets_in_without_roles_and_is_listed_after_one_request(
        site: Site, start_certgate: Any, version: str) -> None:
    tablet = site.leaf("tablet", "kitchen-tablet")
    proxy = start_certgate(_config(site.state), env=FAST)
    doc = _whoami(proxy.port, site.context("tablet", version), "Tablet/1.0")
    assert (doc["cn"], doc["fingerprint"], doc["roles"]) == ("kitchen-tablet", tablet, [])
    assert _whoami(proxy.port, site.context("phone", version), "Phone/2.0")["roles"] \
        == ["family"]
    wait_until(lambda: site.sighting(tablet), 60, "the tablet's sighting", interval=POLL)
    [row] = _unknown(site.state)  # the inventory's phone is not unknown
    issuing = x509.load_pem_x509_certificate((site.state / "ca" / "issuing.crt").read_bytes())
    assert row["fingerprint"] == tablet
    assert row["serial"] == serial_hex(int(doc["serial"], 16))
    assert (row["cn"], row["subject"]) == ("kitchen-tablet", "CN=kitchen-tablet")
    assert row["issuer"] == issuing.subject.rfc4514_string()
    assert row["not_after"] == doc["not_after"]
    assert (row["last_ip"], row["last_user_agent"], row["last_route"]) \
        == ("127.0.0.1", "Tablet/1.0", "localhost/")
    table = _ca(site.state, "list", "--unknown").splitlines()
    assert table[0].startswith("SERIAL")
    assert len(table) == 2
    assert "kitchen-tablet" in table[1]
    assert table[1].rstrip().endswith("Tablet/1.0")
    # The known device shows in the inventory listing, as before.
    wait_until(lambda: _phone(site.state)["last_seen"], 60, "phone's last_seen",
               interval=POLL)
    assert (site.state / DATABASE).stat().st_mode & 0o777 == 0o600


def test_nothing_unknown_is_said_in_one_line(site: Site, start_certgate: Any) -> None:
    proxy = start_certgate(_config(site.state), env=FAST)
    _whoami(proxy.port, site.context("phone"), "Phone/2.0")
    wait_until(lambda: read_seen(site.state).by_fingerprint, 60, "phone's sighting",
               interval=POLL)
    lines = _ca(site.state, "list", "--unknown").splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("no unknown certificates seen")
    assert _unknown(site.state) == []


def test_a_leaf_with_a_known_serial_has_a_last_seen_of_its_own(
        site: Site, start_certgate: Any) -> None:
    # Same serial and same subject as the inventory's phone: only the
    # certificate's hash tells them apart.
    twin = site.leaf("twin", "phone", serial=site.phone_serial)
    proxy = start_certgate(_config(site.state), env=FAST)

    def phone_row() -> dict[str, Any]:
        return _phone(site.state)

    _whoami(proxy.port, site.context("twin"), "twin-1")
    wait_until(lambda: site.sighting(twin), 60, "the twin's sighting", interval=POLL)
    [row] = _unknown(site.state)
    assert (row["fingerprint"], row["serial"], row["cn"]) \
        == (twin, serial_hex(site.phone_serial), "phone")
    assert phone_row()["last_seen"] is None  # the twin's use is not the phone's
    _whoami(proxy.port, site.context("phone"), "phone-1")
    wait_until(lambda: phone_row()["last_user_agent"] == "phone-1", 60,
               "phone's own sighting", interval=0.5)
    _whoami(proxy.port, site.context("twin"), "twin-2")
    wait_until(lambda: site.sighting(twin).user_agent == "twin-2", 60,
               "the twin's second sighting", interval=POLL)
    assert phone_row()["last_user_agent"] == "phone-1"
    assert [(r["fingerprint"], r["last_user_agent"]) for r in _unknown(site.state)] \
        == [(twin, "twin-2")]
    shown = json.loads(_ca(site.state, "show", "phone", "--json"))
    assert shown["last_user_agent"] == "phone-1"


def test_a_leaf_with_a_known_serial_gets_no_inventory_roles(
        site: Site, start_certgate: Any) -> None:
    site.leaf("twin", "phone", serial=site.phone_serial)
    proxy = start_certgate(_config(site.state), env=FAST)
    assert _whoami(proxy.port, site.context("twin"), "twin")["roles"] == []
    assert _whoami(proxy.port, site.context("phone"), "phone")["roles"] == ["family"]


def test_an_old_serial_keyed_file_still_lists_and_gains_the_new_table(
        site: Site, start_certgate: Any) -> None:
    """A lastseen.sqlite3 written before the upgrade: its rows keep showing,
    and the upgraded proxy adds its table next to them."""
    site.state.mkdir(exist_ok=True)
    path = site.state / DATABASE
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE seen (serial TEXT PRIMARY KEY, last_seen TEXT NOT NULL, "
                     "at REAL NOT NULL, ip TEXT NOT NULL, user_agent TEXT NOT NULL, "
                     "route TEXT NOT NULL)")
        conn.execute("INSERT INTO seen VALUES (?, '2026-01-02T03:04:05Z', 1.0, '192.0.2.1', "
                     "'before-upgrade', 'localhost/')", (serial_hex(site.phone_serial),))
        conn.commit()
    finally:
        conn.close()
    path.chmod(0o600)
    row = _phone(site.state)
    assert (row["last_seen"], row["last_user_agent"]) \
        == ("2026-01-02T03:04:05Z", "before-upgrade")
    tablet = site.leaf("tablet", "tablet")
    proxy = start_certgate(_config(site.state), env=FAST)
    _whoami(proxy.port, site.context("tablet"), "\u202eTablet\u009b")
    wait_until(lambda: site.sighting(tablet), 60, "the tablet's sighting", interval=POLL)
    # Untouched by another certificate's use.
    assert _phone(site.state)["last_user_agent"] == "before-upgrade"
    out = _ca(site.state, "list", "--unknown")
    assert not [ch for ch in out if unicodedata.category(ch) in ("Cc", "Cf") and ch != "\n"]
    assert "\ufffdTablet\ufffd" in out
    _whoami(proxy.port, site.context("phone"), "after-upgrade")
    wait_until(lambda: _phone(site.state)["last_user_agent"] == "after-upgrade", 60,
               "phone's new sighting to supersede the old row", interval=0.5)
    assert path.stat().st_mode & 0o777 == 0o600

"""``ca list --unknown`` and the fingerprint join, without a proxy.

The pure parts: the recorder's rows (what an unknown device's sighting
holds, sanitised), the join of inventory records to sightings by SHA-256
(never by serial alone), the old serial-keyed table read as a fallback, and
the listing's text and JSON with hostile fields. The proxy end to end is in
tests/test_last_seen_unknown.py.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import h11
import pytest

from certgate.ca import CertificateAuthority
from certgate.ca.keys import serial_hex
from certgate.ca.listing import (
    NO_UNKNOWN,
    fingerprint,
    match_sightings,
    print_unknown,
    unknown_rows,
)
from certgate.lastseen import (
    DATABASE,
    MAX_TEXT,
    Sightings,
    read_seen,
    to_seen,
    write_batch,
)

from .conftest import Result
from support.sightings import ISSUER, identity, seen_of

NOW = "2026-05-09T07:35:25Z"

OLD_SCHEMA = """
CREATE TABLE seen (
    serial TEXT PRIMARY KEY, last_seen TEXT NOT NULL, at REAL NOT NULL,
    ip TEXT NOT NULL, user_agent TEXT NOT NULL, route TEXT NOT NULL)
"""


def write_old_table(state: Path, rows: list[tuple[int, str, float, str]]) -> None:
    """A lastseen.sqlite3 as certgate wrote it before fingerprints: (serial,
    last_seen, at, user agent) rows in the table ``seen``."""
    state.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(state / DATABASE)
    try:
        conn.execute(OLD_SCHEMA)
        conn.executemany("INSERT INTO seen VALUES (?, ?, ?, '192.0.2.1', ?, 'old/')",
                         [(serial_hex(serial), when, at, agent)
                          for serial, when, at, agent in rows])
        conn.commit()
    finally:
        conn.close()


def _unsafe(text: str) -> list[str]:
    return [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")
            and ch != "\n"]


def test_a_sighting_carries_what_identifies_the_certificate() -> None:
    leaf = identity("kitchen-tablet", serial=1)
    request = h11.Request(method="GET", target="/", headers=[("Host", "x"),
                                                             ("User-Agent", "Tab/1")])
    [row] = to_seen({leaf.fingerprint: (1778312125.25, "192.0.2.5", request, "r/", leaf)})
    assert (row.fingerprint, row.serial, row.cn, row.subject) == (
        leaf.fingerprint, 1, "kitchen-tablet", "CN=kitchen-tablet")
    # The issuer is the CA certificate that verifiably signed the leaf, not
    # the issuer name the leaf wrote about itself.
    assert row.issuer == ISSUER.dn != leaf.issuer_dn
    assert row.not_after == leaf.not_after_rfc3339
    assert (row.last_seen, row.ip, row.user_agent, row.route) == (
        "2026-05-09T07:35:25Z", "192.0.2.5", "Tab/1", "r/")


def test_a_hostile_subject_is_stored_sanitised_and_cut() -> None:
    cn = "a\x1b]0;owned\x07\u202eb\u009b31m" + "X" * 2000
    leaf = dataclasses.replace(identity("plain"), cn=cn, dn=f"CN={cn}")
    [row] = to_seen({leaf.fingerprint: (time.time(), "192.0.2.5", None, "r/", leaf)})
    for text in (row.cn, row.subject):
        assert len(text) <= MAX_TEXT
        assert not _unsafe(text)
        assert text.removeprefix("CN=").startswith("a\ufffd]0;owned\ufffd\ufffdb\ufffd31m")


def test_two_certificates_with_one_serial_keep_two_sightings(
        ca: CertificateAuthority, state: Path) -> None:
    ca.issue_client("phone", days=30)
    [phone] = ca.certificates().records
    # The same serial, another certificate (an accidental CA's `-set_serial`).
    twin = dataclasses.replace(phone, name="twin", cert_pem=_other_pem(phone.serial))
    assert fingerprint(twin) != fingerprint(phone)
    write_batch(state, [seen_of(phone.serial, fingerprint(twin), NOW, 10.0, "twin-ua")])
    sightings = read_seen(state)
    assert match_sightings([phone], sightings) == {}  # the twin's use is not phone's
    assert match_sightings([phone, twin], sightings)[fingerprint(twin)].user_agent == "twin-ua"
    assert [row["fingerprint"] for row in unknown_rows([phone], sightings)] \
        == [fingerprint(twin)]
    assert unknown_rows([phone, twin], sightings) == []


def _other_pem(serial: int) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509 import load_der_x509_certificate

    der = identity("twin", serial=serial).der
    return load_der_x509_certificate(der).public_bytes(Encoding.PEM)


def test_an_old_serial_keyed_file_still_lists(
        ca: CertificateAuthority, cli: Callable[..., Result], state: Path) -> None:
    old = ca.issue_client("phone", days=30)
    laptop = ca.issue_client("laptop", days=30)
    write_old_table(state, [(old.serial, "2026-01-02T03:04:05Z", 1.0, "before-upgrade")])
    rows = {row["name"]: row for row in cli("list", "--json").json()}
    assert rows["phone"]["last_seen"] == "2026-01-02T03:04:05Z"
    assert rows["phone"]["last_user_agent"] == "before-upgrade"
    assert rows["laptop"]["last_seen"] is None
    assert cli("show", "phone", "--json").json()["last_seen"] == "2026-01-02T03:04:05Z"
    # A new write adds the new table to the same file and leaves the old one;
    # a sighting by fingerprint supersedes the old row of that certificate.
    records = {rec.name: rec for rec in ca.certificates().records}
    write_batch(state, [seen_of(laptop.serial, fingerprint(records["laptop"]), NOW, 2.0),
                        seen_of(old.serial, fingerprint(records["phone"]), NOW, 3.0, "new")])
    rows = {row["name"]: row for row in cli("list", "--json").json()}
    assert (rows["phone"]["last_user_agent"], rows["laptop"]["last_seen"]) == ("new", NOW)
    assert set(read_seen(state).legacy) == {old.serial}
    # Old rows never show as unknown: they cannot say which certificate it was.
    assert cli("list", "--unknown", "--json").json() == []


def test_an_old_row_goes_to_no_record_when_two_share_its_serial(
        ca: CertificateAuthority, state: Path) -> None:
    ca.issue_client("phone", days=30)
    [phone] = ca.certificates().records
    twin = dataclasses.replace(phone, name="twin", cert_pem=_other_pem(phone.serial))
    sightings = Sightings({}, {phone.serial: seen_of(phone.serial, "", NOW, 1.0)})
    assert fingerprint(phone) in match_sightings([phone], sightings)
    assert match_sightings([phone, twin], sightings) == {}


def test_unknown_lists_every_unrecorded_certificate_newest_first(
        ca: CertificateAuthority, cli: Callable[..., Result], state: Path) -> None:
    ca.issue_client("phone", days=30)
    ca.issue_client("lost", days=30)
    ca.revoke("lost")
    records = {rec.name: rec for rec in ca.certificates().records}
    write_batch(state, [
        seen_of(records["phone"].serial, fingerprint(records["phone"]), NOW, 5.0),
        seen_of(records["lost"].serial, fingerprint(records["lost"]), NOW, 6.0),
        seen_of(1, "a" * 64, "2026-05-09T07:00:00Z", 1.0, "Old/1", cn="old-tablet",
                subject="CN=old-tablet", issuer="CN=Home CA", not_after="2027-01-01T00:00:00Z"),
        seen_of(1, "b" * 64, "2026-05-09T08:00:00Z", 2.0, "", subject="O=no cn",
                issuer="CN=Home CA", not_after="2027-01-01T00:00:00Z"),
    ])
    rows = cli("list", "--unknown", "--json").json()
    # A revoked record is known: the inventory holds that certificate.
    assert [row["fingerprint"] for row in rows] == ["b" * 64, "a" * 64]
    assert rows[1] == {
        "serial": "01", "fingerprint": "a" * 64, "subject": "CN=old-tablet",
        "cn": "old-tablet", "issuer": "CN=Home CA", "not_after": "2027-01-01T00:00:00Z",
        "last_seen": "2026-05-09T07:00:00Z", "last_ip": "192.0.2.7",
        "last_user_agent": "Old/1", "last_route": "phone.example/",
    }
    table = cli("list", "--unknown").out.splitlines()
    assert table[0].split() == ["SERIAL", "SUBJECT", "ISSUER", "NOT", "AFTER", "LAST",
                                "SEEN", "IP", "USER", "AGENT"]
    assert table[1].split()[:3] == ["01", "O=no", "cn"]  # no CN: the DN
    assert table[2].split()[:2] == ["01", "old-tablet"]
    assert table[2].split()[-1] == "Old/1"


def test_unknown_says_so_when_there_is_nothing(
        ca: CertificateAuthority, cli: Callable[..., Result]) -> None:
    result = cli("list", "--unknown")
    assert (result.code, result.out) == (0, NO_UNKNOWN + "\n")
    assert "since" in NO_UNKNOWN
    assert cli("list", "--unknown", "--json").json() == []


@pytest.mark.parametrize("other", [("--role", "family"), ("--stale", "30d"),
                                   ("--expiring", "7d")])
def test_unknown_does_not_combine_with_inventory_filters(
        ca: CertificateAuthority, cli: Callable[..., Result], other: tuple[str, str]) -> None:
    result = cli("list", "--unknown", *other)
    assert result.code != 0
    assert "--unknown" in result.err
    assert len(result.err.strip().splitlines()) == 1


HOSTILE = "\x1b[2J\x1b]0;owned\x07\u202eevil\u009b31m\\x41 \ud800 caf\u00e9"


def test_hostile_bytes_in_a_row_are_escaped_on_a_terminal_and_raw_safe_in_json(
        ca: CertificateAuthority, cli: Callable[..., Result], state: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Rows as a hostile writer of the file (not certgate) could leave them:
    # nothing sanitised. Reading sanitises, printing escapes again.
    ca.issue_client("phone", days=30)
    conn = sqlite3.connect(state / DATABASE)
    try:
        conn.execute("""CREATE TABLE sightings (fingerprint TEXT PRIMARY KEY, serial TEXT,
            subject TEXT, cn TEXT, issuer TEXT, not_after TEXT, last_seen TEXT, at REAL,
            ip TEXT, user_agent TEXT, route TEXT)""")
        raw = HOSTILE.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        conn.execute("INSERT INTO sightings VALUES (?, '01', ?, ?, ?, ?, ?, 1.0, ?, ?, ?)",
                     ("c" * 64, *[raw] * 8))
        conn.commit()
    finally:
        conn.close()
    table = cli("list", "--unknown").out
    assert not _unsafe(table)
    assert "\ufffd[2J" in table
    assert "caf\u00e9" in table
    assert "\\\\x41" in table  # a backslash in the data cannot forge an escape
    text = cli("list", "--unknown", "--json").out
    assert text.isascii()
    assert not _unsafe(text)
    [row] = json.loads(text)
    assert row["cn"].startswith("\ufffd[2J\ufffd]0;owned\ufffd\ufffdevil\ufffd31m")
    # print_unknown escapes on its own too (rows built by something else).
    print_unknown([{"serial": "01", "cn": HOSTILE, "subject": "", "issuer": HOSTILE,
                    "not_after": "", "last_seen": NOW, "last_ip": HOSTILE,
                    "last_user_agent": HOSTILE}])
    printed = capsys.readouterr().out
    assert not _unsafe(printed)
    assert "\\x1b[2J" in printed
    assert "\\u202e" in printed

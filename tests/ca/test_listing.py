"""Last seen without a proxy: the store, the sanitiser, staleness, ``ca show``."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import h11
import pytest

from certgate.ca import CertificateAuthority
from certgate.ca.keys import serial_hex
from certgate.ca.listing import fingerprint, match_sightings, stale_devices
from certgate.ca.timeutil import utcnow
from certgate.lastseen import (
    FLUSH_INTERVAL,
    MAX_PENDING,
    Recorder,
    Seen,
    flush,
    flush_interval,
    printable,
    read_seen,
    sanitise,
    write_batch,
)

from .conftest import Result
from support.sightings import identity, seen_of


def _seen(serial: int, when: str, at: float, agent: str = "ua") -> Seen:
    return seen_of(serial, f"{serial:064x}", when, at, agent)


def test_the_newest_sighting_wins_whatever_the_order_of_flushes(tmp_path: Path) -> None:
    write_batch(tmp_path, [_seen(1, "2026-01-01T10:00:00Z", 100.5, "newer")])
    # Another worker flushes an older sighting of the same certificate
    # afterwards, even one in the same second.
    write_batch(tmp_path, [_seen(1, "2026-01-01T10:00:00Z", 100.2, "older")])
    assert read_seen(tmp_path).of(f"{1:064x}", 1).user_agent == "newer"  # type: ignore[union-attr]
    write_batch(tmp_path, [_seen(1, "2026-01-01T10:00:01Z", 101.0, "newest")])
    assert read_seen(tmp_path).of(f"{1:064x}", 1).user_agent == "newest"  # type: ignore[union-attr]


def test_nothing_recorded_reads_as_empty(tmp_path: Path) -> None:
    assert not read_seen(tmp_path)
    assert write_batch(tmp_path, []) == 0
    assert not (tmp_path / "lastseen.sqlite3").exists()


def test_recorder_batches_reads_user_agent_later_and_keeps_newer_on_put_back(
        tmp_path: Path) -> None:
    recorder = Recorder()
    request = h11.Request(method="GET", target="/", headers=[
        ("Host", "x"), ("User-Agent", "Immich/1.1")])
    phone = identity("phone")
    recorder.note(phone, "192.0.2.1", request, "r/")
    recorder.note(phone, "192.0.2.2", None, "r/")  # the newer use replaces the older
    batch = recorder.take()
    assert len(recorder) == 0
    assert len(batch) == 1
    recorder.note(phone, "192.0.2.3", request, "r/")  # newer than the batch
    recorder.put_back(batch)  # a failed flush gives it back: the newer stays
    assert recorder.take()[phone.fingerprint][1] == "192.0.2.3"
    other = identity("other")
    assert flush(tmp_path, {other.fingerprint: (time.time(), "192.0.2.9", request, "a/",
                                                other)}) == 1
    stored = read_seen(tmp_path).of(other.fingerprint, other.serial)
    assert stored is not None
    assert stored.user_agent == "Immich/1.1"
    assert (stored.cn, stored.serial, stored.fingerprint) == ("other", other.serial,
                                                               other.fingerprint)


def test_recorder_is_bounded_but_keeps_updating_what_it_holds() -> None:
    recorder = Recorder()
    first = identity("first")
    recorder.note(first, "ip", None, "r")
    # Identities differ only in their fingerprint as far as the recorder
    # cares: copies of one with other fingerprints stand in for 10,000 leaves.
    for number in range(MAX_PENDING + 50):
        recorder.note(identity("first", fingerprint=f"{number:064x}"), "ip", None, "r")
    assert len(recorder) == MAX_PENDING
    recorder.note(first, "newer", None, "r")
    assert recorder.take()[first.fingerprint][1] == "newer"


@pytest.mark.parametrize(("raw", "expected"), [
    (b"plain/1.0", "plain/1.0"),
    ("a\u009b31mb".encode(), "a\ufffd31mb"),  # C1 CSI
    (b"a\x9bb", "a\ufffdb"),  # not UTF-8: replaced, not decoded as latin-1 CSI
    ("x\u202ey".encode(), "x\ufffdy"),  # bidi override
    (b"a\x1b[2Jb\x07", "a\ufffd[2Jb\ufffd"),
    (b"<script>", "<script>"),
])
def test_sanitise(raw: bytes, expected: str) -> None:
    assert sanitise(raw) == expected


def test_sanitise_cuts_and_printable_escapes() -> None:
    assert len(sanitise(b"A" * 100_000)) == 256
    assert printable("a\x1b[31m\u202eb\\") == "a\\x1b[31m\\u202eb\\\\"
    assert printable("caf\u00e9 \ufffd") == "caf\u00e9 \ufffd"


def test_flush_interval_override() -> None:
    assert flush_interval({}) == FLUSH_INTERVAL
    assert flush_interval({"CERTGATE_LAST_SEEN_FLUSH_SECONDS": "0.5"}) == 0.5
    for bad in ("0", "-1", "nan", "1e9", "x"):
        assert flush_interval({"CERTGATE_LAST_SEEN_FLUSH_SECONDS": bad}) == FLUSH_INTERVAL


def test_stale_judges_a_device_by_any_of_its_certificates(
        ca: CertificateAuthority, cli: Callable[..., Result], state: Path) -> None:
    old = ca.issue_client("phone", roles=["family"], days=30)
    new = ca.renew("phone")  # old is now superseded, new never used yet
    recent = ca.issue_client("laptop", days=30)
    away = ca.issue_client("tablet", days=30)
    ca.issue_client("lost", days=30)
    ca.revoke("lost")
    now = utcnow()
    long_ago = now - timedelta(days=40)
    stamp = long_ago.strftime("%Y-%m-%dT%H:%M:%SZ")
    fresh = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    inventory = ca.certificates()
    by_serial = {rec.serial: rec for rec in inventory.records}

    def sighting(serial: int, when: str, at: float) -> Seen:
        return seen_of(serial, fingerprint(by_serial[serial]), when, at)

    write_batch(state, [sighting(old.serial, fresh, now.timestamp()),
                        sighting(recent.serial, fresh, now.timestamp()),
                        sighting(away.serial, stamp, long_ago.timestamp())])
    seen = match_sightings(inventory.records, read_seen(state))
    stale = stale_devices(inventory.records, seen, now, timedelta(days=30))
    assert [(d.name, d.seen is None) for d in stale] == [("tablet", False)]
    ca.issue_client("spare", days=30)  # issued, never installed
    result = cli("list", "--stale", "30d", "--json")
    assert result.code == 0
    rows = {row["name"]: row for row in result.json()}
    assert sorted(rows) == ["spare", "tablet"]
    assert rows["tablet"]["last_seen"] == stamp
    assert rows["spare"]["last_seen"] is None
    assert "never" in cli("list", "--stale", "30d").out
    # ca show: the device's newest use, and each certificate with its own.
    shown = cli("show", "phone", "--json").json()
    assert shown["last_seen"] == fresh
    by_serial = {c["serial"]: c for c in shown["certificates"]}
    assert by_serial[serial_hex(old.serial)]["status"] == "superseded"
    assert by_serial[serial_hex(old.serial)]["last_seen"] == fresh
    assert by_serial[serial_hex(new.serial)]["last_seen"] is None
    assert by_serial[serial_hex(new.serial)]["roles"] == ["family"]
    assert cli("show", "nobody").code == 1

"""``ca list`` and ``ca show``: the inventory joined with last seen.

The inventory (``ca/inventory.sqlite3``) says what was issued; the proxy's
last-seen file (``STATE/lastseen.sqlite3``, :mod:`certgate.lastseen`) says
what is used. Both are read here, read-only, and joined by the
certificate's SHA-256 fingerprint (:func:`match_sightings`), never by serial
alone: an adopted CA may have issued many leaves with one serial, and a use
of one must not show as a use of another. The row building and the
staleness decision are pure functions over records, so they are tested
without a CLI.

``ca list --unknown`` is the other side of the join: certificates the
built-in CA's key signed, seen by the proxy, that no inventory record is
(:func:`unknown_rows`): the devices an adopted CA's inventory still lacks.

A *device* is a name: renewing it changes the serial, not the device. So
``--stale`` judges a name by the newest use of any of its certificates, and
lists it with its current certificate; never-seen devices are listed too
(``last_seen`` null, "never" in the table): a certificate issued and never
installed is exactly what the inventory advice wants found.

Everything printed to a terminal goes through :func:`certgate.lastseen.printable`:
a User-Agent is client-chosen text, an unknown certificate's subject is
whatever its issuer wrote.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certgate.ca.keys import pem_fingerprint, serial_hex
from certgate.ca.store import CertRecord
from certgate.ca.timeutil import rfc3339
from certgate.errors import CAError
from certgate.lastseen import Seen, Sightings, printable

__all__ = [
    "NO_UNKNOWN",
    "Device",
    "certificate_row",
    "detail_row",
    "device_of",
    "fingerprint",
    "match_sightings",
    "print_show",
    "print_table",
    "print_unknown",
    "stale_devices",
    "unknown_rows",
]

#: What ``ca list --unknown`` prints when there is nothing to list: an empty
#: table would not say that older sightings were never recorded this way.
NO_UNKNOWN = ("no unknown certificates seen (only certificates presented to this proxy "
              "since certgate began recording fingerprints are listed)")


@functools.lru_cache(maxsize=4096)
def _pem_fingerprint(cert_pem: bytes) -> str:
    return pem_fingerprint(cert_pem)


def fingerprint(rec: CertRecord) -> str:
    """Lowercase hex SHA-256 of the record's certificate (DER), as the proxy keys it."""
    return _pem_fingerprint(rec.cert_pem)


def match_sightings(records: Iterable[CertRecord], sightings: Sightings) -> dict[str, Seen]:
    """Record fingerprint -> its newest sighting, for the records seen at all.

    By fingerprint first; a record without one falls back to the old
    serial-keyed table only if no other record has its serial (an old row
    cannot say which of two such certificates it saw, so neither gets it).
    """
    records = list(records)
    serials = Counter(rec.serial for rec in records)
    out: dict[str, Seen] = {}
    for rec in records:
        key = fingerprint(rec)
        found = sightings.of(key, rec.serial, legacy=serials[rec.serial] == 1)
        if found is not None:
            out[key] = found
    return out


def _seen_fields(seen: Seen | None) -> dict[str, str | None]:
    # Exactly the four keys the issue names, null when never seen.
    if seen is None:
        return {"last_seen": None, "last_ip": None, "last_user_agent": None,
                "last_route": None}
    return {"last_seen": seen.last_seen, "last_ip": seen.ip,
            "last_user_agent": seen.user_agent, "last_route": seen.route}


def certificate_row(rec: CertRecord, now: datetime, seen: Seen | None) -> dict[str, Any]:
    """One ``ca list --json`` row."""
    return {
        "name": rec.name,
        "serial": serial_hex(rec.serial),
        "kind": rec.kind,
        "roles": list(rec.roles),
        "sans": list(rec.sans),
        "not_before": rfc3339(rec.not_before),
        "not_after": rfc3339(rec.not_after),
        "status": rec.status(now),
        "revocation_reason": rec.revocation_reason,
        "revoked_at": rfc3339(rec.revoked_at) if rec.revoked_at else None,
        "superseded_by": serial_hex(rec.superseded_by) if rec.superseded_by else None,
        **_seen_fields(seen),
    }


def detail_row(rec: CertRecord, now: datetime, seen: Seen | None) -> dict[str, Any]:
    """Every field of one certificate (``ca show``): the list row and more."""
    cert = x509.load_pem_x509_certificate(rec.cert_pem)
    row = certificate_row(rec, now, seen)
    row.update({
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "issuer_serial": serial_hex(rec.issuer_serial),
        "issued_at": rfc3339(rec.issued_at),
        "lifetime_seconds": rec.lifetime,
        "sha256": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        "certificate_pem": rec.cert_pem.decode("ascii"),
    })
    return row


@dataclass(frozen=True, slots=True)
class Device:
    """A name, its current certificate and its newest use across all of them."""

    name: str
    current: CertRecord
    seen: Seen | None


def device_of(records: Sequence[CertRecord], seen: Mapping[str, Seen]) -> Seen | None:
    """The newest sighting of any of ``records`` (one name's history).

    ``seen`` is :func:`match_sightings` of the inventory.
    """
    found = [seen[key] for key in map(fingerprint, records) if key in seen]
    return max(found, key=lambda s: (s.last_seen, s.at), default=None)


def stale_devices(records: Iterable[CertRecord], seen: Mapping[str, Seen], now: datetime,
                  age: timedelta) -> list[Device]:
    """Client devices with a valid certificate, not seen since ``now - age``.

    A device never seen is stale whatever its age. Revoked and expired
    devices are not listed: they can no longer get in, so there is nothing
    to clean up. Names come out in issue order.
    """
    by_name: dict[str, list[CertRecord]] = {}
    for rec in records:
        if rec.kind == "client":
            by_name.setdefault(rec.name, []).append(rec)
    cutoff = rfc3339(now - age)
    out: list[Device] = []
    for name, history in by_name.items():
        current = [rec for rec in history if rec.status(now) == "valid"]
        if not current:
            continue
        newest = device_of(history, seen)
        if newest is None or newest.last_seen < cutoff:
            out.append(Device(name, current[-1], newest))
    return out


def unknown_rows(records: Iterable[CertRecord], sightings: Sightings) -> list[dict[str, Any]]:
    """``ca list --unknown --json``: certificates seen that no record is, newest first.

    Known means the exact certificate (its fingerprint) is in the inventory,
    whatever its status: a revoked or expired record is known. Another
    certificate with a known serial or subject is still unknown.
    """
    known = {fingerprint(rec) for rec in records}
    return [
        {
            "serial": serial_hex(seen.serial),
            "fingerprint": seen.fingerprint,
            "subject": seen.subject,
            "cn": seen.cn,
            "issuer": seen.issuer,
            "not_after": seen.not_after,
            **_seen_fields(seen),
        }
        for seen in sightings.unknown(known)
    ]


def print_unknown(rows: Sequence[Mapping[str, Any]]) -> None:
    """``ca list --unknown``: one line per certificate, or :data:`NO_UNKNOWN`."""
    if not rows:
        print(NO_UNKNOWN)
        return
    _print_columns(
        ("SERIAL", "SUBJECT", "ISSUER", "NOT AFTER", "LAST SEEN", "IP", "USER AGENT"),
        [(row["serial"], row["cn"] or row["subject"] or "-", row["issuer"] or "-",
          row["not_after"] or "-", row["last_seen"], row["last_ip"] or "-",
          row["last_user_agent"] or "-") for row in rows])


def _print_columns(header: tuple[str, ...], lines: Sequence[Sequence[str]]) -> None:
    # Widths of what is printed, i.e. after escaping: an escaped cell is
    # longer than the raw one.
    table = [[printable(cell) for cell in line] for line in (header, *lines)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width)
                        for cell, width in zip(line, widths, strict=True)).rstrip())


def print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    header = ("NAME", "KIND", "SERIAL", "ROLES", "NOT BEFORE", "NOT AFTER", "STATUS",
              "LAST SEEN")
    _print_columns(header, [
        (
            row["name"],
            row["kind"],
            row["serial"],
            ",".join(row["roles"]) or "-",
            row["not_before"],
            row["not_after"],
            row["status"]
            + (f" ({row['revocation_reason']})" if row["revocation_reason"] else ""),
            _seen_cell(row),
        )
        for row in rows
    ])


def _seen_cell(row: Mapping[str, Any]) -> str:
    if row["last_seen"] is None:
        return "never" if row["kind"] == "client" else "-"
    return f"{row['last_seen']} {row['last_ip']}"


def print_show(name: str, rows: Sequence[Mapping[str, Any]], newest: Seen | None,
               as_json: bool) -> None:
    """``ca show NAME``: the device's last use, then each certificate in full."""
    if not rows:
        raise CAError(f"no certificate named {name!r}")
    if as_json:
        json.dump({"name": name, **_seen_fields(newest), "certificates": list(rows)},
                  sys.stdout, indent=2)
        print()
        return
    lines = [f"name:            {name}"]
    if newest is None:
        lines.append("last seen:       never")
    else:
        lines += [
            f"last seen:       {newest.last_seen}",
            f"  from:          {newest.ip}",
            f"  route:         {newest.route}",
            f"  user agent:    {newest.user_agent or '-'}",
        ]
    for row in rows:
        lines += ["", f"certificate {row['serial']} ({row['status']})"]
        for key, label in _SHOW_FIELDS:
            value = row[key]
            if isinstance(value, list):
                value = ", ".join(value) or "-"
            lines.append(f"  {label:<17}{'-' if value is None else value}")
    for line in lines:
        print(printable(line))


_SHOW_FIELDS = (
    ("kind", "kind:"),
    ("subject", "subject:"),
    ("sans", "SANs:"),
    ("roles", "roles:"),
    ("not_before", "not before:"),
    ("not_after", "not after:"),
    ("lifetime_seconds", "lifetime (s):"),
    ("issued_at", "issued at:"),
    ("issuer", "issuer:"),
    ("issuer_serial", "issuer serial:"),
    ("sha256", "SHA-256:"),
    ("superseded_by", "superseded by:"),
    ("revoked_at", "revoked at:"),
    ("revocation_reason", "reason:"),
    ("last_seen", "last seen:"),
    ("last_ip", "  from:"),
    ("last_route", "  route:"),
    ("last_user_agent", "  user agent:"),
)

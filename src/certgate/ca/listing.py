"""``ca list`` and ``ca show``: the inventory joined with last seen.

The inventory (``ca/inventory.sqlite3``) says what was issued; the proxy's
last-seen file (``STATE/lastseen.sqlite3``, :mod:`certgate.lastseen`) says
what is used. Both are read here, read-only, and joined by serial. The row
building and the staleness decision are pure functions over records, so
they are tested without a CLI.

A *device* is a name: renewing it changes the serial, not the device. So
``--stale`` judges a name by the newest use of any of its certificates, and
lists it with its current certificate; never-seen devices are listed too
(``last_seen`` null, "never" in the table): a certificate issued and never
installed is exactly what the inventory advice wants found.

Everything printed to a terminal goes through :func:`certgate.lastseen.printable`:
a User-Agent is client-chosen text.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certgate.ca.keys import serial_hex
from certgate.ca.store import CertRecord
from certgate.ca.timeutil import rfc3339
from certgate.errors import CAError
from certgate.lastseen import Seen, printable

__all__ = [
    "Device",
    "certificate_row",
    "detail_row",
    "device_of",
    "print_show",
    "print_table",
    "stale_devices",
]


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


def device_of(records: Sequence[CertRecord], seen: Mapping[int, Seen]) -> Seen | None:
    """The newest sighting of any of ``records`` (one name's history)."""
    found = [seen[rec.serial] for rec in records if rec.serial in seen]
    return max(found, key=lambda s: (s.last_seen, s.at), default=None)


def stale_devices(records: Iterable[CertRecord], seen: Mapping[int, Seen], now: datetime,
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


def print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    header = ("NAME", "KIND", "SERIAL", "ROLES", "NOT BEFORE", "NOT AFTER", "STATUS",
              "LAST SEEN")
    table = [header] + [
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
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        cells = (printable(cell).ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())


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

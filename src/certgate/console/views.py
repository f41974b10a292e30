"""What each console page shows, computed from records (pure; issue #14).

The handlers read the CA (inventory, enrollments, CRL, audit log, last
seen) in a thread and hand plain records to these functions, which decide
statuses, counts, sorting and filtering. Nothing here touches disk or the
network, so the decisions are tested with dataclasses alone.

A *device* is a client certificate name: renewing changes the serial, not
the device. Its *current* certificate is the newest one issued under that
name; its status is that certificate's (valid, expired, revoked,
superseded); its last use is the newest sighting of any of its
certificates (:func:`certgate.ca.listing.device_of`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from certgate.ca.listing import device_of
from certgate.ca.store import CertRecord
from certgate.ca.timeutil import rfc3339
from certgate.lastseen import Seen

__all__ = [
    "DEVICE_OPERATIONS",
    "SORT_KEYS",
    "STATUSES",
    "Device",
    "Overview",
    "device_history",
    "devices",
    "filter_devices",
    "overview",
    "sort_devices",
]

STATUSES = ("valid", "expired", "revoked", "superseded")
SORT_KEYS = ("name", "status", "not_after", "last_seen")
SOON = timedelta(days=30)
STALE = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    current: CertRecord
    status: str
    certificates: tuple[CertRecord, ...]  # oldest first
    seen: Seen | None

    @property
    def roles(self) -> tuple[str, ...]:
        return self.current.roles

    def expires_within(self, now: datetime, window: timedelta) -> bool:
        return self.status == "valid" and self.current.not_after <= now + window

    def unseen_for(self, now: datetime, window: timedelta) -> bool:
        """Valid, and not used since ``now - window``. Never used counts only
        once the device is older than the window: one issued five minutes
        ago has not been "unseen for 30 days"."""
        if self.status != "valid":
            return False
        if self.seen is None:
            return self.certificates[0].issued_at <= now - window
        return self.seen.last_seen < rfc3339(now - window)


def devices(records: Iterable[CertRecord], seen: Mapping[str, Seen],
            now: datetime) -> list[Device]:
    """Every client device, in the order its name was first issued."""
    by_name: dict[str, list[CertRecord]] = {}
    for rec in records:
        if rec.kind == "client":
            by_name.setdefault(rec.name, []).append(rec)
    out: list[Device] = []
    for name, history in by_name.items():
        history.sort(key=lambda rec: rec.issued_at)
        # The newest certificate still in use, else simply the newest one.
        usable = [rec for rec in history if rec.status(now) == "valid"]
        current = usable[-1] if usable else history[-1]
        out.append(Device(name, current, current.status(now), tuple(history),
                          device_of(history, seen)))
    return out


def filter_devices(found: Sequence[Device], query: str = "", status: str = "") -> list[Device]:
    """Devices whose name, roles or last User-Agent contain ``query`` (any
    case), and whose status is ``status`` when one is given."""
    needle = query.strip().lower()
    out = []
    for device in found:
        if status and device.status != status:
            continue
        if needle:
            haystack = " ".join((device.name, *device.roles,
                                 device.seen.user_agent if device.seen else "")).lower()
            if needle not in haystack:
                continue
        out.append(device)
    return out


def sort_devices(found: Sequence[Device], key: str = "name",
                 descending: bool = False) -> list[Device]:
    """Sorted by one of :data:`SORT_KEYS`; never seen sorts as oldest."""
    def value(device: Device) -> Any:
        if key == "status":
            return (STATUSES.index(device.status), device.name)
        if key == "not_after":
            return (device.current.not_after, device.name)
        if key == "last_seen":
            return (device.seen.last_seen if device.seen else "", device.name)
        return device.name.lower()

    return sorted(found, key=value, reverse=descending)


@dataclass(frozen=True, slots=True)
class Overview:
    by_status: dict[str, int]
    expiring_soon: list[Device]
    unseen: list[Device]
    pending_enrollments: int


def overview(found: Sequence[Device], pending_enrollments: int, now: datetime) -> Overview:
    counts = Counter(device.status for device in found)
    return Overview(
        by_status={status: counts.get(status, 0) for status in STATUSES},
        expiring_soon=[d for d in found if d.expires_within(now, SOON)],
        unseen=[d for d in found if d.unseen_for(now, STALE)],
        pending_enrollments=pending_enrollments,
    )


# Audit operations that tell a device's story, in the words the page uses.
_HISTORY = {
    "issue": "issued",
    "sign": "issued (signed CSR)",
    "renew": "renewed",
    "revoke": "revoked",
    "role-add": "role added",
    "role-remove": "role removed",
    "enroll-create": "enrollment link created",
    "enroll-download": "enrolled",
    "enroll-csr": "issued (key made on the device)",
    "enroll-burn": "enrollment link burned",
    "enroll-expire": "enrollment link expired",
    "enroll-cancel": "enrollment link cancelled",
    "enroll-wrong-pin": "wrong PIN",
}
# The operations about a client certificate name (the audit page links
# those names to a device page; init or issue-server name no device).
DEVICE_OPERATIONS = frozenset(_HISTORY)


def device_history(entries: Iterable[Mapping[str, Any]], name: str) -> list[dict[str, Any]]:
    """The audit entries about ``name``, newest first, with a readable label."""
    out = []
    for entry in entries:
        if entry.get("name") != name:
            continue
        operation = str(entry.get("operation", ""))
        out.append({**entry, "label": _HISTORY.get(operation, operation)})
    out.reverse()
    return out

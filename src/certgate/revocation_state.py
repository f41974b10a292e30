"""CRL high-water marks: revocation never goes back, not even across a restart.

Theory of operation. Whoever can write a CRL file certgate reads can put
back an *older* CRL, validly signed, that does not yet list a certificate
revoked since; or write another trusted issuer's CRL there, so that the
first issuer has none. Signatures cannot tell either from the real thing.
So for every CRL certgate has accepted it keeps, per *source* (the file it
came from, the issuer's name and the key that verified it), the highest
CRLNumber and latest thisUpdate seen and the digest of the signed content.

The rule (:func:`rollback`), with RFC 5280 5.2.3 (the CRLNumber increases
with every CRL an issuer makes) as the model:

* a lower CRLNumber, or an older thisUpdate, than already seen: refused
  (either going back is enough: a higher number with an older thisUpdate
  is a CA clock gone back, and certgate cannot tell which list is newer);
* the same CRLNumber and thisUpdate with different content: refused (two
  lists cannot both be the issuer's word for one moment);
* the same CRLNumber with a newer thisUpdate and different content: accepted,
  with a warning. Only the issuer can sign it, and certgate has never seen
  anything newer from it, so it is the issuer's latest word, even if reusing
  the number breaks the RFC; refusing it would keep revocations out;
* the very same content again (a rewrite, PEM to DER): accepted.

A file that stops holding an issuer's CRL (another trusted issuer's valid
CRL written over it) leaves the previous CRL of that issuer in force, logged,
stale check included, while the process runs or reloads. At a start there is
no previous CRL to keep: a configured file that held a checked issuer's CRL
(by the marks) and no longer does stops certgate, as a bad CRL does.

The marks are kept in ``STATE_DIR/revocation-state.json`` (0600, written
atomically under an exclusive lock, since several workers share it), read on
every CRL load (in the loader's thread, never on the event loop) and merged
with what the running process has seen. A state file that cannot be written
(a read-only state directory) is logged as an error and the marks still hold
in memory; one that cannot be read stops the load, since silently starting
afresh is what a rollback attacker would want. Deleting the file on purpose
resets the protection to the CRLs on disk at the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from certgate.errors import CertgateError
from certgate.fsutil import PRIVATE_DIR_MODE, atomic_write

log = logging.getLogger("certgate.revocation")

STATE_FILE = "revocation-state.json"
_VERSION = 1

Source = tuple[str, str, str]
"""(CRL file, issuer DN, SHA-256 hex of the issuer's SubjectPublicKeyInfo)."""


class StateError(CertgateError):
    """The high-water state file exists but cannot be read."""


@dataclass(frozen=True, slots=True)
class HighWater:
    number: int | None  # CRLNumber; None when the CRL has none
    this_update: float | None  # POSIX time
    digest: str  # SHA-256 hex of the signed TBSCertList


def utc(moment: float | None) -> str:
    if moment is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def rollback(new: HighWater, seen: HighWater | None) -> str | None:
    """Why ``new`` goes back from ``seen`` (see the module docstring), or None."""
    if seen is None or new.digest == seen.digest:
        return None
    if new.number is not None and seen.number is not None and new.number < seen.number:
        return f"CRL number {new.number} is lower than {seen.number}, already seen"
    if new.this_update is not None and seen.this_update is not None:
        if new.this_update < seen.this_update:
            return (f"thisUpdate {utc(new.this_update)} is older than "
                    f"{utc(seen.this_update)}, already seen")
        if new.this_update == seen.this_update and new.number == seen.number:
            return (f"a different CRL under the same CRL number {new.number} and thisUpdate "
                    f"{utc(new.this_update)} as one already seen")
    return None


def reuses_number(new: HighWater, seen: HighWater | None) -> bool:
    """Same CRLNumber, different content (accepted only when newer: see above)."""
    return seen is not None and new.number is not None and new.number == seen.number \
        and new.digest != seen.digest


def newer(a: HighWater | None, b: HighWater) -> HighWater:
    """The later of two marks for one source."""
    return b if a is None or rollback(b, a) is None else a


def merge(into: Mapping[Source, HighWater],
          more: Mapping[Source, HighWater]) -> dict[Source, HighWater]:
    out = dict(into)
    for source, mark in more.items():
        out[source] = newer(out.get(source), mark)
    return out


def read_state(path: Path) -> dict[Source, HighWater]:
    """The marks in ``path``; {} when it does not exist.

    Raises:
        StateError: it exists but is unreadable or malformed.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateError(f"{path}: cannot read the CRL high-water state: "
                         f"{exc.strerror or exc}") from None
    try:
        return _decode(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{path}: malformed CRL high-water state ({exc}); certgate will not "
                         "start afresh on its own: remove the file to reset the rollback "
                         "protection to the CRLs on disk") from None


def _decode(data: bytes) -> dict[Source, HighWater]:
    doc = json.loads(data)
    if doc.get("version") != _VERSION:
        raise ValueError(f"unknown version {doc.get('version')!r}")
    out: dict[Source, HighWater] = {}
    for entry in doc["crls"]:
        number, this_update = entry["number"], entry["this_update"]
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
            raise ValueError("number must be an integer")
        if this_update is not None and not isinstance(this_update, int | float):
            raise ValueError("this_update must be a number")
        source = (str(entry["source"]), str(entry["issuer"]), str(entry["key_sha256"]))
        out[source] = HighWater(number, None if this_update is None else float(this_update),
                                str(entry["tbs_sha256"]))
    return out


def _encode(marks: Mapping[Source, HighWater]) -> bytes:
    crls = [{"source": source, "issuer": issuer, "key_sha256": key, "number": mark.number,
             "this_update": mark.this_update, "this_update_utc": utc(mark.this_update),
             "tbs_sha256": mark.digest}
            for (source, issuer, key), mark in sorted(marks.items())]
    return (json.dumps({"version": _VERSION, "crls": crls}, indent=1) + "\n").encode()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path``: workers writing at once must not
    lose each other's marks (read, merge, write is not atomic by itself)."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def save_state(path: Path, marks: Mapping[Source, HighWater]) -> None:
    """Merge ``marks`` into the file (never lowering one); log, do not raise, on
    failure: the marks still hold in memory for this process."""
    try:
        path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        with _locked(path):
            on_disk = read_state(path)
            merged = merge(on_disk, marks)
            if merged != on_disk:
                atomic_write(path, _encode(merged), mode=0o600)
    except (OSError, StateError) as exc:
        log.error("cannot save the CRL high-water marks to %s (rollback protection holds "
                  "until certgate restarts): %s", path, getattr(exc, "strerror", None) or exc)

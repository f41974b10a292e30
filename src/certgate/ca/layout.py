"""Where the CA keeps its state: one constant layout under ``STATE/ca/``.

Everything the CA owns lives below one private directory so a backup is one
``tar`` of it and a permission audit is one ``ls -la``::

    STATE/                   0700  (--state, default ./certgate-data)
      ca/                    0700
        inventory.sqlite3    source of truth: CA certificates, issued
                             certificates, roles, revocations, CRL number,
                             settings, audit outbox (+ -wal / -shm files)
        lock                 flock(2) target; one mutating operation at a time
        keys/                0700  CA private keys, one file per CA
                                   certificate, named ROLE-SERIALHEX.key (0600)
        servers/             0700  server certificates for the proxy itself:
                                   NAME.fullchain.pem, NAME.key (0600)
        staging/             0700  journals of operations in flight (see
                                   certgate.ca.journal); empty when idle
        root.crt             derived: the current root certificate
        issuing.crt          derived: the current issuing CA certificate
        bundle.pem           derived: every unexpired root and intermediate
        crl.pem              derived: one CRL per unexpired issuing CA,
                             the current issuer's first
        audit.jsonl          append-only, hash-chained audit log

"Derived" files are rebuilt from the database; if a crash interrupts their
rewrite, the next operation rebuilds them (the ``derived_stale`` flag).
Client private keys are never stored here: ``ca issue`` writes them to
``--out`` so they leave the proxy host with the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from certgate.ca.keys import serial_hex
from certgate.errors import UsageError
from certgate.fsutil import ensure_private_dir

DEFAULT_STATE_DIR = Path("certgate-data")

CA_DIR = "ca"
DATABASE = "inventory.sqlite3"
LOCK = "lock"
KEYS_DIR = "keys"
SERVERS_DIR = "servers"
STAGING_DIR = "staging"
ROOT_CERT = "root.crt"
ISSUING_CERT = "issuing.crt"
TRUST_BUNDLE = "bundle.pem"
CRL = "crl.pem"
AUDIT_LOG = "audit.jsonl"

# Names become file names (NAME.crt, NAME.key, ...) in directories the user
# chose, so only a conservative alphabet is accepted: no separators, no "..",
# no control characters, no leading dot (hidden files, and our staging names
# start with a dot). 64 characters matches the X.509 CommonName upper bound
# (RFC 5280, ub-common-name).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_@+=,-][A-Za-z0-9._@+=,-]{0,63}")


def check_name(name: str) -> str:
    """Return ``name`` if it is safe as a file name stem, else raise UsageError."""
    if not name:
        raise UsageError("a certificate name must not be empty")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise UsageError(f"certificate name {name!r} contains control characters")
    if "/" in name or "\\" in name or ".." in name:
        raise UsageError(f"certificate name {name!r} must not contain '/', '\\' or '..'")
    if not _SAFE_NAME.fullmatch(name):
        raise UsageError(
            f"certificate name {name!r} is not a safe file name: use up to 64 letters, "
            "digits and ._@+=,- (not starting with '.')"
        )
    return name


@dataclass(frozen=True, slots=True)
class CALayout:
    """Absolute paths of everything under ``STATE/ca/``."""

    state_dir: Path

    @property
    def ca_dir(self) -> Path:
        return self.state_dir / CA_DIR

    @property
    def database(self) -> Path:
        return self.ca_dir / DATABASE

    @property
    def lock(self) -> Path:
        return self.ca_dir / LOCK

    @property
    def keys_dir(self) -> Path:
        return self.ca_dir / KEYS_DIR

    @property
    def servers_dir(self) -> Path:
        return self.ca_dir / SERVERS_DIR

    @property
    def staging_dir(self) -> Path:
        return self.ca_dir / STAGING_DIR

    @property
    def root_cert(self) -> Path:
        return self.ca_dir / ROOT_CERT

    @property
    def issuing_cert(self) -> Path:
        return self.ca_dir / ISSUING_CERT

    @property
    def trust_bundle(self) -> Path:
        return self.ca_dir / TRUST_BUNDLE

    @property
    def crl(self) -> Path:
        return self.ca_dir / CRL

    @property
    def audit_log(self) -> Path:
        return self.ca_dir / AUDIT_LOG

    def ca_key(self, role: str, serial: int) -> Path:
        """The key file of one CA certificate; the serial keeps names write-once."""
        return self.keys_dir / f"{role}-{serial_hex(serial)}.key"

    def server_files(self, name: str) -> tuple[Path, Path]:
        """(fullchain, key) of a server certificate kept for the proxy."""
        return (
            self.servers_dir / f"{name}.fullchain.pem",
            self.servers_dir / f"{name}.key",
        )

    def create_dirs(self) -> None:
        """Create every directory of the layout, each 0700."""
        for directory in (
            self.state_dir,
            self.ca_dir,
            self.keys_dir,
            self.servers_dir,
            self.staging_dir,
        ):
            ensure_private_dir(directory)

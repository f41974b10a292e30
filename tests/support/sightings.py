"""Last-seen test material: client identities and stored sightings made by hand.

Pure helpers for the unit tests of :mod:`certgate.lastseen` and
:mod:`certgate.ca.listing`; the end-to-end tests use real certificates and a
real proxy instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgate.lastseen import Seen
from certgate.tls.identity import ClientIdentity, VerifiedIssuer, identity_from_der

ISSUER = VerifiedIssuer("CN=certgate test issuing CA", "00" * 32, builtin=True)


@functools.lru_cache(maxsize=64)
def _identity(cn: str, serial: int) -> ClientIdentity:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder().subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf claims this")]))
        .public_key(key.public_key()).serial_number(serial)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return identity_from_der(cert.public_bytes(serialization.Encoding.DER),
                             lambda _cert: ISSUER)


def identity(cn: str, *, serial: int = 1, fingerprint: str | None = None) -> ClientIdentity:
    """A parsed identity whose verified issuer is the built-in CA (``ISSUER``).

    ``fingerprint`` replaces the real one: the recorder keys by nothing else,
    so this stands in for many certificates without making each.
    """
    found = _identity(cn, serial)
    if fingerprint is not None:
        found = dataclasses.replace(found, fingerprint=fingerprint)
    return found


def seen_of(serial: int, fingerprint: str, when: str, at: float, agent: str = "ua",
            **fields: str) -> Seen:
    """A stored sighting; ``fields`` sets subject, cn, issuer, not_after, ip, route."""
    return Seen(serial, when, fields.pop("ip", "192.0.2.7"), agent,
                fields.pop("route", "phone.example/"), at, fingerprint, **fields)

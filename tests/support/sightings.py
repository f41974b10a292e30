"""Last-seen test material: client identities and stored sightings made by hand.

Pure helpers for the unit tests of :mod:`certgate.lastseen` and
:mod:`certgate.ca.listing`; the end-to-end tests use real certificates and a
real proxy instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PublicKeyTypes,
)
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


def seen_of(serial: int, fingerprint: str, when: str, at: float, agent: str = "ua", *,
            ip: str = "192.0.2.7", route: str = "phone.example/", subject: str = "",
            cn: str = "", issuer: str = "", not_after: str = "") -> Seen:
    """A stored sighting, as :func:`certgate.lastseen.to_seen` would make it."""
    return Seen(serial, when, ip, agent, route, at, fingerprint, subject, cn, issuer,
                not_after)


def issuing_key(state: Path) -> CertificateIssuerPrivateKeyTypes:
    """The built-in CA's current issuing key, found in ``STATE/ca/keys/`` by
    matching it to ``issuing.crt`` (what someone holding the key file has)."""
    issuing = x509.load_pem_x509_certificate((state / "ca" / "issuing.crt").read_bytes())
    wanted = _spki(issuing.public_key())
    for path in sorted((state / "ca" / "keys").iterdir()):
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if _spki(key.public_key()) == wanted:
            assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                              | ed25519.Ed25519PrivateKey)
            return key
    raise AssertionError("issuing key not found")


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def builtin_leaf(state: Path, directory: Path, label: str, subject: x509.Name, *,
                 serial: int | None = None) -> tuple[Path, Path, str]:
    """A client leaf signed with the built-in CA's issuing key but never
    recorded in the inventory: what an adopted CA's other devices hold.

    Writes ``label.chain.pem`` (leaf, then issuing.crt) and ``label.key``;
    returns their paths and the leaf's SHA-256 fingerprint.
    """
    issuing_pem = (state / "ca" / "issuing.crt").read_bytes()
    issuing = x509.load_pem_x509_certificate(issuing_pem)
    signer = issuing_key(state)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuing.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuing.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(signer, None if isinstance(signer, ed25519.Ed25519PrivateKey)
              else hashes.SHA256())
    )
    chain = directory / f"{label}.chain.pem"
    key_path = directory / f"{label}.key"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + issuing_pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return chain, key_path, cert.fingerprint(hashes.SHA256()).hex()

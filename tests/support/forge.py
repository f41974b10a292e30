"""Independent CAs and hand-made certificates for attack tests.

Everything certgate's own CA would never issue is made here with
``cryptography`` directly: CAs with RSA-2048, P-256, P-384 and Ed25519 keys,
intermediates that copy another CA's subject and subjectKeyIdentifier, leaves
with copied serials, weak keys, unknown critical extensions, pathLen
violations.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = Any  # a private key of any kind cryptography can sign with

ALGORITHMS = ("rsa2048", "p256", "p384", "ed25519")
NOW = dt.datetime.now(dt.UTC)


def new_key(algorithm: str) -> Key:
    if algorithm == "rsa2048":
        return rsa.generate_private_key(65537, 2048)
    if algorithm == "rsa1024":
        return rsa.generate_private_key(65537, 1024)
    if algorithm == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(algorithm)


def _hash(key: Key) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def name(cn: str, *more: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      *(x509.NameAttribute(oid, value) for oid, value in more)])


@dataclass
class Issued:
    cert: x509.Certificate
    key: Key

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def make_ca(subject: x509.Name, *, algorithm: str = "p256", issuer: Issued | None = None,
            key: Key | None = None, ski: bytes | None = None,
            path_length: int | None = None) -> Issued:
    """A CA certificate: self-signed, or signed by ``issuer``; ``ski`` forces the
    subjectKeyIdentifier (to copy another CA's)."""
    key = key if key is not None else new_key(algorithm)
    signer = issuer.key if issuer is not None else key
    identifier = x509.SubjectKeyIdentifier(ski) if ski is not None else \
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder().subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer is not None else subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(identifier, critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(_aki(issuer), critical=False)
    return Issued(builder.sign(signer, _hash(signer)), key)


def _aki(issuer: Issued) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier(ski.digest, None, None)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.cert.public_key())


def make_leaf(issuer: Issued, subject: x509.Name, *, algorithm: str = "p256",
              serial: int | None = None, sans: list[x509.GeneralName] | None = None,
              extra: list[tuple[x509.ExtensionType, bool]] | None = None,
              eku: bool = True) -> Issued:
    """A client leaf signed by ``issuer`` (authorityKeyIdentifier = its SKI)."""
    key = new_key(algorithm)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1)).not_valid_after(NOW + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_aki(issuer), critical=False)
    )
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for extension, critical in extra or ():
        builder = builder.add_extension(extension, critical=critical)
    return Issued(builder.sign(issuer.key, _hash(issuer.key)), key)


def write_client(directory: Path, label: str, leaf: Issued, *chain: Issued) -> tuple[Path, Path]:
    """``label.chain.pem`` (leaf first, then ``chain``) and ``label.key`` (0600)."""
    cert_path = directory / f"{label}.chain.pem"
    key_path = directory / f"{label}.key"
    cert_path.write_bytes(leaf.pem + b"".join(c.pem for c in chain))
    key_path.write_bytes(leaf.key_pem)
    key_path.chmod(0o600)
    return cert_path, key_path

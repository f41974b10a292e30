"""A throwaway PKI for the benchmark: root -> intermediate -> server and client leaves.

Why not certgate's own CA: the issue asks for ECDSA P-256 *and* RSA-2048
chains (the built-in CA issues P-256, P-384 or RSA-3072), and nginx must be
handed the very same files, so both servers are configured from one set of
PEM files written here.

The trust file holds the root *and* the intermediate: certgate only accepts a
CRL signed by a trusted CA, and the 10k/100k-entry CRLs are the
intermediate's. Each CRL file also carries the root's (empty) CRL because
nginx's ``ssl_crl`` checks every certificate in the chain
(``X509_V_FLAG_CRL_CHECK_ALL``) and fails without one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

KEY_TYPES = ("ecdsa", "rsa")
"""ECDSA P-256 everywhere, or RSA-2048 everywhere (the issue's two chains)."""

SERVER_NAME = "localhost"


@dataclass(frozen=True, slots=True)
class Chain:
    """The files of one key type's PKI, as both servers and the clients use them."""

    key_type: str
    trust: Path  # root + intermediate (PEM)
    server_cert: Path  # leaf + intermediate
    server_key: Path
    client_cert: Path  # leaf + intermediate
    client_key: Path
    client_serial: int
    intermediate_cert: x509.Certificate
    intermediate_key: PrivateKey
    root_cert: x509.Certificate
    root_key: PrivateKey


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, key: PrivateKey, issuer: x509.Name, issuer_key: PrivateKey, *,
                 ca: bool, path_length: int | None = None,
                 extensions: tuple[x509.ExtensionType, ...] = ()) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False), critical=True)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_chain(directory: Path, key_type: str) -> Chain:
    """Write one key type's PKI into ``directory`` and return where everything is."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = _new_key(key_type)
    root = _certificate(f"bench {key_type} root", root_key, _name(f"bench {key_type} root"),
                        root_key, ca=True)
    inter_key = _new_key(key_type)
    inter = _certificate(f"bench {key_type} intermediate", inter_key, root.subject, root_key,
                         ca=True, path_length=0)
    server_key = _new_key(key_type)
    server = _certificate(SERVER_NAME, server_key, inter.subject, inter_key, ca=False,
                          extensions=(
                              x509.SubjectAlternativeName([
                                  x509.DNSName(SERVER_NAME),
                                  x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                              x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])))
    client_key = _new_key(key_type)
    client = _certificate("bench-client", client_key, inter.subject, inter_key, ca=False,
                          extensions=(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),))
    paths = {name: directory / f"{key_type}-{name}.pem"
             for name in ("trust", "server", "server-key", "client", "client-key")}
    paths["trust"].write_bytes(_pem(root) + _pem(inter))
    paths["server"].write_bytes(_pem(server) + _pem(inter))
    paths["server-key"].write_bytes(_key_pem(server_key))
    paths["client"].write_bytes(_pem(client) + _pem(inter))
    paths["client-key"].write_bytes(_key_pem(client_key))
    for name in ("server-key", "client-key"):
        paths[name].chmod(0o600)
    return Chain(key_type, paths["trust"], paths["server"], paths["server-key"],
                 paths["client"], paths["client-key"], client.serial_number, inter, inter_key,
                 root, root_key)


def crl_der(issuer: x509.Certificate, issuer_key: PrivateKey, entries: int,
            *, avoid: int = 0) -> bytes:
    """A CRL with ``entries`` random serials (never ``avoid``), as DER.

    The revoked list is handed to the builder's constructor in one go:
    ``add_revoked_certificate`` copies the list each call, which makes a
    100k-entry CRL take 13 s instead of 0.3 s.
    """
    now = dt.datetime.now(dt.UTC)
    revoked = []
    for _ in range(entries):
        serial = secrets.randbits(127) | 1
        if serial == avoid:
            continue
        revoked.append(x509.RevokedCertificateBuilder().serial_number(serial)
                       .revocation_date(now - dt.timedelta(minutes=5)).build())
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.subject, last_update=now - dt.timedelta(minutes=5),
        next_update=now + dt.timedelta(days=7),
        extensions=[x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(1))],
        revoked_certificates=revoked)
    crl = builder.sign(issuer_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


def write_crl_file(chain: Chain, directory: Path, entries: int) -> Path:
    """A PEM file with the intermediate's ``entries``-entry CRL and the root's empty one."""
    path = directory / f"{chain.key_type}-crl-{entries}.pem"
    parts = []
    for issuer, key, count in ((chain.intermediate_cert, chain.intermediate_key, entries),
                               (chain.root_cert, chain.root_key, 0)):
        der = crl_der(issuer, key, count, avoid=chain.client_serial)
        parts.append(x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM))
    path.write_bytes(b"".join(parts))
    return path

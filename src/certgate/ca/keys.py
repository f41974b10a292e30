"""Key generation, key files and serial numbers.

Only three key types exist, picked from a table, because every type we offer
has to import on the phones and browsers certgate targets: ECDSA P-256 (the
default; universally supported, fast, small), P-384, and RSA-3072 for the odd
client that still cannot do ECDSA.
"""

from __future__ import annotations

import hashlib
import secrets
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certgate.errors import CAError, UsageError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

KEY_TYPES: dict[str, Callable[[], PrivateKey]] = {
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    # 3072 bits is NIST's 128-bit security level (SP 800-57 Part 1, table 2),
    # the same strength as P-256.
    "rsa-3072": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
}
DEFAULT_KEY_TYPE = "ecdsa-p256"

# Smallest RSA modulus accepted in a CSR: 2048 bits is the floor of the CA/B
# Forum Baseline Requirements (6.1.5) and of OpenSSL security level 2.
MIN_RSA_BITS = 2048


def generate_key(key_type: str) -> PrivateKey:
    """Generate a fresh private key of one of :data:`KEY_TYPES`."""
    try:
        make = KEY_TYPES[key_type]
    except KeyError:
        raise UsageError(
            f"unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}"
        ) from None
    return make()


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The digest a CA key signs with: SHA-384 for P-384 keys, SHA-256 otherwise.

    Matching the digest to the curve follows RFC 5480 section 4.
    """
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def key_to_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM; files holding it are always created 0600."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(path: Path) -> PrivateKey:
    """Load an unencrypted PEM private key written by this CA.

    Raises:
        CAError: the file is missing, unreadable or not an ECDSA/RSA key.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CAError(f"cannot read key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CAError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CAError(f"{path}: only ECDSA and RSA CA keys are supported")
    return key


def same_public_key(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    """Compare two public keys by their SubjectPublicKeyInfo encoding."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return a.public_bytes(enc, fmt) == b.public_bytes(enc, fmt)


def random_serial() -> int:
    """A random positive 128-bit serial number.

    RFC 5280 4.1.2.2 allows up to 20 octets; the CA/B Forum asks for at least
    64 random bits. We draw 128 bits and redraw the rare values whose top
    octet is zero, so the DER INTEGER is always 16 octets (top bit clear) or
    17 (top bit set, plus the 0x00 sign octet) and never looks truncated.
    The cost is 1/256 of the space, about 0.006 bits of entropy.
    """
    while True:
        serial = secrets.randbits(128)
        if serial >> 120:
            return serial


def serial_hex(serial: int) -> str:
    """Lowercase hex with an even number of digits, as ``openssl`` prints serials.

    Padding matters: a 31-digit serial printed without its leading zero
    would not match what a user sees in ``openssl x509 -serial``.
    """
    digits = f"{serial:x}"
    return "0" + digits if len(digits) % 2 else digits


def parse_serial(text: str) -> int | None:
    """Parse a hex serial as printed by ``ca list`` (colons and 0x allowed)."""
    cleaned = text.strip().lower().replace(":", "")
    cleaned = cleaned.removeprefix("0x")
    if not cleaned or len(cleaned) > 40 or any(c not in "0123456789abcdef" for c in cleaned):
        return None
    return int(cleaned, 16)


def pem_fingerprint(cert_pem: bytes) -> str:
    """Lowercase hex SHA-256 of the DER of the (first) certificate in ``cert_pem``.

    The same value as ``ClientIdentity.fingerprint``: what inventory roles and
    last-seen rows are keyed by, because a serial is only unique per issuer,
    and an accidental CA that certgate adopted may have used one twice.
    """
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii"))).hexdigest()

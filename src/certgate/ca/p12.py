"""PKCS#12 bundles that phones actually import.

Two profiles:

* ``legacy`` (default): PBES1 pbeWithSHA1And3-KeyTripleDES-CBC for both the
  key bag and the certificate bag, SHA-1 MAC. Android 11-13's keystore and
  older iOS/macOS reject PBES2/AES bundles ("wrong password" on a correct
  password), while every platform imports 3DES/SHA-1; this is also what
  OpenSSL 1.1 produced by default. The weak crypto only protects the file
  in transit, under a strong random password.
* ``modern``: PBES2 (PBKDF2-SHA256, AES-256-CBC), SHA-256 MAC: OpenSSL 3's
  default, for clients that take it (current iOS/macOS, desktops).

The password is never empty: Android refuses to import a bundle without one
and an empty one protects nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import PrivateFormat, pkcs12
from cryptography.hazmat.primitives.serialization.pkcs12 import PBES

from certgate.ca.keys import PrivateKey
from certgate.errors import UsageError

# 2048 is OpenSSL's PKCS12_DEFAULT_ITER: the count every importer has been
# tested with. The key stretching barely matters next to a 128-bit random
# password, which is what certgate generates when none is given.
LEGACY_ITERATIONS = 2048
# PBKDF2 work for the modern profile; kept moderate because phones run it.
MODERN_ITERATIONS = 100_000

PROFILES = ("legacy", "modern")


def generate_password() -> str:
    """A 128-bit random password, URL-safe so it survives copy and paste."""
    return secrets.token_urlsafe(16)


def check_password(password: str) -> bytes:
    if not password:
        raise UsageError(
            "an empty PKCS#12 password is refused: Android will not import such a file "
            "and it would leave the private key unprotected; omit --p12-password to get "
            "a generated one"
        )
    return password.encode("utf-8")


def build_p12(
    name: str,
    key: PrivateKey,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    password: str,
    *,
    profile: str = "legacy",
) -> bytes:
    """Serialize key, certificate and CA chain (intermediate, root) to PKCS#12."""
    secret = check_password(password)
    builder = PrivateFormat.PKCS12.encryption_builder()
    if profile == "legacy":
        encryption = (
            builder.kdf_rounds(LEGACY_ITERATIONS)
            .key_cert_algorithm(PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .hmac_hash(hashes.SHA1())
            .build(secret)
        )
    elif profile == "modern":
        encryption = (
            builder.kdf_rounds(MODERN_ITERATIONS)
            .key_cert_algorithm(PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(secret)
        )
    else:
        raise UsageError(f"unknown PKCS#12 profile {profile!r}; choose one of {PROFILES}")
    return pkcs12.serialize_key_and_certificates(
        name.encode("utf-8"), key, cert, list(chain), encryption
    )

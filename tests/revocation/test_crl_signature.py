"""The CRL signature check that avoids re-encoding the TBS agrees with the library's."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certgate.revocation import RevocationError, _parse_crl_ders, _signed_by

KEYS = {
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


def _crl(key, entries: int = 50, **sign: object) -> bytes:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crl signer")])
    builder = x509.CertificateRevocationListBuilder().issuer_name(name) \
        .last_update(now).next_update(now + dt.timedelta(days=1))
    for serial in range(1, entries + 1):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA384()
    return builder.sign(key, algorithm, **sign).public_bytes(Encoding.DER)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_agrees_with_the_library(kind: str) -> None:
    key, other = KEYS[kind](), KEYS[kind]()
    der = _crl(key, entries=300)  # long form DER lengths
    [(parsed_der, crl)] = _parse_crl_ders(der, Path("x.crl"))
    assert _signed_by(parsed_der, crl, key.public_key()) is True
    assert crl.is_signature_valid(key.public_key())
    assert _signed_by(parsed_der, crl, other.public_key()) is False
    assert not crl.is_signature_valid(other.public_key())


def test_rsa_pss_takes_the_library_path() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=32)
    [(der, crl)] = _parse_crl_ders(_crl(key, rsa_padding=pss), Path("x.crl"))
    assert _signed_by(der, crl, key.public_key()) is True


@pytest.mark.parametrize("kind", ["ecdsa-p256", "rsa-2048"])
def test_a_changed_entry_fails(kind: str) -> None:
    key = KEYS[kind]()
    der = bytearray(_crl(key))
    # Serial 7 is encoded as INTEGER 02 01 07: make it 08, keeping the DER valid.
    at = der.find(b"\x02\x01\x07")
    der[at + 2] = 0x08
    [(parsed, crl)] = _parse_crl_ders(bytes(der), Path("x.crl"))
    assert _signed_by(parsed, crl, key.public_key()) is False
    assert not crl.is_signature_valid(key.public_key())


def test_a_mismatched_key_type_fails() -> None:
    ec_key = KEYS["ecdsa-p256"]()
    rsa_key = KEYS["rsa-2048"]()
    [(der, crl)] = _parse_crl_ders(_crl(ec_key), Path("x.crl"))
    assert _signed_by(der, crl, rsa_key.public_key()) is False


def test_trailing_bytes_are_refused() -> None:
    key = KEYS["ecdsa-p256"]()
    with pytest.raises(RevocationError):
        _parse_crl_ders(_crl(key) + b"\x00", Path("x.crl"))

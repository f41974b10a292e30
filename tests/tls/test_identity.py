"""ClientIdentity from real certificates built with cryptography (ECDSA P-256)."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgate.tls.identity import (
    ClientIdentity,
    IdentityCache,
    InvalidCertificate,
    check_client_certificate_profile,
    identity_from_der,
)

NOT_BEFORE = datetime(2025, 11, 23, 12, 0, tzinfo=UTC)
NOT_AFTER = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ISSUER = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Certgate Test"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Test CA"),
    ]
)


@cache
def ca_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def leaf_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(
    subject: list[x509.NameAttribute[str]] | None = None,
    *,
    serial: int = 0x0ABCDEF,
    sans: list[x509.GeneralName] | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    ca: bool | None = None,
    key_usage: dict[str, bool] | None = None,
    aki: bool = True,
) -> x509.Certificate:
    if subject is None:
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, "alice")]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ISSUER)
        .public_key(leaf_key().public_key())
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if key_usage is not None:
        flags = dict.fromkeys(
            [
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "key_cert_sign",
                "crl_sign",
                "encipher_only",
                "decipher_only",
            ],
            False,
        )
        flags.update(key_usage)
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    if aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key().public_key()), False
        )
    return builder.sign(ca_key(), hashes.SHA256())


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def test_fields_of_a_typical_client_certificate() -> None:
    cert = make_cert(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Ops"),
            x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
        ],
        sans=[x509.DNSName("alice.example"), x509.RFC822Name("alice@example.com")],
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        ca=False,
        key_usage={"digital_signature": True},
    )
    der = der_of(cert)
    identity = identity_from_der(der)
    assert identity.cn == "alice"
    assert identity.dn == "CN=alice,OU=Ops,O=Example"
    assert identity.issuer_dn == "CN=Test CA,O=Certgate Test"
    assert identity.serial == 0x0ABCDEF
    assert identity.serial_hex == "abcdef"
    assert identity.fingerprint == hashlib.sha256(der).hexdigest()
    assert identity.fingerprint == cert.fingerprint(hashes.SHA256()).hex()
    assert identity.not_before == NOT_BEFORE
    assert identity.not_after == NOT_AFTER
    assert identity.not_before.tzinfo is not None
    assert identity.not_after_rfc3339 == "2026-11-23T12:00:00Z"
    assert identity.sans == ("DNS:alice.example", "email:alice@example.com")
    assert identity.sans_header == "DNS:alice.example, email:alice@example.com"
    expected_kid = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key().public_key())
    assert identity.issuer_key_id == expected_kid.key_identifier
    assert identity.der == der
    assert identity.profile_problem is None
    assert check_client_certificate_profile(identity) is None


def test_all_san_types_in_certificate_order() -> None:
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier("spiffe://example/ns/prod/sa/api"),
        x509.IPAddress(ipaddress.ip_address("2001:db8:0:0:0:0:0:1")),
        x509.DNSName("b.example"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
        x509.RFC822Name("ops@example.com"),
        x509.DNSName("a.example"),
        x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dir")])),
        x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
        x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x03a@b"),
    ]
    identity = identity_from_der(der_of(make_cert(sans=sans)))
    assert identity.sans == (
        "URI:spiffe://example/ns/prod/sa/api",
        "IP:2001:db8::1",
        "DNS:b.example",
        "IP:192.0.2.7",
        "email:ops@example.com",
        "DNS:a.example",
        "dirName:CN=dir",
        "RID:1.2.3.4",
        "otherName:1.3.6.1.4.1.311.20.2.3",
    )


def test_no_sans_and_no_aki() -> None:
    identity = identity_from_der(der_of(make_cert(aki=False)))
    assert identity.sans == ()
    assert identity.sans_header == ""
    assert identity.issuer_key_id is None


@pytest.mark.parametrize(
    ("cn", "dn"),
    [
        ("Smith, John", "CN=Smith\\, John"),
        ("a+b", "CN=a\\+b"),
        ('say "hi"', 'CN=say \\"hi\\"'),
        ("line\nbreak", "CN=line\nbreak"),
        ("Zoë Ångström 日本", "CN=Zoë Ångström 日本"),
        ("back\\slash", "CN=back\\\\slash"),
        (" lead", "CN=\\ lead"),
        ("#hash", "CN=\\#hash"),
        ("semi;colon<>", "CN=semi\\;colon\\<\\>"),
    ],
)
def test_odd_common_names_are_kept_raw_and_dn_is_rfc4514(cn: str, dn: str) -> None:
    cert = make_cert([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    identity = identity_from_der(der_of(cert))
    assert identity.cn == cn
    assert identity.dn == dn == cert.subject.rfc4514_string()


def test_no_common_name() -> None:
    identity = identity_from_der(
        der_of(make_cert([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "NoCN Inc")]))
    )
    assert identity.cn == ""
    assert identity.dn == "O=NoCN Inc"
    assert identity.profile_problem is None


def test_empty_subject() -> None:
    identity = identity_from_der(der_of(make_cert([], sans=[x509.DNSName("x.example")])))
    assert identity.cn == ""
    assert identity.dn == ""


def test_several_common_names_take_the_last_and_fail_the_profile() -> None:
    cert = make_cert(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "first"),
            x509.NameAttribute(NameOID.COMMON_NAME, "last"),
        ]
    )
    identity = identity_from_der(der_of(cert))
    assert identity.cn == "last"
    assert check_client_certificate_profile(identity) == "subject has more than one commonName"
    assert check_client_certificate_profile(cert) == identity.profile_problem


def test_large_serial_hex() -> None:
    serial = (1 << 159) - 1  # 20 octets, the RFC 5280 s.4.1.2.2 maximum
    identity = identity_from_der(der_of(make_cert(serial=serial)))
    assert identity.serial_hex == "7" + "f" * 39
    assert int(identity.serial_hex, 16) == serial


CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
SERVER = ExtendedKeyUsageOID.SERVER_AUTH
ANY = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({}, None),
        ({"eku": [CLIENT]}, None),
        ({"eku": [SERVER, CLIENT]}, None),
        ({"eku": [SERVER]}, "extendedKeyUsage does not include clientAuth"),
        ({"eku": [ANY]}, "extendedKeyUsage does not include clientAuth"),
        ({"eku": [ExtendedKeyUsageOID.CODE_SIGNING]}, "does not include clientAuth"),
        ({"ca": False}, None),
        ({"ca": True}, "certificate is a CA (basicConstraints CA:TRUE)"),
        ({"ca": True, "eku": [CLIENT]}, "basicConstraints CA:TRUE"),
        ({"key_usage": {"digital_signature": True}}, None),
        ({"key_usage": {"key_cert_sign": True}}, "keyUsage does not include digitalSignature"),
        ({"key_usage": {"key_agreement": True}}, "keyUsage does not include digitalSignature"),
    ],
)
def test_client_certificate_profile(kwargs: dict[str, object], problem: str | None) -> None:
    cert = make_cert(**kwargs)  # type: ignore[arg-type]
    identity = identity_from_der(der_of(cert))
    for subject in (cert, identity):
        result = check_client_certificate_profile(subject)
        if problem is None:
            assert result is None
        else:
            assert result is not None
            assert problem in result


@pytest.mark.parametrize(
    "der",
    [b"", b"\x30\x00", b"not a certificate", bytes(64)],
)
def test_garbage_is_refused(der: bytes) -> None:
    with pytest.raises(InvalidCertificate):
        identity_from_der(der)


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(InvalidCertificate):
        identity_from_der(der_of(make_cert()) + b"\x00")


def test_negative_serial_is_refused() -> None:
    der = der_of(make_cert(serial=0x1234567))
    marker = bytes.fromhex("020401234567")  # INTEGER, 4 octets
    index = der.index(marker)
    negative = der[: index + 2] + b"\x81" + der[index + 3 :]
    with pytest.raises(InvalidCertificate):
        identity_from_der(negative)


def test_duplicate_extension_is_refused() -> None:
    der = der_of(make_cert(eku=[CLIENT], ca=False))
    eku_oid = bytes.fromhex("0603551d25")  # 2.5.29.37 extendedKeyUsage
    bc_oid = bytes.fromhex("0603551d13")  # 2.5.29.19 basicConstraints
    assert der.count(eku_oid) == 1
    patched = der.replace(eku_oid, bc_oid)  # now two basicConstraints
    with pytest.raises(InvalidCertificate):
        identity_from_der(patched)


def test_identity_requires_aware_datetimes() -> None:
    identity = identity_from_der(der_of(make_cert()))
    with pytest.raises(ValueError, match="timezone-aware"):
        ClientIdentity(
            cn=identity.cn,
            dn=identity.dn,
            issuer_dn=identity.issuer_dn,
            serial=identity.serial,
            serial_hex=identity.serial_hex,
            fingerprint=identity.fingerprint,
            not_before=datetime(2025, 1, 1),  # naive on purpose
            not_after=identity.not_after,
            sans=identity.sans,
            issuer_key_id=identity.issuer_key_id,
            der=identity.der,
            profile_problem=None,
            subject_attrs=identity.subject_attrs,
        )


def test_rfc3339_converts_to_utc() -> None:
    identity = identity_from_der(der_of(make_cert()))
    shifted = identity.not_after.astimezone(timezone(timedelta(hours=5)))
    assert shifted.hour == 17
    assert replace(identity, not_after=shifted).not_after_rfc3339 == "2026-11-23T12:00:00Z"


# -- cache --------------------------------------------------------------------


def test_cache_returns_the_same_identity_for_equal_der() -> None:
    cache_ = IdentityCache(capacity=4)
    der = der_of(make_cert())
    first = cache_.get_or_parse(der)
    second = cache_.get_or_parse(bytes(bytearray(der)))  # equal, not identical
    assert first is second
    assert (cache_.hits, cache_.misses) == (1, 1)
    assert len(cache_) == 1


def test_cache_evicts_least_recently_used() -> None:
    cache_ = IdentityCache(capacity=2)
    a, b, c = (der_of(make_cert(serial=n)) for n in (1, 2, 3))
    ident_a = cache_.get_or_parse(a)
    cache_.get_or_parse(b)
    cache_.get_or_parse(a)  # a is now most recent
    cache_.get_or_parse(c)  # evicts b
    assert len(cache_) == 2
    assert cache_.get_or_parse(a) is ident_a
    misses = cache_.misses
    cache_.get_or_parse(b)
    assert cache_.misses == misses + 1


def test_cache_does_not_store_failures() -> None:
    cache_ = IdentityCache()
    for _ in range(2):
        with pytest.raises(InvalidCertificate):
            cache_.get_or_parse(b"junk")
    assert len(cache_) == 0
    assert cache_.misses == 2
    cache_.clear()


def test_cache_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        IdentityCache(capacity=0)

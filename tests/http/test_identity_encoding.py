"""XFCC and X-Client-SAN encode -> parse round trips, with no I/O.

Invariant (hypothesis): for any subject DN string and any SAN list, the
reference readers in ``support/xfcc_reader.py`` (written from Envoy's
description, not from the encoder) give back exactly the input, the XFCC
header has exactly one element with the keys certgate documents, and both
headers are one line of visible ASCII.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certgate.http.headers import identity_headers
from certgate.http.xfcc import xfcc_element, xfcc_value
from certgate.tls.identity import ClientIdentity, encode_san_list, identity_from_der

from support.xfcc_reader import parse_san_header, parse_xfcc

PEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def base_identity() -> ClientIdentity:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "base")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return identity_from_der(cert.public_bytes(serialization.Encoding.DER))


def _visible_ascii(data: bytes) -> bool:
    return all(0x20 <= b < 0x7F for b in data)


# Text that stresses every rule: separators, quotes, backslashes, '%', spaces,
# control bytes, DEL, non-ASCII and astral characters (no lone surrogates:
# strings decoded from a certificate never hold one).
HOSTILE = st.text(alphabet=st.one_of(
    st.sampled_from(list(',;="\\% :\r\n\t\x00\x7f')),
    st.characters(exclude_categories=("Cs",))), max_size=40)
SANS = st.lists(st.tuples(st.sampled_from(["DNS", "URI", "email", "IP", "dirName"]), HOSTILE)
                .map(lambda kv: f"{kv[0]}:{kv[1]}"), max_size=6)


@given(HOSTILE)
@settings(max_examples=300, deadline=None)
def test_one_value_round_trips(text: str) -> None:
    encoded = xfcc_value(text)
    assert _visible_ascii(encoded.encode("ascii"))
    [[(key, value)]] = parse_xfcc(f"DNS={encoded}")
    assert (key, value) == ("DNS", text)


@given(dn=HOSTILE, sans=SANS)
@settings(max_examples=300, deadline=None)
def test_element_round_trips(base_identity: ClientIdentity, dn: str, sans: list[str]) -> None:
    identity = dataclasses.replace(base_identity, dn=dn, sans=tuple(sans), header_cache={})
    header = xfcc_element(identity, PEM)
    assert _visible_ascii(header)
    [pairs] = parse_xfcc(header.decode("ascii"))
    assert [k for k, _ in pairs][:3] == ["Hash", "Cert", "Subject"]
    assert dict(pairs[:3]) == {"Hash": identity.fingerprint, "Cert": PEM, "Subject": dn}
    assert pairs[3:] == (
        [("URI", s[4:]) for s in sans if s.startswith("URI:")]
        + [("DNS", s[4:]) for s in sans if s.startswith("DNS:")])


@given(SANS)
@settings(max_examples=300, deadline=None)
def test_san_list_round_trips(sans: list[str]) -> None:
    header = encode_san_list(sans)
    assert _visible_ascii(header.encode("ascii"))
    assert parse_san_header(header) == sans


@pytest.mark.parametrize(("sans", "header"), [
    (["DNS:a.test", "email:a@b.test", "URI:spiffe://x/y"],
     "DNS:a.test, email:a@b.test, URI:spiffe://x/y"),
    (["DNS:d.test, URI:spiffe://x"], "DNS:d.test%2C%20URI:spiffe://x"),
    (["DNS:c\r\n.test", "DNS:%41"], "DNS:c%0D%0A.test, DNS:%2541"),
    (["dirName:CN=\u00fc"], "dirName:CN=%C3%BC"),
    ([], ""),
])
def test_san_header_examples(sans: list[str], header: str) -> None:
    assert encode_san_list(sans) == header


@pytest.mark.parametrize(("text", "value"), [
    ("spiffe://example.org/ns/a", "spiffe://example.org/ns/a"),
    ("a.test;URI=spiffe://x", '"a.test;URI=spiffe://x"'),
    ("b.test,By=x;Hash=y", '"b.test,By=x;Hash=y"'),
    ('q"\\', '"q\\"\\\\"'),
    ("c\r\n", "c%0D%0A"),
    ("100%", "100%25"),
    ("", '""'),
])
def test_xfcc_value_examples(text: str, value: str) -> None:
    assert xfcc_value(text) == value


def test_headers_are_cached_per_role_set(base_identity: ClientIdentity) -> None:
    identity = dataclasses.replace(base_identity, sans=("DNS:a.test;URI=spiffe://x",),
                                   header_cache={})
    first = identity_headers(identity, verify="SUCCESS", roles=("ops",), forward_xfcc=True)
    again = identity_headers(identity, verify="SUCCESS", roles=("ops",), forward_xfcc=True)
    assert first == again
    assert len(identity.header_cache) == 1
    headers = dict(first)
    assert headers[b"x-client-san"] == b"DNS:a.test;URI=spiffe://x"
    [pairs] = parse_xfcc(headers[b"x-forwarded-client-cert"].decode("ascii"))
    assert [v for k, v in pairs if k == "URI"] == []
    assert [v for k, v in pairs if k == "DNS"] == ["a.test;URI=spiffe://x"]
    assert dict(pairs)["Hash"] == hashlib.sha256(identity.der).hexdigest()
    identity_headers(identity, verify="SUCCESS", roles=(), forward_xfcc=True)
    assert len(identity.header_cache) == 2

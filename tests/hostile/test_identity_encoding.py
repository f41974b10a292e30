"""Issue #11 finding 4: identity headers must say exactly what the certificate says.

Certificates from an independent CA (trusted in the config) carry hostile
SANs and subjects; the recording upstream's view of ``X-Forwarded-Client-Cert``
is read back with a reference parser written from Envoy's description
(``support/xfcc_reader.py``), then percent-decoded as certgate documents;
``X-Client-SAN`` is read back by its documented rule. Each must
give back exactly the certificate's values: one element, no extra key, no
forged ``By``/``Hash``/``URI``, no SAN split in two or merged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from support.clients import Connection, client_context
from support.rogue_pki import Leaf, RogueCA
from support.xfcc_reader import parse_san_header, parse_xfcc

VERSIONS = ["1.2", "1.3"]

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth:
  trusted_cas: [builtin, %(ca)s]
  roles:
    - {match: "san:URI:spiffe://example.org/ns/ops/*", roles: [ops]}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%(port)d"
    client_auth: require
    forward_client_cert: xfcc
"""


# -- what the certificate says, computed independently --------------------------


def _typed(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return "DNS:" + name.value
    if isinstance(name, x509.UniformResourceIdentifier):
        return "URI:" + name.value
    if isinstance(name, x509.RFC822Name):
        return "email:" + name.value
    if isinstance(name, x509.DirectoryName):
        return "dirName:" + name.value.rfc4514_string()
    raise AssertionError(f"no test uses {name!r}")


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _cn(value: str, *more: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, value)]
    attrs += [x509.NameAttribute(oid, text) for oid, text in more]
    return x509.Name(attrs)


D, U, E = x509.DNSName, x509.UniformResourceIdentifier, x509.RFC822Name

CASES: dict[str, tuple[x509.Name | str, list[x509.GeneralName]]] = {
    "plain": ("plain", [U("spiffe://example.org/ns/dev/sa/plain"), D("plain.test"),
                        D("www.plain.test")]),
    "extra-uri-in-dns": ("dev1", [D("a.test;URI=spiffe://example.org/ns/ops/admin")]),
    "second-element": ("dev2", [D("b.test,By=spiffe://evil;Hash=deadbeef")]),
    "quotes-backslashes": ("dev3", [D('q"uote.test'), D("back\\slash.test\\"),
                                    U('spiffe://x/"a\\";DNS=c.test'), D('"'), D("\\")]),
    "crlf": ("evil\r\nX-Client-CN: admin", [D("c.test\r\nX-Client-Roles: ops"),
                                            U("spiffe://x/\r\n\t\x01\x7f")]),
    "non-ascii": (_cn("J\u00fcrgen \u2603", (NameOID.ORGANIZATIONAL_UNIT_NAME, "\u00e9, x")),
                  [x509.DirectoryName(_cn("\u00fc, x=y;z")), D("n.test")]),
    "san-list-smuggle": ("dev4", [D("d.test, URI:spiffe://example.org/ns/ops/x"),
                                  E("e@x.test,URI:spiffe://example.org/ns/ops/y"),
                                  D(" spaced.test ")]),
    "percent": ("pct%41", [D("p%2C.test"), U("spiffe://x/%2C%20%"), D("%")]),
    "hostile-subject": (_cn('a"b\\c,d;e=f', (NameOID.ORGANIZATIONAL_UNIT_NAME, "ops")),
                        [D("s.test")]),
    "no-sans": ("bare", []),
}


@dataclass(frozen=True)
class Setup:
    ca: RogueCA
    leaves: dict[str, Leaf]


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    ca = RogueCA.create(tmp_path_factory.mktemp("rogue-ca"))
    return Setup(ca, {case: ca.leaf(case, subject, sans)
                      for case, (subject, sans) in CASES.items()})


def _upstream_view(port: int, root: Path, leaf: Leaf, version: str) -> list[tuple[str, str]]:
    ctx = client_context(root, leaf.cert, leaf.key, version=version)
    with Connection(port, ctx) as conn:
        response = conn.request("GET", "/echo")
    assert response.status == 200, response.body
    return [(n.lower(), v) for n, v in json.loads(response.body)["headers"]]


def _only(headers: list[tuple[str, str]], name: str) -> str:
    values = [v for n, v in headers if n == name]
    assert len(values) == 1, (name, values)
    return values[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_identity_headers_carry_exactly_the_certificate(
        start_certgate, upstream, pki, rogue, version):  # type: ignore[no-untyped-def]
    proxy = start_certgate(CONFIG % {"ca": rogue.ca.cert_path, "port": upstream.port})
    for case, leaf in rogue.leaves.items():
        cert = leaf.certificate
        headers = _upstream_view(proxy.port, pki.root, leaf, version)
        for name, value in headers:
            # One header line each: nothing outside visible ASCII and space.
            assert all(0x20 <= ord(ch) < 0x7F for ch in value), (case, name, value)

        xfcc = parse_xfcc(_only(headers, "x-forwarded-client-cert"))
        assert len(xfcc) == 1, (case, xfcc)
        pairs = xfcc[0]
        keys = [k for k, _ in pairs]
        assert set(keys) <= {"Hash", "Cert", "Subject", "URI", "DNS"}, (case, keys)
        assert keys.count("Hash") == keys.count("Cert") == keys.count("Subject") == 1, case
        values = dict(pairs)
        assert values["Hash"] == hashlib.sha256(leaf.der).hexdigest(), case
        forwarded = x509.load_pem_x509_certificate(values["Cert"].encode("ascii"))
        assert forwarded.public_bytes(serialization.Encoding.DER) == leaf.der, case
        assert values["Subject"] == cert.subject.rfc4514_string(), case
        sans = _sans(cert)
        assert [v for k, v in pairs if k == "URI"] == [
            n.value for n in sans if isinstance(n, x509.UniformResourceIdentifier)], case
        assert [v for k, v in pairs if k == "DNS"] == [
            n.value for n in sans if isinstance(n, x509.DNSName)], case

        assert parse_san_header(_only(headers, "x-client-san")) == [_typed(n) for n in sans], case
        # The role rule reads the real URI SANs: a DNS name that merely
        # mentions spiffe://example.org/ns/ops/ grants nothing.
        assert _only(headers, "x-client-roles") == "", case


def test_ordinary_certificates_keep_envoys_plain_form(start_certgate, upstream, pki, rogue):  # type: ignore[no-untyped-def]
    """Values without , ; = " \\ or spaces stay unquoted, as Envoy writes them."""
    proxy = start_certgate(CONFIG % {"ca": rogue.ca.cert_path, "port": upstream.port})
    headers = _upstream_view(proxy.port, pki.root, rogue.leaves["plain"], "1.3")
    xfcc = _only(headers, "x-forwarded-client-cert")
    assert xfcc.startswith("Hash=")
    assert ';Subject="CN=plain";URI=spiffe://example.org/ns/dev/sa/plain;' \
           "DNS=plain.test;DNS=www.plain.test" in xfcc
    assert _only(headers, "x-client-san") == (
        "URI:spiffe://example.org/ns/dev/sa/plain, DNS:plain.test, DNS:www.plain.test")

"""Matchers, roles and decide(), fed real certificates (no proxy, no mocks).

Invariants: a matcher names exactly the certificates its text says (no
prefix, case or escaping surprises); a path rule can never be loosened by
how a request spells its path or method.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certgate.config.schema import ClientAuth, PathRule, RoleRule, Route, Upstream
from certgate.matchers import MatcherError, parse_matcher
from certgate.policy import decide, pick_rule, strip_parameters
from certgate.roles import resolve
from certgate.tls.identity import ClientIdentity, identity_from_der
from certgate.tls.issuers import TrustedIssuers, key_sha256

NOW = dt.datetime.now(dt.UTC)


@cache
def _key(which: str = "trusted") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def _ca(name: str, which: str = "trusted") -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    key = _key() if which == "trusted" else _key(which)
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


# The leaves below are signed by _key(); "Other CA" is trusted, so issuers are
# found by signature as the runtime finds them.
TRUST = TrustedIssuers([_ca("Other CA")])


def _identity(*attrs: tuple[x509.ObjectIdentifier, str], sans: list[x509.GeneralName] = (),
              serial: int = 0x1F2E, issuer: str = "Other CA", aki: bool = True,
              issuers: TrustedIssuers = TRUST, signer: str = "trusted") -> ClientIdentity:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(_key().public_key()).serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=9))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
    if aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_key().public_key()), False)
    key = _key() if signer == "trusted" else _key(signer)
    der = builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)
    return identity_from_der(der, issuers)


CN = NameOID.COMMON_NAME
O_ = NameOID.ORGANIZATION_NAME
OU = NameOID.ORGANIZATIONAL_UNIT_NAME
BOB = _identity((CN, "bob"), (O_, "Acme, Inc."), (OU, "ops"), sans=[
    x509.DNSName("Bob.Example.org"), x509.RFC822Name("bob@example.org"),
    x509.UniformResourceIdentifier("spiffe://example.org/ns/ops/sa/bob"),
    x509.IPAddress(ipaddress.ip_address("10.0.0.7"))])


@pytest.mark.parametrize(("text", "expected"), [
    ("any", True),
    ("cn:bob", True), ("cn:bo", False), ("cn:b*", True), ("cn:Bob", False),
    ("o:Acme, Inc.", True), ("o:Acme", False), ("o:Inc.", False),
    ("ou:ops", True), ("ou:op", False), ("o:ops", False),
    ("san:DNS:bob.example.org", True), ("san:dns:BOB.EXAMPLE.ORG", True),
    ("san:DNS:*.example.org", True), ("san:DNS:example.org", False),
    ("san:email:bob@example.org", True), ("san:email:alice@example.org", False),
    ("san:URI:spiffe://example.org/ns/ops/*", True),
    ("san:URI:spiffe://example.org/ns/dev/*", False),
    ("san:URI:spiffe://example.org/ns/ops", False),  # no implicit prefix match
    ("san:URI:bob@example.org", False),  # the type is part of the match
    ("san:IP:10.0.0.7", True), ("san:IP:10.0.0.8", False),
    ("issuer:CN=Other CA", True), ("issuer:2.5.4.3=Other CA", True), ("issuer:CN=Other", False),
    ("serial:1f2e", True), ("serial:1F:2E", True), ("serial:001f2e", True), ("serial:1f2f", False),
    (f"fingerprint:{BOB.fingerprint.upper()}", True),
    (f"fingerprint:{'0' * 64}", False),
    ("role:ops", True), ("role:admin", False),
])
def test_matcher_semantics(text: str, expected: bool) -> None:
    assert parse_matcher(text).matches(BOB, roles=("ops",)) is expected
    assert parse_matcher(text).matches(None, roles=("ops",)) is False


def test_o_reads_parsed_attributes_not_the_escaped_dn() -> None:
    # The DN string escapes the comma; the old split-on-comma matcher saw
    # "O=Acme\\" and " Inc." and matched neither spelling.
    assert "O=Acme\\, Inc." in BOB.dn
    assert ("O", "Acme, Inc.") in BOB.subject_attrs
    tricky = _identity((CN, "x"), (O_, "Evil,OU=ops"))
    assert not parse_matcher("ou:ops").matches(tricky)
    assert parse_matcher("o:Evil,OU=ops").matches(tricky)


def test_star_is_the_only_wildcard() -> None:
    uri = _identity((CN, "x"), sans=[x509.UniformResourceIdentifier("https://a/b?c=d")])
    assert parse_matcher("san:URI:https://a/b?c=d").matches(uri)
    assert not parse_matcher("san:URI:https://a/b?c=x").matches(uri)  # '?' is literal
    assert not parse_matcher("cn:[x]").matches(uri)  # '[' is literal


@pytest.mark.parametrize(("text", "needle"), [
    ("rol:ops", "expected any or one of"),
    ("ops", "expected any or one of"),
    ("cn:", "needs a value"),
    ("san:spiffe://example.org/x", "san: needs a type"),
    ("san:FTP:x", "san: needs a type"),
    ("san:IP:10.0.0.*", "expects an IP address"),
    ("fingerprint:abc", "64 hex digits"),
    ("fingerprint:zz", "hex digits"),
    ("serial:0", "positive"),
    ("serial:xyz", "hex digits"),
    ("issuer:not a dn", "RFC 4514"),
    ("issuer:CN=Other CA, O=x", "nameopt RFC2253"),
    ("role:a,b", "commas"),
    ("cn: bob", "leading or trailing spaces"),
])
def test_bad_matchers_say_why(text: str, needle: str) -> None:
    with pytest.raises(MatcherError, match=needle):
        parse_matcher(text)


def test_role_rules_cannot_depend_on_roles() -> None:
    with pytest.raises(MatcherError, match="cannot depend on roles"):
        parse_matcher("role:ops", allow_roles=False)


def _route(*rules: PathRule, mode: ClientAuth = ClientAuth.REQUIRE, **kw: object) -> Route:
    return Route(host="localhost", upstream=Upstream("whoami"), client_auth=mode,
                 rules=rules, **kw)  # type: ignore[arg-type]


ADMIN = PathRule("/admin/*", allow=(parse_matcher("role:ops"),))


@pytest.mark.parametrize("path", ["/admin", "/admin/", "/admin/x", "/admin;x", "/admin;x/y",
                                  "/admin/x;jsessionid=1", "/admin;/x"])
def test_admin_rule_holds_for_every_spelling(path: str) -> None:
    route = _route(ADMIN)
    assert not decide(route, path, "GET", BOB, ()).allowed
    assert decide(route, path, "GET", BOB, ("ops",)).allowed


def test_parameters_never_loosen_a_rule() -> None:
    hook = PathRule("/hook/*", client_auth=ClientAuth.OFF)
    route = _route(hook)
    assert decide(route, "/hook/x", "POST", None).allowed
    # Stripped, "/hook;x/y" is under the public /hook/*; as sent it is not.
    assert not decide(route, "/hook;x/y", "POST", None).allowed
    assert strip_parameters("/a;b/c;d=e/") == "/a/c/"


def test_method_lists_ignore_case_and_govern_only_their_methods() -> None:
    rule = PathRule("/admin/*", methods=frozenset({"POST"}), allow=(parse_matcher("role:ops"),))
    route = _route(rule)
    assert pick_rule(route, "/admin/x", "post") is rule
    assert not decide(route, "/admin/x", "post", BOB).allowed
    assert decide(route, "/admin/x", "GET", BOB).allowed  # GET is not this rule's


def test_most_specific_rule_wins_then_order() -> None:
    a = PathRule("/api/*", allow=())
    b = PathRule("/api/webhook/*", client_auth=ClientAuth.OFF)
    c = PathRule("/api/webhook/*", allow=())
    route = _route(a, b, c)
    assert pick_rule(route, "/api/webhook/x", "GET") is b
    assert pick_rule(route, "/api/x", "GET") is a


def test_route_deny_applies_under_rules_too() -> None:
    route = _route(ADMIN, deny=(parse_matcher("cn:bob"),))
    decision = decide(route, "/admin/x", "GET", BOB, ("ops",))
    assert not decision.allowed
    assert decision.code == "denied"
    assert "CN=bob" in decision.reason
    assert "rule /admin/*" in decision.reason


def test_optional_lets_anonymous_in_only_on_the_default_allow() -> None:
    route = _route(ADMIN, mode=ClientAuth.OPTIONAL)
    assert decide(route, "/x", "GET", None).allowed
    denied = decide(route, "/admin/x", "GET", None)
    assert not denied.allowed
    assert denied.reason.startswith("client certificate required")
    assert not decide(_route(mode=ClientAuth.OPTIONAL, allow=()), "/x", "GET", None).allowed


def test_reason_is_one_line_whatever_the_cn() -> None:
    evil = _identity((CN, "a\r\nX-Injected: 1"))
    reason = decide(_route(ADMIN), "/admin", "GET", evil).reason
    assert "\n" not in reason
    assert "\r" not in reason
    assert "CN=a\\x0d\\x0aX-Injected: 1" in reason


def test_roles_union_builtin_only_for_builtin_issuer() -> None:
    ca = _ca("certgate CA", "builtin")
    issuers = TrustedIssuers([ca, _ca("Other CA")], builtin=[ca])
    rules = (RoleRule((parse_matcher("san:URI:spiffe://example.org/ns/ops/*"),), ("ops", "x")),)
    ours = _identity((CN, "bob"), issuer="certgate CA", issuers=issuers, signer="builtin",
                     sans=[x509.UniformResourceIdentifier("spiffe://example.org/ns/ops/a")])
    # Without an AKI the signature still decides: it is the built-in CA's.
    no_aki = _identity((CN, "bob"), issuer="certgate CA", aki=False, issuers=issuers,
                       signer="builtin")
    inventory = {ours.fingerprint: ("family", "ops"), no_aki.fingerprint: ("family", "ops")}
    assert resolve(ours, inventory, rules) == ("family", "ops", "x")
    assert resolve(no_aki, inventory, rules) == ("family", "ops")
    # The built-in key signed it, with the same serial, but it is not the
    # certificate in the inventory (an adopted CA that reused a serial):
    # rule roles only.
    reused = _identity((CN, "bob"), issuer="certgate CA", issuers=issuers, signer="builtin",
                       sans=[x509.UniformResourceIdentifier("spiffe://example.org/ns/ops/b")])
    assert reused.serial == ours.serial
    assert reused.fingerprint != ours.fingerprint
    assert reused.issuer is not None
    assert reused.issuer.builtin
    assert resolve(reused, inventory, rules) == ("ops", "x")
    # Same DN and the built-in key's AKI, signed by another key: a look-alike.
    twin = _identity((CN, "bob"), issuer="certgate CA", issuers=issuers, signer="forger")
    assert twin.issuer is None
    assert resolve(twin, inventory, rules) == ()
    stranger = _identity((CN, "bob"), issuer="Other CA", issuers=issuers,
                         sans=[x509.UniformResourceIdentifier("spiffe://example.org/ns/ops/a")])
    assert resolve(stranger, inventory, rules) == ("ops", "x")
    # The built-in CA is not trusted: its certificates get no inventory roles.
    untrusted = _identity((CN, "bob"), issuer="certgate CA", signer="builtin",
                          issuers=TrustedIssuers([_ca("Other CA")], builtin=[ca]))
    assert resolve(untrusted, inventory, rules) == ()


def test_issuer_matchers_bind_to_the_signing_key() -> None:
    pinned = parse_matcher(f"issuer-key:{key_sha256(_ca('Other CA'))}")
    by_name = parse_matcher("issuer:CN=Other CA")
    assert pinned.matches(BOB)
    assert by_name.matches(BOB)
    # The DN copied by a leaf another key signed matches neither.
    forged = _identity((CN, "bob"), signer="forger")
    assert forged.issuer_dn == BOB.issuer_dn
    assert not pinned.matches(forged)
    assert not by_name.matches(forged)
    # Nor does a leaf parsed without an issuer lookup (fail closed).
    lone = _identity((CN, "bob"), issuers=TrustedIssuers([]))
    assert not pinned.matches(lone)
    assert not by_name.matches(lone)
    assert not parse_matcher("issuer-key:" + "0" * 64).matches(BOB)
    with pytest.raises(MatcherError, match="64 hex digits"):
        parse_matcher("issuer-key:abcd")


def test_role_rule_needs_every_matcher() -> None:
    rule = RoleRule((parse_matcher("issuer:CN=Other CA"), parse_matcher("ou:ops")), ("ops",))
    assert resolve(BOB, {}, (rule,)) == ("ops",)
    other = _identity((CN, "bob"), (OU, "dev"))
    assert resolve(other, {}, (rule,)) == ()

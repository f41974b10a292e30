"""Sans-IO tests of header stripping and the escaping of injected values."""

from __future__ import annotations

import pytest

from certgate.http import headers as hdr


@pytest.mark.parametrize("name", [
    b"X-Client-CN", b"x-client-verify", b"X_CLIENT_DN", b"x.client.serial", b"X-Client",
    b"X-SSL-Client-Cert", b"x_ssl_client_s_dn", b"X-Forwarded-Client-Cert",
    b"x-forwarded-tls-client-cert-info", b"SSL-Client-Verify", b"ssl_client_i_dn",
])
def test_identity_header_names_in_every_spelling(name):
    assert hdr.is_identity_header(name)


@pytest.mark.parametrize("name", [b"X-Clients", b"Client-Hints", b"X-Forwarded-Proto",
                                  b"Authorization", b"X-SSL", b"Cookie"])
def test_other_headers_are_not_identity_headers(name):
    assert not hdr.is_identity_header(name)


def test_request_headers_drop_hop_by_hop_identity_and_forwarded():
    headers = [
        (b"Host", b"a"), (b"Connection", b"close, X-Foo"), (b"X-Foo", b"1"), (b"TE", b"trailers"),
        (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c"), (b"X-Client-CN", b"x"),
        (b"X-Forwarded-For", b"1.2.3.4"), (b"Accept", b"*/*"),
    ]
    out = hdr.request_headers_for_upstream(headers, keep_forwarded=False)
    assert out == [(b"Host", b"a"), (b"Accept", b"*/*")]
    kept = hdr.request_headers_for_upstream(headers, keep_forwarded=True)
    assert (b"X-Forwarded-For", b"1.2.3.4") in kept


@pytest.mark.parametrize(("text", "expected"), [
    ("plain CN=alice,O=Home", b"plain CN=alice,O=Home"),
    ("evil\r\nX-Client-CN: admin", b"evil%0D%0AX-Client-CN: admin"),
    ("nul\x00byte", b"nul%00byte"),
    ("100%", b"100%25"),
    ("café", b"caf%C3%A9"),
])
def test_escape_value_yields_one_safe_line(text, expected):
    escaped = hdr.escape_value(text)
    assert escaped == expected
    assert all(0x20 <= b < 0x7F for b in escaped)


def test_forwarded_headers_are_in_home_assistant_form():
    out = dict(hdr.forwarded_headers("192.0.2.7", "ha.example.com"))
    assert out == {b"x-forwarded-for": b"192.0.2.7", b"x-forwarded-proto": b"https",
                   b"x-forwarded-host": b"ha.example.com"}
    chained = dict(hdr.forwarded_headers("192.0.2.7", "h", [(b"X-Forwarded-For", b"198.51.100.1")]))
    assert chained[b"x-forwarded-for"] == b"198.51.100.1, 192.0.2.7"


def test_escape_value_escapes_exactly_the_unsafe_bytes():
    text = "".join(chr(c) for c in range(0x100)) + "é\u2028\U0001f512"
    expected = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x25 else f"%{b:02X}"
                       for b in text.encode("utf-8")).encode("ascii")
    assert hdr.escape_value(text) == expected
    assert hdr.escape_value("plain CN=alice,O=x") == b"plain CN=alice,O=x"


def test_identity_headers_follow_role_changes(pki):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from certgate.tls.identity import identity_from_der

    leaf = x509.load_pem_x509_certificates(pki["alice"].cert.read_bytes())[0]
    identity = identity_from_der(leaf.public_bytes(Encoding.DER))

    def roles_header(roles: tuple[str, ...]) -> bytes:
        found = dict(hdr.identity_headers(identity, verify="SUCCESS", roles=roles))
        return found[b"x-client-roles"]

    assert roles_header(("ops",)) == b"ops"
    assert roles_header(("ops", "admin")) == b"ops,admin"
    assert roles_header(()) == b""
    assert roles_header(("ops",)) == b"ops"  # from the cache, still right
    # The returned list is the caller's to change; the cache is not affected.
    first = hdr.identity_headers(identity, verify="SUCCESS", roles=("x",))
    first.clear()
    assert hdr.identity_headers(identity, verify="SUCCESS", roles=("x",))

"""Attacks on enrollment links and renewal (red team, session 4).

An outsider holds, at best, a link without its PIN, or a leaked log line;
a device holds a certificate and wants more than its successor. Each test
tries one way past the defences on a real certgate over real TLS.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgate.ca import CertificateAuthority, Delivery
from certgate.enroll.paths import redact

from support.enrolling import ENROLL_HOST, Enrolling, running_enrolling
from support.process import wait_until


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Enrolling]:
    yield from running_enrolling(tmp_path)


def _raw(env: Enrolling, target: str, method: str = "GET", extra: bytes = b"") -> bytes:
    """One request with the target exactly as written (httpx would normalise it)."""
    ctx = ssl.create_default_context(cafile=str(env.root))
    with socket.create_connection(("127.0.0.1", env.port), timeout=20) as sock, \
            ctx.wrap_socket(sock, server_hostname=ENROLL_HOST) as tls:
        tls.sendall(f"{method} {target} HTTP/1.1\r\nHost: {ENROLL_HOST}\r\n"
                    f"Connection: close\r\n".encode() + extra + b"\r\n")
        out = b""
        for _ in range(1000):
            chunk = tls.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


# Spellings of a token URL a browser, a QR scanner's "helpful" rewriting or a
# user's autocorrect could send; some are answered 404/400, but the token in
# them is the same secret and must not reach the access log.
SPELLINGS = (
    "/enroll/{t}", "//enroll/{t}", "/enroll//{t}", "/enroll/./{t}", "/x/../enroll/{t}",
    "/%65nroll/{t}", "/enroll/ca.crt/../{t}", "/Enroll/{t}", "/ENROLL/{t}",
    "/enroll;x/{t}", "/enroll/{t};x", "/enroll%2f{t}", "/enroll/ca.crt/..%2f{t}",
    "/enroll/{t}/p12/../../ca.crt", "/enroll/{t}%00",
)


def test_a_token_reaches_the_access_log_under_no_spelling(env: Enrolling) -> None:
    link = env.enroll("phone")
    for spelling in SPELLINGS:
        answer = _raw(env, spelling.format(t=link.token))
        assert answer.startswith(b"HTTP/1.1 "), spelling
    # Every request is logged (the last one too) before we look.
    wait_until(lambda: env.access_log.exists()
               and len(env.access_log.read_text().splitlines()) >= len(SPELLINGS), 10,
               "every request in the access log")
    text = env.access_log.read_text()
    assert link.token not in text
    assert link.token[:16] not in text
    assert link.token not in env.proxy.log_text()


@pytest.mark.parametrize("path", [
    "/Enroll/{t}", "/enroll;v=1/{t}", "/ENROLL%2F{t}", "/enroll/ca.crt/..%2f{t}",
    "/x/enroll/ca.crt/../{t}/p12", "/%65nroll/{t}%2f",
])
def test_redact_covers_odd_spellings(path: str) -> None:
    token = "A" * 20 + "b-_9" * 6
    assert token not in redact(path.format(t=token))


def test_redact_keeps_ordinary_paths() -> None:
    assert redact("/enroll/ca.crt") == "/enroll/ca.crt"
    assert redact("/renew") == "/renew"
    assert redact("/photos/0123456789abcdef0123") == "/photos/0123456789abcdef0123"


def test_a_pin_reaches_no_log_and_no_answer(env: Enrolling) -> None:
    """Wrong PINs, a PIN in the query, a PIN in a Referer: the real PIN is
    never echoed in a page, a header, the access log or certgate's log."""
    link = env.enroll("phone")
    wrong = f"{(int(link.pin) + 1) % 1_000_000:06d}"
    answers: list[httpx.Response] = []
    with env.client() as client:
        answers.append(env.request(client, "POST", link.path, data={"pin": wrong}))
        answers.append(env.request(client, "GET", f"{link.path}?pin={link.pin}",
                                   headers={"referer": f"https://x/?pin={link.pin}"}))
        answers.append(env.request(client, "POST", f"{link.path}/csr",
                                   content=json.dumps({"pin": wrong, "csr": "x"})))
    for answer in answers:
        assert link.pin not in answer.text
        assert wrong not in answer.text
        assert all(link.pin not in value for value in answer.headers.values())
    wait_until(lambda: len(env.access_log.read_text().splitlines()) >= 3, 10, "log lines")
    for text in (env.access_log.read_text(), env.proxy.log_text()):
        assert link.pin not in text
        assert wrong not in text


def test_a_wrong_pin_uses_the_link_up_not_a_new_token(env: Enrolling) -> None:
    """Five wrong PINs burn the link; the right PIN afterwards gets nothing,
    and guesses spread over the page and the CSR endpoint count together."""
    link = env.enroll("phone")
    wrong = f"{(int(link.pin) + 1) % 1_000_000:06d}"
    with env.client() as client:
        for i in range(5):
            if i % 2:
                env.request(client, "POST", link.path, data={"pin": wrong})
            else:
                env.request(client, "POST", f"{link.path}/csr",
                            content=json.dumps({"pin": wrong, "csr": "x"}))
        last = env.request(client, "POST", link.path, data={"pin": link.pin})
    assert last.status_code in (403, 410, 429), last.text
    assert 'name="password"' not in last.text


def test_head_and_method_override_do_not_redeem(env: Enrolling) -> None:
    link = env.enroll("phone")
    with env.client() as client:
        head = env.request(client, "HEAD", f"{link.path}/p12")
        assert head.status_code == 405
        spoofed = env.request(client, "GET", f"{link.path}/p12",
                              headers={"x-http-method-override": "POST",
                                       "x-method-override": "POST"})
        assert spoofed.status_code == 405
        page = env.request(client, "GET", link.path, params={"pin": link.pin})
        assert page.status_code == 200
        assert 'name="password"' not in page.text
    # The link is still whole: the PIN works.
    with env.client() as client:
        chosen = env.request(client, "POST", link.path, data={"pin": link.pin})
    assert chosen.status_code == 200


# -- renewal ---------------------------------------------------------------------


def _hostile_csr(cn: str, san: str, *, rights: bool = False) -> bytes:
    """A CSR for another name and SAN; with ``rights``, CA:TRUE and serverAuth too."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]),
                              critical=False))
    if rights:
        builder = (builder
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CODE_SIGNING]),
                                  critical=False))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _device(env: Enrolling, name: str) -> httpx.Client:
    ca = CertificateAuthority.open(env.state)
    ca.issue_client(name, roles=("family",), days=30, delivery=Delivery(env.state.parent))
    ctx = ssl.create_default_context(cafile=str(env.root))
    ctx.load_cert_chain(str(env.state.parent / f"{name}.chain.pem"),
                        str(env.state.parent / f"{name}.key"))
    return httpx.Client(base_url=f"https://127.0.0.1:{env.port}", verify=ctx,
                        headers={"host": ENROLL_HOST}, timeout=30)


def test_a_renewal_csr_asks_for_ca_server_auth_and_another_name(env: Enrolling) -> None:
    with _device(env, "phone") as client:
        rights = client.post("/renew", content=_hostile_csr("phone", "x.test", rights=True),
                             headers={"content-type": "application/pkcs10"},
                             extensions={"sni_hostname": ENROLL_HOST})
        assert rights.status_code == 400, rights.text  # refused outright, nothing issued
        got = client.post("/renew", content=_hostile_csr("root-admin", "ca.localhost"),
                          headers={"content-type": "application/pkcs10"},
                          extensions={"sni_hostname": ENROLL_HOST})
    assert got.status_code == 200, got.text
    leaf = x509.load_pem_x509_certificates(got.content)[0]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "phone"
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    assert sans is None or "ca.localhost" not in sans.get_values_for_type(x509.DNSName)


def test_a_huge_or_garbage_renewal_body_is_refused_without_echo(env: Enrolling) -> None:
    with _device(env, "phone") as client:
        huge = client.post("/renew", content=b"-----BEGIN CERTIFICATE REQUEST-----\n"
                           + b"A" * (60 * 1024), headers={"content-type": "application/pkcs10"},
                           extensions={"sni_hostname": ENROLL_HOST})
        junk = client.post("/renew", content=b"<script>alert(1)</script>",
                           headers={"content-type": "text/plain"},
                           extensions={"sni_hostname": ENROLL_HOST})
        over = client.post("/renew", content=b"A" * (200 * 1024),
                           headers={"content-type": "application/pkcs10"},
                           extensions={"sni_hostname": ENROLL_HOST})
    assert huge.status_code == 413
    assert junk.status_code == 400
    assert "<script>" not in junk.text
    assert over.status_code == 413
    # Nothing was issued.
    rows = env.ca("list", "--json").stdout
    assert [row["name"] for row in json.loads(rows)].count("phone") == 1


def test_two_racing_renewals_yield_one_successor(env: Enrolling) -> None:
    """Two CSRs with different keys on two connections at once: one wins,
    the other is refused as superseded; the line of certificates does not fork."""
    import concurrent.futures

    ca = CertificateAuthority.open(env.state)
    ca.issue_client("phone", days=30, delivery=Delivery(env.state.parent))
    ctx = ssl.create_default_context(cafile=str(env.root))
    ctx.load_cert_chain(str(env.state.parent / "phone.chain.pem"),
                        str(env.state.parent / "phone.key"))

    def one(_: int) -> int:
        with httpx.Client(base_url=f"https://127.0.0.1:{env.port}", verify=ctx,
                          headers={"host": ENROLL_HOST}, timeout=30) as client:
            return client.post("/renew", content=_hostile_csr("phone", "x.test"),
                               headers={"content-type": "application/pkcs10"},
                               extensions={"sni_hostname": ENROLL_HOST}).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(one, range(4)))
    assert statuses.count(200) == 1, statuses
    assert set(statuses) <= {200, 403}, statuses
    rows = json.loads(env.ca("list", "--json").stdout)
    assert [r["status"] for r in rows if r["name"] == "phone"].count("valid") == 1, rows


def test_rotating_ipv6_addresses_in_one_64_share_a_bucket() -> None:
    """A machine with a /64 (every IPv6 home network) could otherwise give
    each guess a fresh address; and ::ffff:a.b.c.d is the same client as
    a.b.c.d on a dual-stack listener."""
    from certgate.enroll.ratelimit import BURST, RateLimiter

    limiter = RateLimiter()
    waits = [limiter.allow(f"2001:db8:1:2:{i:x}::{i:x}", 100.0) for i in range(BURST + 5)]
    assert waits[:BURST] == [0.0] * BURST
    assert all(wait > 0 for wait in waits[BURST:])
    assert limiter.allow("2001:db8:1:3::1", 100.0) == 0.0  # another /64: its own bucket
    mapped = RateLimiter()
    for i in range(BURST):
        mapped.allow("::ffff:192.0.2.7" if i % 2 else "192.0.2.7", 100.0)
    assert mapped.allow("192.0.2.7", 100.0) > 0
    assert mapped.allow("::ffff:192.0.2.7", 100.0) > 0

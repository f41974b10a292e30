"""Fuzz target: request head -> h11 -> admission -> rewritten upstream request.

Run on demand (from the repository root)::

    python3 -m tests.fuzz.request_head -max_total_time=600 /tmp/rh tests/fuzz/corpus/request_head

(libFuzzer flags; the first directory collects new inputs, the seed corpus
after it is only read). ``tests/fuzz/test_fuzz.py`` runs it for
``CERTGATE_FUZZ_SECONDS`` (default 10; ``.ci/run`` sets 60).

Input layout: byte 0 chooses the connection (bits 0-1: the SNI it was made
for, app.test / mixed.test / open.test / none; bit 2: whether the client
presented a certificate), the rest is what the client sent on the
connection, fed to an ``h11.Connection(SERVER)`` configured as
``proxy/client.py`` configures it, followed by EOF.

Invariant checked for every input (anything else is a crash):

1. The only exceptions are the expected kinds: h11's ``RemoteProtocolError``
   while parsing (the client answers 400), and certgate's ``HTTPError`` from
   :func:`certgate.proxy.admission.admit` (a refusal with a status). In
   particular no ``h11.LocalProtocolError``, ``KeyError``, ``UnicodeError``
   or ``AssertionError`` escapes admission: the client always gets an answer.
2. For every admitted request:

   * ``admitted.path`` is a fixed point of ``normalise_path``, starts with
     ``/`` and has no empty, ``.`` or ``..`` segment (also not before
     ``;`` or ``%3B``), no encoded ``/``, ``\\`` or control byte, and the
     upstream request-target is exactly that path plus the client's query;
   * every header name is an RFC 9110 token and every value is free of CR,
     LF, NUL and other control bytes (HTAB excepted), so the head
     certgate writes (``h11.Request(..., _parsed=True)`` skips h11's checks)
     parses back with h11 to exactly the same method, target and fields;
   * the identity headers the upstream receives (``X-Client-*``, XFCC, in any
     spelling) are exactly those :func:`identity_headers` makes for the
     identity certgate verified: no client-sent one survives; likewise the
     forwarding headers, unless the route trusts forwarding;
   * there is exactly one Host and at most one framing header, and a request
     that has a body keeps its framing on the way to the upstream;
   * only a WebSocket upgrade is forwarded, and never on HTTP/1.0 with
     Transfer-Encoding (RFC 9112 s.6.1).

The checks for issue #11's findings carry the finding's label (e.g.
``[8-control-bytes]``); the input that first showed each is a regression in
``test_fuzz.py``.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:  # this checkout's code, not an installed copy
    sys.path.insert(0, str(ROOT / "src"))

import contextlib  # noqa: E402
from collections.abc import Iterator  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


@contextlib.contextmanager
def _instrumented() -> Iterator[None]:
    """Coverage feedback from certgate and h11 only, and only when fuzzing:
    instrumenting every loaded module (atheris.instrument_all) costs a minute
    of start-up on the CI machine."""
    if __name__ != "__main__":
        yield
        return
    import atheris

    with atheris.instrument_imports(include=["certgate", "h11"]):
        yield


with _instrumented():
    import h11

    from certgate.config.loader import load_config_text
    from certgate.config.schema import ClientAuth, Config
    from certgate.errors import HTTPError
    from certgate.http import headers as hdr
    from certgate.http.target import normalise_path
    from certgate.proxy.admission import Admitted, admit
    from certgate.proxy.info import ConnectionInfo
    from certgate.routing import RouteTable
    from certgate.tls.identity import ClientIdentity, identity_from_der

CONFIG = """
state_dir: /nonexistent/certgate-fuzz
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin], crls: [builtin]}
routes:
  - {host: app.test, upstream: "http://127.0.0.1:9", client_auth: require,
     forward_client_cert: xfcc}
  - {host: app.test, path: /public, upstream: "http://127.0.0.1:9", client_auth: "off"}
  - {host: app.test, path: /api/webhook, upstream: "http://127.0.0.1:9", client_auth: "off",
     trust_forwarded: true}
  - {host: mixed.test, upstream: "http://127.0.0.1:9", client_auth: optional,
     forward_client_cert: pem}
  - {host: mixed.test, path: /admin, upstream: "http://127.0.0.1:9", client_auth: require}
  - {host: open.test, upstream: "http://127.0.0.1:9", client_auth: "off"}
"""
SNIS = ("app.test", "mixed.test", "open.test", None)
ROLES = ("ops",)
# proxy/client.py reads at most this many events per connection before the
# first response; the fuzzer needs no more to reach every admission branch.
MAX_EVENTS = 64

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CLEAN_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_BAD_ESCAPE = re.compile(r"%(2f|5c|[01][0-9a-f]|7f)", re.IGNORECASE)
_PARAMS = re.compile(r";|%3B", re.IGNORECASE)


@dataclass(frozen=True)
class _Snapshot:
    config: Config
    routes: RouteTable

    def roles_for(self, identity: ClientIdentity) -> tuple[str, ...]:
        return ROLES


def _make_identity() -> ClientIdentity:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("alice.test")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return identity_from_der(cert.public_bytes(serialization.Encoding.DER))


_CONFIG = load_config_text(CONFIG, "fuzz.yaml")
SNAPSHOT = _Snapshot(_CONFIG, RouteTable(_CONFIG.routes))
IDENTITY = _make_identity()


class InvariantBroken(AssertionError):
    """An admitted request that breaks the invariant of the module docstring."""


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise InvariantBroken(what)


def _require_known(label: str, condition: bool, what: str) -> None:
    """A check for a finding of issue #11 (``label`` names it in failures)."""
    _require(condition, f"[{label}] {what}")


def check(data: bytes) -> None:
    """Run one input through parsing and admission; raise if the invariant breaks.

    Raises:
        InvariantBroken: the invariant does not hold.
    """
    if not data:
        return
    selector, wire = data[0], data[1:]
    sni = SNIS[selector & 3]
    mode = SNAPSHOT.routes.handshake_mode(sni)
    identity = IDENTITY if selector & 4 and mode is not ClientAuth.OFF else None
    info = ConnectionInfo("fuzz", "192.0.2.7", sni, mode)
    conn = h11.Connection(h11.SERVER,
                          max_incomplete_event_size=SNAPSHOT.config.limits.max_header_bytes)
    conn.receive_data(wire)
    conn.receive_data(b"")
    for _ in range(MAX_EVENTS):
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return
        if isinstance(event, h11.Request):
            try:
                admitted = admit(SNAPSHOT, info, identity, None, event)
            except HTTPError:
                return
            except h11.LocalProtocolError as exc:
                # Finding 8: a Connection header naming Host makes h11
                # refuse the rewritten request inside admission.
                _require_known("8-connection-names-framing", False,
                               f"admission raised h11 {exc!r}")
            _check_admitted(event, admitted, identity)
            return  # the proxy answers before it reads the next request
        if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            return


def _check_admitted(request: h11.Request, admitted: object, identity: ClientIdentity | None
                    ) -> None:
    assert isinstance(admitted, Admitted)
    path = admitted.path
    _require(normalise_path(path) == path, f"path not canonical: {path!r}")
    segments = path.split("/")[1:]
    _require(all(segments[:-1]), f"empty segment: {path!r}")
    _require(all(_PARAMS.split(s, maxsplit=1)[0] not in (".", "..") for s in segments),
             f"dot segment: {path!r}")
    _require(not _BAD_ESCAPE.search(path), f"encoded slash or control: {path!r}")
    upstream = admitted.upstream_request
    query = request.target.partition(b"?")
    expected_target = path.encode() + (b"?" + query[2] if query[1] else b"")
    _require(upstream.target == expected_target,
             f"target {upstream.target!r} is not the judged {expected_target!r}")

    fields = list(upstream.headers.raw_items())
    for name, value in fields:
        _require(bool(_TOKEN.fullmatch(name)), f"header name not a token: {name!r}")
        _require(b"\r" not in value and b"\n" not in value and b"\0" not in value,
                 f"CR, LF or NUL in {name!r}: {value!r}")
        _require_known("8-control-bytes", bool(_CLEAN_VALUE.fullmatch(value)),
                       f"control byte in {name!r}: {value!r}")
    lowered = [n.lower() for n, _ in fields]
    _require(lowered.count(b"host") == 1, f"{lowered.count(b'host')} Host fields")
    _require(lowered.count(b"content-length") + lowered.count(b"transfer-encoding") <= 1,
             "more than one framing field")
    if admitted.has_body:
        _require_known("8-connection-names-framing",
                       b"content-length" in lowered or b"transfer-encoding" in lowered,
                       "a request with a body reaches the upstream without its framing")
    _require_known("8-http10-te", request.http_version != b"1.0" or not any(
        n.lower() == b"transfer-encoding" for n, _ in request.headers.raw_items()),
        "HTTP/1.0 request with Transfer-Encoding admitted")
    _require_known("8-http-version", request.http_version in (b"1.0", b"1.1"),
                   f"HTTP/{request.http_version.decode('latin-1')} admitted")
    upgrades = [v.strip().lower() for n, v in fields if n.lower() == b"upgrade"]
    _require_known("1-upgrade-token", upgrades in ([], [b"websocket"]),
                   f"Upgrade {upgrades!r} forwarded")
    _require_known("1-upgrade-token", bool(upgrades) == (admitted.upgrade is not None),
                   f"Upgrade {upgrades!r} forwarded, but admission expects {admitted.upgrade!r}")
    _require(b"http2-settings" not in lowered, "HTTP2-Settings forwarded")

    route = admitted.route
    injected = hdr.identity_headers(
        identity, verify="SUCCESS" if identity is not None else "NONE", roles=admitted.roles,
        forward_pem=route.forward_cert.value == "pem",
        forward_xfcc=route.forward_cert.value == "xfcc")
    seen_identity = [(n, v) for n, v in fields if hdr.is_identity_header(n)]
    _require(seen_identity == injected,
             f"identity headers {seen_identity!r} are not certgate's {injected!r}")
    if not route.trust_forwarded:
        # XFCC is an X-Forwarded-* name too, but certgate's own identity header.
        seen_forwarded = [n.lower() for n, _ in fields
                          if hdr.is_forwarded_header(n) and not hdr.is_identity_header(n)]
        _require(seen_forwarded == [b"x-forwarded-for", b"x-forwarded-proto",
                                    b"x-forwarded-host"],
                 f"forwarding headers {seen_forwarded!r}")

    # What certgate writes is what the upstream parses: no field can be split
    # off a value, merged or lost on the way.
    client = h11.Connection(h11.CLIENT)
    try:
        wire = client.send(upstream)
    except h11.LocalProtocolError as exc:
        raise InvariantBroken(f"h11 cannot serialise the upstream request: {exc}") from exc
    server = h11.Connection(h11.SERVER)
    server.receive_data(wire or b"")
    try:
        parsed = server.next_event()
    except h11.RemoteProtocolError as exc:
        raise InvariantBroken(f"upstream would refuse the rewritten head: {exc}") from exc
    _require(isinstance(parsed, h11.Request), f"upstream parses {parsed!r}")
    assert isinstance(parsed, h11.Request)
    _require(parsed.method == upstream.method and parsed.target == upstream.target,
             "request line changed in transit")
    sent = [(n.lower(), v.strip(b" \t")) for n, v in fields]
    # h11 writes Host first (RFC 9112 s.3.2 asks for it); nothing else moves.
    sent = [f for f in sent if f[0] == b"host"] + [f for f in sent if f[0] != b"host"]
    _require([(n.lower(), v) for n, v in parsed.headers.raw_items()] == sent,
             "header fields changed in transit")


def main(argv: list[str]) -> None:
    import atheris

    atheris.Setup(argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

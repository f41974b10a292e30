"""Header rewriting between client and upstream, with no I/O.

Two rules carry the security of the whole proxy:

1. **No identity header from the client survives.** Anything that looks like
   a client-certificate header in any spelling nginx, Traefik, Envoy, Apache
   or HAProxy setups use (``X-Client-*``, ``X-SSL-Client-*``,
   ``X-Forwarded-Client-Cert``, ``X-Forwarded-Tls-Client-Cert*``,
   ``Ssl-Client-*``), compared case-insensitively with ``_`` and ``.`` folded
   to ``-`` (some upstream frameworks fold them too, e.g. CGI/WSGI environ),
   is removed before certgate adds its own.
2. **Hop-by-hop headers stop here** (RFC 9110 s.7.6.1): the fixed list plus
   every header the ``Connection`` header names. ``Connection`` may not name
   a header that frames or routes the request (Host, Content-Length,
   Transfer-Encoding) or one certgate itself sets (``X-Client-*``, XFCC,
   ``X-Forwarded-*``): such a request is refused (:func:`unlistable_token`)
   rather than forwarded without its Host or its body.
3. **Headers other gateways set for identity or routing are dropped** unless
   the route names them in ``pass_headers`` (:func:`is_spoofable_header`):
   an upstream built to sit behind such a gateway trusts them blindly.

Injected values pass :func:`escape_value`, so no certificate field can end a
header line or smuggle a second header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

from certgate.http.xfcc import xfcc_element
from certgate.tls.identity import ClientIdentity

Headers = list[tuple[bytes, bytes]]

# RFC 9110 s.7.6.1 and RFC 9112 s.9.6, plus the non-standard ones proxies
# still meet in the wild (Keep-Alive, Proxy-Connection).
# HTTP2-Settings is connection-specific too (RFC 7540 s.3.2.1) and only
# means anything to an h2c upgrade, which certgate never forwards.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"http2-settings",
})

_IDENTITY_PREFIXES = (
    b"x-client-", b"x-ssl-client-", b"x-forwarded-client-cert", b"x-forwarded-tls-client-cert",
    b"ssl-client-",
)
_IDENTITY_EXACT = frozenset({b"x-client", b"x-ssl-client", b"ssl-client"})
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"x-forwarded-port", b"x-real-ip", b"forwarded"})
_FOLD = bytes.maketrans(b"_.", b"--")

# Headers that other gateways put in front of an upstream to say who the
# user is, which certificate they showed, or which URL/method to serve. An
# upstream configured for such a gateway believes them, so a client must not
# be able to send them through certgate. Sources: RFC 9440 (Client-Cert);
# nginx/HAProxy recipes (X-SSL-Cert); IIS ARR (X-ARR-ClientCert); AWS ALB mTLS
# (X-Amzn-Mtls-Clientcert*) and OIDC (X-Amzn-Oidc-*); Kubernetes' front proxy
# (X-Remote-User/-Group/-Extra-*); Grafana's auth proxy (X-WEBAUTH-*);
# Authelia/Authentik (Remote-User, Remote-Groups, X-authentik-*);
# oauth2-proxy (X-Auth-Request-*, X-Forwarded-User/-Email/-Groups/
# -Preferred-Username/-Access-Token); Pomerium (X-Pomerium-*); Cloudflare
# Access (Cf-Access-*); Google IAP (X-Goog-Authenticated-User-*); Tailscale
# (Tailscale-User-*); IIS/Symfony/Laminas URL rewriting (X-Original-URL,
# X-Rewrite-URL); method overrides honoured by many frameworks
# (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override). Also (found by
# the red-team pass): ``Proxy``, which CGI-style upstreams expose as
# HTTP_PROXY and HTTP client libraries then use as their outbound proxy
# (httpoxy, CVE-2016-5385); client-IP headers CDNs set (True-Client-IP,
# CF-Connecting-IP, Fastly-Client-IP, X-Cluster-Client-IP,
# X-Original-Forwarded-For), read by Rails, Laravel and rate limiters;
# host rewrites (X-Original-Host, X-Host) used to build absolute URLs; and
# Envoy's X-Envoy-* request headers, which an Envoy upstream trusts from its
# downstream. A route may let named ones through with ``pass_headers``.
_SPOOFABLE_EXACT = frozenset({
    b"client-cert", b"client-cert-chain", b"x-ssl-cert", b"x-arr-clientcert",
    b"x-original-url", b"x-rewrite-url", b"x-http-method-override", b"x-http-method",
    b"x-method-override", b"x-forwarded-user", b"x-forwarded-email", b"x-forwarded-groups",
    b"x-forwarded-preferred-username", b"x-forwarded-access-token",
    b"proxy", b"true-client-ip", b"cf-connecting-ip", b"fastly-client-ip",
    b"x-cluster-client-ip", b"x-original-forwarded-for", b"x-original-host", b"x-host",
})
_SPOOFABLE_PREFIXES = (
    b"x-amzn-mtls-clientcert", b"x-amzn-oidc-", b"x-remote-", b"remote-", b"x-webauth-",
    b"x-auth-request-", b"x-authentik-", b"x-pomerium-", b"cf-access-",
    b"x-goog-authenticated-user-", b"tailscale-user-", b"x-envoy-",
)
# Names Connection may not list: dropping them would change the request's
# framing or target (Host, Content-Length, Transfer-Encoding) rather than
# remove a hop-by-hop extra. certgate's own headers are checked separately.
_FRAMING = frozenset({b"host", b"content-length", b"transfer-encoding"})
# Control characters other than HTAB (RFC 9110 s.5.5: field values are
# VCHAR, SP, HTAB and obs-text). h11 accepts them; upstreams may not agree
# on what they mean (log splitting, header folding, truncation at NUL).
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def folded(name: bytes) -> bytes:
    """Lowercase with ``_`` and ``.`` as ``-``: how identity names are compared."""
    return name.lower().translate(_FOLD)


def is_identity_header(name: bytes) -> bool:
    key = folded(name)
    return key in _IDENTITY_EXACT or key.startswith(_IDENTITY_PREFIXES)


def is_forwarded_header(name: bytes) -> bool:
    """Forwarding headers a client may not set unless the route trusts an outer
    proxy (``trust_forwarded``): the ones certgate writes, and every other
    ``X-Forwarded-*`` (``-Prefix``, ``-Uri``, ``-Method``, ``-Scheme``,
    ``-Ssl``, ``-Server``...), which Traefik forward-auth, Rack, Spring and
    ASP.NET read to rebuild the URL or scheme the user asked for."""
    key = folded(name)
    return key in _FORWARDED or key.startswith(b"x-forwarded-")


def is_spoofable_header(name: bytes) -> bool:
    """A header another gateway sets for identity or routing (see _SPOOFABLE_EXACT)."""
    key = folded(name)
    return key in _SPOOFABLE_EXACT or key.startswith(_SPOOFABLE_PREFIXES)


def is_own_header(name: bytes) -> bool:
    """A header certgate itself sets or owns: identity, XFCC, X-Forwarded-*, Forwarded.

    These are never taken from a client, never named away by ``Connection``
    and never allowed back in by ``pass_headers``.
    """
    key = folded(name)
    return is_identity_header(key) or key in _FORWARDED or key.startswith(b"x-forwarded-")


def unlistable_token(tokens: Iterable[bytes]) -> bytes | None:
    """The first ``Connection`` token naming a header it may not remove, if any."""
    for token in sorted(tokens):
        if token in _FRAMING or is_own_header(token):
            return token
    return None


def control_character_in(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The name of the first header whose value holds a control character."""
    for name, value in headers:
        if _CTL.search(value) is not None:
            return name
    return None


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in any ``Connection`` header, lowercased."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def _wants_removal(name: bytes, listed: set[bytes], passed: frozenset[bytes]) -> bool:
    lower = name.lower()
    if lower in HOP_BY_HOP or is_identity_header(lower):
        return True
    if is_spoofable_header(lower) and folded(lower) not in passed:
        return True
    # Connection may name only end-to-end headers the client itself sent;
    # certgate's own headers are added after this filter and so are immune.
    return lower in listed


def request_headers_for_upstream(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    keep_forwarded: bool,
    passed: frozenset[bytes] = frozenset(),
) -> Headers:
    """The client's headers minus hop-by-hop, identity, other gateways' identity
    and routing headers (except the folded names in ``passed``) and, unless
    ``keep_forwarded``, an outer proxy's forwarding headers."""
    items = list(headers)
    listed = connection_tokens(items)
    out: Headers = []
    for name, value in items:
        if _wants_removal(name, listed, passed):
            continue
        if not keep_forwarded and is_forwarded_header(name):
            continue
        out.append((name, value))
    return out


def response_headers_for_client(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The upstream's response headers minus hop-by-hop ones."""
    items = list(headers)
    listed = connection_tokens(items)
    return [(n, v) for n, v in items if n.lower() not in HOP_BY_HOP and n.lower() not in listed]


# Bytes allowed raw in an injected value: printable ASCII except '%', which
# is the escape character itself. Everything else (CR, LF, NUL, DEL, UTF-8)
# is percent-encoded so a value is always one safe header line.
_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}


_UNSAFE = re.compile(rb"[^\x20-\x24\x26-\x7e]")  # the complement of _SAFE


def escape_value(text: str) -> bytes:
    """A header-safe byte form of ``text`` (UTF-8, percent-escaped)."""
    raw = text.encode("utf-8", "surrogatepass")
    if _UNSAFE.search(raw) is None:
        return raw
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw).encode("ascii")


def identity_headers(
    identity: ClientIdentity | None,
    *,
    verify: str,
    roles: Iterable[str] = (),
    forward_pem: bool = False,
    forward_xfcc: bool = False,
) -> Headers:
    """The verified ``X-Client-*`` headers for one request."""
    if identity is None:
        return [(b"x-client-verify", escape_value(verify))]
    roles = tuple(roles)
    key = (verify, roles, forward_pem, forward_xfcc)
    cached = identity.header_cache.get(key)
    if cached is None:
        if len(identity.header_cache) >= _HEADER_CACHE_ENTRIES:
            identity.header_cache.clear()
        cached = identity.header_cache[key] = tuple(
            _build_identity_headers(identity, verify, roles, forward_pem, forward_xfcc))
    return list(cached)


# Distinct role sets one certificate is seen with over its life: a role
# change adds one; a handful covers any realistic churn.
_HEADER_CACHE_ENTRIES = 8


def _build_identity_headers(identity: ClientIdentity, verify: str, roles: tuple[str, ...],
                            forward_pem: bool, forward_xfcc: bool) -> Headers:
    out: Headers = [
        (b"x-client-verify", escape_value(verify)),
        (b"x-client-cn", escape_value(identity.cn)),
        (b"x-client-dn", escape_value(identity.dn)),
        (b"x-client-issuer-dn", escape_value(identity.issuer_dn)),
        (b"x-client-serial", identity.serial_hex.encode("ascii")),
        (b"x-client-fingerprint", identity.fingerprint.encode("ascii")),
        (b"x-client-not-after", identity.not_after_rfc3339.encode("ascii")),
        # Already escaped by its own, reversible rule (encode_san_list):
        # escape_value would escape its '%' a second time.
        (b"x-client-san", identity.sans_header.encode("ascii")),
        (b"x-client-roles", escape_value(",".join(roles))),
    ]
    if forward_pem or forward_xfcc:
        pem = _pem(identity.der)
        if forward_pem:
            out.append((b"x-client-cert", quote(pem, safe="").encode("ascii")))
        if forward_xfcc:
            out.append((b"x-forwarded-client-cert", xfcc_element(identity, pem)))
    return out


def _pem(der: bytes) -> str:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def forwarded_headers(
    client_ip: str,
    host: str,
    previous: Iterable[tuple[bytes, bytes]] = (),
) -> Headers:
    """certgate's X-Forwarded-* for an upstream.

    Home Assistant's reverse-proxy check wants bare IPs (no port, no
    brackets), exactly one X-Forwarded-Proto value and a non-empty
    X-Forwarded-Host, so these are written in that form. ``previous`` carries
    an outer proxy's X-Forwarded-For to extend when the route trusts it.
    """
    chain = [v.decode("latin-1").strip() for n, v in previous
             if n.lower() == b"x-forwarded-for" and v.strip()]
    chain.append(client_ip)
    return [
        (b"x-forwarded-for", escape_value(", ".join(chain))),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", escape_value(host)),
    ]

"""The friendly refusal: a small HTML page for a browser without a certificate.

A route with ``no_certificate: page`` lets a client without a certificate
finish the TLS handshake (:mod:`certgate.routing`), and admission answers
this page where it would answer 403 "client certificate required". Status 496
is nginx's "SSL Certificate Required" (not registered with IANA, but what a
self-hoster searching for it will find explained).

The page is built from configuration only, never from the request: a hostile
Host or path cannot put a byte into it. The only variable text, the trusted
CA names, is HTML-escaped. The Content-Security-Policy allows no script and
no fetch of anything; inline style only.
"""

from __future__ import annotations

import functools
import html

import h11
from cryptography import x509
from cryptography.x509.oid import NameOID

STATUS = 496
REASON = b"SSL Certificate Required"

HEADERS = (
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'"),
    (b"referrer-policy", b"no-referrer"),
)

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Device certificate required</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 36em; margin: 3em auto;
       padding: 0 1em; line-height: 1.5; color: #222; }}
h1 {{ font-size: 1.4em; }}
code {{ background: #eee; padding: 0 .2em; }}
</style>
</head>
<body>
<h1>This site needs a device certificate</h1>
<p>This device did not present a client certificate, so the site cannot let it in.
Nothing is wrong with your connection.</p>
<p>Certificates accepted here are issued by:</p>
<ul>
{cas}
</ul>
<h2>What to do</h2>
<ol>
<li>Ask the person who runs this site for a certificate for this device:
an enrollment link (a QR code) and its PIN, or a <code>.p12</code> file and
its password.</li>
<li>On a phone or tablet, open the enrollment link on that device and follow
its steps for your system; elsewhere, install the <code>.p12</code> in this
browser or device.</li>
<li>Close and reopen the browser, then load this page again.</li>
</ol>
</body>
</html>
"""


def ca_names(trust_pem: str) -> list[str]:
    """The subject CN of every trusted CA (the whole subject when it has no
    CN), without repeats, in bundle order."""
    names: list[str] = []
    try:
        certs = x509.load_pem_x509_certificates(trust_pem.encode("ascii", "replace"))
    except ValueError:
        return names  # the runtime already loaded this bundle; never fail the page on it
    for cert in certs:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        value = cns[0].value if cns else cert.subject.rfc4514_string()
        name = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if name not in names:
            names.append(name)
    return names


@functools.lru_cache(maxsize=4)
def page(trust_pem: str) -> bytes:
    """The page body for a trust bundle (cached: one per config snapshot)."""
    items = "\n".join(f"<li>{html.escape(name, quote=True)}</li>"
                      for name in ca_names(trust_pem)) or "<li>(none configured)</li>"
    return _TEMPLATE.format(cas=items).encode("utf-8")


def page_response(trust_pem: str, *, close: bool) -> tuple[h11.Response, bytes]:
    """A 496 Response event and its HTML body."""
    body = page(trust_pem)
    headers = [*HEADERS, (b"content-length", str(len(body)).encode("ascii"))]
    if close:
        headers.append((b"connection", b"close"))
    return h11.Response(status_code=STATUS, headers=headers, reason=REASON), body

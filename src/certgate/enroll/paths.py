"""The enrollment URL layout, and keeping tokens out of logs (pure).

Under a route's path prefix (``""`` for a route on ``/``)::

    GET  {prefix}/enroll/ca.crt            the root CA certificate (public)
    GET  {prefix}/enroll/ca.mobileconfig   the root CA as an Apple profile (public)
    GET  {prefix}/enroll/{token}           the page: a PIN form
    POST {prefix}/enroll/{token}           the PIN: platform choices, p12 password
    POST {prefix}/enroll/{token}/p12       download: key + certificate as PKCS#12
    POST {prefix}/enroll/{token}/mobileconfig   download: Apple profile
    POST {prefix}/enroll/{token}/csr       JSON {"pin", "csr"}: the certificate chain
    POST {prefix}/renew                    renewal (see the renewal handler)

The token is a bearer secret in the path (a QR code can carry nothing
else), so every place that writes a path down (the access log, a refusal's
reason) runs it through :func:`redact`.
"""

from __future__ import annotations

import re

ENROLL_SEGMENT = "enroll"
PUBLIC_FILES = frozenset({"ca.crt", "ca.mobileconfig"})
REDACTED = "[token]"

# Any segment after /enroll/ that is not one of the public file names is
# treated as a token, whatever its shape: a mistyped or truncated token is
# still most of a secret.
_TOKEN_SEGMENT = re.compile(r"(/enroll/)([^/?#]+)")
# Paths the router refuses still carry the token when a scanner or an
# autocorrect respelled the rest (/Enroll/T, /enroll;x/T, /enroll%2fT,
# /enroll/ca.crt/../T before normalising): after any spelling of "enroll",
# every run that could be (most of) a token goes too. 16 is the router's
# own minimum token length.
_MARKER = re.compile(r"(?:e|%65|%45)nroll", re.IGNORECASE)
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_-]{16,}")


def redact(path: str) -> str:
    """``path`` with the token segment after ``/enroll/`` replaced, and any
    token-like run after another spelling of ``enroll``."""

    def replace(match: re.Match[str]) -> str:
        segment = match.group(2)
        return match.group(0) if segment in PUBLIC_FILES else match.group(1) + REDACTED

    path = _TOKEN_SEGMENT.sub(replace, path)
    marker = _MARKER.search(path)
    if marker is None:
        return path
    return path[:marker.end()] + _TOKEN_RUN.sub(REDACTED, path[marker.end():])


def relative(path: str, prefix: str) -> str | None:
    """``path`` below a route's ``prefix`` (``/`` or ``/x``), or None if outside."""
    base = prefix.rstrip("/")
    if not base:
        return path
    if path == base:
        return "/"
    if path.startswith(base + "/"):
        return path[len(base):]
    return None


def enroll_url(base: str, prefix: str, token: str, fingerprint: str) -> str:
    """The URL printed and put in the QR code: ``?fp=`` carries the root CA's
    SHA-256 so ``certgate enroll`` can check the server without trusting it."""
    return f"{base.rstrip('/')}{prefix.rstrip('/')}/{ENROLL_SEGMENT}/{token}?fp={fingerprint}"

"""Short plain-text responses certgate writes itself (errors, 421, 403).

Every body is one line naming the reason, so a user running curl sees why,
and nothing about the upstream or a certificate beyond that reason leaks.
"""

from __future__ import annotations

import h11

REASONS = {
    400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 410: b"Gone", 413: b"Content Too Large",
    421: b"Misdirected Request", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


def plain_response(status: int, reason: str, *, close: bool) -> tuple[h11.Response, bytes]:
    """A Response event and its body for an error answered by certgate."""
    body = f"{status} {REASONS.get(status, b'Error').decode()}: {reason}\n".encode(
        "utf-8", "replace")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    if close:
        headers.append((b"connection", b"close"))
    return (h11.Response(status_code=status, headers=headers,
                         reason=REASONS.get(status, b"")), body)

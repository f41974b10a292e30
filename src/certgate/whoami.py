"""The built-in ``whoami`` upstream: the verified identity as JSON.

For first steps ("does my certificate work?") and for tests. It shows only
what certgate already forwards to upstreams in X-Client-* headers, never the
certificate itself or anything secret.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import h11

from certgate.tls.identity import ClientIdentity

if TYPE_CHECKING:
    from certgate.proxy.admission import Admitted


def whoami_document(identity: ClientIdentity | None, admitted: Admitted) -> dict[str, object]:
    doc: dict[str, object] = {
        "verified": identity is not None,
        "route": admitted.route.name,
        "host": admitted.host,
        "path": admitted.path,
    }
    if identity is not None:
        doc.update(
            cn=identity.cn,
            dn=identity.dn,
            issuer_dn=identity.issuer_dn,
            serial=identity.serial_hex,
            fingerprint=identity.fingerprint,
            not_after=identity.not_after_rfc3339,
            sans=list(identity.sans),
            roles=list(admitted.roles),
        )
    return doc


def whoami_response(
    identity: ClientIdentity | None, admitted: Admitted
) -> tuple[h11.Response, bytes]:
    body = (json.dumps(whoami_document(identity, admitted), indent=2) + "\n").encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
        # Without it a browser may sniff the JSON (which carries certificate
        # fields a client chose) as HTML.
        (b"x-content-type-options", b"nosniff"),
    ]
    return h11.Response(status_code=200, headers=headers, reason=b"OK"), body

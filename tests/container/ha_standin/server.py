"""A stand-in for Home Assistant's HTTP side, for the compose test (no real HA in CI).

It enforces what HA's http integration does with forwarded headers
(homeassistant/components/http/forwarded.py): with use_x_forwarded_for on,
a request carrying X-Forwarded-For from a peer outside trusted_proxies gets
400, and one X-Forwarded-For value per header is all it accepts. Otherwise
it answers JSON: the peer address and the headers it received.
"""

import ipaddress
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRUSTED = [ipaddress.ip_network(net) for net in os.environ["TRUSTED_PROXIES"].split(",")]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        peer = ipaddress.ip_address(self.client_address[0])
        forwarded = self.headers.get_all("X-Forwarded-For") or []
        if forwarded and not any(peer in net for net in TRUSTED):
            return self.answer(400, {"error": "Received X-Forwarded-For header from an "
                                              "untrusted proxy", "peer": str(peer)})
        if len(forwarded) > 1:
            return self.answer(400, {"error": "Too many headers for X-Forwarded-For"})
        self.answer(200, {"peer": str(peer), "path": self.path,
                          "headers": [[k.lower(), v] for k, v in self.headers.items()]})

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# As PID 1 the default SIGTERM action is ignored: stop promptly on `down`.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ThreadingHTTPServer(("0.0.0.0", 8123), Handler).serve_forever()

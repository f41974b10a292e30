"""Connection churn through certgate's TLS transport: many clients, each
handshaking, reading one response and closing at once, so sockets close
under certgate's lingering close and their descriptor numbers come back
for the next connections.

Regression: when a client was already gone, the lingering close closed
the socket without unregistering it from the event loop; a later
connection given the same descriptor number then never saw its bytes
(handshakes and requests stalled until their timeouts).
"""

from __future__ import annotations

import ssl
import threading

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
limits: {handshake_timeout: 5s}
routes:
  - {host: localhost, upstream: whoami}
"""

CLIENTS = 8
ROUNDS = 40


def test_connections_that_close_at_once_never_stall_later_ones(start_certgate, pki):
    proxy = start_certgate(CONFIG)
    failures: list[str] = []

    def client() -> None:
        for _ in range(ROUNDS):
            try:
                with Connection(proxy.port, pki.context("alice"), timeout=4) as conn:
                    conn.send_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close"
                                  b"\r\n\r\n")
                    data = b""
                    while b"\r\n\r\n" not in data:  # the head is enough: close now
                        chunk = conn.sock.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data.startswith(b"HTTP/1.1 200 "):
                        failures.append(f"answer {data[:40]!r}")
            except (OSError, ssl.SSLError) as exc:  # a stall shows as a timeout
                failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    # And the server still answers a fresh client at once.
    with Connection(proxy.port, pki.context("alice"), timeout=4) as conn:
        assert conn.request("GET", "/").status == 200

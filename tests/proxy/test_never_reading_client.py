"""A client that sends requests and never reads the answers.

It advertises a zero window, which the kernel probes forever, so nothing
below certgate ever ends such a connection: certgate's own deadlines must.
While a response from a built-in upstream (whoami here) waited for the
client's socket to take it, nothing bounded the wait: pipelined requests
pinned the connection, its task and its write queue for good. The route's
``timeouts.read`` bounds it now, as it bounds a proxied response body
(proxy/bodyrelay.py: "client not reading the response body").

The server side of the connection is watched in /proc/net/tcp, so the test
sees certgate let go of the socket without reading a byte itself.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
limits: {keepalive_timeout: 60s, header_timeout: 60s}
routes:
  - {host: localhost, upstream: whoami, client_auth: optional, timeouts: {read: 1s}}
"""


def _established(server_port: int, client_port: int) -> bool:
    """Is certgate's side of the connection still ESTABLISHED (state 01)?"""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == wanted:
                return fields[3] == "01"
    return False


def test_pipelined_whoami_requests_never_read_end_at_the_read_timeout(start_certgate, pki):
    proxy = start_certgate(CONFIG)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(30)
    raw.connect(("127.0.0.1", proxy.port))
    client_port = raw.getsockname()[1]
    ctx = pki.context()
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    # Long paths make big answers: ~9 MB of them, far past what both
    # sockets' buffers and the transport's queue hold.
    request = b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nhost: localhost\r\n\r\n"

    def send() -> None:
        # Blocks once certgate stops reading; ends when the socket does.
        with contextlib.suppress(OSError):
            sock.sendall(request * 1100)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        assert _established(proxy.port, client_port)
        started = time.monotonic()
        deadline = started + 20
        while _established(proxy.port, client_port):
            assert time.monotonic() < deadline, \
                "certgate still holds the connection of a client that never reads"
            time.sleep(0.05)
        assert "Traceback" not in proxy.log_text()
    finally:
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)
        sock.close()
        sender.join(10)

"""Issue #12, point 4: stopping certgate with connections open, as a user does.

* SIGTERM with a WebSocket open: the log says how many connections it waits
  for and for how long; the browser side and the upstream each get a Close
  frame 1001 "going away" (not an abnormal 1006 drop), and certgate exits
  at once instead of after the whole ``shutdown_grace``.
* A request in flight is waited for; a second SIGTERM/SIGINT ends the wait
  at once (one worker and two, where Ctrl-C reaches every process).

Real processes, a real ``websockets`` upstream and client over mTLS.
"""

from __future__ import annotations

import signal
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

from support.clients import Connection
from support.process import free_port, wait_until

GRACE = 30  # long: every test must end well before it

CONFIG = """
state_dir: {{state}}
listen: ["127.0.0.1:{port}"]
workers: {workers}
client_auth: {{trusted_cas: [builtin]}}
limits: {{shutdown_grace: {grace}s}}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:{up}"
  - host: localhost
    path: /ws
    upstream: "http://127.0.0.1:{ws}"
"""


class Upstream:
    """A websockets echo server that remembers the close code it received."""

    def __init__(self) -> None:
        self.close_codes: list[int | None] = []
        self.sizes: list[int] = []
        self.connected = threading.Event()

    def handler(self, ws: ServerConnection) -> None:
        self.connected.set()
        try:
            for message in ws:
                self.sizes.append(len(message))
                ws.send(message)
        finally:
            self.close_codes.append(ws.close_code)


@pytest.fixture
def ws_upstream() -> Iterator[tuple[int, Upstream]]:
    recorder = Upstream()
    with ws_serve(recorder.handler, "127.0.0.1", 0, max_size=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.socket.getsockname()[1], recorder
        finally:
            server.shutdown()
            thread.join(10)
    assert not thread.is_alive()


def _config(upstream_port: int, ws_port: int, workers: int = 1) -> str:
    port = 0 if workers == 1 else free_port()
    return CONFIG.format(port=port, workers=workers, grace=GRACE, up=upstream_port,
                         ws=ws_port)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_sigterm_closes_websockets_with_going_away(
        start_certgate, pki, upstream, ws_upstream, version: str) -> None:  # type: ignore[no-untyped-def]
    ws_port, recorder = ws_upstream
    proxy = start_certgate(_config(upstream.port, ws_port))
    ctx = pki.context("alice", version=version)
    ctx.check_hostname = False
    with ws_connect(f"wss://localhost:{proxy.port}/ws", ssl=ctx, open_timeout=10,
                    close_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        assert recorder.connected.wait(10)
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None, "no Close frame: the tunnel was dropped"
        assert closed.value.rcvd.code == 1001
    assert proxy.proc is not None
    assert proxy.proc.wait(GRACE / 2) == 0
    assert time.monotonic() - started < GRACE / 2
    wait_until(lambda: recorder.close_codes, 10, "the upstream to see the close")
    assert recorder.close_codes == [1001]
    log = proxy.log_text()
    assert f"waiting up to {GRACE} s" in log
    assert "1 connection(s)" in log
    assert "1 WebSocket(s) closing with 1001 going away" in log


def test_close_goes_after_the_frame_in_flight(
        start_certgate, pki, upstream, ws_upstream) -> None:  # type: ignore[no-untyped-def]
    """A frame half sent when SIGTERM comes still reaches the upstream whole,
    and only then the Close: it is never spliced into the middle of a frame."""
    ws_port, recorder = ws_upstream
    proxy = start_certgate(_config(upstream.port, ws_port))
    ctx = pki.context("alice")
    ctx.check_hostname = False
    big = b"\x5a" * (1024 * 1024)
    frame = Frame(Opcode.BINARY, big).serialize(mask=True, extensions=[])
    with ws_connect(f"wss://localhost:{proxy.port}/ws", ssl=ctx, open_timeout=10,
                    close_timeout=5) as ws:
        assert recorder.connected.wait(10)
        ws.socket.sendall(frame[: len(frame) // 2])  # raw: the library sends whole frames
        proxy.signal(signal.SIGTERM)
        proxy.wait_for_log("1 WebSocket(s) closing")
        ws.socket.sendall(frame[len(frame) // 2:])
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
    assert proxy.proc is not None
    assert proxy.proc.wait(GRACE / 2) == 0
    wait_until(lambda: recorder.close_codes, 10, "the upstream to see the close")
    assert recorder.sizes == [len(big)]
    assert recorder.close_codes == [1001]


@pytest.mark.parametrize(("workers", "signals"), [(1, (signal.SIGTERM, signal.SIGTERM)),
                                                  (1, (signal.SIGINT, signal.SIGINT)),
                                                  (2, (signal.SIGTERM, signal.SIGINT))])
def test_second_signal_stops_at_once(
        start_certgate, pki, upstream, ws_upstream, workers: int,
        signals: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    ws_port, _ = ws_upstream
    proxy = start_certgate(_config(upstream.port, ws_port, workers))
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.sock.settimeout(GRACE)
        before = len(upstream.paths())
        conn.send_raw(b"GET /slow HTTP/1.1\r\nhost: localhost\r\n\r\n")
        wait_until(lambda: len(upstream.paths()) > before, 10, "the request to reach upstream")
        proxy.signal(signals[0])
        proxy.wait_for_log("request(s) in flight")
        assert proxy.proc is not None
        assert proxy.proc.poll() is None, "the first signal must wait for the request"
        started = time.monotonic()
        proxy.signal(signals[1])
        proxy.proc.wait(GRACE / 2)
        assert time.monotonic() - started < GRACE / 2
        proxy.wait_for_log("second signal: closing 1 connection(s) now")
        assert _closed(conn.sock)


def _closed(sock: ssl.SSLSocket) -> bool:
    """The connection ended without an answer (EOF or reset)."""
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError, OSError):
        return True

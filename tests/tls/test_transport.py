"""certgate's own TLS transport (certgate.tls.transport), driven directly:
real sockets on 127.0.0.1, real handshakes, a blocking ``ssl`` client in a
thread, and the server side on a uvloop loop.

What the proxy suites cannot aim at precisely: flow control both ways
(``pause_writing`` at the high-water mark, nothing lost across
``pause_reading`` while OpenSSL holds decrypted bytes epoll cannot see), a
close that lingers so the client reads the whole response even with its own
bytes unread (no reset overtaking it), the handshake deadline, and the
order of protocol callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certgate.tls.transport import LINGER_SECONDS, accept_tls, lingering


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, and its key."""
    base = tmp_path_factory.mktemp("transport")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = Path(base, "cert.pem"), Path(base, "key.pem")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def contexts(pair: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*pair)
    client = ssl.create_default_context(cafile=str(pair[0]))
    return server, client


class Recorder(asyncio.Protocol):
    """Records callbacks; ``on_data`` lets a test act inside data_received."""

    def __init__(self, on_data: Callable[[Recorder, bytes], None] | None = None) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None
        self.on_data = on_data
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


class Server:
    """accept_tls on a uvloop loop in a thread; one connection per test."""

    def __init__(self, context: ssl.SSLContext, make: Callable[[], Recorder],
                 handshake_timeout: float = 5.0) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.protocol: Recorder | None = None
        self.failure: BaseException | None = None
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.loop = uvloop.new_event_loop()
        self._context = context
        self._make = make
        self._timeout = handshake_timeout
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
            self.loop.run_until_complete(self._lingered())
        finally:
            self.loop.close()

    async def _lingered(self) -> None:
        """Until every socket closed lingering (bounded by LINGER_SECONDS)."""
        for _ in range(int((LINGER_SECONDS + 5) * 100)):
            if not lingering():
                return
            await asyncio.sleep(0.01)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.listener.setblocking(False)
        conn, _ = await loop.sock_accept(self.listener)

        def make() -> Recorder:
            self.protocol = self._make()
            return self.protocol

        try:
            await accept_tls(loop, conn, self._context, make, self._timeout)
        except BaseException as exc:  # the test inspects it
            self.failure = exc
            self.ready.set()
            self.finished.set()
            return
        self.ready.set()
        assert self.protocol is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.protocol.lost), 30)
        self.finished.set()

    def call(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def close(self) -> None:
        self.finished.wait(35)
        self._thread.join(LINGER_SECONDS + 10)
        self.listener.close()


@pytest.fixture
def serve(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(make: Callable[[], Recorder] | None = None, **kwargs: Any) -> Server:
        server = Server(contexts[0], make or Recorder, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def connect(server: Server, client_ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return client_ctx.wrap_socket(raw, server_hostname="localhost")


def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_bytes_both_ways_and_callbacks_in_order(serve, contexts):
    def echo(protocol: Recorder, data: bytes) -> None:
        assert protocol.transport is not None
        protocol.transport.write(data.upper())

    server = serve(lambda: Recorder(echo))
    with connect(server, contexts[1]) as client:
        client.sendall(b"hello")
        assert client.recv(100) == b"HELLO"
        assert server.ready.wait(5)
        assert server.failure is None
    server.finished.wait(10)
    assert server.protocol is not None
    assert server.protocol.events == ["made", "eof", "lost"]
    # The transport lets go of its protocol once it is lost: otherwise the
    # two keep each other (and the connection's state) for the cyclic GC.
    assert server.protocol.transport is not None
    assert server.protocol.transport.get_protocol() is not server.protocol


def test_writes_past_the_high_water_mark_pause_then_resume_and_all_arrive(serve, contexts):
    payload = bytes(range(256)) * 8192  # 2 MiB: far more than socket buffers hold

    def blast(protocol: Recorder, data: bytes) -> None:
        assert protocol.transport is not None
        # Small kernel buffers, or loopback's autotuned ones take it all.
        protocol.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        for at in range(0, len(payload), 16384):
            protocol.transport.write(payload[at:at + 16384])

    server = serve(lambda: Recorder(blast))
    with connect(server, contexts[1]) as client:
        client.sendall(b"go")
        wait_for(lambda: server.protocol is not None
                 and "pause_writing" in server.protocol.events, 10, "pause_writing")
        received = bytearray()
        while len(received) < len(payload):
            chunk = client.recv(65536)
            assert chunk, "closed early"
            received += chunk
    assert bytes(received) == payload
    assert server.protocol is not None
    events = server.protocol.events
    assert events.index("pause_writing") < events.index("resume_writing")


def test_nothing_is_lost_across_pause_and_resume_reading(serve, contexts):
    """Many small records; reading is paused inside data_received and resumed
    later: what OpenSSL had already decrypted must still be delivered."""
    records = [b"%06d;" % n for n in range(2000)]

    def pause_now_and_then(protocol: Recorder, data: bytes) -> None:
        assert protocol.transport is not None
        transport = protocol.transport
        transport.pause_reading()
        asyncio.get_running_loop().call_later(0.001, transport.resume_reading)

    server = serve(lambda: Recorder(pause_now_and_then))
    with connect(server, contexts[1]) as client:
        client.sendall(b"".join(records))  # many records in one go
        for record in records[:50]:
            client.sendall(record)  # and one record each
        wait_for(lambda: server.protocol is not None
                 and len(server.protocol.data) >= 2050 * 7, 10, "every byte")
        assert server.protocol is not None
        assert bytes(server.protocol.data) == b"".join(records) + b"".join(records[:50])


def test_a_close_lingers_so_the_response_beats_unread_client_bytes(serve, contexts):
    """The server answers and closes while the client's upload sits unread
    in its socket: closing at once would reset, and the reset can destroy
    the response in the client's receive queue. The client must read it
    all, then the close."""
    answer = b"A" * 300_000

    def answer_and_close(protocol: Recorder, data: bytes) -> None:
        assert protocol.transport is not None
        if len(protocol.data) == len(data):  # the first read only
            protocol.transport.pause_reading()  # never read the rest
            protocol.transport.write(answer)
            protocol.transport.close()

    server = serve(lambda: Recorder(answer_and_close))
    with connect(server, contexts[1]) as client:
        client.sendall(b"x" * 1000)
        time.sleep(0.05)  # the first read happens alone (not a wait for a result)
        with contextlib.suppress(OSError):
            client.sendall(b"y" * 200_000)  # unread by the server
        received = bytearray()
        client.settimeout(10)
        while True:
            try:
                chunk = client.recv(65536)
            except ssl.SSLEOFError:
                break
            if not chunk:
                break
            received += chunk
    assert bytes(received) == answer


def test_a_stalled_handshake_fails_at_the_deadline(serve, contexts):
    """A client that sends its ClientHello and then nothing."""
    server = serve(handshake_timeout=0.5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = contexts[1].wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(outgoing.read())
        started = time.monotonic()
        assert server.ready.wait(10)
        elapsed = time.monotonic() - started
        assert isinstance(server.failure, TimeoutError)
        assert elapsed < 5
        raw.settimeout(5)
        while raw.recv(65536):  # the server's flight, then its close
            pass


def test_a_refused_handshake_sends_the_alert_even_when_the_client_keeps_sending(
        contexts, pair):
    """The server wants a client certificate and gets none: the client must
    learn why (the alert), not see a reset, although it sent more bytes."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*pair)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cafile=str(pair[0]))
    server = Server(server_ctx, Recorder)
    try:
        caught: ssl.SSLError | None = None
        with connect(server, contexts[1]) as client:
            try:
                client.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n" * 200)
                client.recv(100)
            except ssl.SSLError as exc:
                caught = exc
        assert caught is not None, "the handshake was not refused"
        assert "CERTIFICATE_REQUIRED" in str(caught), caught
        assert server.ready.wait(5)
        assert isinstance(server.failure, ssl.SSLError)
    finally:
        server.close()


@pytest.mark.parametrize("first_is_refused", [False, True], ids=["accepted", "refused"])
def test_a_reset_with_the_last_handshake_flight_leaves_no_dead_registration(
        contexts, pair, first_is_refused):
    """A client sends its Finished and resets at once (SO_LINGER 0), and the
    loop sees both in one epoll event. uvloop, on EPOLLERR, runs the fd's
    callbacks once and then closes its poll handle but keeps it under the fd
    number: the next add_reader on that number raised RuntimeError out of
    accept_tls, the socket was never closed, and a later connection handed
    the same number failed the same way (CI's soak saw the traceback).
    With ``first_is_refused`` the server wants a client certificate the
    client does not have: the failed handshake's linger met the dead handle.

    The loop is held (waiting on the client's signal, not sleeping) from the
    handshake's first step until the reset has been sent, so both arrive
    together every time."""
    server_ctx, client_ctx = contexts
    first_ctx = server_ctx
    if first_is_refused:
        first_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        first_ctx.load_cert_chain(*pair)
        first_ctx.verify_mode = ssl.CERT_REQUIRED
        first_ctx.load_verify_locations(cafile=str(pair[0]))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client_reset = threading.Event()
    client_failure: list[BaseException] = []

    def reset_after_handshake() -> None:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            tls = client_ctx.wrap_socket(raw, server_hostname="localhost")
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tls.close()
        except BaseException as exc:  # reported by the test
            client_failure.append(exc)
        finally:
            client_reset.set()

    def echo_client() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ping")
            return tls.recv(100)

    async def one(hold: bool, context: ssl.SSLContext) -> tuple[str, Recorder | None, int]:
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(listener)
        fd = conn.fileno()
        # The ClientHello is in the socket before the first step (bounded wait).
        assert select.select([conn], [], [], 10)[0], "no ClientHello"
        if hold:
            loop.call_soon(client_reset.wait, 10)
        made: list[Recorder] = []

        def make() -> Recorder:
            made.append(Recorder(echo if not hold else None))
            return made[-1]

        try:
            await accept_tls(loop, conn, context, make, 5.0)
        except (ssl.SSLError, OSError):
            outcome = "refused"
        else:
            outcome = "accepted"
            await asyncio.wait_for(asyncio.shield(made[0].lost), 10)
        for _ in range(int((LINGER_SECONDS + 5) * 100)):  # bounded
            if not lingering():
                break
            await asyncio.sleep(0.01)
        return outcome, (made[0] if made else None), fd

    def echo(protocol: Recorder, data: bytes) -> None:
        assert protocol.transport is not None
        protocol.transport.write(data.upper())
        protocol.transport.close()

    loop = uvloop.new_event_loop()
    listener.setblocking(False)
    try:
        client = threading.Thread(target=reset_after_handshake, daemon=True)
        client.start()
        first, _, first_fd = loop.run_until_complete(one(True, first_ctx))
        client.join(10)
        assert not client_failure, client_failure
        assert first == ("refused" if first_is_refused else "accepted")
        assert lingering() == 0
        # The next connection gets the lowest free number, the same one
        # when nothing else took it: it must work.
        answers: list[bytes] = []
        second_client = threading.Thread(target=lambda: answers.append(echo_client()),
                                         daemon=True)
        second_client.start()
        second, protocol, second_fd = loop.run_until_complete(one(False, server_ctx))
        second_client.join(10)
        assert second == "accepted"
        assert answers == [b"PING"]
        assert protocol is not None
        assert protocol.events[-1] == "lost"
        assert lingering() == 0
        del first_fd, second_fd  # usually equal: the number was reused
    finally:
        loop.close()
        listener.close()


def test_a_close_with_bytes_the_client_never_reads_ends_at_the_flush_deadline(
        serve, contexts, monkeypatch):
    """close() waits for the queued bytes to leave before close_notify and
    the linger. A client that never reads (zero window; the kernel probes it
    forever) kept the socket, the queue and the protocol for good: nothing
    bounded the wait (uvloop's TLS layer gave up after its 30 s
    ssl_shutdown_timeout). The close must abort once CLOSE_FLUSH_SECONDS pass."""
    from certgate.tls import transport as module
    monkeypatch.setattr(module, "CLOSE_FLUSH_SECONDS", 0.5)
    payload = b"z" * (4 * 1024 * 1024)  # far more than both sockets' buffers

    def answer_and_close(protocol: Recorder, data: bytes) -> None:
        assert protocol.transport is not None
        protocol.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        protocol.transport.write(payload)
        protocol.transport.close()

    server = serve(lambda: Recorder(answer_and_close))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", server.port))
    with contexts[1].wrap_socket(raw, server_hostname="localhost") as client:
        client.sendall(b"go")  # and never read
        assert server.ready.wait(10)
        wait_for(lambda: server.protocol is not None and server.protocol.lost.done(), 10,
                 "connection_lost after the flush deadline")
        assert server.protocol is not None
        assert server.protocol.events[-1] == "lost"
        assert server.protocol.transport is not None
        assert server.protocol.transport.get_write_buffer_size() == 0


def test_a_close_to_a_slow_but_reading_client_is_not_cut(serve, contexts, monkeypatch):
    """The flush deadline counts from the last progress, not from close(): a
    client reading slowly past CLOSE_FLUSH_SECONDS still gets every byte
    (it got a reset after the first deadline)."""
    from certgate.tls import transport as module
    monkeypatch.setattr(module, "CLOSE_FLUSH_SECONDS", 0.3)
    payload = bytes(range(256)) * 4096  # 1 MiB

    def answer_and_close(protocol: Recorder, data: bytes) -> None:
        assert protocol.transport is not None
        protocol.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        protocol.transport.write(payload)
        protocol.transport.close()

    server = serve(lambda: Recorder(answer_and_close))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", server.port))
    received = bytearray()
    started = time.monotonic()
    with contexts[1].wrap_socket(raw, server_hostname="localhost") as client:
        client.sendall(b"go")
        while len(received) < len(payload):
            chunk = client.recv(4096)
            assert chunk, f"cut after {len(received)} bytes"
            received += chunk
            time.sleep(0.004)  # the client's pace: slow, but never still for 0.3 s
    assert bytes(received) == payload
    assert time.monotonic() - started > 0.3  # it did outlast one deadline


def test_a_protocol_failing_in_connection_made_leaves_no_socket_behind(contexts):
    """The protocol factory or connection_made raising (a bug, or a
    certificate the identity parser chokes on) left the socket open and
    still watched by the finished handshake's callback, which returns at
    once: the client's next bytes spun the loop, and the descriptor was
    never closed. The socket must be closed and unwatched, the error raised."""
    server_ctx, client_ctx = contexts

    class Failing(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            raise RuntimeError("protocol bug")

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client_saw: list[object] = []
    client_done = threading.Event()

    def client() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\n\r\n")
                client_saw.append(tls.recv(100))  # b"" at the server's close
        except (OSError, ssl.SSLError) as exc:
            client_saw.append(exc)  # a timeout when the server kept the socket
        finally:
            client_done.set()

    async def serve() -> tuple[BaseException | None, float]:
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(listener)
        failure: BaseException | None = None
        try:
            await accept_tls(loop, conn, server_ctx, Failing, 5.0)
        except RuntimeError as exc:
            failure = exc
        started = time.process_time()
        # The loop keeps running (as certgate's does) while the client waits.
        await loop.run_in_executor(None, client_done.wait, 10)
        return failure, time.process_time() - started

    loop = uvloop.new_event_loop()
    listener.setblocking(False)
    thread = threading.Thread(target=client, daemon=True)
    try:
        thread.start()
        failure, cpu = loop.run_until_complete(serve())
        thread.join(10)
    finally:
        loop.close()
        listener.close()
    assert isinstance(failure, RuntimeError)
    assert client_saw
    assert not isinstance(client_saw[0], TimeoutError), "the server kept the socket"
    assert cpu < 1.0, f"the loop spun: {cpu:.2f} s of CPU"

"""The listener reads the ClientHello's SNI whether it is already there when
accept() returns (peeked at once, issue #15: no epoll registration for it) or
arrives later in pieces (watched with SO_RCVLOWAT), and closes a silent
connection after ``limits.handshake_timeout``.

A real ClientHello from Python's ssl is sent over a raw socket; the server's
answer is read as TLS records: a handshake record (ServerHello) means the
connection reached OpenSSL with the right context.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import ssl
import time

import pytest

from certgate.tls.transport import LINGER_SECONDS

from support.clients import Connection
from support.process import wait_until

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
limits: {handshake_timeout: 1}
routes:
  - {host: localhost, upstream: whoami, client_auth: require}
"""


def _client_hello(sni: str = "localhost") -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _first_record_type(sock: socket.socket) -> int | None:
    """The content type of the first TLS record the server sends (22 =
    handshake), or None when it closes without one."""
    sock.settimeout(5)
    data = sock.recv(5)
    return data[0] if data else None


def test_a_hello_sent_with_the_connection_is_served(start_certgate) -> None:  # type: ignore[no-untyped-def]
    proxy = start_certgate(CONFIG)
    hello = _client_hello()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(hello)  # before the server has even accepted, usually
            assert _first_record_type(sock) == 22


@pytest.mark.parametrize("cut", [1, 5, 40])
def test_a_hello_in_pieces_is_served(start_certgate, cut: int) -> None:  # type: ignore[no-untyped-def]
    proxy = start_certgate(CONFIG)
    hello = _client_hello()
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(hello[:cut])
        # The server must be waiting for the rest, not answering or closing.
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.sendall(hello[cut:])
        assert _first_record_type(sock) == 22


def test_a_silent_connection_is_closed_after_the_handshake_timeout(start_certgate) -> None:  # type: ignore[no-untyped-def]
    proxy = start_certgate(CONFIG)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        started = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(1) == b""
        assert time.monotonic() - started >= 0.9


def test_plain_http_gets_the_one_line_answer_at_once(start_certgate) -> None:  # type: ignore[no-untyped-def]
    proxy = start_certgate(CONFIG)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(200).startswith(b"HTTP/1.1 400 Bad Request")


SLOW_HANDSHAKE = CONFIG.replace("handshake_timeout: 1", "handshake_timeout: 30")


@pytest.mark.parametrize("cut", [3, 40])
def test_a_hello_cut_short_by_the_clients_close_is_closed_at_once(start_certgate, cut: int) -> None:  # type: ignore[no-untyped-def]
    """Part of a ClientHello, then FIN. The socket stays readable (end of
    stream) while the peek keeps returning the same incomplete bytes: the
    listener spun the event loop on it, a core per such connection until
    the handshake timeout. No progress on a wake-up means the client is done."""
    proxy = start_certgate(SLOW_HANDSHAKE)
    hello = _client_hello()
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(hello[:cut])
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)  # far below the 30 s handshake timeout
        # Closed with the client's bytes unread: a reset, as nginx does, or an end.
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b""


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_running_out_of_descriptors_does_not_spin_the_accept_loop(start_certgate, pki) -> None:  # type: ignore[no-untyped-def]
    """accept() failing with EMFILE leaves the connection in the backlog and
    the listening socket readable: the accept callback, which logged and
    returned, ran again at once, a core and a log line per turn of the
    loop for as long as the descriptors stayed used (connections an
    attacker holds open). Accepting pauses for a moment instead, then
    resumes on its own."""
    proxy = start_certgate(SLOW_HANDSHAKE)
    assert proxy.proc is not None
    pid = proxy.proc.pid
    used = len(os.listdir(f"/proc/{pid}/fd"))
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    held: list[socket.socket] = []
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + 3, hard))
        for _ in range(8):  # a few accepted (waiting for a ClientHello), the rest refused
            held.append(socket.create_connection(("127.0.0.1", proxy.port)))
        wait_until(lambda: "accept failed" in proxy.log_text(), 10, "an EMFILE from accept")
        lines_before = proxy.log_text().count("accept failed")
        cpu_before = _cpu_seconds(pid)
        window = time.monotonic() + 1.0
        while time.monotonic() < window:  # a measuring window, not a wait
            time.sleep(0.05)
        spent = _cpu_seconds(pid) - cpu_before
        logged = proxy.log_text().count("accept failed") - lines_before
        assert spent < 0.3, f"certgate used {spent:.2f} s of CPU in 1 s while out of descriptors"
        assert logged <= 5, f"{logged} 'accept failed' lines in 1 s"
    finally:
        for sock in held:
            sock.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    # Accepting resumed: a new client is served.
    with Connection(proxy.port, pki.context("alice"), timeout=10) as conn:
        assert conn.request("GET", "/").status == 200


def test_a_trickled_hello_does_not_get_a_second_handshake_timeout(start_certgate) -> None:  # type: ignore[no-untyped-def]
    """The ClientHello's wait and the handshake share one deadline: a client
    that completes its hello just before ``handshake_timeout`` and then
    stalls the handshake was given a whole new ``handshake_timeout``."""
    proxy = start_certgate(CONFIG.replace("handshake_timeout: 1", "handshake_timeout: 2"))
    hello = _client_hello()
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        started = time.monotonic()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(hello[:5])
        time.sleep(1.5)  # the client's pace, not a wait for a result
        sock.sendall(hello[5:])
        assert _first_record_type(sock) == 22  # handed over, in the handshake now
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):  # the server's flight, then its close
                pass
        elapsed = time.monotonic() - started
    # One deadline of 2 s, then the linger before the close; not 1.5 + 2 + linger.
    assert 1.9 + LINGER_SECONDS <= elapsed < 2.9 + LINGER_SECONDS, elapsed

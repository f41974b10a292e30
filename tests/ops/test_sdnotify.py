"""systemd notifications, in order, read from a real unix datagram socket.

certgate is started the way systemd starts a ``Type=notify`` service: with
``NOTIFY_SOCKET`` naming a datagram socket that the test owns.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.process import free_port, wait_until

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:%d"]
workers: %d
routes: [{host: localhost, upstream: whoami}]
"""


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, list[str], socket.socket]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    yield str(path), [], sock
    sock.close()


def _receive(sock: socket.socket, messages: list[str]) -> None:
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return


def _states(messages: list[str]) -> list[str]:
    """The state words (READY=1, RELOADING=1, STOPPING=1) in the order sent."""
    out = []
    for message in messages:
        out += [f for f in message.split("\n") if f in ("READY=1", "RELOADING=1", "STOPPING=1")]
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_reloading_stopping_in_order(start_certgate, notify_socket, workers: int) -> None:  # type: ignore[no-untyped-def]
    address, messages, sock = notify_socket
    proxy = start_certgate(CONFIG % (free_port(), workers), env={"NOTIFY_SOCKET": address})

    def saw(states: list[str]) -> bool:
        _receive(sock, messages)
        return _states(messages) == states

    # start_certgate returned after "ready on": READY=1 was sent by then.
    wait_until(lambda: saw(["READY=1"]), 10, f"READY=1 (got {messages})")
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: saw(["READY=1", "RELOADING=1", "READY=1"]), 20,
               f"RELOADING=1 then READY=1 (got {messages})")
    reloading = next(m for m in messages if "RELOADING=1" in m)
    assert "MONOTONIC_USEC=" in reloading
    assert proxy.stop() == 0
    wait_until(lambda: saw(["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]), 10,
               f"STOPPING=1 (got {messages})")


def test_abstract_socket_address(start_certgate) -> None:  # type: ignore[no-untyped-def]
    name = f"certgate-test-{free_port()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    messages: list[str] = []
    try:
        start_certgate(CONFIG % (free_port(), 1), env={"NOTIFY_SOCKET": "@" + name})

        def ready() -> bool:
            _receive(sock, messages)
            return "READY=1" in _states(messages)

        wait_until(ready, 10, "READY=1 on the abstract socket")
    finally:
        sock.close()

"""workers: N processes on one port; SIGTERM drains in-flight requests, exits 0."""

from __future__ import annotations

import os
import signal
import socket
import threading

from support.clients import Connection
from support.process import wait_until


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    with open(path) as handle:
        return [int(p) for p in handle.read().split()]


def test_two_workers_share_the_port_and_stop_cleanly(start_certgate, pki):
    port = _free_port()
    proxy = start_certgate(f"""
state_dir: {{state}}
listen: ["127.0.0.1:{port}"]
workers: 2
access_log: {{path: "off"}}
routes:
  - {{host: localhost, upstream: whoami}}
""")
    assert proxy.proc is not None
    workers = wait_until(lambda: len(_children(proxy.proc.pid)) == 2 and _children(proxy.proc.pid),
                         10, "two worker processes")
    assert isinstance(workers, list)
    for _ in range(20):
        with Connection(port, pki.context("alice"), timeout=5) as conn:
            assert conn.request("GET", "/").status == 200
    assert proxy.stop() == 0
    # The parent reaped both workers before exiting.
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)


def test_sigterm_lets_the_request_in_flight_finish(start_certgate, pki, upstream):
    upstream.sse_release.clear()
    proxy = start_certgate(f"""
state_dir: {{state}}
listen: ["127.0.0.1:0"]
limits: {{shutdown_grace: 20s}}
routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream.port}"}}
""")
    result: dict[str, object] = {}
    seen_before = len(upstream.requests)  # the upstream is shared by the whole session

    def slow_request() -> None:
        with Connection(proxy.port, pki.context("alice"), timeout=15) as conn:
            response = conn.request("GET", "/sse")
            result["status"] = response.status
            result["body"] = response.body

    client = threading.Thread(target=slow_request)
    client.start()
    wait_until(lambda: any(r.path == "/sse" for r in upstream.requests[seen_before:]), 10,
               "the request to reach the upstream")
    proxy.signal(signal.SIGTERM)
    # New connections are refused once the listener closes...
    wait_until(lambda: _refused(proxy.port), 10, "the listener to close")
    # ...while the request in flight is still being served.
    assert proxy.proc is not None
    assert proxy.proc.poll() is None
    upstream.sse_release.set()
    client.join(15)
    assert result.get("status") == 200
    assert b"data: last" in result["body"]  # type: ignore[operator]
    assert proxy.proc.wait(timeout=15) == 0


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False

"""/healthz on the metrics listener and `certgate health`, against a running certgate.

The container image's HEALTHCHECK runs `certgate health`; Docker reserves
exit code 2 of a health check, so every failure must be exit 1 with one line.
"""

from __future__ import annotations

import asyncio
import http.client
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from certgate.health import Verdict, loop_responds, workers_verdict

from support.clients import Connection
from support.process import CertgateProcess, free_port, wait_until

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:{port}"]
workers: {workers}
metrics: {listen: "127.0.0.1:{metrics}"}
limits: {shutdown_grace: 20s}
client_auth: {trusted_cas: [builtin], crls: [builtin]}
routes:
  - host: localhost
    upstream: {upstream}
"""


def healthz(port: int, method: str = "GET", path: str = "/healthz") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def health_verb(config: Path | None, cwd: Path, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "certgate", "health", *(["-c", str(config)] if config else [])],
        capture_output=True, text=True, timeout=30, check=False, cwd=cwd,
        env={**os.environ, **(env or {})})


def _config(upstream_port: int, workers: int, metrics: int) -> str:
    return (CONFIG.replace("{port}", str(free_port())).replace("{workers}", str(workers))
            .replace("{metrics}", str(metrics))
            .replace("{upstream}", f"http://127.0.0.1:{upstream_port}"))


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def running(request: pytest.FixtureRequest, start_certgate, upstream  # type: ignore[no-untyped-def]
            ) -> tuple[CertgateProcess, int]:
    metrics = free_port()
    proxy = start_certgate(_config(upstream.port, request.param, metrics))
    wait_until(lambda: f"metrics on http://127.0.0.1:{metrics}" in proxy.log_text(), 10,
               "the metrics listener")
    return proxy, metrics


def test_healthy_while_serving(running, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proxy, metrics = running
    assert healthz(metrics) == (200, "ok\n")
    assert healthz(metrics, "HEAD")[0] == 200
    result = health_verb(proxy.config_path, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "healthy\n"
    # The Prometheus exposition is still there, beside it.
    assert "certgate_build_info" in healthz(metrics, path="/metrics")[1]


def test_healthz_is_only_on_the_metrics_listener(running, pki) -> None:  # type: ignore[no-untyped-def]
    """An attacker on the public port gets no unauthenticated /healthz: it is a route
    path like any other and needs a certificate."""
    proxy, _ = running
    with pytest.raises((ssl.SSLError, ConnectionError)), \
            Connection(proxy.port, pki.context()) as conn:
        conn.request("GET", "/healthz")
    with Connection(proxy.port, pki.context("alice")) as conn:
        # Proxied to the upstream (the echo) as any path is, not answered by certgate.
        response = conn.request("GET", "/healthz")
        assert response.status == 200
        assert b'"path": "/healthz"' in response.body


def test_healthz_refuses_other_methods(running) -> None:  # type: ignore[no-untyped-def]
    _, metrics = running
    status, _ = healthz(metrics, "POST")
    assert status == 405


def test_unhealthy_while_draining(start_certgate, upstream, pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM with a request in flight: certgate drains, and says so on /healthz
    until it exits, so an orchestrator stops sending it traffic."""
    metrics = free_port()
    proxy = start_certgate(_config(upstream.port, 1, metrics))
    wait_until(lambda: f"metrics on http://127.0.0.1:{metrics}" in proxy.log_text(), 10,
               "the metrics listener")
    conn = Connection(proxy.port, pki.context("alice"))
    try:
        conn.send_raw(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        wait_until(lambda: any(seen.path == "/slow" for seen in upstream.requests), 10,
                   "the slow request to reach the upstream")
        proxy.signal(signal.SIGTERM)
        proxy.wait_for_log("shutting down: waiting")
        status, body = healthz(metrics)
        assert (status, body) == (503, "stopping: draining connections\n")
        result = health_verb(proxy.config_path, tmp_path)
        assert result.returncode == 1
        assert result.stdout.startswith("unhealthy: http://127.0.0.1:")
        assert "503 stopping" in result.stdout
        assert result.stdout.count("\n") == 1
    finally:
        conn.close()
        proxy.signal(signal.SIGTERM)  # the second signal closes what is left
        assert proxy.stop() == 0


def test_health_when_nothing_runs(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    metrics = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(_config(1, 1, metrics).replace("{state}", str(pki.state)))
    result = health_verb(config, tmp_path)
    assert result.returncode == 1
    assert result.stdout == (f"unhealthy: http://127.0.0.1:{metrics}/healthz: Connection "
                             "refused (is certgate running?)\n")


@pytest.mark.parametrize(("metrics", "expected"), [
    ('"off"', "metrics.listen is off"),
    ('"127.0.0.1:0"', "has port 0"),
])
def test_health_needs_a_fixed_metrics_listener(tmp_path: Path, pki, metrics: str,  # type: ignore[no-untyped-def]
                                               expected: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(_config(1, 1, 1).replace("{state}", str(pki.state))
                      .replace('"127.0.0.1:1"', metrics))
    result = health_verb(config, tmp_path)
    assert result.returncode == 1
    assert expected in result.stdout
    assert result.stdout.count("\n") == 1


def test_bad_config_is_exit_1_not_2(tmp_path: Path) -> None:
    """Docker reserves a health check's exit code 2."""
    config = tmp_path / "c.yaml"
    config.write_text("listen: [nonsense]\nroutes: []\nbogus_key: 1\n")
    result = health_verb(config, tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: ")
    assert result.stdout.count("\n") == 1
    missing = health_verb(tmp_path / "absent.yaml", tmp_path)
    assert missing.returncode == 1


def test_health_follows_certgate_config(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    """Without -c, health reads the config run would: $CERTGATE_CONFIG (the
    container image sets it)."""
    metrics = free_port()
    config = tmp_path / "mounted.yaml"
    config.write_text(_config(1, 1, metrics).replace("{state}", str(pki.state)))
    result = health_verb(None, tmp_path, {"CERTGATE_CONFIG": str(config)})
    assert result.returncode == 1
    assert f"127.0.0.1:{metrics}/healthz" in result.stdout


# -- the decisions, without processes ----------------------------------------------


def test_workers_verdict() -> None:
    assert workers_verdict(2, 2, 0, False) == Verdict(True, "ok")
    assert workers_verdict(2, 2, 1, False) == Verdict(False, "1 of 2 workers serving")
    assert workers_verdict(2, 1, 0, False) == Verdict(False, "1 of 2 workers serving")
    assert not workers_verdict(2, 2, 0, True).ok


def test_a_blocked_event_loop_is_unhealthy() -> None:
    """The metrics thread can answer while the worker's loop is stuck: /healthz
    must look at the loop, not only at the thread that answers."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    release = threading.Event()
    try:
        assert loop_responds(loop, 5.0).ok
        loop.call_soon_threadsafe(release.wait, 30)  # blocks the loop, as a bug would
        verdict = loop_responds(loop, 0.2)
        assert verdict == Verdict(False, "event loop did not respond within 0.2 s")
        release.set()
        assert loop_responds(loop, 5.0).ok
    finally:
        release.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert loop_responds(loop) == Verdict(False, "stopped")

"""Prometheus metrics from a running certgate: summed across workers, scraped for real.

The metrics listener binds port 0 here and the test reads the port from the
log line certgate prints, so tests never fight over 9464.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from support.clients import Connection
from support.process import CertgateProcess, free_port, wait_until

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:{port}"]
workers: 2
metrics: {listen: "127.0.0.1:0"}
client_auth: {trusted_cas: [builtin], crls: [builtin]}
routes:
  - host: localhost
    upstream: {upstream}
    rules:
      - {path: /admin/*, allow: ["role:nobody-has-this"]}
"""


def metrics_port(proxy: CertgateProcess) -> int:
    found: list[int] = []

    def seen() -> bool:
        match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", proxy.log_text())
        if match:
            found.append(int(match.group(1)))
        return bool(found)

    wait_until(seen, 10, "the metrics listener to start")
    return found[0]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample(text: str, metric: str, **labels: str) -> float:
    """Sum of the samples of ``metric`` whose labels include ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(metric)}(?:\{{(.*?)\}})? (\S+)$", re.MULTILINE)
    for match in pattern.finditer(text):
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


@pytest.fixture
def proxy(start_certgate, upstream) -> CertgateProcess:  # type: ignore[no-untyped-def]
    config = CONFIG.replace("{upstream}", f"http://127.0.0.1:{upstream.port}")
    return start_certgate(config.replace("{port}", str(free_port())))  # type: ignore[no-any-return]


def _requests(pki, port: int, count: int, path: str = "/echo") -> list[int]:  # type: ignore[no-untyped-def]
    """``count`` requests on fresh connections, so both workers take some."""
    statuses = []
    for _ in range(count):
        with Connection(port, pki.context("alice")) as conn:
            statuses.append(conn.request("GET", path).status)
    return statuses


def test_counters_are_summed_across_workers(proxy, pki) -> None:  # type: ignore[no-untyped-def]
    port = metrics_port(proxy)
    assert _requests(pki, proxy.port, 12) == [200] * 12
    assert _requests(pki, proxy.port, 3, "/admin/x") == [403] * 3
    # A handshake without a certificate fails in OpenSSL and is counted.
    with pytest.raises((ssl.SSLError, ConnectionError)), \
            Connection(proxy.port, pki.context()) as conn:
        conn.request("GET", "/echo")
    text = scrape(port)
    assert sample(text, "certgate_requests_total", route="localhost/", code_class="2xx") == 12
    assert sample(text, "certgate_requests_total", route="localhost/", code_class="4xx") == 3
    assert sample(text, "certgate_denials_total", route="localhost/", reason="policy") == 3
    assert sample(text, "certgate_request_duration_seconds_count", route="localhost/") == 15
    assert sample(text, "certgate_tls_handshakes_total", result="ok") == 15
    wait_until(lambda: sample(scrape(port), "certgate_tls_handshakes_total", result="failed",
                              reason="no_cert") == 1, 5, "the failed handshake to be counted")
    assert sample(text, "certgate_bytes_total", direction="out") > 0
    assert sample(text, "certgate_build_info") == 1
    # Per-client identity never becomes a label.
    assert "alice" not in text.replace('name="alice"', "")


def test_certificate_expiry_and_crl_gauges(proxy, pki) -> None:  # type: ignore[no-untyped-def]
    text = scrape(metrics_port(proxy))
    alice_serial = format(pki["alice"].serial, "x")
    expiry = sample(text, "certgate_certificate_expiry_timestamp_seconds", kind="client",
                    serial=alice_serial)
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(pki["alice"].cert.read_bytes())[0]
    assert expiry == pytest.approx(leaf.not_valid_after_utc.timestamp())
    assert sample(text, "certgate_certificate_expiry_timestamp_seconds", kind="server",
                  name="localhost") > time.time()
    assert sample(text, "certgate_certificate_expiry_timestamp_seconds", kind="ca") > time.time()
    assert sample(text, "certgate_crl_next_update_timestamp_seconds") > time.time()
    assert "certgate_crl_revoked{" in text


def test_connections_active_counts_open_connections(proxy, pki) -> None:  # type: ignore[no-untyped-def]
    port = metrics_port(proxy)
    with Connection(proxy.port, pki.context("alice")) as conn:
        assert conn.request("GET", "/echo").status == 200
        wait_until(lambda: sample(scrape(port), "certgate_connections_active") == 1, 5,
                   "the open connection to show")
    wait_until(lambda: sample(scrape(port), "certgate_connections_active") == 0, 5,
               "the closed connection to stop counting")


def test_metrics_port_in_use_stops_certgate(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(f"""
state_dir: {pki.state}
listen: ["127.0.0.1:0"]
metrics: {{listen: "127.0.0.1:{busy}"}}
routes: [{{host: localhost, upstream: whoami}}]
""")
        result = subprocess.run([sys.executable, "-m", "certgate", "run", "-c", str(config)],
                                capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0
    assert f"metrics.listen 127.0.0.1:{busy}: cannot listen" in result.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="Prometheus is not installed (Debian package 'prometheus'; "
                           ".ci/run installs it)")
def test_real_prometheus_scrape_sums_workers(proxy, pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = metrics_port(proxy)
    sent = 10
    assert _requests(pki, proxy.port, sent) == [200] * sent

    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: certgate
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
""")
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        query = urllib.parse.quote('sum(certgate_requests_total{route="localhost/"})')
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?query={query}"
        seen: list[float] = []

        def answered() -> bool:
            import json

            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    result = json.load(response)["data"]["result"]
            except OSError:
                return False
            if result:
                seen.append(float(result[0]["value"][1]))
            return bool(seen) and seen[-1] == sent

        wait_until(answered, 30, f"Prometheus to report {sent} requests (saw {seen[-1:]})")
    finally:
        prom.terminate()
        prom.wait(timeout=10)

"""Acceptance 4: 1 GiB each way through certgate, intact, in bounded memory.

certgate's flow control (proxy/channel.py) must keep at most a chunk or two
per direction in flight, so its resident set stays far below the transfer
size. RSS is read from /proc/PID/status every 0.2 s by a sampler thread.
Slow (several seconds per GiB): run with ``CERTGATE_SLOW=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import h11
import httpx
import pytest

from support.clients import Connection
from support.upstream import PATTERN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("CERTGATE_SLOW") != "1",
                       reason="set CERTGATE_SLOW=1: streams 1 GiB each way"),
]

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
access_log: {path: "off"}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%d"
"""

GIB = 1 << 30
BLOCK = PATTERN * 16  # 1 MiB of the upstream's pattern
RSS_LIMIT = 150 * 1024 * 1024


class RssSampler:
    """Peak VmRSS of one process, sampled every 0.2 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.status = Path(f"/proc/{pid}/status")
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> int:
        for line in self.status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")

    def _run(self) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            self.peak = max(self.peak, self.read())
            self.samples += 1
            if self._stop.wait(0.2):  # pacing of the samples
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive()


@pytest.mark.timeout(900)
def test_one_gib_each_way_in_bounded_memory(start_certgate, upstream, pki):
    proxy = start_certgate(CONFIG % upstream.port)
    assert proxy.proc is not None
    with RssSampler(proxy.proc.pid) as rss:
        idle_rss = rss.read()

        # Upload: Content-Length, 1 MiB writes, hashed as it goes.
        expected = hashlib.sha256()
        started = time.monotonic()
        with Connection(proxy.port, pki.context("alice"), timeout=60) as conn:
            conn.send_raw(conn.h11.send(h11.Request(method="POST", target="/upload", headers=[
                ("host", "localhost"), ("content-length", str(GIB))])))
            for _ in range(GIB // len(BLOCK)):
                conn.send_raw(conn.h11.send(h11.Data(data=BLOCK)))
                expected.update(BLOCK)
            assert conn.h11.send(h11.EndOfMessage()) == b""
            answer = conn.read_response()
        upload_s = time.monotonic() - started
        assert answer.status == 200
        result = json.loads(answer.body)
        assert result["size"] == GIB
        assert result["sha256"] == expected.hexdigest()

        # Download: streamed, hashed as it comes.
        got = hashlib.sha256()
        size = 0
        started = time.monotonic()
        with httpx.Client(verify=pki.context("alice"), timeout=60) as client, \
                client.stream("GET", f"https://localhost:{proxy.port}/bytes/{GIB}") as response:
            assert response.status_code == 200
            for chunk in response.iter_raw(1 << 20):
                got.update(chunk)
                size += len(chunk)
        download_s = time.monotonic() - started
        assert size == GIB
        assert got.hexdigest() == expected.hexdigest()  # same pattern, same length

    print(f"\ncertgate RSS: idle {idle_rss / 2**20:.1f} MiB, peak {rss.peak / 2**20:.1f} MiB "
          f"over {rss.samples} samples; upload {GIB / upload_s / 2**20:.0f} MiB/s "
          f"({upload_s:.1f} s), download {GIB / download_s / 2**20:.0f} MiB/s "
          f"({download_s:.1f} s)")
    assert rss.samples >= 5
    assert rss.peak < RSS_LIMIT

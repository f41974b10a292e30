"""``certgate_enrollments_total{result}`` from a running certgate, and no
secret in any metric."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from support.enrolling import CONFIG, start_enrolling
from support.process import wait_until


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()  # type: ignore[no-any-return]


def _value(text: str, result: str) -> float:
    match = re.search(rf'^certgate_enrollments_total\{{result="{result}"\}} (\S+)$', text,
                      re.MULTILINE)
    assert match, f"no certgate_enrollments_total for {result}"
    return float(match.group(1))


def test_enrollment_counter(tmp_path: Path) -> None:
    env = start_enrolling(tmp_path, CONFIG.replace('metrics: {{listen: "off"}}',
                                                   'metrics: {{listen: "127.0.0.1:0"}}'))
    try:
        def port() -> int:
            match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics",
                              env.proxy.log_text())
            return int(match.group(1)) if match else 0

        metrics = int(wait_until(port, 10, "the metrics listener"))  # type: ignore[arg-type]
        assert _value(_scrape(metrics), "created") == 0
        burned = env.enroll("guessed")
        cancelled = env.enroll("spare")
        env.enroll("short", "--ttl", "1s")
        env.ca("enroll", "--cancel", cancelled.id)
        wrong = "000000" if burned.pin != "000000" else "111111"
        with env.client() as client:
            for _ in range(5):
                env.request(client, "POST", burned.path, data={"pin": wrong})

        def counted() -> str | None:
            text = _scrape(metrics)
            return text if _value(text, "expired") == 1 else None

        text = str(wait_until(counted, 15, "the short link to count as expired", 0.5))
        assert _value(text, "created") == 3
        assert _value(text, "burned") == 1
        assert _value(text, "cancelled") == 1
        assert _value(text, "downloaded") == 0
        for secret in (burned.token, burned.pin, cancelled.token):
            assert secret not in text
    finally:
        env.proxy.stop()

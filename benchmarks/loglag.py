"""How much the access-log writer thread delays the event loop's thread.

The writer formats and writes lines in batches (certgate/accesslog.py) in
its own thread; while it formats, it holds the GIL, and the loop's thread
waits for it. This probe reproduces that without sockets: one thread plays
the event loop at a fixed request rate (about 0.15 ms of Python work per
request, then one access-log line, sleeping with the GIL released when it is
ahead, as uvloop does in epoll), the real ``AccessLogger`` writes JSON lines
to a file, and each request's work is timed, GIL waits included. Compare
the percentiles with ``--no-log``.

    python3 -m benchmarks.loglag [--rate 3000] [--seconds 8] [--no-log]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from certgate.accesslog import AccessLogger
from certgate.config.schema import AccessLog, ClientAuth, LogFormat
from certgate.proxy.info import ConnectionInfo

INFO = ConnectionInfo("127.0.0.1:8443", "127.0.0.1", "localhost", ClientAuth.REQUIRE)
PAYLOAD = {"a": list(range(20)), "b": "x" * 50}
WORK_ROUNDS = 12  # json.dumps of PAYLOAD this many times: ~0.1-0.15 ms here


def run(rate: float, seconds: float, log_on: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        log = AccessLogger(AccessLog(LogFormat.JSON, str(Path(tmp) / "access.log")
                                     if log_on else "off"))
        took: list[float] = []
        start = time.perf_counter()
        end = start + seconds
        n = 0
        while time.perf_counter() < end:
            due = start + n / rate
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            began = time.perf_counter()
            for _ in range(WORK_ROUNDS):
                json.dumps(PAYLOAD)
            log.request(INFO, None, None, None, 200, n, n, 0.001, reason="probe")
            took.append(time.perf_counter() - began)
            n += 1
        log.close()
    took.sort()

    def at(q: float) -> float:
        return took[min(len(took) - 1, int(q * len(took)))] * 1e3

    return {"requests": n, "dropped": log.dropped, "p50_ms": at(0.5), "p99_ms": at(0.99),
            "p99.9_ms": at(0.999), "max_ms": took[-1] * 1e3,
            "over_1ms": sum(t > 1e-3 for t in took)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=3000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--no-log", action="store_true", help="access log off (baseline)")
    args = parser.parse_args()
    result = run(args.rate, args.seconds, not args.no_log)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in result.items()))


if __name__ == "__main__":
    main()

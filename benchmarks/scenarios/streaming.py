"""Scenario 6: 1 GiB streamed each way through the proxy, and the proxy's peak RSS.

A proxy that buffers whole bodies shows it here as RSS growing with the
transfer; one with working backpressure stays flat. RSS is sampled every
20 ms over the server's process tree (the largest single process is
reported, which is the worker carrying the transfer), next to its RSS
before the transfer.
"""

from __future__ import annotations

from typing import Any

from benchmarks import procstat
from benchmarks.clients import stream
from benchmarks.clients.stream import StreamSpec
from benchmarks.context import Bench, ServerSpec
from benchmarks.loadgen import run_load
from benchmarks.servers import ServerProcess
from benchmarks.stats import ratio

MB = 1_000_000
GIB = 1 << 30
# The stream client is bounded by its size, not by time; this only bounds how
# long the harness waits for it (1 GiB at a pathological 10 MB/s).
BUDGET = 120.0


def _measure(bench: Bench, workers: str, label: str, server: ServerProcess,
             direction: str) -> dict[str, Any]:
    size = bench.opts.stream_bytes
    spec = StreamSpec(bench.target(server), direction, size)
    start_rss = procstat.tree_max_rss(server.pid)
    result = run_load(stream.run, [spec], BUDGET, server.pid,
                      sampler=lambda: procstat.tree_max_rss(server.pid))
    seconds = result.counter("seconds")
    ok = result.ops == 1
    return {
        "workers": workers,
        "server": label,
        "direction": direction,
        "bytes": size,
        "mb_per_s": size / seconds / MB if ok and seconds > 0 else None,
        "peak_rss_mb": max([start_rss, *result.samples]) / MB,
        "start_rss_mb": start_rss / MB,
        "server_cpu_s_per_gib": result.server_cpu / size * GIB if ok else None,
        "errors": result.errors,
        **({"first_error": result.first_error()} if result.errors else {}),
    }


def run(bench: Bench) -> dict[str, dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for workers in bench.opts.workers:
        specs = [ServerSpec("certgate"), ServerSpec("nginx")]
        if not bench.opts.quick:
            specs.insert(1, ServerSpec("certgate", as_users=True))
        with bench.servers(specs, workers) as running:
            for direction in ("download", "upload"):
                for spec, server in running.items():
                    rows.append(_measure(bench, workers, spec.label, server, direction))
    for row in rows:
        if row["server"].startswith("certgate"):
            nginx = next((r for r in rows if r["server"] == "nginx"
                          and r["workers"] == row["workers"]
                          and r["direction"] == row["direction"]), None)
            if nginx is not None:
                row["certgate_over_nginx"] = ratio(row["mb_per_s"], nginx["mb_per_s"])
    size = bench.opts.stream_bytes
    return {"6": {"rows": rows, "notes": [
        f"{size / GIB:g} GiB per direction on one TLS connection; 'download' is upstream -> "
        "client, 'upload' is a Content-Length request body client -> upstream"]}}

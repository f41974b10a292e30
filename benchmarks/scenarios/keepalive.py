"""Scenarios 4 and 5: keep-alive requests/s through the proxy, and the latency it adds.

4. Peak: every connection sends its next GET as soon as the previous
   response is in (64 connections over 4 processes in a full run). The same
   load straight to the upstream (plain HTTP) shows what the upstream and
   the generator can do without a proxy in between.
5. Added latency at half of each server's peak from scenario 4: p50/p99
   through the proxy minus p50/p99 straight to the upstream at the same
   rate, measured alternately so both see the same machine.
"""

from __future__ import annotations

from typing import Any

from benchmarks.clients import keepalive
from benchmarks.clients.keepalive import KeepAliveSpec
from benchmarks.context import Bench, ServerSpec
from benchmarks.loadgen import LoadResult, run_load
from benchmarks.servers import ServerProcess, upstream_accepted
from benchmarks.stats import median, ms, percentile, ratio

DIRECT = "direct to upstream (no TLS)"


def _measure(bench: Bench, server: ServerProcess | None, rate: float | None = None
             ) -> LoadResult:
    """One run; the upstream connections it opened go into ``counters``."""
    opts = bench.opts
    target = bench.target(server)
    share = rate / opts.keepalive_processes if rate else None
    specs = [KeepAliveSpec(target, opts.keepalive_connections, opts.max_ops_per_client, share)
             for _ in range(opts.keepalive_processes)]
    pid = server.pid if server is not None else bench.upstream.pid
    before = upstream_accepted(bench.upstream.port)
    result = run_load(keepalive.run, specs, opts.duration, pid)
    result.clients[0].counters["upstream_connections"] = (
        upstream_accepted(bench.upstream.port) - before)
    return result


def _upstream_per_1k(runs: list[LoadResult]) -> float | None:
    """New upstream connections per 1,000 requests: 0 for a pool that keeps up."""
    return median([r.counter("upstream_connections") / r.ops * 1000 if r.ops else None
                   for r in runs])


def _latency(runs: list[LoadResult], q: float) -> float | None:
    return median([ms(percentile(r.latencies(), q)) for r in runs])


def _peak_row(workers: str, label: str, runs: list[LoadResult]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "workers": workers,
        "server": label,
        "requests_per_s": median([r.rate for r in runs]),
        "p50_ms": _latency(runs, 50),
        "p99_ms": _latency(runs, 99),
        "server_cpu_ms_per_request": median([r.server_ms_per_op() for r in runs]),
        "upstream_connections_per_1k_requests": _upstream_per_1k(runs),
        "generator_cpu_cores": median([r.generator_cores for r in runs]),
        "machine_busy_cores": median([r.machine_busy_cores for r in runs]),
        "errors": sum(r.errors for r in runs),
        "runs": [round(r.rate, 1) for r in runs],
    }
    if row["errors"]:
        row["first_error"] = next((r.first_error() for r in runs if r.first_error()), "")
    return row


def _added_row(workers: str, label: str, rate: float, via: list[LoadResult],
               direct: list[LoadResult]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "workers": workers,
        "server": label,
        "target_rate": rate,
        "achieved_rate": median([r.rate for r in via]),
        "p50_ms": _latency(via, 50),
        "p99_ms": _latency(via, 99),
        "direct_p50_ms": _latency(direct, 50),
        "direct_p99_ms": _latency(direct, 99),
        "errors": sum(r.errors for r in via + direct),
    }
    for q in ("p50", "p99"):
        a, b = row[f"{q}_ms"], row[f"direct_{q}_ms"]
        row[f"added_{q}_ms"] = a - b if a is not None and b is not None else None
    return row


def run(bench: Bench) -> dict[str, dict[str, Any]]:
    opts = bench.opts
    peak_rows: list[dict[str, Any]] = []
    added_rows: list[dict[str, Any]] = []
    specs = [ServerSpec("certgate"), ServerSpec("certgate", as_users=True), ServerSpec("nginx")]
    for workers in opts.workers:
        with bench.servers(specs, workers) as running:
            servers: list[tuple[str, ServerProcess | None]] = [
                (spec.label, server) for spec, server in running.items()]
            peaks: dict[str, list[LoadResult]] = {label: [] for label, _ in servers}
            peak_reps = opts.reps if "4" in opts.scenarios else 1
            for _ in range(peak_reps):
                for label, server in servers:
                    peaks[label].append(_measure(bench, server))
            if "4" in opts.scenarios:
                direct = [_measure(bench, None) for _ in range(peak_reps)]
                rows = [_peak_row(workers, label, runs) for label, runs in peaks.items()]
                rows.append(_peak_row(workers, DIRECT, direct))
                nginx = next((r for r in rows if r["server"] == "nginx"), None)
                for row in rows:
                    if nginx is not None and row["server"].startswith("certgate"):
                        row["certgate_over_nginx"] = ratio(row["requests_per_s"],
                                                           nginx["requests_per_s"])
                peak_rows += rows
            if "5" in opts.scenarios:
                for label, server in servers:
                    rate = (median([r.rate for r in peaks[label]]) or 0.0) / 2
                    if rate <= 0:
                        continue
                    via: list[LoadResult] = []
                    straight: list[LoadResult] = []
                    for _ in range(opts.reps):
                        via.append(_measure(bench, server, rate))
                        straight.append(_measure(bench, None, rate))
                    added_rows.append(_added_row(workers, label, rate, via, straight))
    out: dict[str, dict[str, Any]] = {}
    if "4" in opts.scenarios:
        out["4"] = {"rows": peak_rows, "notes": [
            f"{opts.keepalive_processes} processes x {opts.keepalive_connections} keep-alive "
            "connections, one request in flight per connection, no pipelining"]}
    if "5" in opts.scenarios:
        out["5"] = {"rows": added_rows, "notes": [
            "paced at half of each server's scenario-4 peak; 'direct' is the same load "
            "straight to the upstream over plain HTTP, alternating with the proxied runs"]}
    return out

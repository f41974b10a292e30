"""Scenario 7: memory per idle keep-alive TLS connection (2,000 held).

Method: warm the server up with a few hundred connections (so allocator
arenas, the SSL session machinery and the HTTP code paths are already
paged in), let them close, take the server tree's RSS, open ``N``
connections that each made one request, take the RSS again, divide the
difference by the connections actually held.
"""

from __future__ import annotations

from typing import Any

from benchmarks.clients import idle
from benchmarks.clients.idle import IdleSpec
from benchmarks.context import Bench, ServerSpec
from benchmarks.loadgen import run_load
from benchmarks.servers import ServerProcess

MB = 1_000_000
WARMUP_FRACTION = 0.1
PROCESSES = 4


def _hold(bench: Bench, server: ServerProcess, connections: int,
          measure: list[int]) -> tuple[int, int]:
    """Hold ``connections``; append the RSS while held to ``measure``; (held, errors)."""
    per = max(1, connections // PROCESSES)
    specs = [IdleSpec(bench.target(server), per) for _ in range(PROCESSES)]
    result = run_load(idle.run, specs, 0.0, server.pid,
                      after_setup=lambda: measure.append(server.rss()))
    return result.ops, result.errors


def _measure(bench: Bench, workers: str, label: str, server: ServerProcess) -> dict[str, Any]:
    wanted = bench.opts.idle_connections
    _hold(bench, server, max(PROCESSES, int(wanted * WARMUP_FRACTION)), [])
    before = server.rss()
    during: list[int] = []
    held, errors = _hold(bench, server, wanted, during)
    growth = during[0] - before if during else 0
    return {
        "workers": workers,
        "server": label,
        "connections": held,
        "kib_per_connection": growth / held / 1024 if held else None,
        "rss_before_mb": before / MB,
        "rss_held_mb": during[0] / MB if during else None,
        "errors": errors,
    }


def run(bench: Bench) -> dict[str, dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for workers in bench.opts.workers:
        specs = [ServerSpec("certgate"), ServerSpec("certgate", as_users=True),
                 ServerSpec("nginx")]
        with bench.servers(specs, workers) as running:
            for spec, server in running.items():
                rows.append(_measure(bench, workers, spec.label, server))
    return {"7": {"rows": rows, "notes": [
        "RSS of the whole server process tree (all workers, nginx's master included), "
        "after one request on each connection; the target is < 35 KiB per connection"]}}

"""Scenarios 1-3: full mTLS handshakes (TLS 1.3, TLS 1.2) and resumed ones.

Each connection: TCP connect, handshake with a client certificate, one
``GET /`` proxied to the upstream with ``Connection: close``, close. The
load is 16 client processes, one connection at a time each (the issue's
"16 concurrent clients"); every server is measured ``reps`` times, the
servers alternating within each repetition so drift in the machine's load
hits all of them alike, and the median is reported.

Variants: ECDSA P-256 and RSA-2048 chains; nginx with its default tickets
(on) and with ``ssl_session_tickets off`` (certgate's default is off); and
a 10k-entry CRL (certgate checks it in Python after the handshake, nginx in
OpenSSL during it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.clients import handshake
from benchmarks.clients.handshake import HandshakeSpec
from benchmarks.context import Bench, ServerSpec
from benchmarks.loadgen import LoadResult, run_load
from benchmarks.servers import ServerProcess
from benchmarks.stats import median, ratio


@dataclass(frozen=True, slots=True)
class Plan:
    scenario: str  # "1" | "2" | "3"
    variant: str
    spec: ServerSpec
    tls_version: str
    resume: bool = False


def _plans(bench: Bench) -> list[Plan]:
    plans: list[Plan] = []
    for scenario, version in (("1", "1.3"), ("2", "1.2")):
        if scenario not in bench.opts.scenarios:
            continue
        for key_type in bench.opts.key_types:
            for spec in (ServerSpec("certgate", key_type), ServerSpec("nginx", key_type),
                         ServerSpec("nginx", key_type, tickets=False)):
                if bench.opts.quick and spec.tickets is False:
                    continue  # the quick run only proves every code path works
                plans.append(Plan(scenario, f"{key_type}", spec, version))
        if scenario == "1" and not bench.opts.quick:
            plans.append(Plan(scenario, "ecdsa", ServerSpec("certgate", "ecdsa", as_users=True),
                              version))
        if scenario == "1":
            for kind in ("certgate", "nginx"):
                spec = ServerSpec(kind, "ecdsa", crl=True)
                variant = f"ecdsa + {bench.opts.handshake_crl_entries // 1000}k CRL"
                plans.append(Plan(scenario, variant, spec, version))
    if "3" in bench.opts.scenarios:
        for spec in (ServerSpec("certgate", "ecdsa", tickets=True),
                     ServerSpec("certgate", "ecdsa", tickets=True, as_users=True),
                     ServerSpec("nginx", "ecdsa")):
            if bench.opts.quick and spec.as_users:
                continue
            plans.append(Plan("3", "ecdsa, TLS 1.3 tickets", spec, "1.3", resume=True))
    return plans


def _measure(bench: Bench, plan: Plan, server: ServerProcess) -> LoadResult:
    target = bench.target(server, plan.spec.key_type, plan.tls_version)
    specs = [HandshakeSpec(target, plan.resume, bench.opts.max_ops_per_client)
             for _ in range(bench.opts.handshake_clients)]
    return run_load(handshake.run, specs, bench.opts.duration, server.pid)


def _row(plan: Plan, workers: str, runs: list[LoadResult]) -> dict[str, Any]:
    ops = sum(r.ops for r in runs)
    row: dict[str, Any] = {
        "workers": workers,
        "variant": plan.variant,
        "tls": plan.tls_version,
        "server": plan.spec.label,
        "handshakes_per_s": median([r.rate for r in runs]),
        "server_cpu_ms_per_handshake": median([r.server_ms_per_op() for r in runs]),
        "generator_cpu_cores": median([r.generator_cores for r in runs]),
        "machine_busy_cores": median([r.machine_busy_cores for r in runs]),
        "errors": sum(r.errors for r in runs),
        "runs": [round(r.rate, 1) for r in runs],
    }
    if plan.resume:
        row["resumed_fraction"] = sum(r.counter("resumed") for r in runs) / ops if ops else None
    if row["errors"]:
        row["first_error"] = next((r.first_error() for r in runs if r.first_error()), "")
    return row


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """On each nginx row: certgate's rate (same workers, variant, TLS) over this one."""
    for row in rows:
        if not row["server"].startswith("nginx"):
            continue
        ours = next((r for r in rows if r["server"].startswith("certgate")
                     and r["workers"] == row["workers"] and r["variant"] == row["variant"]
                     and r["tls"] == row["tls"]), None)
        if ours is not None:
            row["certgate_over_nginx"] = ratio(ours["handshakes_per_s"], row["handshakes_per_s"])
            row["cpu_nginx_over_certgate"] = ratio(row["server_cpu_ms_per_handshake"],
                                                   ours["server_cpu_ms_per_handshake"])


def run(bench: Bench) -> dict[str, dict[str, Any]]:
    plans = _plans(bench)
    rows: dict[str, list[dict[str, Any]]] = {p.scenario: [] for p in plans}
    for workers in bench.opts.workers:
        specs = list(dict.fromkeys(p.spec for p in plans))
        with bench.servers(specs, workers) as running:
            todo = [p for p in plans if p.spec in running]
            runs: dict[Plan, list[LoadResult]] = {p: [] for p in todo}
            for _ in range(bench.opts.reps):
                for plan in todo:
                    runs[plan].append(_measure(bench, plan, running[plan.spec]))
            for plan in todo:
                rows[plan.scenario].append(_row(plan, workers, runs[plan]))
    out: dict[str, dict[str, Any]] = {}
    for scenario, scenario_rows in rows.items():
        _add_ratios(scenario_rows)
        out[scenario] = {"rows": scenario_rows, "notes": []}
    if "3" in out:
        out["3"]["notes"].append(
            "resumed = the share of connections whose offered session was accepted; below "
            "100% the rest were full handshakes (certgate's workers share ticket keys, "
            "tls/tickets.py; before they did, about half failed with 2 workers)")
    return out

"""``--profile``: where certgate's CPU goes on the handshake path and the request path.

Two instruments, because each is blind where the other sees:

* **cProfile** inside the worker (:mod:`benchmarks.profiled`): exact call
  counts and Python-level costs (h11, header rewriting, the relay), but all
  C work done inside uvloop (OpenSSL, syscalls) is lumped into the builtin
  that runs the loop.
* **py-spy --native** from outside (when installed and permitted): samples
  the whole stack down into libssl/libcrypto and libc, so it shows how much
  of a handshake is crypto, how much is socket writes and how much is
  Python. Each sample is put in one bucket by the innermost frame that
  says what the work is (see :func:`bucket`); samples waiting in epoll or
  on a lock are idle and dropped.

* **strace -c** (:mod:`benchmarks.syscalls`): syscalls per handshake and
  per request, for certgate and for nginx under the same load.

Each path runs the scenario's load (TLS 1.3 ECDSA handshakes; keep-alive GETs)
against a fresh ``workers: 1`` certgate. Text summaries go to
``benchmarks/results/profiles/<stamp>/``; the top entries also go into the
JSON under ``profile``.
"""

from __future__ import annotations

import collections
import pstats
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import syscalls
from benchmarks.clients import handshake, keepalive
from benchmarks.clients.handshake import HandshakeSpec
from benchmarks.clients.keepalive import KeepAliveSpec
from benchmarks.context import Bench, ServerSpec
from benchmarks.loadgen import LoadResult, run_load
from benchmarks.servers import ServerProcess

TOP = 25
PYSPY_RATE = 250  # Hz; py-spy pauses the process per native sample, keep it modest
_LINE = re.compile(r":\d+\)$")
_SYSCALLS = ("write", "writev", "read", "recv", "recvfrom", "recvmsg", "send", "sendto",
             "sendmsg", "close", "accept4", "accept", "shutdown", "setsockopt", "getsockopt",
             "epoll_ctl", "getpid")
_IDLE = ("epoll_wait", "epoll_pwait", "PyThread_acquire_lock_timed", "pthread_cond_wait",
         "pthread_cond_timedwait", "sem_wait", "sem_timedwait", "poll", "select")


def _frame(raw: str) -> tuple[str, str]:
    """(function, where) from a py-spy frame ``func (file:line)``."""
    name, _, where = raw.rpartition(" (")
    return name, _LINE.sub(")", "(" + where)[1:-1]


def bucket(frames: list[str]) -> str | None:
    """What a sample was doing, from its innermost telling frame; None = idle."""
    for raw in reversed(frames):
        name, where = _frame(raw)
        if name in _IDLE:
            return None
        if "libssl" in where or "libcrypto" in where:
            return "OpenSSL (libssl/libcrypto)"
        if where.startswith("libc.so") and name in _SYSCALLS:
            return f"syscall {name}"
        if where.startswith("h11/"):
            return "h11 (HTTP parsing/serialising)"
        if where.startswith("certgate/"):
            return "certgate Python: " + where.split("/", 1)[1].rsplit(".py", 1)[0]
        if where.endswith(".py") or where.startswith("<frozen"):
            return "Python stdlib: " + where.rsplit("/", 1)[-1]
        if where.startswith(("loop.c", "sslproto", "uvloop")):
            return "uvloop (C)"
    return "interpreter / libc (other)"


def summarise_pyspy(path: Path) -> dict[str, Any]:
    """Bucket shares and the hottest Python functions (inclusive) from raw py-spy output."""
    buckets: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        kind = bucket(frames)
        if kind is None:
            continue
        n = int(count)
        busy += n
        buckets[kind] += n
        seen: set[str] = set()
        for raw in frames:
            name, where = _frame(raw)
            if where.startswith(("certgate/", "h11/")):
                key = f"{where}:{name}"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += n
    share = {k: round(v / busy, 4) for k, v in buckets.most_common()} if busy else {}
    hot = {k: round(v / busy, 4) for k, v in inclusive.most_common(TOP)} if busy else {}
    return {"busy_samples": busy, "buckets": share, "inclusive_python": hot}


def summarise_cprofile(path: Path, out: Path) -> list[dict[str, Any]]:
    """Write the top functions by own time to ``out``; return them as rows."""
    with out.open("w") as fh:
        stats = pstats.Stats(str(path), stream=fh)
        stats.sort_stats("tottime").print_stats(TOP)
        stats.sort_stats("cumulative").print_stats(TOP * 2)
    rows = []
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values()) or 1.0
    for (file, line, name), (_, calls, tottime, cumtime, _) in sorted(
            entries.items(), key=lambda kv: kv[1][2], reverse=True)[:TOP]:
        rows.append({"function": f"{Path(file).name}:{line}:{name}", "calls": calls,
                     "tottime_s": round(tottime, 4), "share": round(tottime / total, 4),
                     "cumtime_s": round(cumtime, 4)})
    return rows


def _handshake_load(bench: Bench, server: ServerProcess) -> LoadResult:
    spec = HandshakeSpec(bench.target(server), False, bench.opts.max_ops_per_client)
    return run_load(handshake.run, [spec] * bench.opts.handshake_clients,
                    max(bench.opts.duration, 5.0), server.pid)


def _keepalive_load(bench: Bench, server: ServerProcess) -> LoadResult:
    opts = bench.opts
    spec = KeepAliveSpec(bench.target(server), opts.keepalive_connections,
                         opts.max_ops_per_client)
    return run_load(keepalive.run, [spec] * opts.keepalive_processes,
                    max(opts.duration, 5.0), server.pid)


Load = Callable[[Bench, ServerProcess], LoadResult]


def _cprofile(bench: Bench, name: str, load: Load, out: Path) -> dict[str, Any]:
    stats_path = bench.workdir / f"{name}.pstats"
    server = bench.start(ServerSpec("certgate"), "1", profile_to=stats_path)
    try:
        result = load(bench, server)
    finally:
        server.stop()
    rows = summarise_cprofile(stats_path, out / f"{name}-cprofile.txt")
    return {"ops": result.ops, "rate_under_profiler": result.rate, "top_tottime": rows}


def _pyspy(bench: Bench, name: str, load: Load, out: Path) -> dict[str, Any] | str:
    binary = shutil.which("py-spy")
    if binary is None:
        return "py-spy is not installed (pip install py-spy)"
    raw = bench.workdir / f"{name}-pyspy.txt"
    server = bench.start(ServerSpec("certgate"), "1")
    try:
        duration = max(bench.opts.duration, 5.0)
        spy = subprocess.Popen(
            [binary, "record", "--pid", str(server.pid), "--native", "--rate",
             str(PYSPY_RATE), "--duration", str(int(duration) + 2), "--format", "raw",
             "--output", str(raw)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        result = load(bench, server)
        log, _ = spy.communicate(timeout=duration + 60)
    finally:
        server.stop()
    if spy.returncode != 0 or not raw.exists():
        return f"py-spy failed: {log.decode(errors='replace').strip()[-300:]}"
    summary = summarise_pyspy(raw)
    summary["rate_under_profiler"] = result.rate
    with (out / f"{name}-pyspy.txt").open("w") as fh:
        fh.write(f"py-spy --native, {summary['busy_samples']} busy samples\n\nbuckets:\n")
        fh.writelines(f"  {v:6.1%}  {k}\n" for k, v in summary["buckets"].items())
        fh.write("\ninclusive (certgate and h11 functions):\n")
        fh.writelines(f"  {v:6.1%}  {k}\n" for k, v in summary["inclusive_python"].items())
    return summary


def _syscalls(bench: Bench, load: Load) -> dict[str, Any]:
    """Syscalls per operation for certgate and (when installed) nginx, 1 worker each."""
    found: dict[str, Any] = {}
    for spec in bench.wanted([ServerSpec("certgate"), ServerSpec("nginx")]):
        server = bench.start(spec, "1")
        try:
            found[spec.label] = syscalls.count(server, lambda s=server: load(bench, s))
        finally:
            server.stop()
    return found


def _write_syscalls(path: Path, name: str, found: dict[str, Any]) -> None:
    with path.open("w") as fh:
        fh.write(f"strace -c -f, syscalls per {name} operation (1 worker)\n\n")
        for label, counts in found.items():
            if isinstance(counts, str):
                fh.write(f"{label}: {counts}\n")
                continue
            fh.write(f"{label} ({counts['ops']} operations):\n")
            fh.writelines(f"  {v:8.2f}  {k}\n" for k, v in counts["per_op"].items())


def run(bench: Bench, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"directory": str(out)}
    for name, load in (("handshake", _handshake_load), ("keepalive", _keepalive_load)):
        found = _syscalls(bench, load)
        _write_syscalls(out / f"{name}-syscalls.txt", name, found)
        result[name] = {"cprofile": _cprofile(bench, name, load, out),
                        "pyspy": _pyspy(bench, name, load, out),
                        "syscalls_per_op": found}
    return result

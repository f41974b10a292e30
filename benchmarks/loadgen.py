"""Run a load in several client processes, in step, and measure both sides.

Theory of operation. Each client process first does its setup (builds its
TLS context, opens its keep-alive connections), then waits at a barrier;
once every process is there the harness samples the server's CPU, the
machine's CPU and the clock, and releases them all with one event. Each
process runs its bounded loop (``duration`` and a count cap), measures its
own CPU with ``getrusage`` over exactly that loop, and sends one result
back. The harness samples the server again after the last result. So the
server's CPU seconds and the operation counts cover the same window, and the
generator's own CPU is reported next to them: if the generator was using
most of the machine, the rate is the generator's limit, not the server's.

Processes are forked (the harness has no threads, see
:mod:`benchmarks.servers`), so a worker function and its spec need not be
importable by name or picklable.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import resource
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier, Event
from typing import Any

from benchmarks import procstat

SETUP_TIMEOUT = 120.0  # 2,000 idle connections at a few hundred handshakes/s
RESULT_GRACE = 60.0  # beyond the planned duration, for the last operations to end

_ctx = mp.get_context("fork")


@dataclass
class ClientResult:
    """What one client process did inside the measured window."""

    ops: int = 0
    errors: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0  # this process's user + system seconds in the window
    latencies: array[float] = field(default_factory=lambda: array("d"))
    counters: dict[str, float] = field(default_factory=dict)
    error_sample: str = ""


@dataclass
class LoadResult:
    clients: list[ClientResult]
    wall: float
    server_cpu: float  # seconds, the whole server process tree
    machine_busy_cores: float  # everything on the box, for context
    samples: list[int]  # values from the sampler callback, if any

    @property
    def ops(self) -> int:
        return sum(c.ops for c in self.clients)

    @property
    def errors(self) -> int:
        return sum(c.errors for c in self.clients)

    @property
    def rate(self) -> float:
        """Operations per second: each client's count over its own elapsed time."""
        return sum(c.ops / c.elapsed for c in self.clients if c.elapsed > 0)

    @property
    def generator_cores(self) -> float:
        return sum(c.cpu for c in self.clients) / self.wall if self.wall > 0 else 0.0

    def server_ms_per_op(self) -> float | None:
        return self.server_cpu / self.ops * 1000 if self.ops else None

    def latencies(self) -> list[float]:
        out: list[float] = []
        for client in self.clients:
            out.extend(client.latencies)
        return out

    def counter(self, name: str) -> float:
        return sum(c.counters.get(name, 0.0) for c in self.clients)

    def first_error(self) -> str:
        return next((c.error_sample for c in self.clients if c.error_sample), "")


class Window:
    """Handed to a client's loop: wait for the start, then time and bound the run."""

    def __init__(self, ready: Barrier, go: Event, duration: float) -> None:
        self._ready = ready
        self._go = go
        self.duration = duration
        self.started = 0.0
        self.deadline = 0.0
        self._cpu0 = 0.0

    def start(self) -> None:
        """Block until every client is set up and the harness says go."""
        self._ready.wait(SETUP_TIMEOUT)
        self._go.wait(SETUP_TIMEOUT)
        self._cpu0 = _own_cpu()
        self.started = time.perf_counter()
        self.deadline = self.started + self.duration

    def finish(self, result: ClientResult) -> ClientResult:
        result.elapsed = time.perf_counter() - self.started
        result.cpu = _own_cpu() - self._cpu0
        return result


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


ClientFn = Callable[[Any, Window], ClientResult]


def _child(fn: ClientFn, spec: object, ready: Barrier, go: Event, duration: float,
           out: mp.Queue[ClientResult]) -> None:
    window = Window(ready, go, duration)
    try:
        result = fn(spec, window)
    except Exception as exc:  # report, so the harness does not wait for nothing
        result = ClientResult(errors=1, error_sample=f"{type(exc).__name__}: {exc}")
        ready.abort()
    out.put(result)


def run_load(fn: ClientFn, specs: list[Any], duration: float, server_pid: int | None,
             sampler: Callable[[], int] | None = None,
             after_setup: Callable[[], None] | None = None) -> LoadResult:
    """Run ``fn(spec, window)`` in one forked process per spec; see the module doc.

    Args:
        sampler: called every 20 ms while the load runs (e.g. the server's
            RSS); its values come back in ``samples``.
        after_setup: called once every client is set up, before the start
            (e.g. to measure the memory of connections just opened).
    """
    ready = _ctx.Barrier(len(specs) + 1)
    go = _ctx.Event()
    out: mp.Queue[ClientResult] = _ctx.Queue()
    procs = [_ctx.Process(target=_child, args=(fn, spec, ready, go, duration, out),
                          daemon=True) for spec in specs]
    for proc in procs:
        proc.start()
    results: list[ClientResult] = []
    samples: list[int] = []
    try:
        try:
            ready.wait(SETUP_TIMEOUT)
        except Exception:  # a client failed its setup and broke the barrier
            go.set()
            while len(results) < len(procs):
                results.append(out.get(timeout=RESULT_GRACE))
            raise RuntimeError("load client setup failed: " + next(
                (r.error_sample for r in results if r.error_sample), "?")) from None
        if after_setup is not None:
            after_setup()
        cpu0 = procstat.tree_cpu(server_pid) if server_pid else 0.0
        machine0 = procstat.MachineSample.now()
        t0 = time.perf_counter()
        go.set()
        deadline = time.monotonic() + duration + RESULT_GRACE
        while len(results) < len(procs):
            if sampler is not None:
                samples.append(sampler())
            try:
                results.append(out.get(timeout=0.02 if sampler else 1.0))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError("load clients did not finish in time") from None
        wall = time.perf_counter() - t0
        server_cpu = (procstat.tree_cpu(server_pid) if server_pid else 0.0) - cpu0
        busy = procstat.MachineSample.now().busy_cores_since(machine0)
    finally:
        go.set()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        out.close()
    return LoadResult(results, wall, server_cpu, busy, samples)

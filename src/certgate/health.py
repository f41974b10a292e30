"""Is certgate serving? ``/healthz`` on the metrics listener, and ``certgate health``.

Theory of operation. A container runtime (Docker's ``HEALTHCHECK``,
Kubernetes' probes, compose's ``healthcheck:``) needs a yes or no it can
ask for without a client certificate. The public listeners must never answer
anything without one, so the question goes to the metrics listener, which is
plain HTTP on loopback by default and already unauthenticated: ``GET
/healthz`` answers ``200 ok`` while the process that serves metrics believes
every worker is serving, and ``503`` with the reason otherwise (starting a
replacement worker, draining after SIGTERM, an event loop that does not turn).
The answer names no route, host or identity.

Who decides. With one worker the worker itself serves ``/healthz`` from the
metrics thread, and proves its event loop is turning by scheduling a no-op on
it (:func:`loop_responds`): a loop stuck in a blocking call would still have
a live metrics thread, and "the process is up" is not "it serves". With
several workers the parent serves ``/healthz`` and judges from what it knows
(:func:`workers_verdict`): how many workers are alive and have bound their
listeners.

``certgate health`` is the client: it reads the config the way ``certgate
run`` does, asks ``/healthz`` on ``metrics.listen`` (a wildcard address is
asked on loopback) and prints one line. It exits 0 when healthy and 1
otherwise, for every failure, unusable config included: Docker reserves exit
code 2 of a health check.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from certgate.config.schema import Config, Listen

PATH = "/healthz"

# How long the metrics thread waits for the worker's event loop to run a
# no-op. A healthy loop answers in microseconds; building a runtime happens in
# an executor, so only a genuinely blocked loop takes a second.
LOOP_TIMEOUT = 1.0

# A Docker health check's default timeout is 30 s and Kubernetes' is 1 s;
# certgate health gives up well inside Docker's so its own line is recorded.
DEFAULT_TIMEOUT = 5.0

# The longest answer body read back: "ok" or one reason line.
MAX_BODY = 512


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str  # "ok", or why not, in one line


HEALTHY = Verdict(True, "ok")
Probe = Callable[[], Verdict]


def workers_verdict(expected: int, alive: int, starting: int, stopping: bool) -> Verdict:
    """The parent's judgement of N forked workers.

    Args:
        expected: the configured worker count.
        alive: workers forked and not yet reaped.
        starting: of those, how many have not reported their listeners bound.
        stopping: SIGTERM/SIGINT received; the workers drain.
    """
    if stopping:
        return Verdict(False, "stopping: draining connections")
    serving = alive - starting
    if serving < expected:
        return Verdict(False, f"{serving} of {expected} workers serving")
    return HEALTHY


def loop_responds(loop: asyncio.AbstractEventLoop, timeout: float = LOOP_TIMEOUT) -> Verdict:
    """From another thread: does ``loop`` run a callback within ``timeout`` seconds?"""
    ran = threading.Event()
    try:
        loop.call_soon_threadsafe(ran.set)
    except RuntimeError:  # closed: the worker has finished
        return Verdict(False, "stopped")
    if ran.wait(timeout):
        return HEALTHY
    return Verdict(False, f"event loop did not respond within {timeout:g} s")


# -- the /healthz endpoint ---------------------------------------------------------

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def with_healthz(app: WSGIApp, probe: Callable[[], Probe]) -> WSGIApp:
    """``app`` (the Prometheus exposition) with ``/healthz`` answered in front of it.

    ``probe`` returns the current probe, so that an owner can replace it
    after the listener has started.
    """

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return app(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"),
                                                      ("Content-Length", "0")])
            return [b""]
        verdict = probe()()
        data = (verdict.reason + "\n").encode("utf-8", "replace")
        status = "200 OK" if verdict.ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store")])
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else data]

    return serve


# -- the client: certgate health ---------------------------------------------------


def probe_address(listen: Listen) -> tuple[str, int]:
    """Where to ask: the metrics address, a wildcard one on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen.host, listen.host)
    return host, listen.port


def check(config: Config, timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """Ask the certgate running ``config`` whether it serves; never raises."""
    listen = config.metrics.listen
    if listen is None:
        return Verdict(False, f"metrics.listen is off in {config.source}: /healthz is served "
                              "on the metrics listener (loopback is enough)")
    if listen.port == 0:
        return Verdict(False, f"metrics.listen in {config.source} has port 0: give it a fixed "
                              "port so the health check can find it")
    host, port = probe_address(listen)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"http://{shown}{PATH}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", PATH, headers={"Connection": "close"})
        response = conn.getresponse()
        text = response.read(MAX_BODY).decode("utf-8", "replace").strip()
    except TimeoutError:
        return Verdict(False, f"{url}: no answer within {timeout:g} s")
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return Verdict(False, f"{url}: {reason} (is certgate running?)")
    except http.client.HTTPException as exc:
        return Verdict(False, f"{url}: not an HTTP answer ({type(exc).__name__})")
    finally:
        conn.close()
    line = text.splitlines()[0] if text else ""
    if response.status == 200 and line == "ok":
        return HEALTHY
    return Verdict(False, f"{url}: {response.status} {line}".rstrip())

"""Every Prometheus metric certgate records, and how workers share them.

Theory of operation. Workers are forked processes, so each keeps its own
counters; prometheus-client's multiprocess mode gives every process a small
memory-mapped file per metric type in one directory, and whoever serves
``/metrics`` (the parent with several workers, the single process otherwise)
sums those files at scrape time. The directory is made by :func:`prepare`
in the parent *before* ``prometheus_client`` is imported, because the
library picks its value class at import time.

How the gauges combine across workers: ``certgate_connections_active`` is
the sum over live workers (``livesum``: a worker that dies stops counting).
Expiry, CRL and build-info gauges are not recorded by workers at all: the
serving process computes them at scrape time from the files themselves (see
:mod:`certgate.inventory`), so there is one value per certificate whatever
the worker count, and nothing stale survives a reload.

Counters are per worker and summed: one SIGHUP to N workers adds N to
``certgate_config_reloads_total``. Request counters are labelled by route
(bounded by the config), never by client certificate: a client's identity
belongs in the access log, not in a label with unbounded cardinality.

When metrics are off, :data:`METRICS` is a :class:`NullRecorder` and
``prometheus_client`` is never imported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import ssl
import tempfile
from typing import TYPE_CHECKING, Any

from certgate.errors import CertgateError
from certgate.health import HEALTHY, Probe

if TYPE_CHECKING:
    from certgate.config.schema import Config, Listen

log = logging.getLogger("certgate.metrics")

# Request latency buckets, in seconds: proxied requests to apps on the same
# host land in 1-50 ms; the tail up to 30 s covers slow uploads and reports.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"


def handshake_failure_reason(exc: BaseException) -> str:
    """A bounded label for why a TLS handshake failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        # OpenSSL X509_V_ERR_* codes (x509_vfy.h).
        code = exc.verify_code
        if code in (9, 10):  # not yet valid, expired
            return "expired"
        if code == 26:  # X509_V_ERR_INVALID_PURPOSE: wrong EKU
            return "bad_eku"
        if code == 23:
            return "revoked"
        return "unknown_ca"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", "") or ""
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no_cert"
        if reason in ("CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA"):
            return "unknown_ca"
        return "protocol"
    return "other"


class NullRecorder:
    """Records nothing: metrics are off."""

    enabled = False

    def handshake(self, listener: str, reason: str | None) -> None:
        pass

    def connection_opened(self, listener: str) -> None:
        pass

    def connection_closed(self) -> None:
        pass

    def request(self, route: str, status: int, seconds: float, bytes_in: int,
                bytes_out: int) -> None:
        pass

    def denial(self, route: str, reason: str) -> None:
        pass

    def upstream_error(self, route: str, kind: str) -> None:
        pass

    def stale_admission(self, issuer: str) -> None:
        pass

    def reload(self, ok: bool) -> None:
        pass


class Recorder(NullRecorder):
    """The live instruments. Labelled children are cached: ``labels()`` takes a lock."""

    enabled = True

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram, values

        # Multiprocess values call their process identifier on every update
        # to notice a fork; os.getpid() is a syscall each time (2% of a
        # proxied request's CPU). The pid cached below is refreshed by an
        # at-fork hook instead, which is exactly when it changes.
        values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
            process_identifier=_current_pid)

        self._handshakes = Counter(
            "certgate_tls_handshakes", "TLS handshakes by outcome; certificates refused after "
            "the handshake (revoked, stale CRL) count as failed",
            ["listener", "result", "reason"])
        self._connections = Counter("certgate_connections", "Client connections accepted "
                                    "(TLS established)", ["listener"])
        self._active = Gauge("certgate_connections_active", "Open client TLS connections, "
                             "summed over live workers", multiprocess_mode="livesum")
        self._requests = Counter("certgate_requests", "Requests answered, by route and "
                                 "status class", ["route", "code_class"])
        self._duration = Histogram("certgate_request_duration_seconds", "Time from the first "
                                   "byte of the request head to the end of the response",
                                   ["route"], buckets=LATENCY_BUCKETS)
        self._denials = Counter("certgate_denials", "Requests refused by policy or "
                                "certificate checks", ["route", "reason"])
        self._upstream_errors = Counter("certgate_upstream_errors", "Failures talking to "
                                        "upstreams", ["route", "kind"])
        self._bytes = Counter("certgate_bytes", "Bytes relayed from (in) and to (out) clients, "
                              "request heads excepted",
                              ["direction"])
        self._stale = Counter("certgate_crl_stale_admissions", "Clients admitted under "
                              "stale_crl: allow while their issuer's CRL was stale", ["issuer"])
        self._reloads = Counter("certgate_config_reloads", "Runtime reloads per worker "
                                "(SIGHUP, certgate reload, changed certificate files)",
                                ["result"])
        self._bytes_in = self._bytes.labels("in")
        self._bytes_out = self._bytes.labels("out")
        self._cache: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(*labels)
        return child

    def handshake(self, listener: str, reason: str | None) -> None:
        if reason is None:
            self._child(self._handshakes, listener, "ok", "").inc()
        else:
            self._child(self._handshakes, listener, "failed", reason).inc()

    def connection_opened(self, listener: str) -> None:
        self._child(self._connections, listener).inc()
        self._active.inc()

    def connection_closed(self) -> None:
        self._active.dec()

    def request(self, route: str, status: int, seconds: float, bytes_in: int,
                bytes_out: int) -> None:
        self._child(self._requests, route, f"{status // 100}xx").inc()
        self._child(self._duration, route).observe(seconds)
        if bytes_in:
            self._bytes_in.inc(bytes_in)
        if bytes_out:
            self._bytes_out.inc(bytes_out)

    def denial(self, route: str, reason: str) -> None:
        self._child(self._denials, route, reason).inc()

    def upstream_error(self, route: str, kind: str) -> None:
        self._child(self._upstream_errors, route, kind).inc()

    def stale_admission(self, issuer: str) -> None:
        self._child(self._stale, issuer).inc()

    def reload(self, ok: bool) -> None:
        self._child(self._reloads, "success" if ok else "failure").inc()


_pid = os.getpid()


def _current_pid() -> int:
    return _pid


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)

METRICS: NullRecorder = NullRecorder()
"""The process-wide recorder; replaced by :func:`prepare` when metrics are on."""


def _make_server(listen: Listen, app: Any) -> Any:
    """A threaded WSGI server on ``listen`` that logs nothing per request.

    prometheus-client's own ``start_http_server`` builds the same server
    but offers no hook for a second path, hence this copy of its few lines.
    """
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    family = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True  # a stuck scraper must not hold up exit

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the log

    return make_server(listen.host, listen.port, app, Server, handler_class=Quiet)


class MetricsBindError(CertgateError):
    """The metrics listener could not bind its address (certgate does not start)."""


class Exporter:
    """The multiprocess directory and, once started, the ``/metrics`` listener."""

    def __init__(self, directory: str, owned: bool) -> None:
        self.directory = directory
        self._owned = owned
        self._server: Any = None
        self._thread: Any = None
        self.inventory: Any = None
        #: What /healthz answers; set by whoever serves it (the single
        #: worker, or the parent of several) before the listener starts.
        self.probe: Probe = lambda: HEALTHY

    def start(self, listen: Listen, inventory: Any) -> tuple[str, int]:
        """Serve ``/metrics`` and ``/healthz`` on ``listen`` from a thread; the bound address.

        Raises OSError when the address cannot be bound (certgate then does
        not start: a silently missing metrics endpoint hides outages).
        """
        import threading

        from prometheus_client import CollectorRegistry, make_wsgi_app
        from prometheus_client.multiprocess import MultiProcessCollector

        from certgate.health import with_healthz

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        registry.register(inventory)
        self.inventory = inventory
        app = with_healthz(make_wsgi_app(registry), lambda: self.probe)
        self._server = _make_server(listen, app)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="certgate-metrics", daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        log.info("metrics on http://%s:%d/metrics", host, port)
        return str(host), int(port)

    def serve_for(self, config: Config) -> None:
        """Serve /metrics for ``config``; raises MetricsBindError naming the address."""
        if config.metrics.listen is None:
            return
        from certgate.inventory import InventoryCollector

        try:
            self.start(config.metrics.listen, InventoryCollector(config))
        except OSError as exc:
            raise MetricsBindError(f"metrics.listen {config.metrics.listen}: cannot listen: "
                                   f"{exc.strerror or exc}") from None

    def config_changed(self, config: Config) -> None:
        if self.inventory is not None:
            self.inventory.config = config

    def forget(self) -> None:
        """In a freshly forked worker: close the inherited listening socket.

        The serving thread exists only in the parent; the child must not keep
        the metrics port open after the parent exits.
        """
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.socket.close()
            self._server = None
        self._owned = False

    def worker_gone(self, pid: int) -> None:
        """Drop a dead worker's live gauges (its counters keep counting in the sum)."""
        from prometheus_client.multiprocess import mark_process_dead

        with contextlib.suppress(OSError):
            mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)


def prepare() -> Exporter:
    """Turn metrics on for this process and the workers it will fork.

    Must run before anything imports ``prometheus_client``. The directory
    goes under ``$RUNTIME_DIRECTORY`` when systemd provides one, else the
    system temporary directory; it is private (0700) and removed on exit.
    """
    global METRICS
    parent = os.environ.get("RUNTIME_DIRECTORY") or None
    try:
        directory = tempfile.mkdtemp(prefix="certgate-metrics-", dir=parent)
    except OSError as exc:  # e.g. a read-only root without a writable /tmp
        where = parent or "the temporary directory ($TMPDIR, /tmp)"
        raise MetricsBindError(f"metrics: cannot create a directory in {where} for the "
                               f"workers' metrics: {exc.strerror or exc}") from None
    os.environ[ENV_DIR] = directory
    METRICS = Recorder()
    return Exporter(directory, owned=True)

"""Scrape-time gauges: certificate validity, CRL freshness, build info.

These describe files, not traffic, so they are read from the files when
Prometheus scrapes rather than recorded by each worker: one value per
certificate whatever the worker count, and a certificate dropped by a reload
disappears instead of lingering in a worker's metric file. Parsed results
are cached per file and re-read only when the file's inode, size or mtime
changes, so a scrape costs a few ``stat`` calls; a 100k-entry CRL is parsed
once per change, in the exporter's thread, never on an event loop.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from certgate import __version__
from certgate.config.schema import BUILTIN, Config
from certgate.revocation import parse_crls
from certgate.routing import automatic_host_sets, uncovered_hosts
from certgate.tls.contexts import server_names

log = logging.getLogger("certgate.inventory")


@dataclass(frozen=True, slots=True)
class Expiry:
    kind: str  # server | ca | client
    name: str
    serial: str
    not_after: float
    #: With ``not_after`` this gives the lifetime, which the client expiry
    #: alert needs: a 24-hour certificate always has under 14 days left.
    not_before: float


@dataclass(frozen=True, slots=True)
class CRLState:
    issuer: str
    next_update: float | None
    revoked: int


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if names:
        return str(names[0].value)
    return cert.subject.rfc4514_string() or "-"


def _certificates(path: Path, kind: str) -> list[Expiry]:
    certs = x509.load_pem_x509_certificates(path.read_bytes())
    if kind == "server":
        certs = certs[:1]  # the leaf; the rest of a fullchain is CA material
    return [Expiry(kind, _common_name(c), format(c.serial_number, "x"),
                   c.not_valid_after_utc.timestamp(), c.not_valid_before_utc.timestamp())
            for c in certs]


def _dns_names(path: Path) -> tuple[str, ...]:
    return server_names(x509.load_pem_x509_certificates(path.read_bytes())[0])


def _crls(path: Path) -> list[CRLState]:
    out = []
    for crl in parse_crls(path.read_bytes(), path):
        when = crl.next_update_utc
        out.append(CRLState(crl.issuer.rfc4514_string(),
                            when.timestamp() if when is not None else None, len(crl)))
    return out


class InventoryCollector:
    """A prometheus-client collector over the files the current config names."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        #: Replaced on reload; read once per scrape.
        self.config = config
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[tuple[int, ...], Any]] = {}

    def _cached(self, path: Path, kind: str, parse: Callable[[Path], Any],
                also: tuple[Path, ...] = ()) -> Any:
        """``parse(path)``, re-run only when ``path`` or one of ``also`` changed."""
        try:
            st = os.stat(path)
        except OSError:
            return []
        key = (str(path), kind)
        signature: tuple[int, ...] = (st.st_ino, st.st_size, st.st_mtime_ns)
        for extra in also:
            try:
                more = os.stat(extra)
                signature += (more.st_ino, more.st_size, more.st_mtime_ns)
            except OSError:
                signature += (-1,)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == signature:
            return hit[1]
        try:
            value = parse(path)
        except (OSError, ValueError) as exc:
            log.warning("metrics: cannot read %s: %s", path, exc)
            value = []
        self._cache[key] = (signature, value)
        return value

    def expiries(self) -> list[Expiry]:
        config = self.config
        ca_dir = config.state_dir / "ca"
        found: list[Expiry] = []
        names: list[str] = []
        for files in config.tls.certificates:
            found += self._cached(files.cert, "server", lambda p: _certificates(p, "server"))
            names += self._cached(files.cert, "names", _dns_names)
        database = ca_dir / "inventory.sqlite3"
        wal = database.with_name(database.name + "-wal")
        uncovered = uncovered_hosts(config, names)
        for hosts in automatic_host_sets(uncovered, configured=bool(config.tls.certificates)):
            # The automatic certificates a runtime of this config serves, one
            # per host (CertificateAuthority.ensure_server_certificate picks
            # the newest valid one naming exactly these hosts; a renewal or an
            # issuance writes the database). Older ones left in the directory,
            # such as the combined certificate of earlier versions, are not
            # served and not reported.
            found += self._cached(database, "server:" + ",".join(hosts),
                                  functools.partial(_automatic_expiry, hosts=hosts),
                                  also=(wal,))
        for source in config.client_auth.trusted_cas:
            found += self._cached(config.trust_file(source), "ca",
                                  lambda p: _certificates(p, "ca"))
        if config.uses_builtin_ca and database.exists():
            # WAL mode: a change lands in the -wal file before the database.
            clients: list[Expiry] = self._cached(database, "client", _client_expiries,
                                                 also=(wal,))
            # The cache is keyed on the database files, not the clock: a
            # certificate that expired since the last write is dropped here,
            # or it would be reported (and alert) until the next CA change.
            now = self._clock()
            found += [item for item in clients if item.not_after > now]
        return found

    def crl_states(self) -> list[CRLState]:
        out: list[CRLState] = []
        for source in self.config.client_auth.crls:
            path = self.config.state_dir / "ca" / "crl.pem" if source == BUILTIN else Path(source)
            out += self._cached(path, "crl", _crls)
        return out

    def describe(self) -> list[Any]:
        return []  # no fixed set of families to register up front

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        info = GaugeMetricFamily("certgate_build_info", "certgate version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        expiry = GaugeMetricFamily(
            "certgate_certificate_expiry_timestamp_seconds",
            "notAfter of served server certificates, trusted CAs and the built-in CA's "
            "client certificates in use", labels=["kind", "name", "serial"])
        issued = GaugeMetricFamily(
            "certgate_certificate_not_before_timestamp_seconds",
            "notBefore of the same certificates (notAfter minus notBefore is the lifetime)",
            labels=["kind", "name", "serial"])
        seen: set[tuple[str, str, str]] = set()
        for item in self.expiries():
            labels = (item.kind, item.name, item.serial)
            if labels not in seen:
                seen.add(labels)
                expiry.add_metric(list(labels), item.not_after)
                issued.add_metric(list(labels), item.not_before)
        yield expiry
        yield issued
        next_update = GaugeMetricFamily("certgate_crl_next_update_timestamp_seconds",
                                        "nextUpdate of each CRL in force", labels=["issuer"])
        revoked = GaugeMetricFamily("certgate_crl_revoked", "Entries in each CRL in force",
                                    labels=["issuer"])
        for state in self.crl_states():
            if state.next_update is not None:
                next_update.add_metric([state.issuer], state.next_update)
            revoked.add_metric([state.issuer], state.revoked)
        yield next_update
        yield revoked
        yield self.enrollments()

    def enrollments(self) -> Any:
        """``certgate_enrollments_total{result}``, counted from the CA's table:
        links are made by the CLI and used by any worker, so no one process
        sees every step; rows are never deleted, so each count only grows."""
        from prometheus_client.core import CounterMetricFamily

        from certgate.ca.enrollments import RESULTS, counts

        family = CounterMetricFamily(
            "certgate_enrollments", "Enrollment links by outcome (certgate ca enroll): "
            "created, downloaded, burned (five wrong PINs), expired, cancelled",
            labels=["result"])
        database = self.config.state_dir / "ca" / "inventory.sqlite3"
        found = dict.fromkeys(RESULTS, 0)
        if database.exists():
            try:
                found = counts(database)
            except Exception as exc:  # a scrape must not fail on a busy database
                log.warning("metrics: cannot count enrollments: %s", exc)
        for result in RESULTS:
            family.add_metric([result], found[result])
        return family


def _client_expiries(database: Path) -> list[Expiry]:
    from certgate.ca import CertificateAuthority

    ca = CertificateAuthority.open(database.parent.parent)
    return [Expiry("client", name, format(serial, "x"), end.timestamp(), start.timestamp())
            for name, serial, start, end in ca.client_expiries()]


def _automatic_expiry(database: Path, hosts: tuple[str, ...]) -> list[Expiry]:
    from certgate.ca import CertificateAuthority

    files = CertificateAuthority.open(database.parent.parent).served_server_files(hosts)
    return _certificates(files[0], "server") if files is not None else []

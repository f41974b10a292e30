"""What every scenario shares: options, the PKI, the upstream, and server start/stop.

A scenario asks for servers by :class:`ServerSpec` and gets them running for
the length of a ``with`` block, each in its own directory; nginx specs are
dropped (with a note) when nginx is not installed or ``--no-nginx`` is given.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.clients.http import Target
from benchmarks.nginx import start_nginx
from benchmarks.options import Options
from benchmarks.pki import Chain
from benchmarks.servers import ServerProcess, start_certgate


@dataclass(frozen=True, slots=True)
class ServerSpec:
    kind: str  # "certgate" | "nginx"
    key_type: str = "ecdsa"
    tickets: bool | None = None  # None: the server's default (certgate off, nginx on)
    crl: bool = False  # the handshake CRL (10k entries) loaded
    # certgate as users run it (issue #15): the JSON access log (to stdout,
    # which the benchmark sends to a file) and the metrics listener on, as
    # in the default config; the other certgate rows turn both off.
    as_users: bool = False

    @property
    def label(self) -> str:
        parts = []
        if self.as_users:
            parts.append("default config")
        if self.tickets is not None and self.tickets != (self.kind == "nginx"):
            parts.append("tickets " + ("on" if self.tickets else "off"))
        return self.kind + (f" ({', '.join(parts)})" if parts else "")


@dataclass
class Bench:
    opts: Options
    workdir: Path
    chains: dict[str, Chain]
    upstream: ServerProcess
    nginx: str | None  # the binary, None when absent or disabled
    nginx_note: str
    handshake_crl: dict[str, Path]  # key type -> CRL file for the CRL variant
    notes: list[str] = field(default_factory=list)
    _serial: Iterator[int] = field(default_factory=itertools.count)

    def target(self, server: ServerProcess | None, key_type: str = "ecdsa",
               tls_version: str = "1.3") -> Target:
        """How a client reaches ``server`` (None: the upstream directly, no TLS)."""
        if server is None:
            return Target(self.upstream.port)
        chain = self.chains[key_type]
        return Target(server.port, chain.client_cert, chain.client_key, tls_version)

    def wanted(self, specs: list[ServerSpec]) -> list[ServerSpec]:
        return [s for s in specs if s.kind == "certgate" or self.nginx is not None]

    def start(self, spec: ServerSpec, workers: str,
              profile_to: Path | None = None) -> ServerProcess:
        directory = self.workdir / f"{next(self._serial):03d}-{spec.kind}-{workers}"
        chain = self.chains[spec.key_type]
        crl = self.handshake_crl[spec.key_type] if spec.crl else None
        if spec.kind == "certgate":
            return start_certgate(directory, name=spec.label, workers=workers, chain=chain,
                                  upstream_port=self.upstream.port,
                                  tickets=bool(spec.tickets), crl=crl, profile_to=profile_to,
                                  as_users=spec.as_users)
        assert self.nginx is not None
        return start_nginx(self.nginx, directory, name=spec.label, workers=workers,
                           chain=chain, upstream_port=self.upstream.port,
                           tickets=spec.tickets is not False, crl=crl)

    @contextlib.contextmanager
    def servers(self, specs: list[ServerSpec],
                workers: str) -> Iterator[dict[ServerSpec, ServerProcess]]:
        """Start every wanted spec (nginx ones only if nginx is here); stop them after."""
        running: dict[ServerSpec, ServerProcess] = {}
        try:
            for spec in self.wanted(specs):
                running[spec] = self.start(spec, workers)
            yield running
        finally:
            for server in running.values():
                server.stop()

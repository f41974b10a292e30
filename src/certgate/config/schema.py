"""The validated configuration: frozen dataclasses, nothing here touches disk.

The loader (:mod:`certgate.config.loader`) is the only way these are built from
YAML; tests and the embedded default may build them directly. Every value has
already been checked and normalised (hosts lowercased and IDNA-encoded,
durations in seconds, sizes in bytes), so the runtime never re-validates.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from certgate.matchers import ANY, Matcher


class ClientAuth(enum.Enum):
    """How much a route (or path rule) insists on a client certificate."""

    REQUIRE = "require"
    OPTIONAL = "optional"
    OFF = "off"


class NoCertificate(enum.Enum):
    """How a route answers a request that needs a certificate and has none."""

    REFUSE = "refuse"  # in the TLS handshake (certificate_required alert)
    # Complete the handshake and answer a small HTML page (status 496) that
    # says what is missing; bad certificates still fail in the handshake.
    PAGE = "page"


class LogFormat(enum.Enum):
    JSON = "json"
    COMBINED = "combined"


class StaleCRL(enum.Enum):
    """What to do with clients of an issuer whose CRL is past its nextUpdate."""

    REJECT = "reject"  # fail closed: a stale CRL may be missing revocations
    ALLOW = "allow"  # serve, but warn every minute and count each admission


class ForwardCert(enum.Enum):
    """Whether the whole client certificate is passed to the upstream, and how."""

    NONE = "none"
    PEM = "pem"  # X-Client-Cert: URL-escaped PEM, like nginx's $ssl_client_escaped_cert
    XFCC = "xfcc"  # X-Forwarded-Client-Cert in Envoy's format


BUILTIN = "builtin"
"""The word that names certgate's own CA in ``trusted_cas`` and ``crls``."""

WHOAMI = "whoami"
"""The upstream name of the built-in identity echo."""

ENROLL = "enroll"
"""The upstream name of the built-in enrollment service (:mod:`certgate.enroll`)."""

CONSOLE = "console"
"""The upstream name of the CA's web console (:mod:`certgate.console`)."""


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TLSSettings:
    certificates: tuple[CertificateFiles, ...] = ()
    min_version: str = "1.2"  # "1.2" | "1.3"
    # TLS session resumption (tickets) is off unless asked for: a full handshake
    # costs ~0.8 ms without ticket issuance against ~1.25 ms with OpenSSL's two
    # default tickets, and no resumption means no cross-policy resumption bugs.
    session_tickets: bool = False
    # Most CA certificates allowed between a client's leaf and the trust
    # anchor (OpenSSL's verify depth, nginx's ssl_verify_depth); None keeps
    # OpenSSL's default of 100. certgate's own two-tier CA needs 1.
    verify_depth: int | None = None


@dataclass(frozen=True, slots=True)
class RoleRule:
    """``client_auth.roles[]``: certificates matching every matcher get ``roles``."""

    match: tuple[Matcher, ...]  # all must match (AND); never empty, never role:
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClientAuthSettings:
    trusted_cas: tuple[str, ...] = (BUILTIN,)  # BUILTIN or file paths
    # CRL sources: BUILTIN or file paths. Trusting BUILTIN always adds
    # BUILTIN here (see __post_init__): revocation must not be off merely
    # because a hand-written config left this out (issue #11, finding 0).
    crls: tuple[str, ...] = ()
    stale_crl: StaleCRL = StaleCRL.REJECT
    # Roles for certificates from any trusted CA, added to the built-in
    # inventory's roles (see certgate.roles).
    roles: tuple[RoleRule, ...] = ()
    # Entries of trusted_cas whose config says ``crl: none``: no CRL, on
    # purpose, so no warning about it.
    no_crl: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if BUILTIN in self.trusted_cas and BUILTIN not in self.crls:
            object.__setattr__(self, "crls", (BUILTIN, *self.crls))


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-route upstream timeouts, in seconds."""

    connect: float = 5.0
    # Time to wait for the response head and between body chunks. Long enough
    # for slow apps; SSE and WebSocket streams are kept alive by their own
    # traffic, and an upgraded tunnel is governed by ``tunnel_idle``.
    read: float = 300.0
    # How long an idle pooled upstream connection is kept. Below the 5 s
    # keep-alive of common upstream servers (uvicorn, aiohttp) would waste
    # connections; above it risks reusing one the upstream is closing.
    pool_idle: float = 4.0
    tunnel_idle: float = 3600.0
    # A request body must average at least ``body_min_rate`` bytes/s over
    # each ``body_rate_window``, or it is answered 408 and both connections
    # closed: a client trickling a byte every few seconds otherwise holds an
    # upstream connection (and a worker's slot in the upstream) for as long
    # as each byte comes within ``read``. 0 disables the check.
    # 500 B/s is Apache's mod_reqtimeout default (RequestReadTimeout
    # body=20,MinRate=500): 4 kbit/s, an order of magnitude below the slowest
    # link a phone still uploads on (EDGE, ~50 kbit/s up), so a multi-GB
    # Immich upload from a phone on a bad link never trips it. The 60 s
    # window is nginx's client_body_timeout default, which Immich's own
    # reverse-proxy guide keeps: an upload may stall completely for up to a
    # minute (a cell handover) as long as it averages the rate per window.
    # What a trickler costs: one connection per 30 KB a minute.
    body_min_rate: int = 500
    body_rate_window: float = 60.0


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    ca: Path | None = None  # None: the system trust store
    cert: Path | None = None  # certgate's own client certificate (upstream mTLS)
    key: Path | None = None
    server_name: str | None = None  # SNI and name to verify; default: URL host
    verify: bool = True


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a route sends requests: a URL, the built-in whoami echo or the
    built-in enrollment service."""

    scheme: str  # "http" | "https" | "whoami" | "enroll" | "console"
    host: str = ""
    port: int = 0
    tls: UpstreamTLS | None = None

    @property
    def is_whoami(self) -> bool:
        return self.scheme == WHOAMI

    @property
    def is_enroll(self) -> bool:
        return self.scheme == ENROLL

    @property
    def is_console(self) -> bool:
        return self.scheme == CONSOLE

    @property
    def is_builtin(self) -> bool:
        """Served by certgate itself: no connection to an upstream."""
        return self.scheme in (WHOAMI, ENROLL, CONSOLE)

    @property
    def label(self) -> str:
        if self.is_builtin:
            return self.scheme
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PathRule:
    """A per-path rule inside a route; :mod:`certgate.policy` says how it applies."""

    path: str  # glob pattern, e.g. /api/webhook/*
    methods: frozenset[str] | None = None  # uppercase; None: every method
    client_auth: ClientAuth | None = None  # None: inherit the route's
    allow: tuple[Matcher, ...] | None = None  # None: the route's allow list
    deny: tuple[Matcher, ...] = ()  # added to the route's deny list


@dataclass(frozen=True, slots=True)
class Route:
    host: str  # normalised: exact name, "*.example.com", or "*" (catch-all)
    upstream: Upstream
    path: str = "/"  # path prefix
    client_auth: ClientAuth = ClientAuth.REQUIRE
    rules: tuple[PathRule, ...] = ()
    allow: tuple[Matcher, ...] = (ANY,)
    deny: tuple[Matcher, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    # None = unlimited: Immich uploads multi-GB videos, and a proxy in front of
    # self-hosted apps must not silently cap them.
    max_body: int | None = None
    forward_cert: ForwardCert = ForwardCert.NONE
    trust_forwarded: bool = False  # keep an outer proxy's X-Forwarded-*
    # Headers another gateway would set for identity or routing (X-Remote-User,
    # Client-Cert, X-Original-URL...) that this route lets through from the
    # client; folded names (lowercase, '_' and '.' as '-'). Never certgate's own.
    pass_headers: frozenset[bytes] = frozenset()
    no_certificate: NoCertificate = NoCertificate.REFUSE

    @property
    def name(self) -> str:
        return f"{self.host}{self.path}"

    def modes(self) -> set[ClientAuth]:
        """Every client-auth mode some request on this route can be judged by."""
        found = {self.client_auth}
        found.update(rule.client_auth for rule in self.rules if rule.client_auth is not None)
        return found


@dataclass(frozen=True, slots=True)
class Limits:
    # A hard deadline for the whole request head, from the first byte (or from
    # the handshake): slowloris clients sending a byte a second are cut here.
    header_timeout: float = 10.0
    # Idle time allowed between keep-alive requests (nginx: 75 s).
    keepalive_timeout: float = 75.0
    # 16 KiB is h11's own default and above what browsers send with big
    # cookies; nginx's large_client_header_buffers default is 4 x 8 KiB.
    max_header_bytes: int = 16 * 1024
    max_header_count: int = 100  # Apache's LimitRequestFields default
    # How long SIGTERM waits for in-flight requests before closing them.
    shutdown_grace: float = 30.0
    handshake_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class AccessLog:
    format: LogFormat = LogFormat.JSON
    path: str = "-"  # "-" = stdout; "off" disables


@dataclass(frozen=True, slots=True)
class Metrics:
    # Prometheus' default-port registry lists 9464 for OpenTelemetry-style
    # exporters; loopback only, since metrics reveal routes and traffic.
    listen: Listen | None = Listen("127.0.0.1", 9464)


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # file path, or "<embedded default>"
    state_dir: Path
    listen: tuple[Listen, ...]
    routes: tuple[Route, ...]
    workers: int | None = 1  # None = auto (one per CPU)
    tls: TLSSettings = field(default_factory=TLSSettings)
    client_auth: ClientAuthSettings = field(default_factory=ClientAuthSettings)
    limits: Limits = field(default_factory=Limits)
    access_log: AccessLog = field(default_factory=AccessLog)
    metrics: Metrics = field(default_factory=Metrics)

    def trust_file(self, source: str) -> Path:
        """The CA file a ``client_auth.trusted_cas`` entry names (``builtin``:
        the built-in CA's trust bundle, ``STATE/ca/bundle.pem``)."""
        return self.state_dir / "ca" / "bundle.pem" if source == BUILTIN else Path(source)

    @property
    def uses_builtin_ca(self) -> bool:
        return BUILTIN in self.client_auth.trusted_cas or BUILTIN in self.client_auth.crls

    @property
    def console_routes(self) -> tuple[Route, ...]:
        """Routes served by the CA's web console (it needs the built-in CA)."""
        return tuple(route for route in self.routes if route.upstream.is_console)

    @property
    def enroll_routes(self) -> tuple[Route, ...]:
        """Routes served by the built-in enrollment service (it needs the built-in CA)."""
        return tuple(route for route in self.routes if route.upstream.is_enroll)

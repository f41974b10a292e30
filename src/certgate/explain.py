"""``certgate explain``: what the proxy would do with one request, without sending it.

Theory of operation
-------------------
An explanation is only worth having if it cannot drift from the proxy. So
the verdict comes from :func:`certgate.proxy.admission.admit`, the function
the proxy runs on every request, fed with an ``h11.Request`` built from the
URL and a :class:`~certgate.proxy.admission.Snapshot` built from the same
config: the same target normaliser, the same route table, the same
:func:`certgate.policy.decide`, the same role resolution
(:func:`certgate.roles.resolve`). The details printed around the verdict
(route, rule, normalised path) come from those same functions.

What happens before a request exists is reproduced from the listener's
rules: the URL's host is the SNI (none for an IP literal), which picks the
handshake class. Under ``off`` no certificate is asked for, so none is
seen. Under ``require`` a client without one fails the handshake. The
certificate (and any chain in its file) goes through OpenSSL's own chain
verification with the listener's trust store and settings
(:mod:`certgate.tls.openssl`), so what the handshake refuses (an untrusted
or look-alike issuer, an unknown critical extension, a weak key, a
pathLenConstraint violation, expiry) explain refuses too. Where that
verifier cannot be reached, explain says so and falls back to following the
chain by signature, which misses those policy checks. After the handshake
come the same checks the listener makes (:func:`certgate.tls.verify.verify_peer`)
and the same issuer-by-signature lookup (:mod:`certgate.tls.issuers`).

Nothing is written: the config is only read, and built-in roles come from a
read-only connection to the CA inventory (:func:`certgate.roles.read_inventory_roles`).
No CA is created, no server certificate is issued, no traffic is sent.

Exit status: 0 the request would be let through to the upstream; 1 it would
be refused (403, 400, 404, 421, or the handshake would fail); 2 the input
is unusable (bad config, unreadable certificate, URL that is not
``https://HOST/...``).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import h11
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from certgate.config.schema import BUILTIN, ClientAuth, Config, Route, StaleCRL
from certgate.errors import CAError, HTTPError, UsageError
from certgate.hostnames import InvalidHost, is_ip_literal, normalise_host
from certgate.http.target import BadTarget, parse_target
from certgate.policy import Decision, decide
from certgate.proxy.admission import Admitted, admit
from certgate.proxy.info import ConnectionInfo
from certgate.revocation import (
    RevocationError,
    RevocationIndex,
    RevocationSources,
    unchecked_issuers,
)
from certgate.revocation_state import STATE_FILE
from certgate.roles import builtin_issued, read_inventory_roles, resolve
from certgate.routing import RouteTable
from certgate.tls import openssl
from certgate.tls.contexts import TLSSetupError, client_verification_context
from certgate.tls.identity import ClientIdentity, InvalidCertificate, identity_from_der
from certgate.tls.issuers import TrustedIssuers
from certgate.tls.verify import Refusal, verify_peer

__all__ = ["ALLOW", "DENY", "Explanation", "explain", "run"]

ALLOW, DENY = 0, 1


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The :class:`~certgate.proxy.admission.Snapshot` explain judges with."""

    config: Config
    routes: RouteTable
    inventory: Mapping[str, tuple[str, ...]]

    def roles_for(self, identity: ClientIdentity) -> tuple[str, ...]:
        return resolve(identity, self.inventory, self.config.client_auth.roles)


@dataclass
class Explanation:
    """Everything ``explain`` found; :meth:`render` prints it."""

    method: str
    url: str
    host: str
    target: str
    sni: str | None
    mode: ClientAuth
    lines: list[tuple[str, str]] = field(default_factory=list)
    allowed: bool = False
    verdict: str = ""

    def add(self, key: str, value: str) -> None:
        self.lines.append((key, value))

    def render(self, out: TextIO) -> None:
        print(f"{self.method} {self.url}", file=out)
        width = max(len(key) for key, _ in self.lines) + 1
        for key, value in self.lines:
            print(f"  {key + ':':<{width}} {value}", file=out)
        print(f"  {'decision:':<{width}} {self.verdict}", file=out)


def _split_url(url: str) -> tuple[str, str]:
    """(authority, raw request target) of an https URL, spelled exactly as given."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "https":
        raise UsageError(f"expected an https:// URL, got {url!r}")
    # Everything after the authority is the request target, verbatim (a
    # "#fragment" included, which browsers strip and the proxy refuses): the
    # point is to judge the bytes a client puts on the request line.
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, target = rest[:end], rest[end:]
    if not authority:
        raise UsageError(f"no host in {url!r}")
    if "@" in authority:
        raise UsageError("userinfo in the URL is not supported")
    if not target.startswith("/"):
        target = "/" + target
    return authority, target


def _read_chain(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError as exc:
            raise UsageError(f"{path}: not a PEM or DER certificate: {exc}") from None
    return certs


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _signature_chain_problem(chain: list[x509.Certificate],
                             anchors: list[x509.Certificate]) -> str | None:
    """The fallback when OpenSSL's verifier is out of reach: follow the chain
    by signature to a trusted certificate (no purpose, key-strength, path
    length or critical-extension checks)."""
    current, pool = chain[0], list(chain[1:])
    while True:
        if any(_issued_by(current, anchor) for anchor in anchors):
            return None
        parent = next((c for c in pool if _issued_by(current, c)), None)
        if parent is None:
            return "not issued by a trusted CA (client_auth.trusted_cas)"
        pool.remove(parent)
        current = parent


def _trust_pem(config: Config) -> tuple[str, list[str]]:
    """The trusted CA files concatenated, as the runtime builds them, and notes
    on files that cannot be read."""
    parts: list[str] = []
    notes: list[str] = []
    for source in config.client_auth.trusted_cas:
        path = config.trust_file(source)
        try:
            data = path.read_bytes()
            x509.load_pem_x509_certificates(data)
        except (OSError, ValueError) as exc:
            notes.append(f"{path}: {exc}")
            continue
        parts.append(data.decode("ascii", "replace"))
    return "\n".join(parts), notes


def _handshake_problem(config: Config, chain: list[x509.Certificate], trust_pem: str,
                       ex: Explanation) -> str | None:
    """Why the listener's handshake would refuse ``chain``, or None."""
    if not trust_pem.strip():
        return "no trusted CA can be read (client_auth.trusted_cas)"
    ders = [c.public_bytes(serialization.Encoding.DER) for c in chain]
    try:
        context = client_verification_context(trust_pem, config.tls)
        verdict = openssl.verify_client_chain(context, ders)
    except (openssl.Unavailable, TLSSetupError, ValueError) as exc:
        ex.add("chain", f"cannot run OpenSSL's verification here ({exc}); checked signatures "
                        "only, without purpose, key strength, path length or critical "
                        "extensions")
        anchors = x509.load_pem_x509_certificates(trust_pem.encode("ascii"))
        return _signature_chain_problem(chain, anchors)
    if verdict.ok:
        ex.add("chain", "verified by OpenSSL with the listener's trust store and settings")
        return None
    where = "the certificate" if verdict.depth == 0 else f"chain depth {verdict.depth}"
    detail = f"OpenSSL: {verdict.message} ({where}, error {verdict.code})"
    if verdict.code in _UNTRUSTED:
        return f"not issued by a trusted CA (client_auth.trusted_cas); {detail}"
    return detail


# X509_V_ERR_* codes that mean "no path to a trusted certificate" (x509_vfy.h):
# unable to get issuer (2), self-signed leaf or chain root not trusted (18, 19),
# unable to get local issuer (20), unable to verify the first certificate (21).
_UNTRUSTED = frozenset({2, 18, 19, 20, 21})


def _builtin(config: Config) -> tuple[bytes | None, dict[str, tuple[str, ...]], str]:
    """The built-in CA's bundle and inventory roles, and where they came from."""
    database = config.state_dir / "ca" / "inventory.sqlite3"
    bundle = config.state_dir / "ca" / "bundle.pem"
    if not database.is_file() or not bundle.is_file():
        return None, {}, f"no built-in CA in {config.state_dir}"
    try:
        return (bundle.read_bytes(), read_inventory_roles(database),
                f"read from {database}")
    except (OSError, ValueError, CAError, sqlite3.Error) as exc:
        raise UsageError(f"cannot read the built-in CA in {config.state_dir}: {exc}") from None


def _revocation(config: Config, trust_pem: str) -> RevocationIndex:
    paths: list[Path] = []
    for source in config.client_auth.crls:
        if source != BUILTIN:
            paths.append(Path(source))
        elif (config.state_dir / "ca" / "crl.pem").exists():
            # The proxy writes a missing built-in CRL at start; explain writes
            # nothing, and a CRL not written yet revokes nothing.
            paths.append(config.state_dir / "ca" / "crl.pem")
    try:
        # The proxy's high-water marks, read only: a rolled-back CRL is
        # refused here as the proxy refuses it.
        return RevocationSources(tuple(paths), trust_pem, None,
                                 config.state_dir / STATE_FILE).load(persist=False)
    except RevocationError as exc:
        raise UsageError(str(exc)) from None


def _issuer_text(identity: ClientIdentity) -> str:
    issuer = identity.issuer
    if issuer is None:
        return (f"{identity.issuer_dn} (no certificate in the trusted CA files signed it: "
                "no built-in roles, no issuer: or issuer-key: match)")
    owner = "the built-in CA" if issuer.builtin else "a trusted CA"
    return f"{issuer.dn} (signature verified: {owner}, issuer-key:{issuer.key_sha256})"


def _rule_text(decision: Decision, route: Route) -> str:
    rule = decision.path_rule
    where = rule.path if rule is not None else "none matches, the route's settings apply"
    if rule is not None and rule.methods:
        where += f" (methods {','.join(sorted(rule.methods))})"
    if decision.client_auth is ClientAuth.OFF:
        return f"{where}; client_auth off: public, no certificate checked"
    allow = rule.allow if rule is not None and rule.allow is not None else route.allow
    deny = route.deny + (rule.deny if rule is not None else ())
    return (f"{where}; client_auth {decision.client_auth.value}, "
            f"allow [{', '.join(map(str, allow))}], deny [{', '.join(map(str, deny))}]")


def explain(config: Config, url: str, method: str = "GET",
            cert: Path | None = None) -> Explanation:
    """Judge ``method url`` as the proxy would for a client holding ``cert``.

    Raises:
        UsageError: unusable input (exit 2).
    """
    authority, raw_target = _split_url(url)
    try:
        host = normalise_host(authority)
    except InvalidHost as exc:
        raise UsageError(f"invalid host in URL: {exc}") from None
    routes = RouteTable(config.routes)
    sni = None if is_ip_literal(host) else host
    mode = routes.handshake_mode(sni)
    ex = Explanation(method, url, host, raw_target, sni, mode)
    ex.add("tls", f"SNI {sni or '(none: IP literal)'} -> client certificate {mode.value}")

    chain = _read_chain(cert) if cert is not None else []
    builtin_pem, inventory, inventory_note = _builtin(config)
    snapshot = _Snapshot(config, routes, inventory)
    trust_pem, notes = _trust_pem(config)
    identity: ClientIdentity | None = None
    if chain:
        try:
            der = chain[0].public_bytes(serialization.Encoding.DER)
            issuers = TrustedIssuers.from_pem(trust_pem, builtin_pem)
            identity = identity_from_der(der, issuers)
        except InvalidCertificate as exc:
            raise UsageError(f"{cert}: {exc}") from None

    handshake: str | None = None
    refusal: Refusal | None = None
    if identity is not None and mode is ClientAuth.OFF:
        ex.add("identity", "none: this name does not ask for a certificate (client_auth off)")
        identity = None
    elif identity is None:
        ex.add("identity", "no client certificate")
        if mode is ClientAuth.REQUIRE:
            handshake = "this name requires a client certificate"
    else:
        ex.add("identity", f"CN={identity.cn!r}, serial {identity.serial_hex}")
        ex.add("subject", identity.dn or "(empty)")
        ex.add("issuer", _issuer_text(identity))
        ex.add("fingerprint", identity.fingerprint)
        ex.add("sans", identity.sans_header or "none")
        for note in notes:
            ex.add("note", f"trusted CA not readable: {note}")
        handshake = _handshake_problem(config, chain, trust_pem, ex)
        if handshake is None:
            # The listener's own post-handshake checks (Runtime.check_peer).
            revocation = _revocation(config, trust_pem)
            revocation.unchecked = unchecked_issuers(config)
            ex.add("crl", revocation.governing(identity.issuer_dn))
            refusal = verify_peer(identity, revocation,
                                  allow_stale=config.client_auth.stale_crl is StaleCRL.ALLOW)
        roles = snapshot.roles_for(identity)
        builtin_roles = inventory.get(identity.fingerprint, ()) if builtin_issued(identity) else ()
        ex.add("roles", f"{', '.join(roles) or 'none'} (built-in inventory: "
                        f"{', '.join(builtin_roles) or 'none'}, {inventory_note})")

    _describe_path(ex, snapshot, host, raw_target, method, identity)
    if handshake is not None:
        ex.verdict = f"deny: the TLS handshake would fail: {handshake}"
        return ex
    try:
        request = h11.Request(method=method, target=raw_target.encode("utf-8"),
                              headers=[("host", authority)])
    except h11.LocalProtocolError as exc:
        raise UsageError(f"not a valid HTTP request line: {exc}") from None
    info = ConnectionInfo("explain", "-", sni, mode)
    try:
        admitted = admit(snapshot, info, identity, refusal, request)
    except HTTPError as exc:
        ex.verdict = f"deny: {exc.status} {exc.reason}"
        return ex
    ex.allowed = True
    ex.verdict = _allowed_text(admitted)
    return ex


def _describe_path(ex: Explanation, snapshot: _Snapshot, host: str, raw_target: str,
                   method: str, identity: ClientIdentity | None) -> None:
    try:
        target = parse_target(raw_target.encode("utf-8"), method.encode("ascii", "replace"))
    except BadTarget as exc:
        ex.add("path", f"{raw_target} -> refused: {exc.reason}")
        return
    query = "" if target.query is None else " (query not used by the policy)"
    ex.add("path", f"{raw_target} -> {target.path}{query}")
    entry = snapshot.routes.for_host(host)
    route = entry.match(target.path) if entry is not None else None
    if route is None:
        ex.add("route", f"none for {host}{target.path}")
        return
    ex.add("route", f"{route.name} -> {route.upstream.label} "
                    f"(client_auth {route.client_auth.value})")
    roles = snapshot.roles_for(identity) if identity is not None else ()
    decision: Decision = decide(route, target.path, method, identity, roles)
    ex.add("rule", _rule_text(decision, route))
    if decision.matcher is not None:
        ex.add("matched", str(decision.matcher))


def _allowed_text(admitted: Admitted) -> str:
    decision = admitted.decision
    by = f" by {decision.matcher}" if decision.matcher is not None else ""
    return (f"allow{by} ({decision.rule}; client_auth {decision.client_auth.value}): "
            f"upstream receives {admitted.upstream_request.method.decode()} "
            f"{admitted.upstream_request.target.decode('ascii', 'replace')}")


def run(config: Config, url: str, method: str, cert: Path | None,
        out: TextIO | None = None) -> int:
    """Print the explanation (to stdout by default); the exit status: 0 allow, 1 deny."""
    ex = explain(config, url, method, cert)
    ex.render(out if out is not None else sys.stdout)
    return ALLOW if ex.allowed else DENY


"""Server-side SSLContexts: one per (client-auth class, server certificate).

Why several contexts instead of one with an ``sni_callback``: in CPython,
swapping ``sslobj.context`` inside the callback swaps certificates and trust
store but keeps the first context's ``verify_mode``, so a per-name
"certificate required" cannot come from the swap; and every CPython context
shares one session-id context, so a session resumed across a swap can skip
client authentication (the nginx CVE-2025-23419 class). certgate instead
picks the context *before* TLS starts, from the SNI it peeked
(:mod:`certgate.tls.clienthello`). Each context has its own session cache and
ticket keys, so a session from a context of one class cannot be resumed on a
context of another class (with ``tls.session_tickets`` the keys are derived
per class and names from a secret all workers share:
:mod:`certgate.tls.tickets`).

Session tickets are off unless ``tls.session_tickets`` asks for them: OpenSSL
issues two TLS 1.3 tickets per handshake by default, which costs about a third
of the server's handshake time, and resumption is where client-auth bypasses
hide. Identity, validity and policy are re-checked on every connection,
resumed or not.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgate.config.schema import CertificateFiles, ClientAuth, TLSSettings
from certgate.errors import CertgateError
from certgate.hostnames import HostTable, InvalidHost, normalise_pattern
from certgate.tls import openssl, tickets

log = logging.getLogger("certgate.tls")

_VERIFY_MODE = {
    ClientAuth.REQUIRE: ssl.CERT_REQUIRED,
    ClientAuth.OPTIONAL: ssl.CERT_OPTIONAL,
    ClientAuth.OFF: ssl.CERT_NONE,
}


class TLSSetupError(CertgateError):
    """A certificate, key or CA bundle could not be loaded (names the file)."""


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    files: CertificateFiles
    names: tuple[str, ...]  # normalised DNS SANs (patterns may be wildcards)
    not_after: float  # POSIX time, for expiry metrics
    #: For certgate's automatic certificates, the issuing CA's not-after
    #: (POSIX time): no renewal can outlast it (see watch.renewal_due).
    issuer_not_after: float | None = None


def read_server_certificate(files: CertificateFiles) -> ServerCertificate:
    """Load a cert chain's leaf and check the key matches it."""
    try:
        chain_pem = files.cert.read_bytes()
    except OSError as exc:
        raise TLSSetupError(f"{files.cert}: cannot read: {exc.strerror or exc}") from None
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError as exc:
        raise TLSSetupError(f"{files.cert}: not a PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except OSError as exc:
        raise TLSSetupError(f"{files.key}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise TLSSetupError(f"{files.key}: not an unencrypted PEM private key: {exc}") from None
    leaf_public = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf_public != key_public:
        raise TLSSetupError(f"{files.key}: does not match the certificate in {files.cert}")
    return ServerCertificate(files, server_names(leaf), leaf.not_valid_after_utc.timestamp())


def server_names(leaf: x509.Certificate) -> tuple[str, ...]:
    """The DNS SANs a server certificate answers for, normalised like route hosts."""
    names: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    for dns in san.get_values_for_type(x509.DNSName):
        try:
            names.append(normalise_pattern(dns))
        except InvalidHost:
            continue
    return tuple(names)


def load_trust_bundle(sources: Sequence[Path]) -> str:
    """Concatenate CA bundles into one PEM string, checking each parses."""
    parts: list[str] = []
    for path in sources:
        try:
            data = path.read_bytes()
            x509.load_pem_x509_certificates(data)
        except OSError as exc:
            raise TLSSetupError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise TLSSetupError(f"{path}: not a PEM CA bundle: {exc}") from None
        parts.append(data.decode("ascii", "replace"))
    return "\n".join(parts)


def _base_context(settings: TLSSettings) -> ssl.SSLContext:
    """What every listener context shares, before certificates and trust."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if settings.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    # HTTP/1.1 only: per-path client authentication cannot work over HTTP/2.
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if not settings.session_tickets:
        ctx.num_tickets = 0
        ctx.options |= ssl.OP_NO_TICKET
    with contextlib.suppress(openssl.Unavailable):
        # Fewer read syscalls per handshake; without it, only slower.
        openssl.set_read_ahead(ctx)
    return ctx


def _trust_clients(ctx: ssl.SSLContext, mode: ClientAuth, trust_pem: str | None,
                   settings: TLSSettings) -> None:
    ctx.verify_mode = _VERIFY_MODE[mode]
    if mode is not ClientAuth.OFF:
        if not trust_pem:
            raise TLSSetupError("client certificates are asked for but no CA is trusted")
        ctx.load_verify_locations(cadata=trust_pem)
        _send_ca_names(ctx, trust_pem)
        if settings.verify_depth is not None:
            try:
                openssl.set_verify_depth(ctx, settings.verify_depth)
            except openssl.Unavailable as exc:
                # Asked for and not applied: refuse to start (fail closed).
                raise TLSSetupError(f"tls.verify_depth cannot be applied here: {exc}") from None


def ca_subjects(trust_pem: str) -> list[bytes]:
    """The subject names (DER) of every trusted CA certificate, without repeats,
    in bundle order: what a CertificateRequest lists, as nginx sends the
    subjects of every certificate in ``ssl_client_certificate``."""
    names: list[bytes] = []
    for cert in x509.load_pem_x509_certificates(trust_pem.encode("ascii", "replace")):
        der = cert.subject.public_bytes()
        if der not in names:
            names.append(der)
    return names


_ca_names_unavailable_logged = False
_leaf_check_unavailable_logged = False
_ticket_keys_unavailable_logged = False


def _send_ca_names(ctx: ssl.SSLContext, trust_pem: str) -> None:
    """Put the trusted CA names in the CertificateRequest, so a browser or a
    phone offers only certificates those CAs issued (TLS 1.2: RFC 5246
    s.7.4.4 certificate_authorities; TLS 1.3: RFC 8446 s.4.2.4)."""
    global _ca_names_unavailable_logged
    try:
        openssl.set_client_ca_names(ctx, ca_subjects(trust_pem))
    except openssl.Unavailable as exc:
        if not _ca_names_unavailable_logged:
            _ca_names_unavailable_logged = True
            log.warning("cannot send the trusted CA names to clients (%s); browsers and "
                        "phones will offer every certificate they hold", exc)


def server_context(
    mode: ClientAuth, cert: CertificateFiles, trust_pem: str | None, settings: TLSSettings
) -> ssl.SSLContext:
    ctx = _base_context(settings)
    try:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"{cert.cert}: cannot load certificate and key: {exc}") from None
    _trust_clients(ctx, mode, trust_pem, settings)
    return ctx


def client_verification_context(trust_pem: str, settings: TLSSettings) -> ssl.SSLContext:
    """A context that verifies client chains exactly as a listener's does (same
    construction, trust store, parameters and security level), without a
    server certificate: ``certgate explain`` runs OpenSSL's verifier on it
    (:mod:`certgate.tls.openssl`)."""
    ctx = _base_context(settings)
    _trust_clients(ctx, ClientAuth.REQUIRE, trust_pem, settings)
    return ctx


def _share_ticket_keys(ctx: ssl.SSLContext, mode: ClientAuth, cert: ServerCertificate) -> None:
    """Keys every worker derives alike for this class and these names
    (:mod:`certgate.tls.tickets`), so a ticket resumes on any worker and
    after a reload, and never on a context of another class."""
    label = f"{mode.value}\0{','.join(sorted(cert.names))}\0{cert.files.cert}"
    try:
        openssl.set_ticket_keys(ctx, tickets.context_keys(label))
    except openssl.Unavailable as exc:
        # Asked for and not applied: each context keeps its own random keys,
        # which is safe (resumption works on the issuing worker only).
        global _ticket_keys_unavailable_logged
        if not _ticket_keys_unavailable_logged:
            _ticket_keys_unavailable_logged = True
            log.warning("cannot share TLS ticket keys between workers (%s); a ticket "
                        "resumes only on the worker that issued it", exc)


class ContextSet:
    """Every server context a listener can hand a connection to."""

    def __init__(
        self,
        certificates: Sequence[ServerCertificate],
        modes: frozenset[ClientAuth],
        trust_pem: str | None,
        settings: TLSSettings,
    ) -> None:
        if not certificates:
            raise TLSSetupError("no server certificate is configured")
        self.certificates = tuple(certificates)
        self._contexts: dict[tuple[ClientAuth, int], ssl.SSLContext] = {}
        for mode in modes:
            for index, cert in enumerate(certificates):
                ctx = server_context(mode, cert.files, trust_pem, settings)
                if settings.session_tickets:
                    _share_ticket_keys(ctx, mode, cert)
                self._contexts[(mode, index)] = ctx
        entries: dict[str, int] = {}
        for index, cert in enumerate(certificates):
            for name in cert.names:
                entries.setdefault(name, index)  # first configured certificate wins
        self._by_name: HostTable[int] = HostTable(entries.items())

    def set_leaf_check(self, check: openssl.LeafCheck) -> bool:
        """Run ``check`` inside every handshake that verifies a client chain
        (:func:`certgate.tls.openssl.set_leaf_check`); False, logged once per
        process, where libssl cannot be reached (the same check still runs
        after the handshake, answering 403 instead of a TLS alert)."""
        global _leaf_check_unavailable_logged
        for (mode, _), ctx in self._contexts.items():
            if mode is ClientAuth.OFF:
                continue
            try:
                openssl.set_leaf_check(ctx, check)
            except openssl.Unavailable as exc:
                if not _leaf_check_unavailable_logged:
                    _leaf_check_unavailable_logged = True
                    log.warning("cannot check revocation inside the TLS handshake (%s); "
                                "revoked certificates get a 403 after it instead", exc)
                return False
        return True

    def select(self, sni: str | None, mode: ClientAuth) -> ssl.SSLContext:
        index = self._by_name.lookup(sni) if sni is not None else None
        return self._contexts[(mode, index or 0)]

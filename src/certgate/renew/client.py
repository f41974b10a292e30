"""``certgate renew --cert C --key K --url URL [--daemon] [--ca FILE] [--force]``.

Keeps a device's certificate alive: at two thirds of its lifetime
(:mod:`certgate.renew.schedule`) it makes a new P-256 key, sends a CSR to
certgate's renewal endpoint over a TLS connection authenticated by the
current certificate, verifies the chain that comes back and only then
replaces the files: the certificate, the key and a ``NAME.crt`` or
``NAME.chain.pem`` beside them that held the old certificate
(:mod:`certgate.renew.files`). Not due yet: it says
when it will be and exits 0, so a systemd timer can run it hourly.

``--daemon`` does the same in a loop, sleeping until the next due time (at
most an hour at a time) and retrying failures; SIGTERM or SIGINT end it
between two steps, never in the middle of replacing the files.

The server is verified against ``--ca FILE`` (certgate's root CA), or the
system's trust store when it is not given; never blindly.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgate.ca.keys import serial_hex
from certgate.errors import UsageError
from certgate.lastseen import printable
from certgate.renew import files, schedule
from certgate.renew.files import RenewError

__all__ = ["Outcome", "add_parser", "renew_once", "verify_chain"]

#: The answer is a chain of two or three certificates (a few KB).
MAX_RESPONSE = 64 * 1024
#: Connect + TLS + signing on a small host; a stuck server is given up on.
TIMEOUT = 30.0
#: Clock skew tolerated between this device and the CA (notBefore is "now"
#: at the CA): five minutes, as Kerberos and most TLS stacks allow.
SKEW = timedelta(minutes=5)


class Refused(RenewError):
    """The server answered, and not with a certificate."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"the server refused the renewal: {status} {reason}")
        self.status = status


class RefusedInHandshake(RenewError):
    """certgate refused this certificate in the TLS handshake for good
    (revoked, expired, from a CA it does not trust): no retry will help."""


#: TLS alerts a server sends about the client's certificate (Python's
#: SSLError.reason spelling): the certificate, not the network, is the problem.
_CERTIFICATE_ALERTS = {
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate revoked",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate expired",
    "TLSV1_ALERT_UNKNOWN_CA": "certificate from a CA the server does not trust",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    renewed: bool
    name: str
    serial: int
    not_after: datetime
    due: datetime  # when the (new) certificate is due for renewal
    message: str


def _now() -> datetime:
    return datetime.now(UTC)


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[-1].value) if names else ""


def _csr_pem(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    # The CA takes only the key from the CSR; the name is for people reading it.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name or "certgate-renew")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--ca {ca}: cannot load it: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise RenewError(f"cannot use {cert} and {key} as the client certificate: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    return ctx


def post_csr(url: str, csr_pem: bytes, ctx: ssl.SSLContext) -> bytes:
    """POST the CSR; the body of a 200, else RenewError with the server's reason."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"--url {url!r}: give an https:// URL of certgate's renewal endpoint")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host, port = parts.hostname, parts.port or 443
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=TIMEOUT)
    try:
        raw = socket.create_connection((_address(host), port), timeout=TIMEOUT)
        try:
            conn.sock = ctx.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        conn.request("POST", target, body=csr_pem,
                     headers={"Content-Type": "application/pkcs10",
                              "User-Agent": "certgate-renew"})
        response = conn.getresponse()
        body = response.read(MAX_RESPONSE + 1)
    except ssl.SSLError as exc:
        why = _CERTIFICATE_ALERTS.get(exc.reason or "")
        if why is not None:
            raise RefusedInHandshake(f"{parts.hostname} refused this certificate in the TLS "
                                     f"handshake: {why}") from None
        raise RenewError(f"cannot reach {parts.hostname}: {exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise RenewError(f"cannot reach {parts.hostname}: {exc}") from None
    finally:
        conn.close()
    if response.status != 200:
        reason = printable(body[:300].decode("utf-8", "replace").strip().splitlines()[0]
                           if body.strip() else response.reason)
        raise Refused(response.status, reason)
    if len(body) > MAX_RESPONSE:
        raise RenewError("the server's answer is too large to be a certificate chain")
    return body


def _address(host: str) -> str:
    # RFC 6761 s.6.3: names under .localhost are loopback. glibc without
    # nss-myhostname does not resolve them, and the embedded default serves
    # enrollment (and so /renew) on enroll.localhost.
    return "127.0.0.1" if host == "localhost" or host.endswith(".localhost") else host


def verify_chain(chain_pem: bytes, key: ec.EllipticCurvePrivateKey, old: files.CertPair,
                 anchors: tuple[x509.Certificate, ...], now: datetime
                 ) -> tuple[x509.Certificate, ...]:
    """The new chain, if it is what was asked for and signed by a trusted CA.

    The leaf must carry the new key and the old name, be a client
    certificate valid now, and be signed by the CA certificate that signed
    the old one or by one that ``anchors`` (``--ca``) or the old chain
    vouches for. Raises RenewError otherwise.
    """
    try:
        chain = tuple(x509.load_pem_x509_certificates(chain_pem))
    except ValueError:
        raise RenewError("the server's answer is not a PEM certificate chain") from None
    leaf = chain[0]
    if not files.matches(leaf, key):
        raise RenewError("the new certificate is not for the key this renewal made")
    if _common_name(leaf) != _common_name(old.leaf):
        raise RenewError(f"the new certificate names {printable(_common_name(leaf))!r}, "
                         f"not {printable(_common_name(old.leaf))!r}")
    if not leaf.not_valid_before_utc - SKEW <= now < leaf.not_valid_after_utc:
        raise RenewError("the new certificate is not valid now (check this device's clock)")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise RenewError("the new certificate is not a client certificate")
    trusted = (*old.chain[1:], *anchors)
    issuer = _signer(leaf, (*chain[1:], *trusted))
    if issuer is None:
        raise RenewError("the new certificate's issuer is unknown here; give --ca with "
                         "certgate's root CA certificate")
    if issuer not in trusted and _signer(issuer, trusted) is None:
        raise RenewError("the new certificate's issuer does not chain to the old "
                         "certificate's CA or to --ca")
    return chain


def _signer(cert: x509.Certificate, candidates: tuple[x509.Certificate, ...]
            ) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def _anchors(ca: Path | None) -> tuple[x509.Certificate, ...]:
    return files.read_chain(ca) if ca is not None else ()


def renew_once(cert: Path, key: Path, url: str, ca: Path | None, *, force: bool = False,
               now: datetime | None = None) -> Outcome:
    """Renew if due (or ``force``); RenewError leaves the old pair in place."""
    recovered = files.recover(cert, key)
    old = files.load_pair(cert, key)
    name = _common_name(old.leaf)
    moment = now or _now()
    decision = schedule.plan(old.leaf.not_valid_before_utc, old.leaf.not_valid_after_utc,
                             moment, force=force)
    if decision.expired:
        raise RenewError(f"{cert}: the certificate of {printable(name)!r} expired at "
                         f"{old.leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}; an expired "
                         "certificate cannot renew itself: enroll the device again")
    if not decision.renew_now:
        when = f"{decision.due:%Y-%m-%dT%H:%M:%SZ}"
        return Outcome(False, name, old.leaf.serial_number, old.leaf.not_valid_after_utc,
                       decision.due,
                       (f"{recovered}; " if recovered else "")
                       + f"{printable(name)}: not due yet; renewal at {when} (in "
                       f"{schedule.describe(decision.due - moment)}), valid until "
                       f"{old.leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    anchors = _anchors(ca)
    mine = files.CertFile.of(cert, old.chain)
    others = files.companions(cert, key, old.leaf)
    old = _with_chain(old, others)
    new_key, again = files.pending_key(key)
    ctx = _context(cert, key, ca)
    try:
        body = post_csr(url, _csr_pem(new_key, name), ctx)
    except Refused as exc:
        if exc.status in (400, 403, 413, 415):
            files.discard_pending(key)  # refused for good: that key will never be signed
        raise
    except RefusedInHandshake:
        files.discard_pending(key)
        raise
    chain = verify_chain(body, new_key, old, anchors, _now())
    written = files.install(key, mine, others.rewrite, chain)
    leaf = chain[0]
    due = schedule.plan(leaf.not_valid_before_utc, leaf.not_valid_after_utc, _now()).due
    return Outcome(True, name, leaf.serial_number, leaf.not_valid_after_utc, due,
                   f"renewed {printable(name)}{' (answer asked for again)' if again else ''}"
                   f": serial {serial_hex(leaf.serial_number)}, valid until "
                   f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, next renewal at "
                   f"{due:%Y-%m-%dT%H:%M:%SZ}"
                   + "".join(f"\n  wrote {path}" for path in written)
                   + "".join(f"\n  left {path} alone: it does not hold the old certificate"
                             for path in others.left_alone))


def _with_chain(old: files.CertPair, others: files.Companions) -> files.CertPair:
    """``--cert NAME.crt`` holds the leaf alone; its NAME.chain.pem companion
    (the same leaf) names the issuing CA, as ``--cert NAME.chain.pem`` would."""
    if len(old.chain) > 1:
        return old
    for other in others.rewrite:
        if not other.leaf_only:
            return files.CertPair(files.read_chain(other.path), old.key)
    return old


def daemon(cert: Path, key: Path, url: str, ca: Path | None, stop: threading.Event,
           say: Any = print) -> int:
    """Renew whenever due until ``stop`` is set; 0 on a stop, 1 once expired."""
    while not stop.is_set():
        try:
            outcome = renew_once(cert, key, url, ca)
        except UsageError:
            raise
        except RenewError as exc:
            say(f"certgate renew: {exc}", file=sys.stderr, flush=True)
            try:
                leaf = files.read_chain(cert)[0]
            except RenewError:
                return 1
            now = _now()
            if now >= leaf.not_valid_after_utc:
                return 1
            delay = schedule.retry_delay(leaf.not_valid_after_utc, now)
            say(f"certgate renew: retrying in {schedule.describe(timedelta(seconds=delay))}",
                file=sys.stderr, flush=True)
        else:
            say(outcome.message, flush=True)
            delay = schedule.sleep_until(outcome.due, _now())
        stop.wait(delay)
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    cert, key = Path(args.cert), Path(args.key)
    ca = Path(args.ca) if args.ca else None
    if not args.daemon:
        print(renew_once(cert, key, args.url, ca, force=args.force).message)
        return 0
    stop = threading.Event()

    def stopping(signum: int, _frame: object) -> None:
        stop.set()  # the loop ends after the step in progress

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopping)
    if args.force:
        print(renew_once(cert, key, args.url, ca, force=True).message, flush=True)
    return daemon(cert, key, args.url, ca, stop)


def add_parser(sub: Any) -> None:
    """Add ``renew`` to the top-level ``add_subparsers()`` object."""
    text = ("renew a client certificate of certgate's built-in CA at two thirds of its "
            "lifetime, authenticated by the certificate itself (for a systemd timer or a "
            "container sidecar); exit 0 when not due yet")
    p = sub.add_parser("renew", help=text, description=text)
    p.add_argument("--cert", required=True, metavar="FILE",
                   help="the certificate chain (PEM, leaf first) or the leaf alone; replaced "
                        "when renewed, and so is a NAME.crt or NAME.chain.pem beside it "
                        "that holds the same certificate")
    p.add_argument("--key", required=True, metavar="FILE",
                   help="its private key (PEM); replaced by a new P-256 key (0600)")
    p.add_argument("--url", required=True, metavar="URL",
                   help="certgate's renewal endpoint, e.g. "
                        "https://enroll.example.org/renew")
    p.add_argument("--ca", metavar="FILE",
                   help="certgate's root CA certificate, to verify the server and the new "
                        "chain (default: the system trust store)")
    p.add_argument("--daemon", action="store_true",
                   help="keep running: renew whenever due (SIGTERM stops it)")
    p.add_argument("--force", action="store_true", help="renew now, even if not due")
    p.set_defaults(handler=cmd_renew)

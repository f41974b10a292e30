"""The enrollment handlers: page, PIN, downloads, CSR, root CA.

Each handler parses the request, does its CA work in one blocking call
(:meth:`EnrollService.blocking`, a thread) and renders the answer. The
store (:mod:`certgate.ca.enrollments`) decides; refusals come back as its
exceptions and are answered here: 410 for a link that is used, expired,
burned, cancelled or unknown, 403 with the attempts left for a wrong PIN,
409 when the name got a certificate meanwhile. No answer or note carries
the token, the PIN or the import password.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgate.ca import enrollments as store
from certgate.ca import p12
from certgate.ca.authority import CertificateAuthority
from certgate.ca.timeutil import rfc3339
from certgate.enroll import bundles, pages
from certgate.enroll.service import EnrollRequest, EnrollResponse, EnrollService, Refused, response
from certgate.errors import CAError

# The import password the page generated and sends back with a download
# (p12.generate_password: 16 random bytes, URL-safe base64).
_PASSWORD = re.compile(r"[A-Za-z0-9_-]{16,64}")


@dataclass(frozen=True, slots=True)
class CAFacts:
    root: x509.Certificate
    two_tier: bool
    fingerprint: str


def ca_facts(ca: CertificateAuthority) -> CAFacts:
    """The active root and whether leaves are issued by an intermediate (blocking)."""
    root_pem = ca.root_cert_path.read_bytes()
    root = x509.load_pem_x509_certificate(root_pem)
    two_tier = ca.issuing_cert_path.read_bytes() != root_pem
    return CAFacts(root, two_tier, bundles.root_fingerprint(root))


def _form(request: EnrollRequest) -> dict[str, str]:
    try:
        fields = parse_qs(request.body.decode("ascii"), max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "malformed form") from None
    return {key: values[0] for key, values in fields.items() if values}


def _base(request: EnrollRequest, token: str) -> str:
    return f"{request.prefix.rstrip('/')}/enroll/{token}"


def _validity(seconds: int) -> str:
    if seconds % 86400 == 0:
        days = seconds // 86400
        return f"{days} day{'s' if days != 1 else ''}"
    hours = max(1, round(seconds / 3600))
    return f"{hours} hour{'s' if hours != 1 else ''}"


def _gone_page(exc: store.EnrollmentError) -> EnrollResponse:
    heading = "This link cannot be used" if exc.status == 410 else "Not possible"
    return pages.render("message.html", exc.status, heading=heading, reason=str(exc))


# -- public files -------------------------------------------------------------------


async def root_certificate(service: EnrollService, request: EnrollRequest,
                           match: re.Match[str]) -> EnrollResponse:
    """The root CA certificate (public), DER, for Android's "CA certificate"
    install and for anyone checking the fingerprint."""
    facts = await service.blocking(ca_facts, service.require_ca())
    der = facts.root.public_bytes(serialization.Encoding.DER)
    return response(200, b"application/x-x509-ca-cert", der,
                    ((b"content-disposition", b'attachment; filename="certgate-root-ca.crt"'),))


async def root_profile(service: EnrollService, request: EnrollRequest,
                       match: re.Match[str]) -> EnrollResponse:
    """The root CA alone as an Apple profile (for iPhones whose apps get the
    .p12 themselves, but whose system must trust the server)."""
    facts = await service.blocking(ca_facts, service.require_ca())
    body = bundles.mobileconfig("root", None, facts.root, facts.root)
    return response(200, b"application/x-apple-aspen-config", body,
                    ((b"content-disposition",
                      b'attachment; filename="certgate-root-ca.mobileconfig"'),))


# -- the page -------------------------------------------------------------------------


async def page(service: EnrollService, request: EnrollRequest,
               match: re.Match[str]) -> EnrollResponse:
    """GET: the PIN form. POST: check the PIN, then the platform choices."""
    ca = service.require_ca()
    token = match["token"]
    action = _base(request, token)
    if request.method != "POST":
        try:
            e = await service.blocking(store.open_link, ca, token)
        except store.EnrollmentError as exc:
            return _gone_page(exc)
        return pages.render("pin.html", action=action, expires=rfc3339(e.expires), error=None)
    pin = _form(request).get("pin", "")
    try:
        e = await service.blocking(store.check_pin, ca, token, pin, request.peer_ip)
    except store.WrongPin as exc:
        expires = await service.blocking(_expiry_text, ca, token)
        return pages.render("pin.html", 403, action=action, expires=expires, error=str(exc))
    except store.EnrollmentError as exc:
        return _gone_page(exc)
    facts = await service.blocking(ca_facts, ca)
    prefix = request.prefix.rstrip("/")
    return pages.render(
        "choose.html",
        name=e.name,
        roles=", ".join(e.roles),
        validity=_validity(e.lifetime),
        password=p12.generate_password(),
        pin=store.normalise_pin(pin),
        base=action,
        ca_url=f"{prefix}/enroll/ca.crt",
        ca_profile_url=f"{prefix}/enroll/ca.mobileconfig",
        builtin_server=service.builtin_server,
        two_tier=facts.two_tier,
        fingerprint=facts.fingerprint,
    )


def _expiry_text(ca: CertificateAuthority, token: str) -> str:
    try:
        return rfc3339(store.open_link(ca, token).expires)
    except store.EnrollmentError:
        return "-"


# -- downloads --------------------------------------------------------------------------


def _download_form(request: EnrollRequest) -> tuple[str, str]:
    form = _form(request)
    password = form.get("password", "")
    if not _PASSWORD.fullmatch(password):
        raise Refused(400, "missing or invalid import password: start again from the page")
    return form.get("pin", ""), password


def _make_p12(ca: CertificateAuthority, token: str, pin: str, password: str, client_ip: str
              ) -> tuple[str, bytes]:
    e, issued = store.redeem(ca, token, pin, client_ip, "p12", store.issue_with_key)
    return e.name, bundles.p12_bundle(issued, password)


def _make_profile(ca: CertificateAuthority, token: str, pin: str, password: str,
                  client_ip: str, with_root: bool) -> tuple[str, bytes]:
    e, issued = store.redeem(ca, token, pin, client_ip, "mobileconfig", store.issue_with_key)
    facts = ca_facts(ca)
    data = bundles.p12_bundle(issued, password)
    return e.name, bundles.mobileconfig(e.name, data, facts.root if with_root else None,
                                        facts.root)


def _attachment(name: str, suffix: str) -> tuple[bytes, bytes]:
    # Names are check_name()-safe (letters, digits, ._@+=,-): no quote, no CR/LF.
    return b"content-disposition", f'attachment; filename="{name}.{suffix}"'.encode()


async def download_p12(service: EnrollService, request: EnrollRequest,
                       match: re.Match[str]) -> EnrollResponse:
    pin, password = _download_form(request)
    try:
        name, data = await service.blocking(_make_p12, service.require_ca(), match["token"],
                                            pin, password, request.peer_ip)
    except store.EnrollmentError as exc:
        return _gone_page(exc)
    return response(200, b"application/x-pkcs12", data, (_attachment(name, "p12"),),
                    note="enrollment downloaded (p12)")


async def download_mobileconfig(service: EnrollService, request: EnrollRequest,
                                match: re.Match[str]) -> EnrollResponse:
    pin, password = _download_form(request)
    try:
        name, data = await service.blocking(_make_profile, service.require_ca(),
                                            match["token"], pin, password, request.peer_ip,
                                            service.builtin_server)
    except store.EnrollmentError as exc:
        return _gone_page(exc)
    return response(200, b"application/x-apple-aspen-config", data,
                    (_attachment(name, "mobileconfig"),),
                    note="enrollment downloaded (mobileconfig)")


# -- CSR enrollment (certgate enroll) ------------------------------------------------------


async def csr(service: EnrollService, request: EnrollRequest,
              match: re.Match[str]) -> EnrollResponse:
    """JSON ``{"pin": ..., "csr": PEM}`` -> the certificate chain (PEM).

    The device made the key; only its public half arrives here.
    """
    try:
        doc = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, 'expected JSON {"pin": ..., "csr": PEM}') from None
    if not isinstance(doc, dict) or not isinstance(doc.get("pin"), str) \
            or not isinstance(doc.get("csr"), str):
        raise Refused(400, 'expected JSON {"pin": ..., "csr": PEM}')
    try:
        make = store.csr_issuer(doc["csr"].encode("ascii", "replace"))
        _e, issued = await service.blocking(store.redeem, service.require_ca(), match["token"],
                                            doc["pin"], request.peer_ip, "csr", make)
    except store.EnrollmentError as exc:
        raise Refused(exc.status, str(exc)) from None
    except CAError as exc:
        raise Refused(400, f"CSR refused: {exc}") from None
    return response(200, b"application/pem-certificate-chain", issued.chain_pem,
                    note="enrollment issued (csr)")

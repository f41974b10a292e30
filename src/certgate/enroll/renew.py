"""``POST {prefix}/renew``: a new certificate for the one the connection presents.

The request: a CSR as the body, PEM (``application/pkcs10``,
``application/x-pem-file`` or ``text/plain``) or DER (``application/pkcs10``),
at most :data:`MAX_CSR` bytes, over a TLS connection that presented the
certificate to renew. The answer: ``200`` with the new chain
(``application/pem-certificate-chain``, RFC 8555 s.9.1: leaf first).

Authentication is the connection's client certificate and nothing else: no
token, no cookie, no header. Checked in this order, so that a client without
the right certificate learns nothing about the CSR handling:

1. a certificate was presented and the built-in CA's key signed it
   (``identity.issuer.builtin``, found by signature, as built-in roles are:
   a look-alike issuer with the same DN and key identifier, or a certificate
   of another trusted CA, is refused) -> else 403;
2. the body is a CSR with a valid signature and an acceptable key -> else
   415 / 413 / 400;
3. the CA's own checks (:mod:`certgate.ca.renewal`): in the inventory byte
   for byte, a client certificate, not revoked, not expired, the current one
   of its name -> else 403.

Revoked, expired or otherwise refused certificates never reach the service:
admission answers 403 first (:mod:`certgate.proxy.admission`); step 3 checks
again against the inventory itself.

The handler (``renew`` in :mod:`certgate.enroll.service`) is a thin wrapper;
everything here raises :class:`~certgate.errors.HTTPError`, so this module
does not import the service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography import x509

from certgate.ca.profiles import check_csr
from certgate.ca.renewal import RenewalDenied, renew_presented
from certgate.errors import CAError, HTTPError, UsageError
from certgate.roles import builtin_issued

if TYPE_CHECKING:
    from certgate.ca import CertificateAuthority
    from certgate.tls.identity import ClientIdentity

__all__ = ["CHAIN_TYPE", "CSR_TYPES", "MAX_CSR", "parse_csr", "presented", "renew"]

#: A P-256 CSR is about 500 bytes of PEM, an RSA-4096 one about 1.7 KB; 16 KiB
#: is ample and keeps a client from making the CA parse more.
MAX_CSR = 16 * 1024
#: Accepted request media types (the parameters after ``;`` are ignored).
#: RFC 5967 registers application/pkcs10 (DER or its base64/PEM form in
#: practice); the PEM types are what curl --data-binary @req.pem sends with -H.
CSR_TYPES = frozenset({b"application/pkcs10", b"application/x-pem-file", b"text/plain",
                       b"application/x-pkcs10"})
#: RFC 8555 s.9.1: a PEM chain, end-entity certificate first.
CHAIN_TYPE = b"application/pem-certificate-chain"


def presented(identity: ClientIdentity | None) -> bytes:
    """The DER of the connection's certificate, if it may ask to renew at all."""
    if identity is None:
        raise HTTPError(403, "renewal needs the current client certificate in the TLS "
                             "handshake")
    if not builtin_issued(identity):
        raise HTTPError(403, "only certificates of the built-in CA renew here")
    return identity.der


def parse_csr(content_type: bytes | None, body: bytes) -> x509.CertificateSigningRequest:
    """The CSR in a request body, verified (signature, key, no extra rights)."""
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media not in CSR_TYPES:
        raise HTTPError(415, "send the CSR as application/pkcs10 (PEM or DER)")
    if len(body) > MAX_CSR:
        raise HTTPError(413, f"a CSR is at most {MAX_CSR} bytes")
    try:
        if b"-----BEGIN CERTIFICATE REQUEST-----" in body:
            csr = x509.load_pem_x509_csr(body)
        else:
            csr = x509.load_der_x509_csr(body)
    except ValueError:
        # The parser's message can quote the input; the reason stays fixed.
        raise HTTPError(400, "the body is not a certificate signing request") from None
    try:
        check_csr(csr)
    except CAError as exc:
        raise HTTPError(400, str(exc)) from None
    return csr


def renew(ca: CertificateAuthority, presented_der: bytes, csr: x509.CertificateSigningRequest,
          client_ip: str) -> tuple[bytes, str]:
    """(new chain PEM, access-log note); blocking, for the service's thread."""
    try:
        result = renew_presented(ca, presented_der, csr.public_key(), client_ip)
    except RenewalDenied as exc:
        raise HTTPError(403, str(exc)) from None
    except UsageError as exc:
        raise HTTPError(400, str(exc)) from None
    except CAError as exc:
        raise HTTPError(503, f"the CA cannot renew now: {exc}") from None
    note = "renewed again (same key)" if result.repeated else "renewed"
    return result.chain_pem, note

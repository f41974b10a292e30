"""Revocation: CRLs -> an index of revoked serials per issuer, checked per connection.

The check runs in Python after the handshake, for new and resumed sessions
alike, as a dict + frozenset lookup (O(1), well under a microsecond), instead
of OpenSSL's ``VERIFY_CRL_CHECK_LEAF``, which costs 0.5-0.8 ms per handshake
with a 10k-entry CRL and never runs for resumed sessions.

Every CRL must verify against a trusted CA whose subject is the CRL's issuer;
one that does not is refused with the file named (at start this stops
certgate; on reload the previous index stays in force). A CRL past its
nextUpdate is *stale*: clients of that issuer are refused with the reason
"stale CRL" (fail closed).
"""

from __future__ import annotations

import binascii
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import SignatureAlgorithmOID

from certgate.errors import CertgateError
from certgate.tls.identity import ClientIdentity

REVOKED = "client certificate revoked"
STALE_CRL = "stale CRL: the issuer's revocation list is past its nextUpdate"


class RevocationError(CertgateError):
    """A CRL is missing, unparsable or not signed by a trusted CA."""


@dataclass(frozen=True, slots=True)
class CRLInfo:
    path: Path
    issuer_dn: str
    next_update: float | None  # POSIX time
    revoked: int
    number: int | None


class RevocationIndex:
    """Revoked serials per issuer DN, with each issuer's CRL freshness."""

    def __init__(self, revoked: dict[str, frozenset[int]], infos: Sequence[CRLInfo]) -> None:
        self._revoked = revoked
        self._next_update = {info.issuer_dn: info.next_update for info in infos}
        self.infos = tuple(infos)

    def check(self, identity: ClientIdentity, now: float | None = None) -> str | None:
        """A refusal reason for this certificate, or None when it may pass."""
        revoked = self._revoked.get(identity.issuer_dn)
        if revoked is None:
            return None
        if identity.serial in revoked:
            return REVOKED
        next_update = self._next_update.get(identity.issuer_dn)
        if next_update is not None and (now if now is not None else time.time()) > next_update:
            return STALE_CRL
        return None

    def stale(self, now: float | None = None) -> list[CRLInfo]:
        """CRLs past their nextUpdate."""
        moment = now if now is not None else time.time()
        return [info for info in self.infos
                if info.next_update is not None and moment > info.next_update]


def _issuers(trust_pem: str) -> dict[str, list[x509.Certificate]]:
    by_subject: dict[str, list[x509.Certificate]] = {}
    if not trust_pem.strip():
        return by_subject
    for cert in x509.load_pem_x509_certificates(trust_pem.encode("ascii")):
        by_subject.setdefault(cert.subject.rfc4514_string(), []).append(cert)
    return by_subject


def parse_crls(data: bytes, path: Path) -> list[x509.CertificateRevocationList]:
    """Every CRL in a file: one DER CRL, or one or more PEM blocks.

    The built-in CA's ``crl.pem`` holds one CRL per issuing CA still in date
    after a rotation, so all blocks count, not just the first.
    """
    return [crl for _, crl in _parse_crl_ders(data, path)]


def _parse_crl_ders(data: bytes,
                    path: Path) -> list[tuple[bytes, x509.CertificateRevocationList]]:
    """(DER, parsed CRL) pairs; the DER is what the signature is checked over."""
    try:
        ders = _pem_blocks(data) if _PEM_BEGIN in data else [data]
        if not ders:
            raise ValueError("no complete PEM block")
        return [(der, x509.load_der_x509_crl(der)) for der in ders]
    except (ValueError, binascii.Error) as exc:
        raise RevocationError(f"{path}: not a PEM or DER CRL: {exc}") from None


_PEM_BEGIN = b"-----BEGIN X509 CRL-----"
_PEM_END = b"-----END X509 CRL-----"
# Base64 is decoded in slices so no single call holds the GIL for long: a
# 100k-entry CRL is 4.7 MB of PEM, ~15 ms in one a2b_base64 call.
_DECODE_SLICE = 1 << 20  # a multiple of 4: slices decode independently


def _pem_blocks(data: bytes) -> list[bytes]:
    """The DER of every CRL PEM block (found with bytes.find: a regex over
    megabytes holds the GIL for tens of milliseconds)."""
    blocks: list[bytes] = []
    at = data.find(_PEM_BEGIN)
    while at >= 0:
        start = at + len(_PEM_BEGIN)
        end = data.find(_PEM_END, start)
        if end < 0:
            break
        text = data[start:end].translate(None, b" \t\r\n")
        blocks.append(b"".join(binascii.a2b_base64(text[i:i + _DECODE_SLICE])
                               for i in range(0, len(text), _DECODE_SLICE)))
        at = data.find(_PEM_BEGIN, end)
    return blocks


def load_revocation(paths: Sequence[Path], trust_pem: str) -> RevocationIndex:
    """Read and verify CRLs; raises RevocationError naming the bad file."""
    issuers = _issuers(trust_pem)
    revoked: dict[str, set[int]] = {}
    infos: list[CRLInfo] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RevocationError(f"{path}: cannot read CRL: {exc.strerror or exc}") from None
        for der, crl in _parse_crl_ders(data, path):
            infos.append(_index_crl(der, crl, path, issuers, revoked))
    return RevocationIndex({k: frozenset(v) for k, v in revoked.items()}, infos)


def _index_crl(der: bytes, crl: x509.CertificateRevocationList, path: Path,
               issuers: dict[str, list[x509.Certificate]],
               revoked: dict[str, set[int]]) -> CRLInfo:
    issuer_dn = crl.issuer.rfc4514_string()
    candidates = issuers.get(issuer_dn, [])
    if not candidates:
        raise RevocationError(f"{path}: CRL issuer {issuer_dn!r} is not a trusted CA")
    if not any(_signed_by(der, crl, cert.public_key()) for cert in candidates):
        raise RevocationError(f"{path}: CRL signature does not verify against {issuer_dn!r}")
    serials = revoked.setdefault(issuer_dn, set())
    serials.update(entry.serial_number for entry in crl)
    next_update = crl.next_update_utc
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return CRLInfo(path, issuer_dn,
                   next_update.timestamp() if next_update is not None else None,
                   len(crl), number)


def _signed_by(der: bytes, crl: x509.CertificateRevocationList, key: object) -> bool:
    """Whether ``key`` signed this CRL.

    ``crl.is_signature_valid`` re-encodes the whole TBSCertList while holding
    the GIL: 36 ms for a 100k-entry CRL, a stall of the event loop even from a
    worker thread. For ECDSA and RSA PKCS#1 v1.5 (what CAs use) the TBS bytes
    are sliced from the DER instead, hashed by hashlib (which releases the
    GIL), and the digest verified: the same check, 0.2 ms of held GIL. Other
    schemes (PSS, EdDSA) take the library's path.
    """
    algorithm = crl.signature_hash_algorithm
    tbs = _first_element(der)
    try:
        if tbs is not None and algorithm is not None and \
                crl.signature_algorithm_oid in _PKCS1_OR_ECDSA:
            digest = hashlib.new(algorithm.name, tbs).digest()
            prehashed = Prehashed(algorithm)
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(crl.signature, digest, ec.ECDSA(prehashed))
                return True
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(crl.signature, digest, padding.PKCS1v15(), prehashed)
                return True
            return False  # a key that cannot have made this signature
        return crl.is_signature_valid(key)  # type: ignore[arg-type]  # non-signing keys raise
    except (InvalidSignature, TypeError, ValueError, UnsupportedAlgorithm):
        return False


_PKCS1_OR_ECDSA = frozenset({
    SignatureAlgorithmOID.ECDSA_WITH_SHA256, SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    SignatureAlgorithmOID.ECDSA_WITH_SHA512, SignatureAlgorithmOID.RSA_WITH_SHA256,
    SignatureAlgorithmOID.RSA_WITH_SHA384, SignatureAlgorithmOID.RSA_WITH_SHA512,
})


def _first_element(der: bytes) -> bytes | None:
    """The encoded first element of the outer DER SEQUENCE (a CRL's TBSCertList).

    Strict: definite lengths only, and the outer SEQUENCE must span exactly
    ``der``. Anything else returns None and the library's own check runs, so
    a malformed encoding can only fail closed.
    """
    outer = _header(der, 0)
    if outer is None or outer[1] != len(der):
        return None
    inner = _header(der, outer[0])
    if inner is None or inner[1] > outer[1]:
        return None
    return der[outer[0]:inner[1]]


def _header(der: bytes, at: int) -> tuple[int, int] | None:
    """(content start, content end) of the SEQUENCE whose tag is at ``at``."""
    if at + 2 > len(der) or der[at] != 0x30:
        return None
    first = der[at + 1]
    if first < 0x80:
        start, length = at + 2, first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or at + 2 + count > len(der):
            return None
        start = at + 2 + count
        length = int.from_bytes(der[at + 2:start], "big")
    end = start + length
    return (start, end) if end <= len(der) else None

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

Nothing goes back (issue #11, finding 6): an older CRL than one already seen
from the same file and issuer is refused like a bad one, and a file that stops
holding an issuer's CRL leaves the previous one in force (logged), stale check
included; see :mod:`certgate.revocation_state`. Nothing is silently unchecked
(finding 0): trusting ``builtin`` implies its CRL (the config schema adds it),
and any other trusted CA that no CRL covers is a warning naming its file,
from ``certgate check`` and at start, unless its entry says ``crl: none``.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import SignatureAlgorithmOID

from certgate.config.schema import BUILTIN, Config
from certgate.errors import CertgateError
from certgate.revocation_state import (
    HighWater,
    Source,
    StateError,
    merge,
    read_state,
    reuses_number,
    rollback,
    save_state,
    utc,
)
from certgate.tls.identity import ClientIdentity
from certgate.tls.issuers import key_sha256

log = logging.getLogger("certgate.revocation")

REVOKED = "client certificate revoked"
STALE_CRL = "stale CRL: the issuer's revocation list is past its nextUpdate"


class RevocationError(CertgateError):
    """A CRL is missing, unparsable, not signed by a trusted CA, or goes back."""


@dataclass(frozen=True, slots=True)
class CRLInfo:
    path: Path
    issuer_dn: str
    next_update: float | None  # POSIX time
    revoked: int
    number: int | None
    this_update: float | None = None  # POSIX time
    issuer_key: str = ""  # SHA-256 hex of the SubjectPublicKeyInfo that verified it
    digest: str = ""  # SHA-256 hex of the signed TBSCertList
    kept: bool = False  # in force although its file no longer holds it (see load)

    @property
    def source(self) -> Source:
        return (str(self.path), self.issuer_dn, self.issuer_key)

    @property
    def high_water(self) -> HighWater:
        return HighWater(self.number, self.this_update, self.digest)

    def describe(self) -> str:
        number = "no CRL number" if self.number is None else f"CRL number {self.number}"
        kept = "; kept: the file no longer holds it" if self.kept else ""
        return (f"{self.path} ({number}, thisUpdate {utc(self.this_update)}, "
                f"nextUpdate {utc(self.next_update)}{kept})")


@dataclass(frozen=True, slots=True)
class LoadedCRL:
    info: CRLInfo
    serials: frozenset[int]


class RevocationIndex:
    """Revoked serials per issuer DN, with each issuer's CRL freshness.

    Several CRLs for one issuer DN (two files, or two keys under one name)
    count together, failing closed: a serial revoked in any is revoked, and
    the issuer is stale when any of them is.
    """

    def __init__(self, loaded: Sequence[LoadedCRL] = (),
                 marks: Mapping[Source, HighWater] | None = None,
                 unchecked: frozenset[str] = frozenset()) -> None:
        by_dn: dict[str, list[LoadedCRL]] = {}
        for crl in loaded:
            by_dn.setdefault(crl.info.issuer_dn, []).append(crl)
        # One CRL per issuer is the common case: share its set, do not copy it.
        self._revoked = {dn: crls[0].serials if len(crls) == 1
                         else frozenset().union(*(c.serials for c in crls))
                         for dn, crls in by_dn.items()}
        self._next_update: dict[str, float | None] = {}
        for dn, crls in by_dn.items():
            updates = [c.info.next_update for c in crls if c.info.next_update is not None]
            self._next_update[dn] = min(updates) if updates else None
        self.loaded = tuple(loaded)
        self.infos = tuple(crl.info for crl in loaded)
        #: The high-water mark of every CRL source seen (see revocation_state).
        self.marks: dict[Source, HighWater] = dict(marks or {})
        #: Issuer DNs of trusted CAs whose entry says ``crl: none``.
        self.unchecked = unchecked

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

    def covers(self, issuer_dn: str) -> bool:
        return issuer_dn in self._revoked

    def governing(self, issuer_dn: str) -> str:
        """Which CRL decides on certificates of ``issuer_dn``, for ``explain``."""
        infos = [info for info in self.infos if info.issuer_dn == issuer_dn]
        if infos:
            return "; ".join(info.describe() for info in infos)
        if issuer_dn in self.unchecked:
            return "none (crl: none): revocation is not checked for this issuer, as configured"
        return "none — WARNING no CRL: revocation is not checked for this issuer"


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
    """Read and verify CRLs, with no high-water state; raises RevocationError."""
    return RevocationSources(tuple(paths), trust_pem).load(persist=False)


@dataclass(frozen=True, slots=True)
class RevocationSources:
    """Where a runtime's CRLs come from and what they are checked against."""

    paths: tuple[Path, ...]
    trust_pem: str  # every trusted CA: a CRL must verify against one of them
    # Trusted CAs whose revocation must be checked (all but the ``crl: none``
    # entries); None: all of trust_pem.
    checked_pem: str | None = None
    state_file: Path | None = None  # high-water marks (revocation_state)

    def load(self, previous: RevocationIndex | None = None, *,
             persist: bool = True) -> RevocationIndex:
        """Read, verify and reconcile the CRLs against what was seen before.

        Blocking (files, signatures): call it off the event loop.

        Args:
            previous: the index in force; a CRL its file no longer holds is
                kept from it (logged) while its issuer is still trusted.
            persist: save the new high-water marks (``explain`` does not).

        Raises:
            RevocationError: a bad file, a rollback, or (with no previous CRL
                to keep) a file that no longer holds an issuer it held; the
                message names the file.
        """
        issuers = _issuers(self.trust_pem)
        trusted = {(dn, key_sha256(c)) for dn, certs in issuers.items() for c in certs}
        checked = trusted if self.checked_pem is None else \
            {(dn, key_sha256(c)) for dn, certs in _issuers(self.checked_pem).items() for c in certs}
        fresh = self._newest(self._read(issuers))
        try:
            stored = read_state(self.state_file) if self.state_file is not None else {}
        except StateError as exc:
            raise RevocationError(str(exc)) from None
        marks = merge(stored, previous.marks if previous is not None else {})
        for crl in fresh.values():
            self._judge(crl.info, marks.get(crl.info.source))
        kept = self._keep(fresh, previous, trusted)
        self._check_lost(fresh, kept, marks, checked)
        new_marks = merge(marks, {s: crl.info.high_water for s, crl in fresh.items()})
        if persist and self.state_file is not None and new_marks != stored:
            save_state(self.state_file, new_marks)
        unchecked = frozenset(issuers) - {dn for dn, _ in checked}
        return RevocationIndex([*fresh.values(), *kept], new_marks, unchecked)

    def _read(self, issuers: dict[str, list[x509.Certificate]]) -> list[LoadedCRL]:
        out: list[LoadedCRL] = []
        for path in self.paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise RevocationError(
                    f"{path}: cannot read CRL: {exc.strerror or exc}") from None
            for der, crl in _parse_crl_ders(data, path):
                out.append(_index_crl(der, crl, path, issuers))
        return out

    @staticmethod
    def _newest(crls: list[LoadedCRL]) -> dict[Source, LoadedCRL]:
        """One CRL per source: a file holding two for one issuer counts its newest."""
        out: dict[Source, LoadedCRL] = {}
        for crl in crls:
            have = out.get(crl.info.source)
            if have is None or rollback(crl.info.high_water, have.info.high_water) is None:
                out[crl.info.source] = crl
        return out

    def _judge(self, info: CRLInfo, seen: HighWater | None) -> None:
        reason = rollback(info.high_water, seen)
        if reason is not None:
            where = f" (marks in {self.state_file})" if self.state_file is not None else ""
            raise RevocationError(f"{info.path}: refusing a rollback of the CRL of "
                                  f"{info.issuer_dn!r}: {reason}{where}")
        if reuses_number(info.high_water, seen):
            log.warning("%s: the CRL of %r reused CRL number %s with a newer thisUpdate (%s) "
                        "and other contents (RFC 5280 5.2.3 asks for a new number); accepted "
                        "as the issuer's newer list", info.path, info.issuer_dn, info.number,
                        utc(info.this_update))

    def _keep(self, fresh: Mapping[Source, LoadedCRL], previous: RevocationIndex | None,
              trusted: set[tuple[str, str]]) -> list[LoadedCRL]:
        """Previous CRLs whose file no longer holds them, still in force."""
        if previous is None:
            return []
        sources = {str(path) for path in self.paths}
        kept: list[LoadedCRL] = []
        for crl in previous.loaded:
            info = crl.info
            if info.source in fresh or str(info.path) not in sources or \
                    (info.issuer_dn, info.issuer_key) not in trusted:
                continue  # superseded, or its file or issuer left the config
            log.warning("%s no longer holds a CRL of %r (it held CRL number %s, thisUpdate "
                        "%s): keeping that CRL in force until the file holds a newer one; "
                        "it turns stale at its nextUpdate %s", info.path, info.issuer_dn,
                        info.number, utc(info.this_update), utc(info.next_update))
            kept.append(LoadedCRL(replace(info, kept=True), crl.serials))
        return kept

    def _check_lost(self, fresh: Mapping[Source, LoadedCRL], kept: list[LoadedCRL],
                    marks: Mapping[Source, HighWater], checked: set[tuple[str, str]]) -> None:
        """A configured file that held a checked issuer's CRL and no longer
        does, with no previous CRL to keep (a start, a reload): refuse."""
        sources = {str(path) for path in self.paths}
        have = set(fresh) | {crl.info.source for crl in kept}
        for source, mark in marks.items():
            path, dn, key = source
            if source in have or path not in sources or (dn, key) not in checked:
                continue
            raise RevocationError(
                f"{path}: no longer holds a CRL of {dn!r}, which it held (CRL number "
                f"{mark.number}, thisUpdate {utc(mark.this_update)}); refusing to go on "
                f"without it. Put that issuer's CRL back; if it moved, or the CA should "
                f"go unchecked (its trusted_cas entry: crl: none), remove that entry from "
                f"{self.state_file}")


def _index_crl(der: bytes, crl: x509.CertificateRevocationList, path: Path,
               issuers: dict[str, list[x509.Certificate]]) -> LoadedCRL:
    issuer_dn = crl.issuer.rfc4514_string()
    candidates = issuers.get(issuer_dn, [])
    if not candidates:
        raise RevocationError(f"{path}: CRL issuer {issuer_dn!r} is not a trusted CA")
    signer = next((cert for cert in candidates if _signed_by(der, crl, cert.public_key())),
                  None)
    if signer is None:
        raise RevocationError(f"{path}: CRL signature does not verify against {issuer_dn!r}")
    serials = frozenset(entry.serial_number for entry in crl)
    next_update = crl.next_update_utc
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    tbs = _first_element(der)
    digest = hashlib.sha256(tbs if tbs is not None else crl.tbs_certlist_bytes).hexdigest()
    info = CRLInfo(path, issuer_dn,
                   next_update.timestamp() if next_update is not None else None,
                   len(serials), number, crl.last_update_utc.timestamp(), key_sha256(signer),
                   digest)
    return LoadedCRL(info, serials)


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


# -- coverage: which trusted CAs have no CRL (finding 0) ----------------------

def no_crl_warning(path: Path | str) -> str:
    return (f"client_auth.trusted_cas: {path} has no CRL: certificates it issues are never "
            f"checked for revocation; give its entry one ({{file: {path}, crl: CRL-FILE}}) "
            f"or say that is intended ({{file: {path}, crl: none}})")


def ca_subjects(path: Path) -> set[str]:
    """Subject DNs of the certificates in a CA file; empty if it cannot be read
    (the TLS setup reports that file on its own)."""
    try:
        return {cert.subject.rfc4514_string()
                for cert in x509.load_pem_x509_certificates(path.read_bytes())}
    except (OSError, ValueError):
        return set()


def uncovered_cas(cas: Sequence[Path], covered: Callable[[str], bool]) -> list[Path]:
    """CA files none of whose certificates is the issuer of a CRL in force."""
    return [path for path in cas if not any(covered(dn) for dn in ca_subjects(path))]


def checked_ca_files(config: Config) -> list[Path]:
    """Trusted CA files (not ``builtin``, whose CRL is implied) that must have a CRL."""
    auth = config.client_auth
    return [Path(source) for source in auth.trusted_cas
            if source != BUILTIN and source not in auth.no_crl]


def unchecked_issuers(config: Config) -> frozenset[str]:
    """Subject DNs in the trusted CA files whose entry says ``crl: none``."""
    return frozenset(dn for source in config.client_auth.no_crl
                     for dn in ca_subjects(Path(source)))


def crl_coverage_warnings(config: Config) -> list[str]:
    """For ``certgate check``: a warning per trusted CA file no CRL covers.

    Reads the CRL files for their issuers only; the signatures are verified
    when certgate starts, which also warns (from the verified CRLs).
    """
    covered: set[str] = set()
    for source in config.client_auth.crls:
        if source == BUILTIN:
            continue
        try:
            covered.update(crl.issuer.rfc4514_string()
                           for crl in parse_crls(Path(source).read_bytes(), Path(source)))
        except (OSError, RevocationError):
            continue
    return [no_crl_warning(path)
            for path in uncovered_cas(checked_ca_files(config), covered.__contains__)]

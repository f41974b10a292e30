"""Which trusted CA certificate signed a leaf: decided by the signature, not by names.

An attack on certgate showed why names are not enough: a second trusted CA
minted an intermediate carrying the built-in issuing CA's subject DN and
subjectKeyIdentifier, then a leaf under it with a copied serial. By DN and
authorityKeyIdentifier the leaf looked like the built-in CA's, and it got
the built-in inventory's roles. Every one of those values is written by the
issuer; only the signature binds the leaf to a key.

:class:`TrustedIssuers` therefore answers "which trusted certificate's key
verifies this leaf's signature", looking only at the certificates certgate
was told to trust (``client_auth.trusted_cas``, the built-in bundle among
them). A leaf signed by an intermediate that is not in a trusted file gets no
:class:`~certgate.tls.identity.VerifiedIssuer`: no built-in roles and no
``issuer:`` match (fail closed), even though OpenSSL may accept its chain.
The check costs one signature verification per candidate (about 50-100 us
for P-256 or RSA-2048) and runs when an identity is parsed, which the
identity cache does once per certificate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certgate.config.schema import BUILTIN, Config
from certgate.matchers import Kind, Matcher
from certgate.tls.identity import VerifiedIssuer

__all__ = ["TrustedIssuers", "issuer_matcher_warnings", "key_sha256", "read_trusted",
           "weak_key_warnings"]

#: OpenSSL security level 2 (Debian's and Ubuntu's default) refuses RSA keys
#: below 2048 bits and curves below 224 bits anywhere in a chain.
MIN_RSA_BITS = 2048
MIN_EC_BITS = 224


def key_sha256(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of ``cert``'s SubjectPublicKeyInfo (DER).

    The same value as ``openssl x509 -noout -pubkey -in CA.pem | openssl pkey
    -pubin -outform DER | sha256sum`` (and HPKP's pin, in hex).
    """
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@dataclass(frozen=True, slots=True)
class _Candidate:
    cert: x509.Certificate
    issuer: VerifiedIssuer


class TrustedIssuers:
    """The trusted CA certificates, and a lookup of the one that signed a leaf."""

    def __init__(self, trusted: Iterable[x509.Certificate],
                 builtin: Iterable[x509.Certificate] = ()) -> None:
        # By key, not by certificate: a leaf that a built-in key signed is the
        # built-in CA's whichever certificate of that key is found first.
        builtin_keys = {key_sha256(c) for c in builtin}
        candidates: list[_Candidate] = []
        seen: set[bytes] = set()
        for cert in trusted:
            der = cert.public_bytes(serialization.Encoding.DER)
            if der in seen:
                continue
            seen.add(der)
            key = key_sha256(cert)
            candidates.append(_Candidate(cert, VerifiedIssuer(
                cert.subject.rfc4514_string(), key, key in builtin_keys)))
        self._candidates = tuple(candidates)

    @classmethod
    def from_pem(cls, trusted_pem: str | bytes, builtin_pem: bytes | None = None
                 ) -> TrustedIssuers:
        """From the trust bundle (``client_auth.trusted_cas`` concatenated) and
        the built-in CA's bundle, if there is one."""
        data = trusted_pem.encode("ascii") if isinstance(trusted_pem, str) else trusted_pem
        trusted = x509.load_pem_x509_certificates(data) if data.strip() else []
        builtin = x509.load_pem_x509_certificates(builtin_pem) if builtin_pem else []
        return cls(trusted, builtin)

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        return tuple(c.cert for c in self._candidates)

    @property
    def issuers(self) -> tuple[VerifiedIssuer, ...]:
        return tuple(c.issuer for c in self._candidates)

    def find(self, leaf: x509.Certificate) -> VerifiedIssuer | None:
        """The trusted certificate whose key verifies ``leaf``'s signature, or None."""
        for candidate in self._candidates:
            if candidate.cert.subject != leaf.issuer:
                continue  # verify_directly_issued_by would refuse it anyway
            try:
                leaf.verify_directly_issued_by(candidate.cert)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return candidate.issuer
        return None

    __call__ = find


def read_trusted(config: Config) -> TrustedIssuers:
    """The trusted CA files as they are on disk now, without building a runtime
    (for ``certgate check``); a file that cannot be read contributes nothing
    (the runtime build names it)."""
    trusted: list[x509.Certificate] = []
    builtin: list[x509.Certificate] = []
    for source in config.client_auth.trusted_cas:
        try:
            certs = x509.load_pem_x509_certificates(config.trust_file(source).read_bytes())
        except (OSError, ValueError):
            continue
        trusted += certs
        if source == BUILTIN:
            builtin += certs
    return TrustedIssuers(trusted, builtin)


def issuer_matcher_warnings(config: Config, issuers: TrustedIssuers) -> list[str]:
    """One line per ``issuer:DN`` matcher that no trusted CA certificate carries.

    Such a matcher can never match (the issuer is checked by signature, and
    no trusted key has that name), which is almost certainly not what the
    config meant: say so at start-up and in ``certgate check``.
    """
    known = {issuer.dn for issuer in issuers.issuers}
    where: list[tuple[str, Matcher]] = []
    for i, rule in enumerate(config.client_auth.roles):
        where += [(f"client_auth.roles[{i}].match", m) for m in rule.match]
    for r, route in enumerate(config.routes):
        where += [(f"routes[{r}].allow", m) for m in route.allow]
        where += [(f"routes[{r}].deny", m) for m in route.deny]
        for p, path in enumerate(route.rules):
            where += [(f"routes[{r}].rules[{p}].allow", m) for m in path.allow or ()]
            where += [(f"routes[{r}].rules[{p}].deny", m) for m in path.deny]
    out: list[str] = []
    for key, matcher in where:
        if matcher.kind is Kind.ISSUER and matcher.value not in known:
            out.append(f"{key}: {matcher.text} names no certificate in client_auth.trusted_cas, "
                       "so it never matches (issuers are checked by signature); add that CA "
                       "certificate to a trusted file, or pin the key with issuer-key:SHA256")
    return out


def weak_key_warnings(issuers: TrustedIssuers) -> list[str]:
    """One line per trusted CA whose key OpenSSL's default security level refuses.

    Such a CA (an old imported one, ``ca import`` warns too) fails every
    client's handshake with ``CA_KEY_TOO_SMALL``, logged per connection only;
    say it once at start-up and in ``certgate check``, where someone looks.
    """
    out: list[str] = []
    for cert in issuers.certificates:
        key = cert.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            size = f"an RSA key of {key.key_size} bits"
        elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < MIN_EC_BITS:
            size = f"a {key.curve.name} key"
        else:
            continue
        out.append(f"trusted CA {cert.subject.rfc4514_string()!r} has {size}: OpenSSL "
                   "(security level 2) refuses every client certificate chain through it; "
                   "replace it (ca rotate --root for the built-in CA)")
    return out

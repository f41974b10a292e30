"""``ca import``: make a CA someone already runs certgate's built-in CA.

Most people arrive with a CA made by accident: ``ca.key`` and ``ca.crt``
from three openssl commands, Caddy's local CA, or a step-ca intermediate,
with leaves already installed on phones. Importing takes that CA as the
issuing CA so its leaves get an inventory (``ca adopt``), revocation (a CRL
certgate signs with the imported key) and a way out (``ca rotate``), without
reissuing a device.

Theory of operation
-------------------
Everything about the files is decided before anything is written
(:func:`plan_import`, pure): a key that is not the certificate's, a
certificate that is not a CA, an expired one, or a chain that does not lead
to a root (by signature, never by name) is refused with one line, and the
state directory is left untouched. What is merely weak (short RSA keys, SHA-1,
very long validity, no pathLenConstraint) is imported with a warning that
says why, so the person knows what they are carrying and can plan a
``ca rotate``.

The imported certificate becomes the active issuer. Self-signed, it is the
root and issues directly (``single_tier``, as the openssl recipe did); an
intermediate is recorded under its root (given with ``--chain``), whose key
stays wherever it is: certgate has only the certificate, as with
``ca init --offline-root``. The key is stored like certgate's own CA keys
(PKCS#8, 0600, written atomically through the session journal), never
logged, and the import is the first entry of the audit log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from certgate.ca.journal import Output
from certgate.ca.keys import (
    DEFAULT_KEY_TYPE,
    MIN_RSA_BITS,
    PrivateKey,
    key_to_pem,
    same_public_key,
    serial_hex,
)
from certgate.ca.layout import CALayout
from certgate.ca.session import session
from certgate.ca.timeutil import rfc3339
from certgate.errors import CAError, UsageError
from certgate.fsutil import read_input

#: Beyond this validity a CA certificate outlives any plan to retire it.
#: certgate's own roots last 10 years (profiles.ROOT_LIFETIME).
LONG_VALIDITY = timedelta(days=3653)
#: The weakest hashes a CA signature can rest on: collisions are practical
#: (SHA-1: SHAttered, 2017; MD5: forged CA certificate, 2008).
_WEAK_HASHES = (hashes.SHA1, hashes.MD5)
#: Clock skew tolerated for a notBefore slightly in the future.
_SKEW = timedelta(minutes=5)


class KeyEncrypted(UsageError):
    """The key file is encrypted and no password was given."""


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """What ``ca import`` will record, decided before anything is written."""

    #: The imported CA certificate: the issuer from now on.
    issuing: x509.Certificate
    key: PrivateKey
    #: The root above ``issuing``; None when ``issuing`` is itself a root.
    root: x509.Certificate | None
    #: Weak points, one sentence each, with the reason.
    warnings: tuple[str, ...]

    @property
    def self_signed(self) -> bool:
        return self.root is None


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in PEM text, or the one DER certificate; ValueError
    for anything else (a key, a CSR, garbage)."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)  # ValueError: no certificate in it
    return [x509.load_der_x509_certificate(data)]


def read_certificates(path: Path, flag: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file (or the one in a DER file)."""
    try:
        data = read_input(path)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read it: {exc.strerror}") from None
    try:
        return parse_certificates(data)
    except ValueError:
        raise UsageError(f"{flag} {path}: not a PEM or DER certificate") from None


def read_private_key(path: Path, password: bytes | None) -> PrivateKey:
    """A CA private key in PEM or DER, encrypted or not.

    Error messages name the file and what is wrong with it, never any of its
    bytes or the password.
    """
    try:
        data = read_input(path)
    except OSError as exc:
        raise UsageError(f"--key {path}: cannot read it: {exc.strerror}") from None
    loader = (serialization.load_pem_private_key if b"-----BEGIN" in data
              else serialization.load_der_private_key)
    try:
        key = loader(data, password=password)
    except TypeError:
        if password is None:
            raise KeyEncrypted(f"--key {path} is encrypted: give its password with "
                               "--key-password-file FILE") from None
        raise UsageError(f"--key {path} is not encrypted: drop --key-password-file") from None
    except (ValueError, UnsupportedAlgorithm):
        if password is not None:
            raise UsageError(f"--key {path}: cannot decrypt it with that password, "
                             "or it is not a private key") from None
        raise UsageError(f"--key {path} is not a PEM or DER private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise UsageError(f"--key {path} holds a {type(key).__name__.removeprefix('_')}; "
                         "certgate can import ECDSA and RSA CA keys only")
    return key


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    return _signed_by(cert, cert)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` (and the names chain).

    cryptography's ``verify_directly_issued_by`` refuses SHA-1 signatures
    outright; an old CA made with ``openssl req -sha1`` is still this CA, so
    its RSA or ECDSA signature is checked by hand (and warned about).
    """
    with contextlib.suppress(ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        cert.verify_directly_issued_by(issuer)
        return True
    algorithm = cert.signature_hash_algorithm
    if cert.issuer != issuer.subject or not isinstance(algorithm, hashes.SHA1):
        return False
    key = issuer.public_key()
    with contextlib.suppress(ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
            return True
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
            return True
    return False


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {serial_hex(cert.serial_number)}"


def ca_problem(cert: x509.Certificate, *, signs_crls: bool) -> str | None:
    """Why ``cert`` cannot serve as a CA certificate, or None."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "it is not a CA certificate (no basicConstraints CA:TRUE); is it a leaf?"
    if not constraints.ca:
        return "it is not a CA certificate (basicConstraints CA:FALSE); is it a leaf?"
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None  # RFC 5280 4.2.1.3: absent means unrestricted
    if not usage.key_cert_sign:
        return "its keyUsage lacks keyCertSign, so it may not sign certificates"
    if signs_crls and not usage.crl_sign:
        return "its keyUsage lacks cRLSign, so certgate could not sign a CRL with it"
    return None


def validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    if cert.not_valid_after_utc <= now:
        return f"it expired on {rfc3339(cert.not_valid_after_utc)}"
    if cert.not_valid_before_utc > now + _SKEW:
        return f"it is not valid before {rfc3339(cert.not_valid_before_utc)}"
    return None


def weak_points(cert: x509.Certificate, *, issuing: bool) -> list[str]:
    """What is weak about a CA certificate: each a sentence with its reason."""
    found: list[str] = []
    name = _describe(cert)
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        found.append(f"{name}: RSA key of {key.key_size} bits, below {MIN_RSA_BITS}: "
                     "within reach of factoring, and OpenSSL security level 2 refuses it")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256:
        found.append(f"{name}: {key.curve.name} key, below the 128-bit security level")
    algorithm = cert.signature_hash_algorithm
    if isinstance(algorithm, _WEAK_HASHES):
        if _self_signed(cert):
            # OpenSSL does not check a trust anchor's own signature; others may.
            found.append(f"{name}: self-signed with {algorithm.name.upper()}: OpenSSL "
                         "ignores a root's own signature, some other clients refuse it")
        else:
            found.append(f"{name}: signed with {algorithm.name.upper()}, for which "
                         "collisions are practical; OpenSSL 3 refuses it by default")
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    if span > LONG_VALIDITY:
        found.append(f"{name}: valid for {span.days // 365} years (until "
                     f"{cert.not_valid_after_utc.date()}): a key that old is a key nobody "
                     "plans to retire; plan a 'ca rotate'")
    if issuing:
        with contextlib.suppress(x509.ExtensionNotFound):
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            if constraints.path_length is None:
                found.append(f"{name}: no pathLenConstraint: its key can make further CAs "
                             "that everything trusting it accepts")
    return found


def plan_import(
    certs: Sequence[x509.Certificate],
    key: PrivateKey,
    chain: Sequence[x509.Certificate],
    now: datetime,
) -> ImportPlan:
    """Check the files ``ca import`` was given; refuse (UsageError) in one line.

    ``certs`` is the ``--cert`` file: the CA certificate first, maybe followed
    by its chain (a fullchain file); ``chain`` is the ``--chain`` file.
    """
    if not certs:
        raise UsageError("--cert holds no certificate")
    issuing, extra = certs[0], [*certs[1:], *chain]
    name = _describe(issuing)
    if not same_public_key(key.public_key(), issuing.public_key()):
        raise UsageError(f"--key is not the key of {name}: their public keys differ")
    problem = ca_problem(issuing, signs_crls=True) or validity_problem(issuing, now)
    if problem is not None:
        raise UsageError(f"cannot import {name}: {problem}")
    warnings = weak_points(issuing, issuing=True)
    if _self_signed(issuing):
        strays = [c for c in extra if c != issuing]
        if strays:
            raise UsageError(f"{name} is a self-signed root, but --chain holds "
                             f"{_describe(strays[0])}; give the root alone")
        return ImportPlan(issuing, key, None, tuple(warnings))
    parents = [c for c in extra if c != issuing and _signed_by(issuing, c)]
    if not parents:
        raise UsageError(f"{name} is issued by {issuing.issuer.rfc4514_string()!r}, whose "
                         "certificate (verifying its signature) is not in --chain: "
                         "give the root with --chain FILE")
    root = parents[0]
    if not _self_signed(root):
        raise UsageError(f"{name} is issued by {_describe(root)}, which is not a self-signed "
                         "root: certgate keeps a root and one issuing CA; import the CA "
                         "below the root instead")
    strays = [c for c in extra if c not in (issuing, root)]
    if strays:
        raise UsageError(f"--chain holds {_describe(strays[0])}, which is not in "
                         f"{name}'s chain")
    problem = ca_problem(root, signs_crls=False) or validity_problem(root, now)
    if problem is not None:
        raise UsageError(f"cannot import {name}: its root {_describe(root)}: {problem}")
    warnings += weak_points(root, issuing=False)
    return ImportPlan(issuing, key, root, tuple(warnings))


def key_description(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa-{key.key_size}"
    return f"ecdsa-{key.curve.name}"


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def import_ca(layout: CALayout, plan: ImportPlan, *, name: str | None) -> None:
    """Record ``plan`` as the CA of an empty state directory."""
    from certgate.ca.lifecycle import record_authority

    label = name if name is not None else (_common_name(plan.issuing) or "imported CA")
    if not label.strip():
        raise UsageError("--name must not be empty")
    if layout.database.exists():
        from certgate.ca.store import Store

        store = Store(layout.database, read_only=True)
        try:
            exists = store.has_ca()
        finally:
            store.close()
        if exists:
            raise CAError(f"a CA already exists in {layout.state_dir}; ca import needs a "
                          "state directory without one (--state DIR)")
    layout.create_dirs()
    issuing = plan.issuing
    role = "root" if plan.self_signed else "intermediate"
    key_path = layout.ca_key(role, issuing.serial_number)
    with session(layout, create=True) as s:
        if s.store.has_ca():
            raise CAError(f"a CA already exists in {layout.state_dir}; refusing to overwrite it")
        outputs = [Output(key_path, key_to_pem(plan.key), 0o600)]

        def apply() -> None:
            settings = {
                "name": label,
                # New keys (ca rotate, issued leaves) are certgate's default
                # type, whatever the imported CA used.
                "key_type": DEFAULT_KEY_TYPE,
                "single_tier": str(int(plan.self_signed)),
                "imported": serial_hex(issuing.serial_number),
                "root_generation": "1",
                "intermediate_generation": "1",
                "derived_stale": "1",
            }
            for key, value in settings.items():
                s.store.put(key, value)
            if plan.root is not None:
                record_authority(s, plan.root, "root", key_file=None, issuer=False)
            record_authority(s, issuing, role, key_file=key_path.name, issuer=True)
            s.audit(
                "import",
                name=label,
                serial=issuing.serial_number,
                not_after=issuing.not_valid_after_utc,
                subject=issuing.subject.rfc4514_string(),
                key_type=key_description(plan.key),
                self_signed=plan.self_signed,
                root=None if plan.root is None else serial_hex(plan.root.serial_number),
                warnings=list(plan.warnings),
            )

        s.commit("import", issuing.serial_number, outputs, apply)

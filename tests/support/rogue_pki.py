"""An independent test CA made with ``cryptography`` directly (:mod:`support.forge`),
not by certgate.

certgate's own CA refuses hostile names (control bytes, ``;URI=`` in a DNS
name, ...), so certificates that carry them have to come from a CA certgate
did not write: here, a self-signed P-256 root that a test lists in
``client_auth.trusted_cas``, and leaves with whatever subject and SANs the
test wants, byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.forge import Issued, make_ca, make_leaf, write_client
from support.forge import name as forge_name

_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Leaf:
    cert: Path  # the leaf alone (the root is in trusted_cas)
    key: Path
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class RogueCA:
    """A root CA trusted only because a test's config says so."""

    directory: Path
    cert_path: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, directory: Path, name: str = "Independent Test CA") -> RogueCA:
        directory.mkdir(parents=True, exist_ok=True)
        ca = make_ca(forge_name(name))
        path = directory / "rogue-root.pem"
        path.write_bytes(ca.pem)
        return cls(directory, path, ca.cert, ca.key)

    def leaf(self, stem: str, subject: x509.Name | str,
             sans: Sequence[x509.GeneralName] = ()) -> Leaf:
        """A client leaf with exactly ``subject`` (a CN if a str) and ``sans``."""
        if isinstance(subject, str):
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        leaf = make_leaf(Issued(self.certificate, self.key), subject, sans=list(sans) or None)
        cert_path, key_path = write_client(self.directory, stem, leaf)
        return Leaf(cert_path, key_path, leaf.cert)

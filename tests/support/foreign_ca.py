"""A CA made with ``cryptography`` alone (:mod:`support.forge`), independent of
certgate's own CA code.

Revocation tests need a second trusted issuer whose CRLs are as valid as the
built-in CA's, to try substituting one for the other; building it here with
nothing but ``cryptography`` keeps certgate's CA code out of what is tested.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.forge import Issued, make_ca, make_leaf, write_client
from support.forge import name as forge_name


@dataclass(frozen=True)
class ForeignClient:
    name: str
    cert: Path
    key: Path
    serial: int


@dataclass
class ForeignCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    path: Path  # the CA certificate, PEM: what goes into client_auth.trusted_cas
    directory: Path

    def issue(self, name: str) -> ForeignClient:
        """A client certificate (clientAuth, a week) and its key, written to files."""
        usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        leaf = make_leaf(Issued(self.cert, self.key), forge_name(name), extra=[(usage, True)])
        cert_path, key_path = write_client(self.directory, name, leaf)
        return ForeignClient(name, cert_path, key_path, leaf.cert.serial_number)

    def crl(self, revoked: Iterable[int], *, number: int = 1,
            last_update: dt.datetime | None = None,
            next_update: dt.datetime | None = None) -> bytes:
        """A PEM CRL signed by this CA (default: issued a minute ago, next update in a day)."""
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(last_update or now - dt.timedelta(minutes=1))
            .next_update(next_update or now + dt.timedelta(days=1))
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(now - dt.timedelta(minutes=2)).build())
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_foreign_ca(directory: Path, name: str = "Foreign Test CA") -> ForeignCA:
    """A self-signed P-256 CA (pathLen 0) in ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(forge_name(name, (NameOID.ORGANIZATION_NAME, "Elsewhere")), path_length=0)
    path = directory / "ca.crt"
    path.write_bytes(ca.pem)
    return ForeignCA(ca.cert, ca.key, path, directory)

"""Per-connection certificate checks that run for resumed sessions too."""

from __future__ import annotations

from datetime import timedelta

from certgate.runtime import validity_problem
from certgate.tls.identity import identity_from_der


def test_validity_is_rechecked(pki):
    der = pki["alice"].cert.read_bytes()
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    leaf = x509.load_pem_x509_certificates(der)[0]
    identity = identity_from_der(leaf.public_bytes(Encoding.DER))
    assert validity_problem(identity) is None
    assert validity_problem(identity, identity.not_after + timedelta(seconds=1)) == \
        "client certificate expired"
    assert validity_problem(identity, identity.not_before - timedelta(seconds=1)) == \
        "client certificate not yet valid"

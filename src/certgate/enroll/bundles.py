"""What a device downloads: a PKCS#12 file or an Apple configuration profile.

Both are built in memory from a freshly issued certificate and its key; the
key is never written anywhere (see :mod:`certgate.ca.enrollments`).

The profile (``.mobileconfig``) carries the identity as a
``com.apple.security.pkcs12`` payload *without* its password, so iOS asks
for the password shown on the page while installing (a profile holding its
own password would be a key in the clear), and, when the server's
certificate comes from the built-in CA, the root as a
``com.apple.security.root`` payload, which then has to be switched on under
Settings > General > About > Certificate Trust Settings. PayloadUUIDs are
new for every download; the PayloadIdentifier is derived from the CA and
the certificate name, so a re-enrolled device replaces its profile instead
of collecting a second one.
"""

from __future__ import annotations

import hashlib
import plistlib
import re
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from certgate.ca import p12
from certgate.ca.issuance import IssuedCertificate
from certgate.ca.keys import PrivateKey
from certgate.errors import CAError


def p12_bundle(issued: IssuedCertificate, password: str) -> bytes:
    """The phone profile of :mod:`certgate.ca.p12` (3DES bags, SHA-1 MAC),
    with the CA chain."""
    key = load_pem_private_key(issued.key_pem, password=None)
    if not isinstance(key, PrivateKey):  # cannot happen: the CA made it
        raise CAError("unexpected private key type")
    return p12.build_p12(issued.name, key, x509.load_pem_x509_certificate(issued.cert_pem),
                         issued.ca_certs, password, profile="legacy")


def root_fingerprint(root: x509.Certificate) -> str:
    """SHA-256 of the root, lowercase hex: what ``?fp=`` in a link carries."""
    return root.fingerprint(hashes.SHA256()).hex()


def profile_identifier(root: x509.Certificate, name: str) -> str:
    """Stable per CA and device name: reverse-DNS style, ASCII only."""
    ca_tag = hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9-]", "-", name)
    return f"org.certgate.{ca_tag}.{safe}"


def _payload(kind: str, identifier: str, display: str, content: bytes,
             **extra: object) -> dict[str, object]:
    return {
        "PayloadType": kind,
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": display,
        "PayloadContent": content,
        **extra,
    }


def root_payload(root: x509.Certificate, identifier: str) -> dict[str, object]:
    return _payload("com.apple.security.root", f"{identifier}.root",
                    "certgate root CA", root.public_bytes(serialization.Encoding.DER),
                    PayloadCertificateFileName="certgate-root-ca.cer")


def mobileconfig(name: str, p12_data: bytes | None, root: x509.Certificate | None,
                 identifier_root: x509.Certificate) -> bytes:
    """A configuration profile with the identity (``p12_data``) and/or the root."""
    identifier = profile_identifier(identifier_root, name)
    content: list[dict[str, object]] = []
    if root is not None:
        content.append(root_payload(root, identifier))
    if p12_data is not None:
        content.append(_payload("com.apple.security.pkcs12", f"{identifier}.identity",
                                f"certgate: {name}", p12_data,
                                PayloadCertificateFileName=f"{name}.p12"))
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier if p12_data is not None else f"{identifier}.ca",
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": f"certgate: {name}" if p12_data is not None
        else "certgate root CA",
        "PayloadDescription": "A client certificate (and the CA it comes from) made by certgate.",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": content,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)

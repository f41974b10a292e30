"""certgate's built-in private CA.

A small two-tier CA (root, issuing intermediate) whose whole state lives in
``STATE/ca/`` (layout: :mod:`certgate.ca.layout`). Module map, one job each:

========== ==============================================================
layout     directory layout and file-name rules
store      SQLite inventory (source of truth)
journal    all-or-nothing publication of files around a commit
session    lock + recovery + commit + derived files for one operation
profiles   what the certificates look like (pure x509 building)
keys       key types, key files, serial numbers
issuance   client, CSR, server and renewal issuance
lifecycle  init and rotation of CA certificates
crl        CRL building
p12        PKCS#12 profiles for phones
audit      the hash-chained audit log
authority  ``CertificateAuthority``, the facade for the CLI and the proxy
commands   the ``certgate ca`` verbs
========== ==============================================================
"""

from certgate.ca.authority import CertificateAuthority, Inventory
from certgate.ca.issuance import Delivery, IssuedCertificate
from certgate.ca.layout import CALayout

__all__ = ["CALayout", "CertificateAuthority", "Delivery", "Inventory", "IssuedCertificate"]

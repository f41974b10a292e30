"""The roles a client certificate holds: built-in inventory plus config role rules.

Theory of operation
-------------------
Two sources, unioned:

1. **The built-in CA's inventory** (``ca issue --role``, ``ca role add``):
   serial -> roles, for certificates the built-in CA issued. The proxy polls
   it (:mod:`certgate.watch`) and installs a snapshot; ``certgate explain``
   reads the same table through a read-only connection. A serial is only
   unique per issuer, so inventory roles apply only to a certificate whose
   issuer is one of the built-in CA's certificates, recognised by issuer DN
   *and* authorityKeyIdentifier: another trusted CA that happens to share
   the DN (two installs both called "certgate CA") has a different key, and
   a leaf without an AKI gets no inventory roles at all (fail closed).
2. **Config role rules** (``client_auth.roles``) for certificates from any
   trusted CA (step-ca, Vault, an old openssl CA, and the built-in one too):
   every matcher of a rule must match for its roles to apply.

:func:`resolve` is the one function that combines them; the runtime and
``explain`` both call it. Roles come out in a stable order (inventory first,
then rules in config order, duplicates dropped), which is the order of
X-Client-Roles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from certgate.config.schema import RoleRule
from certgate.tls.identity import ClientIdentity

__all__ = ["BuiltinIssuers", "read_inventory_roles", "resolve", "rule_roles"]


@dataclass(frozen=True, slots=True)
class BuiltinIssuers:
    """The (subject DN, subjectKeyIdentifier) of every built-in CA certificate."""

    keys: frozenset[tuple[str, bytes]] = frozenset()

    @classmethod
    def from_pem(cls, pem: bytes) -> BuiltinIssuers:
        """From the built-in CA's trust bundle (``STATE/ca/bundle.pem``)."""
        found: set[tuple[str, bytes]] = set()
        for cert in x509.load_pem_x509_certificates(pem):
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
                digest = ski.digest
            except x509.ExtensionNotFound:
                digest = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
            found.add((cert.subject.rfc4514_string(), digest))
        return cls(frozenset(found))

    def issued(self, identity: ClientIdentity) -> bool:
        """Whether ``identity`` names a built-in CA certificate as its issuer."""
        key_id = identity.issuer_key_id
        return key_id is not None and (identity.issuer_dn, key_id) in self.keys


def rule_roles(rules: Iterable[RoleRule], identity: ClientIdentity) -> tuple[str, ...]:
    """Roles the config's role rules give ``identity``, in config order."""
    out: list[str] = []
    for rule in rules:
        if all(m.matches(identity) for m in rule.match):
            out += [role for role in rule.roles if role not in out]
    return tuple(out)


def resolve(
    identity: ClientIdentity,
    builtin: BuiltinIssuers,
    inventory: Mapping[int, tuple[str, ...]],
    rules: Iterable[RoleRule],
) -> tuple[str, ...]:
    """Every role ``identity`` holds: inventory roles (built-in certificates only)
    followed by config rule roles, without duplicates."""
    out = list(inventory.get(identity.serial, ())) if builtin.issued(identity) else []
    out += [role for role in rule_roles(rules, identity) if role not in out]
    return tuple(out)


def read_inventory_roles(database: Path) -> dict[int, tuple[str, ...]]:
    """serial -> roles of every valid built-in certificate, read without writing.

    The query the proxy's poll runs (``Store.valid_roles``), on a read-only
    connection: SQLite may create its ``-wal``/``-shm`` side files as any
    reader does, but the inventory itself cannot change, so
    ``certgate explain`` is safe to run next to a live CA.

    Raises:
        CAError: there is no inventory at ``database``.
        sqlite3.Error: it cannot be opened or read.
    """
    from certgate.ca.store import Store
    from certgate.ca.timeutil import utcnow

    store = Store(database, read_only=True)
    try:
        return store.valid_roles(utcnow())
    finally:
        store.close()

"""The roles a client certificate holds: built-in inventory plus config role rules.

Theory of operation
-------------------
Two sources, unioned:

1. **The built-in CA's inventory** (``ca issue --role``, ``ca role add``):
   certificate fingerprint -> roles, for certificates the built-in CA issued
   or adopted. The proxy polls it (:mod:`certgate.watch`) and installs a
   snapshot; ``certgate explain`` reads the same table through a read-only
   connection. Inventory roles apply only to a certificate whose signature
   verifies under one of the built-in CA's certificates
   (:mod:`certgate.tls.issuers`), and only to the very certificate recorded
   (SHA-256 of its DER): a serial is only unique per issuer, and an adopted
   accidental CA may have given one serial to two devices. Issuer DN and authorityKeyIdentifier are
   not enough: another trusted CA can write both, and an attack did exactly
   that (an intermediate with the built-in CA's subject and SKI, a leaf with
   a copied serial) to get inventory roles.
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
from pathlib import Path

from certgate.config.schema import RoleRule
from certgate.tls.identity import ClientIdentity

__all__ = ["builtin_issued", "read_inventory_roles", "resolve", "rule_roles"]


def rule_roles(rules: Iterable[RoleRule], identity: ClientIdentity) -> tuple[str, ...]:
    """Roles the config's role rules give ``identity``, in config order."""
    out: list[str] = []
    for rule in rules:
        if all(m.matches(identity) for m in rule.match):
            out += [role for role in rule.roles if role not in out]
    return tuple(out)


def builtin_issued(identity: ClientIdentity) -> bool:
    """Whether the built-in CA's key signed ``identity`` (checked by signature)."""
    return identity.issuer is not None and identity.issuer.builtin


def resolve(
    identity: ClientIdentity,
    inventory: Mapping[str, tuple[str, ...]],
    rules: Iterable[RoleRule],
) -> tuple[str, ...]:
    """Every role ``identity`` holds: inventory roles (built-in certificates only)
    followed by config rule roles, without duplicates."""
    out = list(inventory.get(identity.fingerprint, ())) if builtin_issued(identity) else []
    out += [role for role in rule_roles(rules, identity) if role not in out]
    return tuple(out)


def read_inventory_roles(database: Path) -> dict[str, tuple[str, ...]]:
    """fingerprint -> roles of every valid built-in certificate, read without writing.

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

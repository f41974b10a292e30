"""Who may reach a route or path: allow/deny matchers over a verified identity.

Matchers are strings from the config: ``any``, ``role:NAME``, ``cn:VALUE``,
``san:VALUE`` (as shown in X-Client-SAN, e.g. ``san:URI:spiffe://x/y``; a
bare value matches any SAN type), ``fingerprint:HEX``, ``serial:HEX``,
``o:``, ``ou:``, ``issuer:`` (RFC 4514 DN). Deny wins over allow. An allow
list that matches nothing denies: a role nobody holds locks the path rather
than opening it (fail closed).

Rule choice inside a route: among the path rules whose pattern and method
list match, the most specific pattern wins (most literal characters before
the first wildcard, then longest), then the first in config order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from certgate.config.schema import ClientAuth, PathRule, Route
from certgate.tls.identity import ClientIdentity


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    client_auth: ClientAuth
    rule: str  # which rule decided, for logs and 403 reasons
    reason: str = ""


def _specificity(pattern: str) -> tuple[int, int]:
    cut = min((i for i in (pattern.find("*"), pattern.find("?"), pattern.find("[")) if i >= 0),
              default=len(pattern))
    return (cut, len(pattern))


def pick_rule(route: Route, path: str, method: str) -> PathRule | None:
    """The path rule that governs ``method path`` on ``route``, if any."""
    best: PathRule | None = None
    best_key = (-1, -1)
    for rule in route.rules:
        if rule.methods is not None and method not in rule.methods:
            continue
        if not _path_matches(rule.path, path):
            continue
        key = _specificity(rule.path)
        if key > best_key:
            best, best_key = rule, key
    return best


def _path_matches(pattern: str, path: str) -> bool:
    # "/admin/*" also covers "/admin" itself: the directory and its contents
    # are one resource tree to a user writing the rule.
    if pattern.endswith("/*") and path == pattern[:-2]:
        return True
    return fnmatch.fnmatchcase(path, pattern)


def _is_hex(value: str) -> bool:
    digits = value.replace(":", "")
    return bool(digits) and all(c in "0123456789abcdefABCDEF" for c in digits)


def _identity_matches(matcher: str, identity: ClientIdentity | None, roles: Iterable[str]) -> bool:
    if matcher == "any":
        return identity is not None
    if identity is None:
        return False
    kind, _, value = matcher.partition(":")
    if kind == "role":
        return value in roles
    if kind == "cn":
        return identity.cn == value
    if kind == "san":
        return any(san == value or san.partition(":")[2] == value for san in identity.sans)
    if kind == "fingerprint":
        return identity.fingerprint == value.lower().replace(":", "")
    if kind == "serial":
        return identity.serial == int(value.replace(":", ""), 16) if _is_hex(value) else False
    if kind == "issuer":
        return identity.issuer_dn == value
    if kind in {"o", "ou"}:
        prefix = "O=" if kind == "o" else "OU="
        return any(part == prefix + value for part in identity.dn.split(","))
    return False


def decide(
    route: Route,
    path: str,
    method: str,
    identity: ClientIdentity | None,
    roles: Iterable[str] = (),
) -> Decision:
    """Judge one request against a route's rules; never raises."""
    rule = pick_rule(route, path, method)
    mode = rule.client_auth if rule is not None and rule.client_auth is not None \
        else route.client_auth
    label = f"rule {rule.path}" if rule is not None else f"route {route.name}"
    if mode is ClientAuth.OFF and rule is not None and rule.allow is None and not rule.deny:
        return Decision(True, mode, label)
    if identity is None and mode is ClientAuth.REQUIRE:
        return Decision(False, mode, label, "client certificate required")
    role_set = frozenset(roles)
    deny = rule.deny if rule is not None and rule.deny else route.deny
    allow = rule.allow if rule is not None and rule.allow is not None else route.allow
    for matcher in deny:
        if _identity_matches(matcher, identity, role_set):
            return Decision(False, mode, label, f"denied by {matcher} ({label})")
    if identity is None:
        # optional/off without a certificate: anonymous access is what the
        # route asked for, unless it lists who is allowed in.
        if mode is not ClientAuth.REQUIRE and allow in (("any",), ()):
            return Decision(True, mode, label)
        return Decision(False, mode, label, f"client certificate required ({label})")
    if any(_identity_matches(matcher, identity, role_set) for matcher in allow):
        return Decision(True, mode, label)
    return Decision(False, mode, label, f"not allowed on this path ({label})")

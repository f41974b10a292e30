"""Who may reach a route or path: allow/deny matchers over a verified identity.

Theory of operation
-------------------
:func:`decide` is pure: it takes the route, the *normalised* path (from
:func:`certgate.http.target.parse_target`, the same string the upstream
receives), the method, the identity and its roles, and returns a
:class:`Decision`. The proxy's admission and ``certgate explain`` both call
it, so what ``explain`` says is what the proxy does.

Which rule governs a request. Among the route's path rules whose pattern
matches the path and whose method list (if any) holds the method, the most
specific pattern wins: the one with the most literal characters before its
first wildcard, then the longer pattern, then the first in config order.
No rule matching means the route's own settings apply. Method lists are
compared case-insensitively, so ``get /admin`` is governed by a ``GET`` rule
(some frameworks upper-case the method, and a rule must not be sidestepped by
spelling). A rule with a method list governs only those methods; any other
method on the same path falls to the next matching rule or the route.

Patterns are globs over the normalised path, case-sensitive: ``*`` matches
anything including ``/``, and ``/admin/*`` also covers ``/admin`` itself.

Path parameters. ``/admin;x`` is a different path from ``/admin`` to most
servers, but Java servlet containers strip ``;params`` from each segment
before routing, so there it *is* ``/admin``. A path with ``;`` is therefore
judged twice, as sent and with its parameters removed, and must pass both;
parameters can never loosen a rule.

How a rule decides, in order:

1. ``client_auth: off`` (from the rule, else the route): allowed, with or
   without a certificate (the loader refuses allow/deny next to ``off``).
2. ``require`` and no certificate: denied, "client certificate required".
3. deny: the route's ``deny`` plus the rule's ``deny``; any match denies.
   Deny wins over allow.
4. allow: the rule's ``allow`` if it has one, else the route's. With a
   certificate, one matching entry allows. Without one (``optional``), only
   the default ``[any]`` lets an anonymous client in: an explicit list names
   who may pass, and an anonymous client is nobody. An allow list that
   matches nothing denies, so a role nobody holds locks the path rather than
   opening it (fail closed).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from certgate.config.schema import ClientAuth, PathRule, Route
from certgate.matchers import ANY, Matcher
from certgate.tls.identity import ClientIdentity

__all__ = ["Decision", "decide", "describe_identity", "other_readings", "pick_rule",
           "strip_parameters"]

# Decision codes: a small fixed set, for logs, ``explain`` and metric labels.
CERTIFICATE_REQUIRED = "certificate required"
DENIED = "denied"
NOT_ALLOWED = "not allowed"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :func:`decide`.

    ``rule`` names what decided (``route HOST/PREFIX`` or ``route HOST/PREFIX,
    rule PATTERN``); ``reason`` is the one-line 403 text (empty when
    allowed) and names the rule and the identity; ``code`` is one of the
    module's decision codes (empty when allowed); ``matcher`` is the deny or
    allow entry that decided, when one did.
    """

    allowed: bool
    client_auth: ClientAuth
    rule: str
    reason: str = ""
    code: str = ""
    matcher: Matcher | None = None
    path_rule: PathRule | None = None


def _specificity(pattern: str) -> tuple[int, int]:
    cut = min((i for i in (pattern.find("*"), pattern.find("?"), pattern.find("[")) if i >= 0),
              default=len(pattern))
    return (cut, len(pattern))


def pick_rule(route: Route, path: str, method: str, *, fold: bool = False) -> PathRule | None:
    """The path rule that governs ``method path`` on ``route``, if any.

    ``fold``: compare without regard to letter case, as an upstream that
    routes case-insensitively (Express and so NestJS/Immich by default,
    ASP.NET, IIS) reads the path.
    """
    best: PathRule | None = None
    best_key = (-1, -1)
    method = method.upper()
    for rule in route.rules:
        if rule.methods is not None and method not in rule.methods:
            continue
        if not _path_matches(rule.path.lower() if fold else rule.path,
                             path.lower() if fold else path):
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


# Where a segment's parameters begin: ";" or its escape, since a framework
# that percent-decodes the path before stripping parameters reads "%3B" as
# ";" (the path normaliser treats it so for dot segments too).
_PARAMS = re.compile(r";|%3B", re.IGNORECASE)


def strip_parameters(path: str) -> str:
    """``path`` as a servlet container routes it: ``;params`` (or ``%3Bparams``)
    removed from every segment, then the empty segments that leaves merged.

    Tomcat and Spring merge ``//`` after stripping, so ``/;x/admin`` is their
    ``/admin``; leaving it ``//admin`` would let it match no ``/admin`` route
    or rule here.
    """
    if ";" not in path and "%3" not in path:
        return path
    segments = [_PARAMS.split(segment, 1)[0] for segment in path.split("/")[1:]]
    kept = [segment for segment in segments if segment]
    trailing = bool(segments) and segments[-1] == "" and bool(kept)
    return "/" + "/".join(kept) + ("/" if trailing else "")


def _safe(text: str, limit: int = 64) -> str:
    # Identity fields are raw certificate text; a 403 body and a log line
    # must stay one line whatever a CN contains.
    out = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text[:limit])
    return out + ("..." if len(text) > limit else "")


def describe_identity(identity: ClientIdentity | None, roles: Iterable[str] = ()) -> str:
    """``CN=alice serial 1f2e roles ops,family``, one line; for 403 reasons and explain."""
    if identity is None:
        return "no client certificate"
    role_list = ",".join(roles) or "none"
    return f"CN={_safe(identity.cn)} serial {identity.serial_hex} roles {_safe(role_list)}"


def decide(
    route: Route,
    path: str,
    method: str,
    identity: ClientIdentity | None,
    roles: Iterable[str] = (),
) -> Decision:
    """Judge one request against a route's rules; never raises.

    Args:
        route: the route chosen for the request's host and path.
        path: the normalised path (no query).
        method: the request method as sent.
        identity: the verified client identity, or None without a certificate.
        roles: every role the identity holds (see :mod:`certgate.roles`).
    """
    role_set = frozenset(roles)
    decision = _decide_one(route, path, method, identity, role_set)
    if decision.allowed:
        for reading, fold in other_readings(path, route):
            other = _decide_one(route, reading, method, identity, role_set, fold=fold)
            if not other.allowed:
                return other
    return decision


def other_readings(path: str, route: Route | None = None) -> list[tuple[str, bool]]:
    """How else an upstream may read ``path``: (path, case-folded) pairs.

    A servlet container strips ``;params`` (:func:`strip_parameters`); a
    case-insensitive router (Express, ASP.NET, IIS) ignores letter case, so
    ``/ADMIN`` is its ``/admin``. A request must pass the policy under every
    reading, so no spelling moves it onto a laxer rule. The folded reading is
    only needed when the path or one of ``route``'s rule patterns has an
    upper-case letter.
    """
    out: list[tuple[str, bool]] = []
    stripped = strip_parameters(path)
    if stripped != path:
        out.append((stripped, False))
    upper = path != path.lower() or (route is not None and any(
        rule.path != rule.path.lower() for rule in route.rules))
    if upper:
        out.append((stripped, True))
    return out


def _decide_one(route: Route, path: str, method: str, identity: ClientIdentity | None,
                roles: Collection[str], *, fold: bool = False) -> Decision:
    rule = pick_rule(route, path, method, fold=fold)
    mode = rule.client_auth if rule is not None and rule.client_auth is not None \
        else route.client_auth
    label = f"route {route.name}" + (f", rule {rule.path}" if rule is not None else "")

    def refuse(code: str, what: str, matcher: Matcher | None = None) -> Decision:
        reason = f"{what} ({label}); client: {describe_identity(identity, sorted(roles))}"
        return Decision(False, mode, label, reason, code, matcher, rule)

    if mode is ClientAuth.OFF:
        return Decision(True, mode, label, path_rule=rule)
    if identity is None and mode is ClientAuth.REQUIRE:
        return refuse(CERTIFICATE_REQUIRED, "client certificate required")
    deny = route.deny + (rule.deny if rule is not None else ())
    allow = rule.allow if rule is not None and rule.allow is not None else route.allow
    for matcher in deny:
        if matcher.matches(identity, roles):
            return refuse(DENIED, "denied by a deny rule", matcher)
    if identity is None:
        # optional without a certificate: anonymous access is what the route
        # asked for, unless it lists who is allowed in.
        if allow == (ANY,):
            return Decision(True, mode, label, path_rule=rule)
        return refuse(CERTIFICATE_REQUIRED, "client certificate required")
    for matcher in allow:
        if matcher.matches(identity, roles):
            return Decision(True, mode, label, matcher=matcher, path_rule=rule)
    return refuse(NOT_ALLOWED, "not allowed on this path")

"""``certgate ca enroll``: make, list and cancel enrollment links (printing only).

The URL and the PIN are printed here and nowhere else: the database keeps
hashes, the proxy never logs them. The URL's host comes from ``--url-base``
or from the config's route with ``upstream: enroll`` (``-c FILE``, else
``./certgate.yaml``, else the embedded default that ``certgate run`` uses).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from certgate.ca import enrollments
from certgate.ca.authority import CertificateAuthority
from certgate.ca.profiles import CLIENT_LIFETIME
from certgate.ca.timeutil import lifetime, parse_duration, rfc3339
from certgate.config.schema import Config
from certgate.enroll.bundles import root_fingerprint
from certgate.enroll.paths import enroll_url
from certgate.errors import UsageError

Verb = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def add_enroll_verb(verb: Verb, lifetime_args: Callable[[argparse.ArgumentParser, str], None],
                    open_ca: Callable[[argparse.Namespace], CertificateAuthority]) -> None:
    """Register ``ca enroll`` with the ``ca`` verb factory of ca/commands.py."""

    def handler(args: argparse.Namespace) -> int:
        return cmd_enroll(args, open_ca)

    p = verb("enroll", handler, "a one-time link + PIN that puts a certificate on a device")
    p.add_argument("name", metavar="NAME", nargs="?", help="certificate name for the device")
    p.add_argument("--role", action="append", default=[], metavar="R", help="repeatable")
    lifetime_args(p, "default 365")
    p.add_argument("--ttl", metavar="DUR", default="15m",
                   help="how long the link stays usable (default 15m)")
    p.add_argument("--url-base", metavar="https://HOST[:PORT][/PREFIX]",
                   help="where devices reach certgate (default: the config's enroll route)")
    p.add_argument("--json", action="store_true", help="print {url, pin, expires} as JSON")
    p.add_argument("--list", action="store_true", help="list enrollments")
    p.add_argument("--cancel", metavar="ID|NAME", help="cancel a pending enrollment")


def cmd_enroll(args: argparse.Namespace,
               open_ca: Callable[[argparse.Namespace], CertificateAuthority]) -> int:
    if args.list:
        return _list(open_ca(args), args.json)
    if args.cancel:
        for e in enrollments.cancel(open_ca(args), args.cancel):
            print(f"cancelled enrollment {e.id} for {e.name}")
        return 0
    if not args.name:
        raise UsageError("ca enroll needs NAME (or --list, --cancel ID|NAME)")
    base = _url_base(args)
    ca = open_ca(args)
    new = enrollments.create(
        ca, args.name, roles=args.role,
        lifetime=lifetime(args.days, args.hours, CLIENT_LIFETIME),
        ttl=parse_duration(args.ttl))
    root = x509.load_pem_x509_certificate(ca.root_cert_path.read_bytes())
    url = enroll_url(base, "", new.token, root_fingerprint(root))
    e = new.enrollment
    if args.json:
        json.dump({"url": url, "pin": new.pin, "expires": rfc3339(e.expires), "id": e.id,
                   "name": e.name}, sys.stdout)
        print()
        return 0
    print(f"enrollment {e.id} for {e.name} (roles: {', '.join(e.roles) or '-'}), "
          f"usable once until {rfc3339(e.expires)}")
    print(f"open on the device: {url}")
    sys.stdout.write(terminal_qr(url))
    print(f"PIN (type it on the device; shown only here): {new.pin}")
    return 0


def terminal_qr(text: str) -> str:
    """``text`` as a QR code in block characters (two modules per line)."""
    import segno

    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def _list(ca: CertificateAuthority, as_json: bool) -> int:
    found = enrollments.listing(ca)
    rows: list[dict[str, object]] = [
        {"id": e.id, "name": e.name, "roles": list(e.roles), "state": e.state,
             "created": rfc3339(e.created), "expires": rfc3339(e.expires),
             "attempts": e.attempts, "method": e.method,
             "serial": format(e.serial, "x") if e.serial is not None else None}
            for e in found]
    if as_json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    header = ("ID", "NAME", "ROLES", "STATE", "CREATED", "EXPIRES")
    table = [header] + [(e.id, e.name, ",".join(e.roles) or "-", e.state, rfc3339(e.created),
                         rfc3339(e.expires)) for e in found]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0


def _url_base(args: argparse.Namespace) -> str:
    if args.url_base:
        parts = urlsplit(args.url_base)
        if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
            raise UsageError(f"--url-base {args.url_base!r}: expected https://HOST[:PORT][/PREFIX]")
        return str(args.url_base).rstrip("/")
    return url_base_from_config(_config(args))


def _config(args: argparse.Namespace) -> Config:
    from certgate.config.loader import load_config
    from certgate.defaults import DEFAULT_CONFIG_FILE, embedded_default

    if args.config is not None:
        return load_config(Path(args.config))
    if Path(DEFAULT_CONFIG_FILE).is_file():
        return load_config(Path(DEFAULT_CONFIG_FILE))
    return embedded_default()


def url_base_from_config(config: Config) -> str:
    """``https://HOST[:PORT]/PREFIX`` of the first ``upstream: enroll`` route."""
    routes = config.enroll_routes
    if not routes:
        raise UsageError(f"{config.source} has no route with 'upstream: enroll'; add one "
                         "(see config/certgate.example.yaml) or give --url-base")
    route = routes[0]
    if route.host == "*" or route.host.startswith("*."):
        raise UsageError(f"the enroll route's host {route.host!r} is a pattern: give "
                         "--url-base https://NAME")
    port = config.listen[0].port
    authority = route.host if port == 443 else f"{route.host}:{port}"
    return f"https://{authority}{route.path.rstrip('/')}"

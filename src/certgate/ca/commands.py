"""The ``certgate ca ...`` verbs: argument parsing and printing, no logic.

Each leaf parser sets ``handler``; the top-level CLI calls
``args.handler(args)`` and maps :class:`~certgate.errors.CertgateError` to
``certgate: <message>`` and its exit code. Handlers only translate
arguments, call :class:`CertificateAuthority`, and print results.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from certgate.ca import p12
from certgate.ca.authority import CertificateAuthority
from certgate.ca.crl import REASONS
from certgate.ca.issuance import Delivery, IssuedCertificate
from certgate.ca.keys import DEFAULT_KEY_TYPE, KEY_TYPES, serial_hex
from certgate.ca.layout import DEFAULT_STATE_DIR
from certgate.ca.naming import default_ca_name
from certgate.ca.timeutil import parse_duration, rfc3339
from certgate.errors import CAError, UsageError

Handler = Callable[[argparse.Namespace], int]
SubParsers = argparse._SubParsersAction  # argparse has no public name for it


def state_dir(args: argparse.Namespace) -> Path:
    """``--state``, or the state directory named by ``-c/--config``.

    Neither given: the state directory of ``$CERTGATE_CONFIG`` when that
    file exists (in the container image, the mounted config, so that ``ca``
    verbs and ``run`` agree), else ``$CERTGATE_STATE_DIR``, else
    ``./certgate-data``.
    """
    from certgate.defaults import ENV_CONFIG, default_state_dir, existing_config_file

    config_file = args.config
    if config_file is None and args.state is None and os.environ.get(ENV_CONFIG):
        config_file = existing_config_file()
    if config_file is not None:
        config = importlib.import_module("certgate.config.loader")
        from_config = cast(Callable[[Path], Path], config.state_dir_from_config)
        return Path(from_config(Path(config_file)))
    if args.state is not None:
        return Path(args.state)
    return default_state_dir()


def _ca(args: argparse.Namespace) -> CertificateAuthority:
    state = state_dir(args)
    if not CertificateAuthority.exists(state):
        raise CAError(no_ca_message(state.absolute(), _state_origin(args)))
    return CertificateAuthority.open(state)


def _state_origin(args: argparse.Namespace) -> str:
    from certgate.defaults import ENV_CONFIG, ENV_STATE_DIR

    if args.config is not None:
        return f"state_dir in {args.config}"
    if args.state is not None:
        return "--state"
    if os.environ.get(ENV_CONFIG):
        return f"${ENV_CONFIG} or ${ENV_STATE_DIR}"
    if os.environ.get(ENV_STATE_DIR):
        return f"${ENV_STATE_DIR}"
    return f"the default, ./{DEFAULT_STATE_DIR}"


def no_ca_message(state: Path, origin: str) -> str:
    """Where certgate looked and how to point it elsewhere, before ``ca init``.

    Someone running a verb from the wrong directory most likely has a CA
    elsewhere; suggesting ``ca init`` first would steer them into a second
    CA that none of their devices trust.
    """
    return (f"no CA in {state} (from {origin})\n"
            "  if you have one elsewhere, point at it with --state DIR or -c certgate.yaml "
            "(the config's state_dir)\n"
            f"  to create a new CA there instead: certgate ca init --state {state}")


def _lifetime_args(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--days", type=int, metavar="N", help=f"validity in days ({what})")
    group.add_argument(
        "--hours", type=int, metavar="N", help="validity in hours, for short-lived certificates"
    )


def _p12_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--p12",
        action="store_true",
        help="also write NAME.p12 (3DES/SHA-1 profile that Android 11-13 and iOS import)",
    )
    parser.add_argument(
        "--p12-password",
        metavar="P",
        help="password for NAME.p12 (implies --p12); default: a generated one, printed once",
    )
    parser.add_argument(
        "--p12-modern",
        action="store_true",
        help="AES-256/PBKDF2 with a SHA-256 MAC instead (implies --p12)",
    )


def _delivery(args: argparse.Namespace) -> tuple[Delivery, str | None]:
    """The Delivery for --out/--p12*, and the password to print if generated."""
    wants_p12 = args.p12 or args.p12_modern or args.p12_password is not None
    password: str | None = None
    generated = None
    if wants_p12:
        if args.p12_password is None:
            password = generated = p12.generate_password()
        else:
            p12.check_password(args.p12_password)
            password = args.p12_password
    out = output_dir(args.out or ".")
    profile = "modern" if args.p12_modern else "legacy"
    return Delivery(out, password, profile), generated


#: Directories ``output_dir`` made in this command; the CLI removes those
#: still empty when the command fails (a refused ``ca issue 'bad/name' --out
#: DIR`` left an empty DIR behind).
CREATED_DIRS: list[Path] = []


def remove_created_dirs() -> None:
    """Remove the directories ``output_dir`` made that are still empty."""
    while CREATED_DIRS:
        path = CREATED_DIRS.pop(0)
        try:
            path.rmdir()  # only if empty
        except OSError:
            CREATED_DIRS.clear()  # not empty: its parents are not either
            return


def output_dir(value: str | Path) -> Path:
    """``--out DIR``: made (0700, with missing parents) if it does not exist yet.

    The README's ``--out ./out`` works on a fresh machine; a directory that
    exists keeps its mode. Called only once the CA has been opened, so a verb
    that fails for want of a CA leaves nothing behind.
    """
    from certgate.fsutil import make_missing_dirs

    out = Path(value)
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        make_missing_dirs(out)
        CREATED_DIRS.extend(missing)  # deepest first
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the directory: "
                         f"{exc.strerror or exc}") from None
    if not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")
    return out


def _report(issued: IssuedCertificate, generated_password: str | None) -> None:
    print(f"issued {issued.kind} certificate {issued.name}, serial {serial_hex(issued.serial)}")
    print(f"  valid until {rfc3339(issued.not_after)}, roles: {', '.join(issued.roles) or '-'}")
    print(f"  subject {issued.subject}; SANs: {', '.join(issued.sans) or 'none'}")
    if issued.csr_subject is not None and issued.csr_subject != issued.subject:
        print(f"  not copied from the CSR: its subject {issued.csr_subject}")
    for path in issued.files:
        print(f"  wrote {path}")
    if generated_password is not None:
        # Shown once, here; never stored or logged anywhere.
        print(f"PKCS#12 password (shown only now): {generated_password}")


# -- handlers ---------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    next_update = parse_duration(args.next_update) if args.next_update else None
    ca = CertificateAuthority.init(
        state_dir(args),
        name=args.name if args.name is not None else default_ca_name(),
        key_type=args.key_type,
        offline_root=Path(args.offline_root) if args.offline_root else None,
        single_tier=args.single_tier,
        crl_url=args.crl_url,
        next_update=next_update,
    )
    print(f"created CA in {ca.layout.ca_dir}")
    print(f"  root certificate: {ca.root_cert_path}")
    print(f"  trust bundle:     {ca.trust_bundle_path}")
    if args.offline_root:
        print(f"  root key written to {args.offline_root}: move it off this host")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    ca = _ca(args)
    delivery, password = _delivery(args)
    issued = ca.issue_client(
        args.name,
        roles=args.role,
        days=args.days,
        hours=args.hours,
        email=args.email,
        uri=args.uri,
        dns=args.dns,
        key_type=args.key_type,
        delivery=delivery,
    )
    _report(issued, password)
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    try:
        data = Path(args.csr).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read CSR {args.csr}: {exc.strerror}") from None
    ca = _ca(args)
    issued = ca.sign_csr(
        data, name=args.name, roles=args.role, days=args.days, hours=args.hours,
        out_dir=output_dir(args.out), email=args.email, uri=args.uri, dns=args.dns,
    )
    _report(issued, None)
    return 0


def cmd_issue_server(args: argparse.Namespace) -> int:
    ca = _ca(args)
    issued = ca.issue_server(
        args.hosts,
        name=args.name,
        days=args.days,
        hours=args.hours,
        out_dir=output_dir(args.out) if args.out else None,
    )
    _report(issued, None)
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    ca = _ca(args)
    delivery, password = _delivery(args)
    issued = ca.renew(
        args.name,
        days=args.days,
        hours=args.hours,
        key_type=args.key_type,
        delivery=delivery,
        out_dir=output_dir(args.out) if args.out else None,
    )
    _report(issued, password if issued.kind == "client" else None)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from certgate.ca import listing
    from certgate.lastseen import read_seen

    if args.unknown and (args.stale or args.role or args.expiring):
        raise UsageError("--unknown lists certificates outside the inventory: it does not "
                         "combine with --stale, --role or --expiring")
    ca = _ca(args)
    inventory = ca.certificates()
    sightings = read_seen(ca.state_dir)
    if args.unknown:
        unknown = listing.unknown_rows(inventory.records, sightings)
        if args.json:
            json.dump(unknown, sys.stdout, indent=2)
            print()
        else:
            listing.print_unknown(unknown)
        return 0
    seen = listing.match_sightings(inventory.records, sightings)
    now = inventory.now
    horizon = now + parse_duration(args.expiring) if args.expiring else None
    if args.stale:
        devices = listing.stale_devices(inventory.records, seen, now,
                                        parse_duration(args.stale))
        pairs = [(device.current, device.seen) for device in devices]
    else:
        pairs = [(rec, seen.get(listing.fingerprint(rec))) for rec in inventory.records]
    rows: list[dict[str, Any]] = []
    for rec, sighting in pairs:
        status = rec.status(now)
        if args.role and args.role not in rec.roles:
            continue
        expiring = status in ("valid", "superseded") and (
            horizon is None or rec.not_after <= horizon
        )
        if horizon is not None and not expiring:
            continue
        rows.append(listing.certificate_row(rec, now, sighting))
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    listing.print_table(rows)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from certgate.ca import listing
    from certgate.lastseen import read_seen

    ca = _ca(args)
    inventory = ca.certificates()
    seen = listing.match_sightings(inventory.records, read_seen(ca.state_dir))
    history = [rec for rec in inventory.records if rec.name == args.name]
    rows = [listing.detail_row(rec, inventory.now, seen.get(listing.fingerprint(rec)))
            for rec in history]
    listing.print_show(args.name, rows, listing.device_of(history, seen), args.json)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    ca = _ca(args)
    if args.next_update:
        ca.set_next_update(parse_duration(args.next_update))
    for rec in ca.revoke(args.target, args.reason):
        print(f"revoked {rec.name} ({serial_hex(rec.serial)}): {args.reason}")
    print(f"CRL written to {ca.crl_path}")
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    ca = _ca(args)
    number = ca.write_crl(parse_duration(args.next_update) if args.next_update else None)
    print(f"CRL number {number} written to {ca.crl_path}")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    ca = _ca(args)
    result = ca.rotate(
        root=args.root,
        root_key=Path(args.root_key) if args.root_key else None,
        offline_root=Path(args.offline_root) if args.offline_root else None,
    )
    if result.root_serial is not None:
        print(f"new root {serial_hex(result.root_serial)}; cross certificate: {result.cross_cert}")
    if result.intermediate_serial is not None:
        print(f"new issuing intermediate {serial_hex(result.intermediate_serial)}")
    for path in result.offline_files:
        print(f"  wrote {path}: move it off this host")
    print(f"old CA certificates stay trusted until they expire; bundle: {ca.trust_bundle_path}")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    sys.stdout.write(_ca(args).bundle_pem().decode("ascii"))
    return 0


def cmd_role(args: argparse.Namespace) -> int:
    changed = _ca(args).change_role(args.name, args.role, add=args.role_action == "add")
    for rec in changed:
        print(f"{rec.name} ({serial_hex(rec.serial)}): roles {', '.join(rec.roles) or '-'}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    count = _ca(args).verify_audit()
    print(f"OK, {count} entries")
    return 0


# -- parser -----------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state",
        metavar="DIR",
        default=None,
        help="state directory (default: $CERTGATE_STATE_DIR, else ./certgate-data)",
    )
    common.add_argument("-c", "--config", metavar="FILE", help="take the state directory from FILE")
    return common


def add_subcommands(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``ca`` and its verbs to the top-level ``add_subparsers()`` object."""
    common = _common()
    ca = subparsers.add_parser("ca", help="the built-in private CA")
    verbs = ca.add_subparsers(dest="ca_command", metavar="VERB", required=True)

    def verb(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, parents=[common], help=help_text, description=help_text)
        parser.set_defaults(handler=handler)
        return parser

    p = verb("init", cmd_init, "create a root CA and an issuing intermediate")
    p.add_argument(
        "--name",
        help="CA name shown to users, e.g. in a phone's certificate picker (default: "
        "'certgate CA HOST TAG', the host name and a random tag, so two CAs differ)",
    )
    p.add_argument("--key-type", choices=list(KEY_TYPES), default=DEFAULT_KEY_TYPE)
    p.add_argument(
        "--offline-root", metavar="DIR",
        help="write the root key only to DIR, to be moved off this host",
    )
    p.add_argument(
        "--single-tier", action="store_true",
        help="let the root issue directly (Home Assistant iOS, home-assistant/iOS#4477)",
    )
    p.add_argument("--crl-url", metavar="URL", help="CRL distribution point put in certificates")
    p.add_argument("--next-update", metavar="DUR", help="CRL nextUpdate period (default 7d)")

    out_help = (
        "directory for the files (default: the current directory, not the state "
        "directory: move the key to its device and delete it here)"
    )
    p = verb("issue", cmd_issue, "issue a client certificate with a fresh key")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", action="append", default=[], metavar="R", help="repeatable")
    _lifetime_args(p, "default 365")
    p.add_argument("--email", action="append", default=[], metavar="E")
    p.add_argument("--uri", action="append", default=[], metavar="U")
    p.add_argument("--dns", action="append", default=[], metavar="D")
    p.add_argument("--key-type", choices=list(KEY_TYPES), default=DEFAULT_KEY_TYPE)
    _p12_args(p)
    p.add_argument("--out", metavar="DIR", default=".", help=out_help)

    p = verb("sign", cmd_sign, "sign a client CSR, so the key never leaves the device")
    p.add_argument("csr", metavar="CSR", help="PEM or DER file")
    p.add_argument(
        "--name",
        help="inventory name and the certificate's only subject, CN=NAME (default: the CSR's "
        "common name); nothing else of the CSR's subject is copied",
    )
    p.add_argument("--role", action="append", default=[], metavar="R")
    _lifetime_args(p, "default 365")
    san_help = "repeatable; the only SANs signed (a CSR SAN not named here refuses the CSR)"
    p.add_argument("--email", action="append", default=[], metavar="E", help=san_help)
    p.add_argument("--uri", action="append", default=[], metavar="U", help=san_help)
    p.add_argument("--dns", action="append", default=[], metavar="D", help=san_help)
    p.add_argument("--out", metavar="DIR", default=".", help="directory for NAME.crt")

    p = verb("issue-server", cmd_issue_server, "issue a server certificate")
    p.add_argument("hosts", nargs="+", metavar="HOST", help="DNS names, *.wildcards, IPs")
    p.add_argument("--name", help="inventory name (default: the first HOST)")
    _lifetime_args(p, "default 90")
    p.add_argument("--out", metavar="DIR", help="default: STATE/ca/servers/, for the proxy")

    p = verb("list", cmd_list, "show the inventory")
    p.add_argument("--json", action="store_true")
    p.add_argument("--expiring", metavar="DUR", help="only valid ones expiring within DUR")
    p.add_argument("--role", metavar="R", help="only certificates with role R")
    p.add_argument(
        "--stale", metavar="DUR",
        help="only devices (names) with a valid certificate not seen through the proxy "
        "for DUR, e.g. 30d; never-seen ones included",
    )
    p.add_argument(
        "--unknown", action="store_true",
        help="instead: certificates signed by the built-in CA that the proxy has seen "
        "but the inventory does not hold (to adopt), newest first",
    )

    p = verb("show", cmd_show, "every certificate of NAME, and when it was last seen")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")

    p = verb("revoke", cmd_revoke, "revoke by serial, or every valid certificate of NAME")
    p.add_argument("target", metavar="NAME|SERIAL")
    p.add_argument("--reason", choices=list(REASONS), default="unspecified")
    p.add_argument("--next-update", metavar="DUR", help="CRL nextUpdate period, remembered")

    p = verb("crl", cmd_crl, "re-sign the CRL (for a daily timer)")
    p.add_argument("--next-update", metavar="DUR", help="CRL nextUpdate period, remembered")

    p = verb("renew", cmd_renew, "new key and certificate for NAME; the old one is superseded")
    p.add_argument("name", metavar="NAME")
    _lifetime_args(p, "default: as before")
    p.add_argument("--key-type", choices=list(KEY_TYPES), default=DEFAULT_KEY_TYPE)
    _p12_args(p)
    p.add_argument(
        "--out",
        metavar="DIR",
        help="default: the current directory for client certificates (so their keys leave "
        "the proxy host), STATE/ca/servers/ for server certificates",
    )

    p = verb("rotate", cmd_rotate, "new issuing intermediate (with --root, a new root too)")
    p.add_argument("--root", action="store_true", help="also a new root, cross-signed by the old")
    p.add_argument("--root-key", metavar="FILE", help="the root key, if it is offline")
    p.add_argument("--offline-root", metavar="DIR", help="where the new root key goes")

    verb("bundle", cmd_bundle, "print the trust bundle (PEM) the proxy should trust")

    role = verbs.add_parser("role", help="change a certificate's roles without reissuing it")
    role_verbs = role.add_subparsers(dest="role_action", metavar="add|remove", required=True)
    for action in ("add", "remove"):
        p = role_verbs.add_parser(action, parents=[common], help=f"{action} a role")
        p.add_argument("name", metavar="NAME|SERIAL")
        p.add_argument("role", metavar="ROLE")
        p.set_defaults(handler=cmd_role)

    audit = verbs.add_parser("audit", help="the audit log")
    audit_verbs = audit.add_subparsers(dest="audit_action", metavar="verify", required=True)
    p = audit_verbs.add_parser("verify", parents=[common], help="check the hash chain")
    p.set_defaults(handler=cmd_audit_verify)

    from certgate.ca.adopt_commands import add_adopt_verbs
    from certgate.enroll.commands import add_enroll_verb

    add_enroll_verb(verb, _lifetime_args, _ca)
    add_adopt_verbs(verb, state_dir, _ca)

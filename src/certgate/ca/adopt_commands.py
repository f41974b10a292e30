"""``certgate ca import`` and ``certgate ca adopt``: argument parsing and printing.

The decisions live in :mod:`certgate.ca.importing` and
:mod:`certgate.ca.adoption`; these handlers read the files, ask for a key
password when there is a terminal to ask on, and print what happened.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path

from certgate.ca.authority import CertificateAuthority
from certgate.ca.importing import KeyEncrypted, plan_import, read_certificates, read_private_key
from certgate.ca.keys import PrivateKey, serial_hex
from certgate.ca.timeutil import utcnow
from certgate.errors import UsageError
from certgate.fsutil import read_input
from certgate.lastseen import printable

Verb = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]

#: A password file is a secret's container: read at most this much of it.
MAX_PASSWORD_BYTES = 4096


def _password(path: str) -> bytes:
    try:
        # Bounded, and a FIFO nobody writes reads as empty instead of hanging.
        data = read_input(path, MAX_PASSWORD_BYTES)
    except OSError as exc:
        raise UsageError(f"--key-password-file {path}: cannot read it: {exc.strerror}") from None
    # One trailing newline is the file's, not the password's (echo pw > file).
    return data.removesuffix(b"\n").removesuffix(b"\r")


def _key(args: argparse.Namespace) -> PrivateKey:
    path = Path(args.key)
    password = _password(args.key_password_file) if args.key_password_file else None
    try:
        return read_private_key(path, password)
    except KeyEncrypted:
        if not sys.stdin.isatty():
            raise
    typed = getpass.getpass(f"password of {path}: ").encode()
    return read_private_key(path, typed)


def cmd_import(args: argparse.Namespace, state: Path) -> int:
    certs = read_certificates(Path(args.cert), "--cert")
    chain = read_certificates(Path(args.chain), "--chain") if args.chain else []
    plan = plan_import(certs, _key(args), chain, utcnow())
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    ca = CertificateAuthority.import_existing(state, plan, name=args.name)
    issuing = plan.issuing
    print(f"imported {issuing.subject.rfc4514_string()} (serial "
          f"{serial_hex(issuing.serial_number)}) as the issuing CA in {ca.layout.ca_dir}")
    if plan.root is not None:
        print(f"  its root {plan.root.subject.rfc4514_string()} is trusted; its key stays "
              "where it is (ca rotate --root-key FILE needs it)")
    print(f"  trust bundle: {ca.trust_bundle_path}")
    print(f"  CRL:          {ca.crl_path}")
    print("next: 'certgate ca adopt LEAF.crt --role R' records a device's certificate; "
          "certificates not adopted keep working, without roles")
    return 0


def cmd_adopt(args: argparse.Namespace, ca: CertificateAuthority) -> int:
    adopted, skipped = ca.adopt([Path(p) for p in args.certs], name=args.name, roles=args.role)
    # A scanned directory's file names are anyone's choosing: escaped, so an
    # ESC in one cannot retitle or clear the admin's terminal.
    for item in adopted:
        print(f"adopted {item.name} ({serial_hex(item.serial)}), roles "
              f"{', '.join(item.roles) or '-'}, until {item.not_after.date()}: "
              f"{printable(str(item.source))}")
    for skip in skipped:
        print(f"skipped {printable(str(skip.source))}: {printable(skip.reason)}",
              file=sys.stderr)
    if not adopted:
        print("nothing adopted", file=sys.stderr)
        return 1
    return 0


def add_adopt_verbs(
    verb: Verb,
    state_dir: Callable[[argparse.Namespace], Path],
    open_ca: Callable[[argparse.Namespace], CertificateAuthority],
) -> None:
    """Add ``ca import`` and ``ca adopt`` through ``commands.add_subcommands``' helper."""
    p = verb("import", lambda a: cmd_import(a, state_dir(a)),
             "make an existing CA (openssl, Caddy, step-ca) the built-in CA")
    p.add_argument("--cert", required=True, metavar="CA.crt",
                   help="the CA certificate (PEM or DER; a fullchain file is fine)")
    p.add_argument("--key", required=True, metavar="CA.key", help="its private key")
    p.add_argument("--chain", metavar="FILE",
                   help="the root above it, when CA.crt is an intermediate")
    p.add_argument("--key-password-file", metavar="FILE",
                   help="password of an encrypted key (else asked on a terminal)")
    p.add_argument("--name", help="CA name for certificates certgate makes "
                   "(default: the imported certificate's CN)")

    p = verb("adopt", lambda a: cmd_adopt(a, open_ca(a)),
             "record certificates the CA issued earlier, so they get roles and last seen")
    p.add_argument("certs", nargs="+", metavar="CERT|DIR",
                   help="certificate files, or directories to scan (*.crt, *.pem, *.cer, "
                   "*.der; what does not qualify there is skipped with its reason)")
    p.add_argument("--name", help="inventory name (one certificate only; default: its CN)")
    p.add_argument("--role", action="append", default=[], metavar="R", help="repeatable")

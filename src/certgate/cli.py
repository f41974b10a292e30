"""The ``certgate`` command: parse arguments, call, map errors to exit codes.

No logic lives here. Every :class:`~certgate.errors.CertgateError` carries
its exit code (2 for an invalid config or usage), and is printed as one
``certgate: ...`` block on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from certgate import __version__
from certgate.config.schema import Config
from certgate.errors import CertgateError, ConfigError


def _load(path: Path | None) -> tuple[Config, Path | None, bool]:
    """The config to run: -c FILE, else ./certgate.yaml ($CERTGATE_CONFIG), else the
    embedded default."""
    from certgate.config.loader import load_config
    from certgate.defaults import embedded_default, existing_config_file

    if path is not None:
        return load_config(path), path, False
    found = existing_config_file()
    if found is not None:
        return load_config(found), found, False
    return embedded_default(), None, True


def cmd_run(args: argparse.Namespace) -> int:
    from certgate.defaults import first_steps
    from certgate.supervisor import supervise

    config, path, embedded = _load(args.config)

    def ready(bound: list[tuple[str, int]]) -> None:
        if embedded:
            print(first_steps(config), file=sys.stderr, flush=True)
        print("certgate: ready on " + ", ".join(f"{h}:{p}" for h, p in bound),
              file=sys.stderr, flush=True)

    return supervise(config, path, on_ready=ready)


def cmd_check(args: argparse.Namespace) -> int:
    from certgate.config.loader import load_config
    from certgate.revocation import crl_coverage_warnings
    from certgate.tls.issuers import issuer_matcher_warnings, read_trusted, weak_key_warnings

    config = load_config(args.config)
    warnings = crl_coverage_warnings(config)
    trusted = read_trusted(config)
    warnings += issuer_matcher_warnings(config, trusted)
    warnings += weak_key_warnings(trusted)
    for warning in warnings:
        print(f"{args.config}: warning: {warning}")
    print(f"{args.config}: OK ({len(config.routes)} routes, "
          f"{len(config.listen)} listeners)")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate the config, then SIGHUP the running certgate (like ``caddy reload``).

    Checking first means a typo is reported here, at the terminal, instead
    of only in the running proxy's log; the proxy re-checks anyway.
    """
    import signal

    from certgate.config.loader import load_config
    from certgate.errors import UsageError
    from certgate.supervisor import EMBEDDED, pid_file, running_config, same_config

    config = load_config(args.config)
    if args.pid is not None:
        pid = args.pid
    else:
        path = pid_file(config)
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the pid of the running certgate from {path}: "
                             f"{getattr(exc, 'strerror', None) or exc} (is it running? "
                             "give --pid)") from None
    record = running_config(config.state_dir)
    if record is not None and record[0] == pid and not same_config(record[1], args.config):
        # A SIGHUP makes certgate re-read the file it was started with: saying
        # "OK, reloading" for another file would report a change that never
        # happens (the new listeners, routes and names stay absent).
        if record[1] == EMBEDDED:
            raise UsageError(
                f"certgate (pid {pid}) runs the embedded default, not {args.config}: a "
                f"reload cannot switch it to a file; stop it, then certgate run -c "
                f"{args.config}")
        raise UsageError(
            f"certgate (pid {pid}) runs {record[1]}, not {args.config}: a reload re-reads "
            f"that file; edit it, or stop certgate and start it with -c {args.config}")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise UsageError(f"no process {pid}: certgate is not running (stale pid file?)") \
            from None
    except PermissionError:
        raise UsageError(f"not allowed to signal process {pid}: run as its user") from None
    print(f"{args.config}: OK; asked certgate (pid {pid}) to reload; "
          "its log says whether the reload succeeded")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from certgate.explain import run

    config, _, _ = _load(args.config)
    return run(config, args.url, args.method, args.cert)


def _read_pin(given: str | None) -> str:
    """``--pin PIN``; ``--pin -`` or no ``--pin``: one line from standard input,
    asked for without echo on a terminal, so the PIN stays out of the shell's
    history and of ``ps``."""
    from certgate.errors import UsageError

    if given is not None and given != "-":
        return given
    if sys.stdin.isatty():
        import getpass

        line = getpass.getpass("PIN: ").strip()
    else:
        line = sys.stdin.readline(256).strip()
    if not line:
        raise UsageError("no PIN: give --pin PIN, or the PIN on standard input")
    return line


def cmd_enroll(args: argparse.Namespace) -> int:
    from certgate.enroll.client import enroll

    for path in enroll(args.url, _read_pin(args.pin), args.out, args.ca):
        print(f"wrote {path}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """One line and exit 0 (serving) or 1 (anything else: Docker reserves 2)."""
    from certgate.health import Verdict, check

    try:
        config, _, _ = _load(args.config)
        verdict = check(config, args.timeout)
    except ConfigError as exc:
        where = exc.problems[0] if exc.problems else "configuration"
        verdict = Verdict(False, f"{where} ({len(exc.problems)} problem(s) in the config)")
    except CertgateError as exc:
        verdict = Verdict(False, str(exc).splitlines()[0])
    print("healthy" if verdict.ok else f"unhealthy: {verdict.reason}", flush=True)
    return 0 if verdict.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certgate",
        description="mTLS-terminating reverse proxy with its own small private CA",
    )
    parser.add_argument("--version", action="version", version=f"certgate {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("CERTGATE_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="serve (uses ./certgate.yaml or the embedded default)",
                         description="Serve the config given with -c; without it "
                         "./certgate.yaml ($CERTGATE_CONFIG if set), and without that the "
                         "embedded default: the built-in CA and a whoami route for localhost "
                         "on $CERTGATE_LISTEN (default 127.0.0.1:8443), state in "
                         "$CERTGATE_STATE_DIR (default ./certgate-data).")
    run.add_argument("-c", "--config", type=Path, help="config file")
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser("check", help="validate a config file; exit 2 on problems")
    check.add_argument("-c", "--config", type=Path, required=True, help="config file")
    check.set_defaults(handler=cmd_check)

    reload = sub.add_parser("reload", help="check a config file, then make the running "
                                           "certgate reload it (SIGHUP)")
    reload.add_argument("-c", "--config", type=Path, required=True, help="config file")
    reload.add_argument("--pid", type=int, help="process to signal (default: read from "
                                                "STATE_DIR/certgate.pid)")
    reload.set_defaults(handler=cmd_reload)

    explain = sub.add_parser(
        "explain", help="which route and rule a request meets, and the decision (sends nothing)",
        description="Judge one request the way the running proxy would, without sending it: "
                    "prints the TLS class, identity, roles (built-in inventory read-only), "
                    "normalised path, route, rule and decision. Exit 0 if the request would "
                    "reach the upstream, 1 if it would be refused, 2 for unusable input.")
    explain.add_argument("-c", "--config", type=Path,
                         help="config file (default: as for run)")
    explain.add_argument("--cert", type=Path, metavar="CERT.pem",
                         help="client certificate, PEM (leaf first, chain may follow) or DER")
    explain.add_argument("--method", default="GET", help="request method (default GET)")
    explain.add_argument("url", metavar="URL", help="https://HOST[:PORT]/PATH[?QUERY], "
                                                    "spelled as the client sends it")
    explain.set_defaults(handler=cmd_explain)

    enroll = sub.add_parser(
        "enroll", help="get a certificate from an enrollment link; the key is made here",
        description="Enroll this device with a link from 'certgate ca enroll': makes a key "
                    "(ECDSA P-256) here, sends only a CSR, and writes NAME.key (0600), "
                    "NAME.crt, NAME.chain.pem and ca.crt into --out. The server is checked "
                    "against the root CA fingerprint in the link (fp=) or --ca.")
    enroll.add_argument("url", metavar="URL", help="the enrollment link, with its fp=")
    enroll.add_argument("--pin", help="the PIN printed next to the link; '-' or left out: "
                                      "read from standard input (asked for without echo "
                                      "on a terminal), which keeps it out of shell history "
                                      "and ps")
    enroll.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="directory for the key and certificates (made if missing)")
    enroll.add_argument("--ca", type=Path, metavar="FILE",
                        help="CA file to verify the server with (needed when its "
                             "certificate does not come from certgate's CA)")
    enroll.set_defaults(handler=cmd_enroll)

    from certgate.renew.client import add_parser as add_renew

    add_renew(sub)

    health = sub.add_parser(
        "health", help="ask the running certgate whether it serves (exit 0) or not (1)",
        description="Ask GET /healthz on the running certgate's metrics listener (a wildcard "
                    "address is asked on loopback) and print one line. Exit 0 when every "
                    "worker serves, 1 otherwise (not running, starting, draining, metrics "
                    "off, unusable config). For container health checks.")
    health.add_argument("-c", "--config", type=Path,
                        help="config file (default: as for run)")
    health.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="give up after this long (default 5)")
    health.set_defaults(handler=cmd_health)

    from certgate.ca.commands import add_subcommands

    add_subcommands(sub)
    return parser


# The exit status of a process killed by SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 128 + 13


def _reader_gone() -> int:
    """``certgate ca list | head -1``: the reader left; end quietly, as coreutils do.

    Python ignores SIGPIPE, so a write to a closed pipe raises instead of
    ending the process. Whatever is still buffered for stdout can never be
    delivered; stdout is pointed at /dev/null so that the interpreter's final
    flush does not print a second traceback.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from certgate.ca.commands import CREATED_DIRS, remove_created_dirs

    CREATED_DIRS.clear()
    try:
        try:
            code: int = args.handler(args)
        except BaseException:
            remove_created_dirs()  # a failed verb leaves no empty --out directory
            raise
        finally:
            CREATED_DIRS.clear()
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        return _reader_gone()
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"certgate: {len(exc.problems)} problem(s) in the configuration",
              file=sys.stderr)
        return exc.exit_code
    except CertgateError as exc:
        print(f"certgate: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

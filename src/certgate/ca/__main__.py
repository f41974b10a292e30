"""``python -m certgate.ca ...``: the ``certgate ca`` verbs without the full CLI.

Mirrors what ``certgate.cli`` does at its boundary (handler call, error to
``certgate: <message>`` and exit code) so the verbs can be run, and tested
in subprocesses, on their own.
"""

from __future__ import annotations

import argparse
import sys

from certgate.ca.commands import add_subcommands
from certgate.errors import CertgateError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="certgate")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ca", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.handler(args))
    except CertgateError as exc:
        print(f"certgate: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())

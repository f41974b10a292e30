"""``python -m benchmarks``: set everything up on 127.0.0.1, run the scenarios, report.

Exit status: 0 when every selected scenario ran, 1 when one failed (its
error is in the JSON and the printed notes; the others still run), 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import pki
from benchmarks.context import Bench
from benchmarks.nginx import nginx_binary
from benchmarks.options import SCENARIOS, Options
from benchmarks.report import render, write_json
from benchmarks.scenarios import handshakes, idle, keepalive, revocation, streaming
from benchmarks.servers import ROOT, start_upstream

RESULTS = ROOT / "benchmarks" / "results"

# Scenario modules in run order, with the scenario numbers each one answers.
MODULES: list[tuple[tuple[str, ...], Callable[[Bench], dict[str, dict[str, Any]]]]] = [
    (("1", "2", "3"), handshakes.run),
    (("4", "5"), keepalive.run),
    (("6",), streaming.run),
    (("7",), idle.run),
    (("8",), revocation.run),
]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=(
        "certgate benchmark suite: handshakes, keep-alive, streaming, memory and "
        "revocation, side by side with nginx when it is installed"))
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test sizes (< 60 s): 1 worker, 1 rep, short loads")
    parser.add_argument("--scenario", action="append", metavar="N[,N...]",
                        help="run only these scenarios (1-8); repeatable")
    parser.add_argument("--workers", metavar="W[,W...]",
                        help="worker settings to run, e.g. 1,auto (default: 1,auto; quick: 1)")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx comparison")
    parser.add_argument("--output", type=Path, metavar="PATH",
                        help="a .json file, or a directory for <date>-<host>.json "
                             "(default: benchmarks/results/)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile certgate's handshake and request paths "
                             "(cProfile in the worker, py-spy when installed)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs, logs)")
    args = parser.parse_args(argv)
    chosen: list[str] = []
    for item in args.scenario or []:
        chosen += [s.strip() for s in item.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from 1-8")
    args.scenarios = tuple(s for s in SCENARIOS if s in chosen) if chosen else tuple(SCENARIOS)
    if args.workers:
        args.workers = tuple(w.strip() for w in args.workers.split(",") if w.strip())
        for w in args.workers:
            if w != "auto" and not (w.isdigit() and int(w) > 0):
                parser.error(f"--workers: {w!r} is neither a positive number nor auto")
    return args


def _output_path(path: Path | None, stamp: str) -> Path:
    name = f"{stamp}-{platform.node() or 'host'}.json"
    if path is None:
        return RESULTS / name
    return path if path.suffix == ".json" else path / name


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return (done.stdout + done.stderr).strip().splitlines()[0] if done.stdout + done.stderr \
        else "?"


def _git_head() -> str:
    return _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])


def _dirty_sources() -> list[str]:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                              capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ["?"]
    return [line[3:] for line in done.stdout.splitlines() if line.strip()]


def _meta(opts: Options, bench: Bench, argv: list[str]) -> dict[str, Any]:
    import os
    from importlib.metadata import version

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "uvloop": version("uvloop"),
        "nginx": _version([bench.nginx, "-v"]) if bench.nginx else None,
        "certgate_commit": _git_head(),
        # The checkout may be edited while the suite runs: record what differed
        # from the commit at the start, so a result is never credited wrongly.
        "src_changes_at_start": _dirty_sources(),
        "command": "python -m benchmarks " + shlex.join(argv),
        "quick": opts.quick,
        "duration_s": opts.duration,
        "reps": opts.reps,
        "handshake_clients": opts.handshake_clients,
        "keepalive_connections": opts.keepalive_processes * opts.keepalive_connections,
    }


def _setup(opts: Options, workdir: Path, no_nginx: bool) -> Bench:
    chains = {key_type: pki.make_chain(workdir / "pki", key_type)
              for key_type in dict.fromkeys(("ecdsa", *opts.key_types))}
    crls = {key_type: pki.write_crl_file(chain, workdir / "pki", opts.handshake_crl_entries)
            for key_type, chain in chains.items()}
    binary = None if no_nginx else nginx_binary()
    if no_nginx:
        note = "nginx comparison skipped (--no-nginx)"
    elif binary is None:
        note = ("nginx is not installed: the nginx comparison was skipped "
                "(apt-get install -y nginx to include it)")
    else:
        note = ""
    upstream = start_upstream(workdir / "upstream")
    return Bench(opts, workdir, chains, upstream, binary, note, crls)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    opts = Options.build(quick=args.quick, scenarios=args.scenarios, workers=args.workers,
                         use_nginx=not args.no_nginx)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    output = _output_path(args.output, stamp)
    workdir = Path(tempfile.mkdtemp(prefix="certgate-bench-"))
    started = time.monotonic()
    failed = False
    results: dict[str, Any] = {"meta": {}, "scenarios": {}, "notes": []}
    bench: Bench | None = None
    try:
        bench = _setup(opts, workdir, args.no_nginx)
        results["meta"] = _meta(opts, bench, argv)
        if bench.nginx_note:
            results["notes"].append(bench.nginx_note)
        for numbers, fn in MODULES:
            if not set(numbers) & set(opts.scenarios):
                continue
            print(f"running scenario(s) {', '.join(n for n in numbers if n in opts.scenarios)}"
                  f" ...", file=sys.stderr, flush=True)
            # Others may commit to this checkout while the suite runs: record
            # the source each scenario's servers were started from.
            source = {"certgate_commit": _git_head(), "src_changes": _dirty_sources()}
            try:
                for number, section in fn(bench).items():
                    results["scenarios"][SCENARIOS[number]] = {**section, **source}
            except Exception as exc:
                failed = True
                traceback.print_exc()
                results["notes"].append(f"scenario(s) {','.join(numbers)} failed: "
                                        f"{type(exc).__name__}: {exc}")
        if args.profile:
            from benchmarks import profile

            print("profiling ...", file=sys.stderr, flush=True)
            source = {"certgate_commit": _git_head(), "src_changes": _dirty_sources()}
            try:
                found = profile.run(bench, output.parent / "profiles" / stamp)
                results["profile"] = {**found, **source}
            except Exception as exc:
                failed = True
                traceback.print_exc()
                results["notes"].append(f"profiling failed: {type(exc).__name__}: {exc}")
        results["notes"] += bench.notes
    finally:
        if bench is not None:
            bench.upstream.stop()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    write_json(results, output)
    print(render(results))
    print(f"\nwrote {output} ({results['meta']['elapsed_s']} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

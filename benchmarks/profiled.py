"""``python -m benchmarks.profiled ARGS``: certgate's CLI under cProfile.

The profiler lives here, in the harness, so nothing in ``src/`` has to know
about it. It covers the main thread of this process, which is the worker's
event loop when ``workers`` is 1 (the supervisor runs that worker in
process). The stats are written to ``$CERTGATE_BENCH_PROFILE`` when certgate
returns, i.e. after a SIGTERM drain, so stop the server with SIGTERM.
"""

from __future__ import annotations

import cProfile
import os
import sys

from certgate.cli import main


def run() -> int:
    path = os.environ.get("CERTGATE_BENCH_PROFILE")
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return main(sys.argv[1:])
    finally:
        profiler.disable()
        if path:
            profiler.dump_stats(path)


if __name__ == "__main__":
    sys.exit(run())

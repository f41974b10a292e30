"""Syscalls per operation, counted with ``strace -c``: the cost py-spy shows as "write".

Why count them: on loopback, a ``write(2)`` also pays for delivering the
segment to the receiver (softirq work runs in the sender's context), so on
the handshake path a quarter of certgate's CPU samples sit in ``write``.
Counting writes per handshake and per request, for certgate and for nginx
under the same load, says how many of them are avoidable (e.g. a response
head and body written as two TLS records instead of one).

strace slows the traced server a lot; only the counts are used, never rates.
Skipped with a note when strace is not installed or not permitted.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from typing import Any

from benchmarks import procstat
from benchmarks.loadgen import LoadResult
from benchmarks.servers import ServerProcess

_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")
INTERESTING = ("write", "writev", "sendmsg", "sendto", "read", "readv", "recvfrom",
               "recvmsg", "epoll_wait", "epoll_pwait", "epoll_ctl", "accept4", "close",
               "setsockopt", "getsockopt", "getpid", "connect", "socket", "shutdown")


def parse_summary(text: str) -> dict[str, int]:
    """``strace -c`` summary table -> {syscall: calls}."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = _ROW.match(line)
        if match:
            counts[match.group(2)] = int(match.group(1))
    return counts


def count(server: ServerProcess, load: Any) -> dict[str, Any] | str:
    """Run ``load()`` (-> LoadResult) with strace attached to every server process.

    Returns syscalls per operation for the syscalls in INTERESTING, or a
    string saying why it could not be measured.
    """
    binary = shutil.which("strace")
    if binary is None:
        return "strace is not installed (apt-get install -y strace)"
    pids = procstat.tree(server.pid)
    args = [binary, "-c", "-f"]
    for pid in pids:
        args += ["-p", str(pid)]
    tracer = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        result: LoadResult = load()
    finally:
        tracer.send_signal(signal.SIGINT)
        try:
            _, err = tracer.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            tracer.kill()
            _, err = tracer.communicate()
    counts = parse_summary(err)
    if not counts:
        return f"strace gave no summary: {err.strip()[-300:]}"
    ops = result.ops or 1
    return {"ops": result.ops,
            "per_op": {name: round(counts[name] / ops, 2) for name in INTERESTING
                       if name in counts}}

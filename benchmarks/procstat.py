"""CPU and memory of a server's process tree, read from /proc.

Why /proc and not rates alone: on a 2-core machine shared by the load
generator, the server and other people's test runs, requests/s swing with
whoever else is busy, while the server's own CPU seconds per 1,000
handshakes barely move. ``utime + stime`` of every live process in the tree
(the supervisor and its forked workers; nginx's master and workers) is
summed; ``cutime`` is ignored because workers are not reaped mid-run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's children file)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found.extend(int(p) for p in text.split())
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    out = [pid]
    index = 0
    while index < len(out):
        out.extend(children(out[index]))
        index += 1
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes, in seconds (vanished ones count 0)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # After the comm field: state(0) ... utime(11) stime(12).
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def tree_cpu(pid: int) -> float:
    return cpu_seconds(tree(pid))


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return 0
    return int(text.split()[1]) * _PAGE


def tree_rss(pid: int) -> int:
    return sum(rss_bytes(p) for p in tree(pid))


def tree_max_rss(pid: int) -> int:
    """The largest RSS of one process in the tree (the busy worker)."""
    return max((rss_bytes(p) for p in tree(pid)), default=0)


def peak_rss(pid: int) -> int:
    """VmHWM of one process: the highest RSS it ever had, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True, slots=True)
class MachineSample:
    """Jiffies from the first line of /proc/stat, to tell how busy the box was."""

    busy: int
    total: int

    @staticmethod
    def now() -> MachineSample:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already inside user
        return MachineSample(total - idle, total)

    def busy_cores_since(self, earlier: MachineSample) -> float:
        """Average number of busy cores between ``earlier`` and this sample."""
        total = self.total - earlier.total
        if total <= 0:
            return 0.0
        return (self.busy - earlier.busy) / total * (os.cpu_count() or 1)

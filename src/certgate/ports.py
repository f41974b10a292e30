"""Who holds a TCP port: one line for "cannot listen" at start-up.

A busy listen port is the most common first-start failure (another web
server, or certgate already running). The kernel only says EADDRINUSE; this
module finds the listening socket in ``/proc/net/tcp`` / ``tcp6`` and the
process whose ``/proc/PID/fd`` points at it, the way ``ss -ltnp`` does.

It fails soft: without ``/proc`` (not Linux), or for another user's process
(its fd table is unreadable), it finds nothing and the message says only
what the kernel said. The scan is bounded in time, so a host with many
processes does not hold up the error.

Parsing is pure (:func:`listening_inodes`); only :func:`port_holders` reads
the file system.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
# The fd scan stops after this long; the start-up error matters more than
# its decoration.
SCAN_BUDGET = 1.0
MAX_HOLDERS = 3


def _decode(field: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:20FB`` -> (127.0.0.1, 8443). Addresses are 32-bit words in
    host byte order, as the kernel prints them."""
    address, port = field.split(":")
    words = [int(address[i:i + 8], 16) for i in range(0, len(address), 8)]
    packed = struct.pack(f"={len(words)}I", *words)
    ip = ipaddress.ip_address(packed)
    return ip, int(port, 16)


def _covers(listening: ipaddress.IPv4Address | ipaddress.IPv6Address,
            wanted: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a socket listening on ``listening`` blocks a bind to ``wanted``."""
    if listening.is_unspecified or wanted.is_unspecified:
        return True
    if isinstance(listening, ipaddress.IPv6Address) and listening.ipv4_mapped is not None:
        listening = listening.ipv4_mapped
    return listening == wanted


def listening_inodes(table: str, host: str, port: int) -> list[int]:
    """Socket inodes in one ``/proc/net/tcp``-format ``table`` listening where
    a bind to ``host:port`` would collide."""
    try:
        wanted = ipaddress.ip_address(host)
    except ValueError:  # a name: any listener on the port may be the one
        wanted = ipaddress.ip_address("0.0.0.0")
    inodes: list[int] = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        try:
            address, bound_port = _decode(fields[1])
            inode = int(fields[9])
        except ValueError:
            continue
        if bound_port == port and inode and _covers(address, wanted):
            inodes.append(inode)
    return inodes


def port_holders(host: str, port: int, proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """(pid, command name) of processes listening where ``host:port`` collides.

    Empty when nothing can be found; never raises.
    """
    inodes: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            inodes.update(listening_inodes((proc / "net" / name).read_text(), host, port))
        except (OSError, UnicodeDecodeError):
            continue
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    holders: list[tuple[int, str]] = []
    deadline = time.monotonic() + SCAN_BUDGET
    try:
        pids = sorted(int(entry) for entry in os.listdir(proc) if entry.isdigit())
    except OSError:
        return []
    for pid in pids:
        if time.monotonic() > deadline or len(holders) >= MAX_HOLDERS:
            break
        try:
            fds = os.listdir(proc / str(pid) / "fd")
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                link = os.readlink(proc / str(pid) / "fd" / fd)
            except OSError:
                continue
            if link in targets:
                holders.append((pid, _command(proc, pid)))
                break
    return holders


def _command(proc: Path, pid: int) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip() or "?"
    except OSError:
        return "?"


def describe_holders(host: str, port: int) -> str:
    """`` (held by pid 812, nginx)``, or a hint where to look when unknown."""
    holders = port_holders(host, port)
    if not holders:
        return "; see which process holds it with: ss -ltnp"
    return " (held by " + ", ".join(f"pid {pid}, {name}" for pid, name in holders) + ")"

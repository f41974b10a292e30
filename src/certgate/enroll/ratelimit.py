"""Per-client-IP rate limit for the enrollment service (pure, one per worker).

A token bucket per IP: ``BURST`` requests at once, then one every
``INTERVAL`` seconds. Each token request takes the CA's lock and may append
to the audit log (an fsync), so a flood from one address must be cut before
it reaches the CA; guessing is already hopeless (a 256-bit token, five PINs
per token). A person enrolling a phone makes about five requests.

Memory is bounded: at most ``MAX_CLIENTS`` addresses are remembered, the
least recently seen dropped first (an attacker rotating addresses gains
nothing they would not have from new addresses anyway). Each worker keeps
its own table, so with N workers an address gets up to N times the rate.

An IPv6 client is counted by its /64: one host or home network gets a whole
/64 (SLAAC, privacy addresses), so per-address buckets would let a single
machine rotate through 2**64 fresh ones. An IPv4-mapped address counts as
the IPv4 address it carries (a dual-stack listener sees both spellings).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

BURST = 20
INTERVAL = 3.0  # seconds per request, steady state (20 a minute)
MAX_CLIENTS = 4096


def client_key(peer_ip: str) -> str:
    """The bucket an address draws from: IPv4 as is, IPv6 by its /64."""
    try:
        address = ipaddress.ip_address(peer_ip.partition("%")[0])
    except ValueError:
        return peer_ip  # not an address (a test's or a Unix socket's peer): as is
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class RateLimiter:
    burst: int = BURST
    interval: float = INTERVAL
    max_clients: int = MAX_CLIENTS
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def allow(self, client: str, now: float) -> float:
        """0 to let the request through, else the seconds to wait (Retry-After)."""
        client = client_key(client)
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) / self.interval)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) * self.interval
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

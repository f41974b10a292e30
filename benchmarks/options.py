"""How big and how long each measurement is, for a full run and for ``--quick``.

The defaults follow the issue's measurement setup (16 concurrent handshake
clients, median of 3, runs alternating between servers). Every load loop is
bounded twice, by ``duration`` and by a count cap, so a server that answers
faster than expected cannot make a run unbounded either.
"""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = {
    "1": "1_full_handshake_tls13",
    "2": "2_full_handshake_tls12",
    "3": "3_resumed_handshake",
    "4": "4_keepalive",
    "5": "5_added_latency",
    "6": "6_streaming",
    "7": "7_idle_memory",
    "8": "8_revocation",
}
"""Scenario number -> the key its results have in the JSON file."""


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool
    scenarios: tuple[str, ...]  # keys of SCENARIOS, in run order
    workers: tuple[str, ...]  # "1", "2", ..., "auto"
    use_nginx: bool
    duration: float  # seconds of load per measurement
    reps: int  # measurements per server, alternating; the median is reported
    key_types: tuple[str, ...]
    handshake_clients: int  # processes, one connection at a time each
    keepalive_processes: int
    keepalive_connections: int  # per process
    stream_bytes: int  # per direction
    idle_connections: int
    handshake_crl_entries: int
    revocation_crl_entries: int
    max_ops_per_client: int  # count cap on every load loop

    @staticmethod
    def build(*, quick: bool, scenarios: tuple[str, ...], workers: tuple[str, ...] | None,
              use_nginx: bool) -> Options:
        if quick:
            return Options(
                quick=True, scenarios=scenarios, workers=workers or ("1",),
                use_nginx=use_nginx, duration=0.75, reps=1, key_types=("ecdsa",),
                handshake_clients=8, keepalive_processes=2, keepalive_connections=8,
                stream_bytes=32 << 20, idle_connections=200, handshake_crl_entries=10_000,
                revocation_crl_entries=100_000, max_ops_per_client=200_000)
        return Options(
            quick=False, scenarios=scenarios, workers=workers or ("1", "auto"),
            use_nginx=use_nginx, duration=4.0, reps=3, key_types=("ecdsa", "rsa"),
            handshake_clients=16, keepalive_processes=4, keepalive_connections=16,
            stream_bytes=1 << 30, idle_connections=2000, handshake_crl_entries=10_000,
            revocation_crl_entries=100_000, max_ops_per_client=2_000_000)

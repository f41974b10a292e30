"""certgate's benchmark suite: handshake throughput and proxy speed, side by side with nginx.

Run ``python -m benchmarks`` (the whole suite, ~15 min on 2 cores) or
``python -m benchmarks --quick`` (the CI smoke test, < 60 s). Everything runs
on 127.0.0.1: a fast upstream, certgate in a subprocess, nginx when it is
installed, and a multi-process load generator. See ``benchmarks/README.md``.

This package deliberately does not import ``tests/``: the benchmark makes its
own PKI (ECDSA and RSA chains, big CRLs) with ``cryptography`` so it can run
from a plain checkout and so the test fixtures stay free to change.
"""

"""memtrim: a trim is due once a burst of connections has closed, once per burst.

The end-to-end check (RSS back within 20 MB of its baseline after 600 held
TLS connections close) is tests/test_soak_quick.py; without the trim the
worker kept ~40 KiB per closed connection (85 MB after 2,000).
"""

from __future__ import annotations

from certgate.memtrim import TrimPolicy, malloc_trim


def test_no_trim_for_ordinary_churn() -> None:
    policy = TrimPolicy(trim_after=4)
    for _ in range(100):
        policy.opened()
        assert not policy.closed()


def test_trim_after_a_burst_then_not_again_until_the_next() -> None:
    policy = TrimPolicy(trim_after=4)
    for _ in range(10):
        policy.opened()
    due = [policy.closed() for _ in range(10)]
    assert due == [False, False, False, True, True, True, True, True, True, True]
    policy.trimmed()
    assert policy.peak == 0
    policy.opened()
    assert not policy.closed()


def test_malloc_trim_runs_here() -> None:
    assert malloc_trim() is True  # glibc on the CI machine

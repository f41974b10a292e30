"""memtrim: a trim is due once a burst of connections has closed, once per burst.

The end-to-end check (RSS back within 20 MB of its baseline after 600 held
TLS connections close) is tests/test_soak_quick.py; without the trim the
worker kept ~40 KiB per closed connection (85 MB after 2,000).
"""

from __future__ import annotations

import pytest

from certgate.memtrim import TRIM_DELAY, TRIM_MAX_WAIT, TrimPolicy, malloc_trim


def test_no_trim_for_ordinary_churn() -> None:
    policy = TrimPolicy(trim_after=4)
    for _ in range(100):
        policy.opened()
        assert policy.closed() is None


def test_trim_after_a_burst_then_not_again_until_the_next() -> None:
    policy = TrimPolicy(trim_after=4)
    for _ in range(10):
        policy.opened()
    due = [policy.closed(0.0) is not None for _ in range(10)]
    assert due == [False, False, False, True, True, True, True, True, True, True]
    policy.trimmed()
    assert policy.peak == 0
    policy.opened()
    assert policy.closed(0.0) is None


def test_the_trim_waits_for_the_end_of_the_burst_but_not_forever() -> None:
    """A trim scheduled at the 256th close of 2,000 ran while most of the
    burst was still open and gave back little of it. Each close now pushes
    the trim to a second after it, capped for a steady stream."""
    policy = TrimPolicy(trim_after=4)
    for _ in range(100):
        policy.opened()
    times = [policy.closed(n * 0.1) for n in range(100)]
    assert times[:3] == [None, None, None]
    assert times[3] == pytest.approx(0.3 + TRIM_DELAY)
    assert times[10] == pytest.approx(1.0 + TRIM_DELAY)  # pushed back by each close
    assert times[99] == pytest.approx(0.3 + TRIM_MAX_WAIT)  # a steady stream: capped
    policy.trimmed()
    assert policy.due_since is None


def test_malloc_trim_runs_here() -> None:
    assert malloc_trim() is True  # glibc on the CI machine

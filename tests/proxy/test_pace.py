"""The request-body pace (certgate.proxy.pace): pure bookkeeping, fed numbers."""

from __future__ import annotations

from certgate.proxy.pace import BodyPace, Verdict


def test_trickle_fails_at_the_end_of_the_first_window():
    pace = BodyPace.start(min_rate=500, window=60, idle=300, now=0)
    for t in range(1, 60, 3):  # one byte every 3 s: never idle
        pace.progress(1, t)
        assert pace.wait_for(t) == 60 - t
    assert pace.judge(59.9) is Verdict.MOVING
    assert pace.judge(60) is Verdict.TOO_SLOW


def test_a_stall_inside_a_window_is_forgiven_when_the_window_kept_the_rate():
    pace = BodyPace.start(min_rate=500, window=60, idle=300, now=0)
    pace.progress(1_000_000, 1)  # a burst, then 58 s of nothing (a cell handover)
    assert pace.judge(60) is Verdict.MOVING
    assert pace.wait_for(60) == 60  # the next window runs from the judgement
    pace.progress(30_000, 119)
    assert pace.judge(120) is Verdict.MOVING
    assert pace.judge(180) is Verdict.TOO_SLOW  # a whole window with nothing


def test_idle_is_checked_without_a_rate():
    pace = BodyPace.start(min_rate=0, window=60, idle=5, now=0)
    assert pace.wait_for(0) == 5
    pace.progress(1, 4)
    assert pace.wait_for(4) == 5
    assert pace.judge(8.9) is Verdict.MOVING
    assert pace.judge(9) is Verdict.STALLED
    assert pace.judge(10_000) is Verdict.STALLED  # never TOO_SLOW when disabled


def test_time_waiting_for_the_upstream_is_given_back():
    pace = BodyPace.start(min_rate=500, window=60, idle=300, now=0)
    pace.progress(20_000, 10)
    pace.pause(40)  # the upstream took 40 s to drain
    pace.progress(10_000, 90)
    assert pace.judge(100) is Verdict.MOVING  # 30 KB in the 60 s that were the client's
    assert pace.window_bytes == 0

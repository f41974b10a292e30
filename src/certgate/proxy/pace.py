"""How fast a request body must arrive: the bookkeeping behind 408, without I/O.

Two limits hold while a request body is read from a client:

* ``idle``: the longest gap between two body chunks (the route's
  ``timeouts.read``), which catches a client that stops sending;
* ``min_rate`` bytes/s averaged over each ``window`` seconds (the route's
  ``timeouts.body_min_rate`` and ``body_rate_window``), which catches a client
  that never quite stops: one byte every few seconds resets any idle timer
  and would hold an upstream connection for as long as it likes.

Windows are consecutive, each judged when it ends, so a stall inside a window
is forgiven when the window as a whole kept the rate (a phone changing
cells), and the most a trickler holds a connection is one window. Time
spent waiting for the *upstream* to take earlier bytes is not the client's
fault and is given back (:meth:`BodyPace.pause`).

The reader asks :meth:`BodyPace.wait_for` how long it may wait for the next
chunk, and calls :meth:`BodyPace.judge` when that wait runs out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    MOVING = "moving"  # wait again
    STALLED = "stalled"  # no byte for ``idle`` seconds
    TOO_SLOW = "too_slow"  # a whole window below ``min_rate``


class BodyTooSlow(Exception):
    """A request body arrived slower than the route's body_min_rate (-> 408)."""


@dataclass(slots=True)
class BodyPace:
    min_rate: int  # bytes/s; 0 disables the rate check
    window: float  # seconds
    idle: float  # seconds
    window_start: float
    last_progress: float
    window_bytes: int = 0

    @classmethod
    def start(cls, min_rate: int, window: float, idle: float, now: float) -> BodyPace:
        return cls(min_rate, window, idle, now, now)

    def progress(self, size: int, now: float) -> None:
        """``size`` body bytes arrived at ``now``."""
        self.window_bytes += size
        self.last_progress = now

    def pause(self, seconds: float) -> None:
        """Give back ``seconds`` spent waiting on the upstream, not the client."""
        self.window_start += seconds
        self.last_progress += seconds

    def wait_for(self, now: float) -> float:
        """Seconds the reader may wait for the next chunk before calling judge()."""
        until = self.last_progress + self.idle
        if self.min_rate:
            until = min(until, self.window_start + self.window)
        return max(0.0, until - now)

    def judge(self, now: float) -> Verdict:
        """The verdict at ``now``; starts the next window when one has ended."""
        if now - self.last_progress >= self.idle:
            return Verdict.STALLED
        if self.min_rate and now - self.window_start >= self.window:
            if self.window_bytes < self.min_rate * self.window:
                return Verdict.TOO_SLOW
            self.window_start = now
            self.window_bytes = 0
        return Verdict.MOVING

    def describe(self) -> str:
        """The one-line reason for a TOO_SLOW 408."""
        return (f"request body arrived slower than {self.min_rate} bytes/s "
                f"over {self.window:g}s")

"""When ``certgate renew`` renews and how long it sleeps (pure).

Renew at two thirds of the lifetime, as ACME clients do (certbot renews a
90-day certificate with 30 days left; Let's Encrypt's ARI suggests the same
third). For a 24-hour certificate that leaves 8 hours to get through a
network outage or a proxy restart; for a year, four months.

The daemon never sleeps longer than :data:`MAX_SLEEP` at a time: it wakes,
re-reads the files (someone may have renewed them, or the machine slept
through the due time) and decides again. Failures are retried after a delay
that shrinks with the time left, never below :data:`MIN_RETRY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["MAX_SLEEP", "MIN_RETRY", "RENEW_AT", "Plan", "plan", "retry_delay"]

#: The fraction of the lifetime after which a certificate is renewed.
RENEW_AT = 2 / 3
#: Longest single sleep of the daemon (seconds): a suspended laptop or a
#: clock step is noticed within the hour.
MAX_SLEEP = 3600.0
#: Shortest retry after a failure (seconds): a server that refuses is not
#: hammered, a blip is retried soon.
MIN_RETRY = 30.0
#: Longest retry after a failure (seconds).
MAX_RETRY = 900.0


@dataclass(frozen=True, slots=True)
class Plan:
    due: datetime  # when renewal becomes due
    renew_now: bool
    expired: bool


def plan(not_before: datetime, not_after: datetime, now: datetime, *,
         force: bool = False) -> Plan:
    """Whether to renew now, and when it is due."""
    due = not_before + (not_after - not_before) * RENEW_AT
    expired = now >= not_after
    return Plan(due, renew_now=(force or now >= due) and not expired, expired=expired)


def sleep_until(due: datetime, now: datetime) -> float:
    """Seconds to sleep before looking again: until ``due``, at most MAX_SLEEP."""
    return max(1.0, min(MAX_SLEEP, (due - now).total_seconds()))


def retry_delay(not_after: datetime, now: datetime) -> float:
    """Seconds before retrying a failed renewal: a tenth of the time left,
    between MIN_RETRY and MAX_RETRY."""
    left = (not_after - now).total_seconds()
    return max(MIN_RETRY, min(MAX_RETRY, left / 10))


def describe(delta: timedelta) -> str:
    """``3d 4h``, ``2h 5m``, ``40s``: a human span for messages."""
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"

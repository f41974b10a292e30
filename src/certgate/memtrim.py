"""Give the heap freed by a burst of closed connections back to the OS.

Each open TLS connection costs a worker about 40 KiB of small heap
allocations (the ``SSLObject``, its BIOs, h11 state, buffers). When 2,000 of
them close, CPython and OpenSSL free all of it, but glibc keeps freed chunks
that sit below live ones in its arenas: measured with ``benchmarks/soak.py``,
a worker's RSS stayed 85 MB above its baseline after 2,000 held connections
had closed, and only ``malloc_trim(0)`` (which also releases free pages in
the middle of an arena, glibc >= 2.8) brought it back to within 15 MB. It is
retention, not a leak: a second burst reuses the same memory.

So once the number of open connections has fallen far below its recent
peak, a trim is scheduled for a second after the last close of the burst
(each further close pushes it back, for at most :data:`TRIM_MAX_WAIT`), so
a closing burst costs one call and the trim comes after the whole burst has
been freed, not in its middle; a trim of a few hundred MB heap takes
milliseconds.
:class:`TrimPolicy` is the pure decision; :func:`malloc_trim` is the call,
a no-op where the C library has none (musl, macOS).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["TRIM_AFTER", "TrimPolicy", "malloc_trim", "note_closed", "note_opened"]

#: Connections that must have closed since the peak before a trim is worth
#: it: 256 x ~40 KiB is ~10 MiB, half the 20 MB growth issue #11 allows.
TRIM_AFTER = 256
#: Quiet time after a close before the trim, so the rest of a burst lands first.
TRIM_DELAY = 1.0
#: A steady stream of closes still gets its trim this long after it fell due.
TRIM_MAX_WAIT = 5.0


class TrimPolicy:
    """Counts open connections; says when a trim is due."""

    def __init__(self, trim_after: int = TRIM_AFTER) -> None:
        self.trim_after = trim_after
        self.open = 0
        self.peak = 0
        self.due_since: float | None = None  # when the pending trim fell due

    def opened(self) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)

    def closed(self, now: float = 0.0) -> float | None:
        """One connection closed at ``now``; when the trim should run, or None
        while none is due. Each close of a burst pushes the time back, up to
        :data:`TRIM_MAX_WAIT` after the trim fell due."""
        self.open = max(0, self.open - 1)
        if self.peak - self.open < self.trim_after:
            return None
        if self.due_since is None:
            self.due_since = now
        return min(now + TRIM_DELAY, self.due_since + TRIM_MAX_WAIT)

    def trimmed(self) -> None:
        self.peak = self.open
        self.due_since = None


def _load() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _load()


def malloc_trim() -> bool:
    """Release free heap pages to the OS; False where unsupported."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


_POLICY = TrimPolicy()
_pending: asyncio.TimerHandle | None = None


def note_opened() -> None:
    _POLICY.opened()


def note_closed() -> None:
    """Called by the runtime for every closed client connection (on the loop)."""
    global _pending
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    when = _POLICY.closed(loop.time())
    if when is None:
        return
    if _pending is not None:
        if _pending.when() >= when:
            return
        _pending.cancel()
    _pending = loop.call_at(when, _run)


def _run() -> None:
    global _pending
    _pending = None
    malloc_trim()
    _POLICY.trimmed()

"""A TCP server on 127.0.0.1 with a thread per connection, for scripted upstreams.

Tests that need an upstream misbehaving in a precise way (a short body, a
stall, a 101 to anything) script it on a plain socket. The accept loop,
the per-connection threads and the shutdown are the same every time; this
is that part. ``connect(sock, index)`` runs on the accept thread (so
bookkeeping keeps accept order) and returns what the connection's own
thread runs. Bounded: the loop stops at ``stop()`` or after ``lifetime``
seconds, whichever comes first.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

Connect = Callable[[socket.socket, int], Callable[[], None]]


class ThreadedServer:
    def __init__(self, connect: Connect, *, lifetime: float = 300.0) -> None:
        self._connect = connect
        self._lifetime = lifetime
        self.accepted = 0
        self.stopping = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        deadline = time.monotonic() + self._lifetime
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            run = self._connect(sock, self.accepted)
            self.accepted += 1
            thread = threading.Thread(target=run, daemon=True)
            self.threads.append(thread)
            thread.start()

    def stop(self, join: float = 5.0) -> None:
        """Stop accepting, close the listener, wait up to ``join`` s per thread."""
        self.stopping.set()
        self.accepter.join(5)
        self.listener.close()
        for thread in self.threads:
            thread.join(join)

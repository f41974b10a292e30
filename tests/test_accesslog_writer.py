"""The access log's writer thread: every line, in order, written in batches
off the event loop; a stalled reader never blocks a request (issue #15).

These drive :class:`certgate.accesslog.AccessLogger` directly with a real
file and a real FIFO nobody reads; the proxy's own lines are checked end to
end in test_accesslog.py.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from certgate.accesslog import QUEUE_LINES, AccessLogger
from certgate.config.schema import AccessLog, ClientAuth, LogFormat
from certgate.proxy.info import ConnectionInfo

INFO = ConnectionInfo("127.0.0.1:8443", "127.0.0.1", "localhost", ClientAuth.REQUIRE)


def test_every_line_in_order_by_a_clean_stop(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLogger(AccessLog(LogFormat.JSON, str(path)))
    for n in range(5000):
        log.request(INFO, None, None, None, 200 + n % 3, n, n, 0.001, reason=f"r{n}")
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["bytes_in"] for line in lines] == list(range(5000))
    assert json.loads(lines[7])["reason"] == "r7"
    assert log.dropped == 0


def test_combined_lines_are_one_per_request(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLogger(AccessLog(LogFormat.COMBINED, str(path)))
    log.request(INFO, None, None, None, 403, 0, 9, 0.002, reason='a "quoted"\nreason')
    log.close()
    (line,) = path.read_text().splitlines()
    assert line.startswith("127.0.0.1 - - [")
    assert 'reason="a \\x22quoted\\x22\\x0Areason"' in line


def test_a_stalled_reader_drops_lines_instead_of_blocking(tmp_path: Path) -> None:
    """A FIFO whose reader never reads: the pipe fills, the writer thread
    blocks in write(), and request() must still return at once, counting
    what it had to drop. (A blocking request() would hang here until the
    pytest timeout.)"""
    fifo = tmp_path / "stalled"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        log = AccessLogger(AccessLog(LogFormat.JSON, str(fifo)))
        total = 3 * QUEUE_LINES
        for n in range(total):
            log.request(INFO, None, None, None, 200, n, n, 0.0, reason="x" * 200)
        assert log.dropped > 0
        assert log.dropped <= total - QUEUE_LINES
        # Drain in a thread so the writer can finish and close() returns.
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                try:
                    if not os.read(reader, 1 << 16):
                        stop.wait(0.01)
                except BlockingIOError:
                    stop.wait(0.01)

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        log.close()
        stop.set()
        drainer.join(5)
    finally:
        os.close(reader)

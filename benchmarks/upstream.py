"""A fast HTTP/1.1 upstream for the benchmark: raw uvloop protocol, minimal parsing.

Why not h11 (as tests/support/upstream.py uses): an h11 upstream costs about
as much CPU per request as the proxy in front of it, so it would cap the
keep-alive numbers and blur the certgate/nginx ratio. This one finds the end
of the head, reads Content-Length or a chunked body, and answers from
prebuilt bytes, ~10-20 us of CPU per request.

Endpoints:
  /bytes/N   N bytes, written with flow control (pause_writing/resume_writing)
  /__stats   how many connections it has accepted (a proxy's upstream pool
             churn shows up here: a good pool opens a handful, not one per
             request)
  anything   a fixed 2-byte ``ok`` (after consuming any request body)

Run as ``python -m benchmarks.upstream [--port P]``; prints ``ready PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from typing import cast

import uvloop

_OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
_OK_CLOSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n"
             b"connection: close\r\n\r\nok")
_PATTERN = bytes(range(256)) * 1024  # 256 KiB: one write per transport pause check
# A head larger than this is not something the benchmark sends; refuse it
# rather than buffer without bound.
MAX_HEAD = 64 * 1024


class _Chunked:
    """Just enough of RFC 9112 s.7.1 to consume a chunked body (and ignore trailers)."""

    def __init__(self) -> None:
        self.remaining = 0  # bytes of chunk data (+2 for its CRLF) still to skip
        self.done = False
        self.in_trailers = False

    def feed(self, buf: bytearray) -> int:
        """Consume what it can from ``buf``; return how many bytes were used."""
        used = 0
        while not self.done:
            if self.remaining:
                take = min(self.remaining, len(buf) - used)
                used += take
                self.remaining -= take
                if self.remaining:
                    return used
                continue
            end = buf.find(b"\r\n", used)
            if end < 0:
                return used
            line = bytes(buf[used:end])
            used = end + 2
            if self.in_trailers:
                self.done = not line
                continue
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                self.in_trailers = True
            else:
                self.remaining = size + 2
        return used


STATS = {"accepted": 0}


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.body_left = 0  # Content-Length bytes still to consume
        self.chunked: _Chunked | None = None
        self.pending: bytes | None = None  # the response owed once the body is read
        self.close_after = False
        self.stream_left = 0  # /bytes/N still to write
        self._stream_size = 0  # what the pending response promises to stream
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        STATS["accepted"] += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._process()

    def _process(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.buf and self.stream_left == 0:
            if self.body_left:
                take = min(self.body_left, len(self.buf))
                del self.buf[:take]
                self.body_left -= take
                if self.body_left:
                    return
                self._respond()
                continue
            if self.chunked is not None:
                del self.buf[:self.chunked.feed(self.buf)]
                if not self.chunked.done:
                    return
                self.chunked = None
                self._respond()
                continue
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    transport.close()
                return
            head = bytes(self.buf[:end]).lower()
            del self.buf[:end + 4]
            self._start(head)
            if not self.body_left and self.chunked is None:
                self._respond()

    def _start(self, head: bytes) -> None:
        """Note what the request needs: a body to consume, and which response."""
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        parts = request_line.split(b" ")
        path = parts[1] if len(parts) > 1 else b"/"
        self.close_after = b"\nconnection: close" in head
        if b"\ntransfer-encoding: chunked" in head:
            self.chunked = _Chunked()
        else:
            at = head.find(b"\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 1)
                self.body_left = int(head[at + 16: stop if stop >= 0 else None])
        if path.startswith(b"/bytes/"):
            size = int(path[7:].split(b"?", 1)[0])
            self.pending = (b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                            b"content-length: %d\r\n\r\n" % size)
            self._stream_size = size
        elif path == b"/__stats":
            STATS["accepted"] -= 1  # the stats connections themselves do not count
            body = b"%d" % STATS["accepted"]
            self.pending = (b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)) + body
            self._stream_size = 0
        else:
            self.pending = _OK_CLOSE if self.close_after else _OK
            self._stream_size = 0

    def _respond(self) -> None:
        transport = self.transport
        assert transport is not None
        assert self.pending is not None
        transport.write(self.pending)
        self.pending = None
        if self._stream_size:
            self.stream_left = self._stream_size
            self._stream()
        elif self.close_after:
            transport.close()

    def _stream(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.stream_left and not self.paused:
            n = min(len(_PATTERN), self.stream_left)
            transport.write(_PATTERN[:n] if n < len(_PATTERN) else _PATTERN)
            self.stream_left -= n
        if not self.stream_left:
            if self.close_after:
                transport.close()
            elif self.buf:
                self._process()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.stream_left:
            self._stream()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, "127.0.0.1", port, backlog=1024)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        uvloop.run(serve(args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()

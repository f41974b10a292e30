"""An upstream that misbehaves on request, for :mod:`benchmarks.soak`.

Runs on its own event loop in a thread of the soak process, on 127.0.0.1.
Paths (the rest of the target is ignored):

* ``/ok``: ``200`` with ``ok``.
* ``/upload``: reads a Content-Length body, then ``200``; a client that goes
  away mid-body just ends the connection.
* ``/reset``: announces 100,000 bytes, sends 1,000, then resets the
  connection (``SO_LINGER`` 0: an RST, not a FIN).
* ``/short``: announces 100 bytes, sends 10, closes (FIN).
* ``/long``: announces 10 bytes, sends 100 and keeps the connection open,
  so the surplus sits where the next response would start.
* ``/ws``: answers a WebSocket handshake with ``101``, reads the first
  bytes, then resets the connection.
* ``/ws-hold``: ``101``, then reads until the other side goes away.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import struct
import threading

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            path = lines[0].split(b" ")[1].partition(b"?")[0]
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
            length = int(fields.get(b"content-length", b"0") or 0)
            if path == b"/upload":
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            elif path == b"/reset":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"r" * 1000)
                await writer.drain()
                _reset(writer)
                return
            elif path == b"/short":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 10)
                await writer.drain()
                writer.close()
                return
            elif path == b"/long":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"L" * 100)
            elif path in (b"/ws", b"/ws-hold"):
                key = fields.get(b"sec-websocket-key", b"")
                accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                             b"\r\n\r\n")
                await writer.drain()
                if path == b"/ws":
                    await reader.read(1)
                    _reset(writer)
                    return
                while await reader.read(65536):
                    pass
                writer.close()
                return
            else:
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
            IndexError, ValueError):
        writer.transport.abort()


class FaultUpstream:
    """Start with :meth:`start`, read :attr:`port`, stop with :meth:`stop`."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-upstream", daemon=True)
        self._server: asyncio.Server | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(_handle, "127.0.0.1", 0, backlog=4096)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    def start(self) -> FaultUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("fault upstream did not start within 10 s")
        return self

    def stop(self) -> None:
        def close() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(10)

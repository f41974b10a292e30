"""A real HTTP/1.1 upstream for tests, on 127.0.0.1, in its own thread.

Endpoints (by path prefix):
  /echo      JSON of the request: method, path, headers (lists), body sha256 + size
  /bytes/N   N bytes of a repeating pattern, streamed in 64 KiB chunks
  /upload    consumes the body, answers its sha256 and size
  /sse       three server-sent events; the third only after /sse-release is hit
  /range     a 1000-byte resource honouring Range: bytes=a-b (206 + Content-Range)
  /slow      never answers (for 504 tests)
  /status/N  answers status N with an empty body
Every request received is recorded in ``requests`` (method, path, headers).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass, field

import h11

PATTERN = bytes(range(256)) * 256  # 64 KiB


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]


@dataclass
class Upstream:
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    sse_release: threading.Event = field(default_factory=threading.Event)
    loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None

    def start(self) -> Upstream:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self._server = self.loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "upstream did not start"
        return self

    def stop(self) -> None:
        if self.loop is None:
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            self.sse_release.set()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self._thread is not None
        self._thread.join(5)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await self._next(conn, reader)
                if not isinstance(event, h11.Request):
                    return
                seen = Seen(event.method.decode(), event.target.decode(),
                            [(n.decode(), v.decode("latin-1")) for n, v in event.headers])
                self.requests.append(seen)
                await self._respond(conn, reader, writer, event, seen)
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    return
        except (ConnectionError, h11.RemoteProtocolError):
            return
        finally:
            writer.close()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader) -> object:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            return event

    async def _body(self, conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        while True:
            event = await self._next(conn, reader)
            if isinstance(event, h11.Data):
                digest.update(event.data)
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return digest.hexdigest(), size
            else:
                raise ConnectionError("client went away")

    async def _respond(self, conn: h11.Connection, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, req: h11.Request, seen: Seen) -> None:
        def send(event: object) -> None:
            data = conn.send(event)  # type: ignore[arg-type]
            if data:
                writer.write(data)

        path = seen.path
        if path.startswith("/slow"):
            await asyncio.sleep(3600)
        if path.startswith("/bytes/"):
            await self._body(conn, reader)
            total = int(path.split("/")[2].split("?")[0])
            send(h11.Response(status_code=200, headers=[
                ("content-length", str(total)), ("content-type", "application/octet-stream")]))
            sent = 0
            while sent < total:
                chunk = PATTERN[: min(len(PATTERN), total - sent)]
                send(h11.Data(data=chunk))
                sent += len(chunk)
                await writer.drain()
            send(h11.EndOfMessage())
            await writer.drain()
            return
        if path.startswith("/sse-release"):
            await self._body(conn, reader)
            self.sse_release.set()
            send(h11.Response(status_code=204, headers=[]))
            send(h11.EndOfMessage())
            await writer.drain()
            return
        if path.startswith("/sse"):
            await self._body(conn, reader)
            send(h11.Response(status_code=200, headers=[("content-type", "text/event-stream"),
                                                        ("cache-control", "no-cache")]))
            for i in range(2):
                send(h11.Data(data=f"data: event {i}\n\n".encode()))
                await writer.drain()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.sse_release.wait, 30)
            send(h11.Data(data=b"data: last\n\n"))
            send(h11.EndOfMessage())
            await writer.drain()
            return
        if path.startswith("/range"):
            await self._body(conn, reader)
            resource = bytes(i % 251 for i in range(1000))
            headers = dict(seen.headers)
            rng = headers.get("range")
            if rng and rng.startswith("bytes="):
                first, _, last = rng[6:].partition("-")
                a, b = int(first), int(last or 999)
                part = resource[a : b + 1]
                send(h11.Response(status_code=206, headers=[
                    ("content-range", f"bytes {a}-{b}/1000"),
                    ("content-length", str(len(part))), ("accept-ranges", "bytes")]))
                send(h11.Data(data=part))
            else:
                send(h11.Response(status_code=200, headers=[
                    ("content-length", "1000"), ("accept-ranges", "bytes")]))
                send(h11.Data(data=resource))
            send(h11.EndOfMessage())
            await writer.drain()
            return
        if path.startswith("/status/"):
            await self._body(conn, reader)
            send(h11.Response(status_code=int(path.split("/")[2]), headers=[
                ("content-length", "0")]))
            send(h11.EndOfMessage())
            await writer.drain()
            return
        digest, size = await self._body(conn, reader)
        body = json.dumps({"method": seen.method, "path": seen.path, "headers": seen.headers,
                           "sha256": digest, "size": size}).encode()
        send(h11.Response(status_code=200, headers=[
            ("content-type", "application/json"), ("content-length", str(len(body)))]))
        if req.method != b"HEAD":
            send(h11.Data(data=body))
        send(h11.EndOfMessage())
        await writer.drain()

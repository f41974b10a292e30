"""Real TLS clients for tests: an ssl socket speaking HTTP/1.1 through h11."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import h11

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def client_context(root: Path, cert: Path | None = None, key: Path | None = None,
                   version: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(root))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[version]
    return ctx


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One TLS connection; send requests (raw or built) and read responses."""

    def __init__(self, port: int, ctx: ssl.SSLContext, sni: str | None = "localhost",
                 timeout: float = 10.0, session: ssl.SSLSession | None = None,
                 check_hostname: bool = True) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if sni is None or not check_hostname:
            ctx.check_hostname = False
        self.sock = ctx.wrap_socket(raw, server_hostname=sni, session=session)
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, target: str, host: str = "localhost",
                headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> Response:
        all_headers = [("host", host), *(headers or [])]
        if body:
            all_headers.append(("content-length", str(len(body))))
        data = self.h11.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            data += self.h11.send(h11.Data(data=body))
        data += self.h11.send(h11.EndOfMessage())
        self.sock.sendall(data)
        return self.read_response()

    def read_response(self) -> Response:
        status = 0
        headers: dict[str, str] = {}
        body = bytearray()
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise ConnectionError(f"server closed or broke the connection: {exc}") from exc
            if event is h11.NEED_DATA:
                try:
                    data = self.sock.recv(65536)
                except (ConnectionResetError, ssl.SSLEOFError):
                    data = b""
                self.h11.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {n.decode(): v.decode("latin-1") for n, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return Response(status, headers, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("server closed the connection")

    def read_raw_until_close(self, limit: int = 1 << 20) -> bytes:
        out = bytearray()
        while len(out) < limit:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

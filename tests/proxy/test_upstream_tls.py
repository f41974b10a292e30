"""An https:// upstream: certgate verifies it and presents its own client cert."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from pathlib import Path

import h11
import pytest

from support.clients import Connection


class TLSUpstream:
    """A one-thread HTTPS server that requires a client certificate and echoes its CN."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.peer_cns: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    cert = tls.getpeercert() or {}
                    cn = dict(x[0] for x in cert.get("subject", ()))["commonName"]
                    self.peer_cns.append(cn)
                    self._answer(tls, cn)
            except (OSError, ssl.SSLError, KeyError):
                continue

    @staticmethod
    def _answer(tls: ssl.SSLSocket, cn: str) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(tls.recv(65536))
                continue
            if isinstance(event, h11.EndOfMessage):
                break
        body = json.dumps({"upstream_saw_cn": cn}).encode()
        tls.sendall(conn.send(h11.Response(status_code=200, headers=[
            ("content-length", str(len(body))), ("connection", "close")])) + conn.send(
            h11.Data(data=body)) + conn.send(h11.EndOfMessage()))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def tls_upstream(pki, tmp_path: Path):  # type: ignore[no-untyped-def]
    cert_path, key_path = pki.ca.ensure_server_certificate(["127.0.0.1", "upstream.test"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_path), str(key_path))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(pki.ca.trust_bundle_path))
    server = TLSUpstream(ctx)
    yield server
    server.stop()


def test_https_upstream_with_upstream_mtls(start_certgate, pki, tls_upstream):
    bob = pki["bob"]  # certgate's own client identity towards the upstream
    proxy = start_certgate(f"""
state_dir: {{state}}
listen: ["127.0.0.1:0"]
routes:
  - host: localhost
    upstream: https://127.0.0.1:{tls_upstream.port}
    upstream_tls: {{ca: {pki.ca.trust_bundle_path}, cert: {bob.cert}, key: {bob.key},
                   server_name: upstream.test}}
""")
    with Connection(proxy.port, pki.context("alice")) as conn:
        response = conn.request("GET", "/")
    assert response.status == 200
    assert json.loads(response.body) == {"upstream_saw_cn": "bob"}


def test_https_upstream_with_wrong_ca_is_502(start_certgate, pki, tls_upstream):
    bob = pki["bob"]
    proxy = start_certgate(f"""
state_dir: {{state}}
listen: ["127.0.0.1:0"]
routes:
  - host: localhost
    upstream: https://127.0.0.1:{tls_upstream.port}
    upstream_tls: {{ca: {pki.other_ca_root}, cert: {bob.cert}, key: {bob.key},
                   server_name: upstream.test}}
""")
    with Connection(proxy.port, pki.context("alice")) as conn:
        response = conn.request("GET", "/")
    assert response.status == 502
    assert b"TLS to upstream" in response.body
    assert tls_upstream.peer_cns == []

"""``bytes_in`` (access log) and ``certgate_bytes_total{direction="in"}``
count each request's bytes as the client sent them: request line, headers
and body, chunked framing included (nginx's ``$request_length``).

They used to start counting after the head had been read, so the head and
every body byte that arrived with it went uncounted: a small POST logged 0,
a 200,000-byte upload 134,464 (newcomer trial, session 7). Requests are
built here byte by byte over a real TLS connection, so the expected count
is exact; pipelined requests (several in one write) must each get their own
bytes, whichever path their body took (h11's events, or the transport-to-
transport relay of a Content-Length body, where the bytes past the body go
back to h11).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import h11
import pytest

from support.clients import Connection, Response
from support.process import CertgateProcess, wait_until
from support.upstream import Upstream

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - {host: localhost, path: /who, upstream: whoami}
  - {host: localhost, upstream: "http://127.0.0.1:%(port)d", timeouts: {read: 5s},
     rules: [{path: /admin/*, allow: ["role:nobody"]}]}
"""


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST %b HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n%b\r\n"
            % (path.encode(), len(body), extra)) + body


def get(path: str) -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n" % path.encode()


def chunked(path: str, chunks: list[bytes]) -> bytes:
    framed = b"".join(b"%x;ext=1\r\n%b\r\n" % (len(c), c) for c in chunks)
    return (b"POST %b HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            % path.encode()) + framed + b"0\r\nX-Trailer: t\r\n\r\n"


def next_response(conn: Connection) -> Response:
    """The next response to raw-sent requests (a fresh client h11 each
    time, keeping what was already received past the last response)."""
    leftover, _ = conn.h11.trailing_data
    conn.h11 = h11.Connection(h11.CLIENT)
    if leftover:
        conn.h11.receive_data(leftover)
    return conn.read_response()


def lines(proxy: CertgateProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in proxy.stdout_lines if line.startswith("{")]


def bytes_in_by_path(proxy: CertgateProcess, paths: list[str]) -> dict[str, object]:
    def logged() -> bool:
        return {str(e["path"]) for e in lines(proxy)} >= set(paths)

    wait_until(logged, 10, f"access-log lines for {paths}")
    return {str(e["path"]): e["bytes_in"] for e in lines(proxy) if e["path"] in paths}


def send_in_pieces(conn: Connection, data: bytes, pieces: int) -> None:
    step = max(1, len(data) // pieces)
    for at in range(0, len(data), step):
        conn.send_raw(data[at:at + step])
        time.sleep(0.01)  # separate reads, so the body takes the relay path


@pytest.fixture
def proxy(start_certgate, upstream: Upstream) -> CertgateProcess:  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"port": upstream.port})  # type: ignore[no-any-return]


def test_a_small_post_counts_its_head_and_body(proxy, pki):  # type: ignore[no-untyped-def]
    request = post("/echo/small", b"hello=world")
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(request)
        answer = next_response(conn)
    assert json.loads(answer.body)["size"] == 11
    assert bytes_in_by_path(proxy, ["/echo/small"]) == {"/echo/small": len(request)}


def test_a_get_without_body_counts_its_head(proxy, pki):  # type: ignore[no-untyped-def]
    request = get("/echo/get")
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(request)
        assert next_response(conn).status == 200
    assert bytes_in_by_path(proxy, ["/echo/get"]) == {"/echo/get": len(request)}


@pytest.mark.parametrize("pieces", [1, 20])
def test_a_large_upload_counts_every_byte(proxy, pki, pieces):  # type: ignore[no-untyped-def]
    """> 64 KiB: the part past the first reads is relayed transport to
    transport, and one request follows on the same connection."""
    body = bytes(range(256)) * 800  # 204,800 bytes
    request = post(f"/upload/{pieces}", body)
    after = get(f"/echo/after-{pieces}")
    with Connection(proxy.port, pki.context("alice")) as conn:
        send_in_pieces(conn, request, pieces)
        assert json.loads(next_response(conn).body)["size"] == len(body)
        conn.send_raw(after)
        assert next_response(conn).status == 200
    seen = bytes_in_by_path(proxy, [f"/upload/{pieces}", f"/echo/after-{pieces}"])
    assert seen == {f"/upload/{pieces}": len(request), f"/echo/after-{pieces}": len(after)}


@pytest.mark.parametrize("pieces", [1, 9])
def test_a_chunked_upload_counts_its_framing(proxy, pki, pieces):  # type: ignore[no-untyped-def]
    chunks = [b"a" * 10, b"b" * 40_000, b"c" * 30_000, b"d"]
    request = chunked(f"/echo/chunked-{pieces}", chunks)
    with Connection(proxy.port, pki.context("alice")) as conn:
        send_in_pieces(conn, request, pieces)
        assert json.loads(next_response(conn).body)["size"] == sum(map(len, chunks))
    assert bytes_in_by_path(proxy, [f"/echo/chunked-{pieces}"]) == {
        f"/echo/chunked-{pieces}": len(request)}


def test_pipelined_requests_each_count_their_own_bytes(proxy, pki):  # type: ignore[no-untyped-def]
    """All in one write: a small POST, a GET, a chunked POST, a relayed
    upload whose last bytes arrive with the next request, and a GET."""
    big = b"u" * 150_000
    requests = {
        "/echo/p1": post("/echo/p1", b"x=1&y=2"),
        "/echo/p2": get("/echo/p2"),
        "/echo/p3": chunked("/echo/p3", [b"abc", b"defgh"]),
        "/echo/p4": get("/echo/p4"),
    }
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(b"".join(requests.values()))
        statuses = [next_response(conn).status for _ in requests]
        big_request = post("/upload/p5", big)
        last = get("/echo/p6")
        conn.send_raw(big_request[:1000])
        time.sleep(0.05)  # the rest of the body is relayed, with p6 behind it
        conn.send_raw(big_request[1000:] + last)
        statuses += [next_response(conn).status, next_response(conn).status]
    assert statuses == [200] * 6
    requests.update({"/upload/p5": big_request, "/echo/p6": last})
    assert bytes_in_by_path(proxy, list(requests)) == {p: len(r) for p, r in requests.items()}


def test_a_builtin_service_counts_the_body_it_read(proxy, pki):  # type: ignore[no-untyped-def]
    """The whoami/enrollment/console path reads bodies itself (enrollment
    POSTs logged 0)."""
    request = post("/who/am-i", b"csr=...&pin=...")
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(request + get("/echo/behind"))
        assert next_response(conn).status == 200
        assert next_response(conn).status == 200
    assert bytes_in_by_path(proxy, ["/who/am-i", "/echo/behind"]) == {
        "/who/am-i": len(request), "/echo/behind": len(get("/echo/behind"))}


def test_a_refused_request_counts_its_own_bytes_not_the_next_ones(  # type: ignore[no-untyped-def]
        proxy, pki):
    """A 403 keeps the connection: the GET pipelined behind it is its own line."""
    refused, behind = get("/admin/x"), get("/echo/after-403")
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(refused + behind)
        assert next_response(conn).status == 403
        assert next_response(conn).status == 200
    assert bytes_in_by_path(proxy, ["/admin/x", "/echo/after-403"]) == {
        "/admin/x": len(refused), "/echo/after-403": len(behind)}


def test_a_malformed_head_that_closes_counts_what_arrived(proxy, pki):  # type: ignore[no-untyped-def]
    """Refused and closed: nothing after it is ever read as a request, so
    its line counts everything that came (an attacker's bytes show up in
    the log and the metric rather than nowhere)."""
    sent = b"GET /x HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n" + get("/echo/never")
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(sent)
        assert conn.read_raw_until_close().startswith(b"HTTP/1.1 400 ")

    def refused() -> list[dict[str, object]]:
        return [e for e in lines(proxy) if e["status"] == 400]

    wait_until(refused, 10, "the 400 line")
    assert refused()[0]["bytes_in"] == len(sent)


def test_the_bytes_metric_is_the_sum_of_the_logged_bytes_in(  # type: ignore[no-untyped-def]
        start_certgate, pki, upstream):
    proxy = start_certgate(CONFIG % {"port": upstream.port}
                           + 'metrics: {listen: "127.0.0.1:0"}\n')
    sent = [post("/echo/m1", b"k=v"), get("/echo/m2"), chunked("/echo/m3", [b"z" * 5000]),
            post("/upload/m4", b"q" * 100_000)]
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(b"".join(sent))
        for _ in sent:
            assert next_response(conn).status == 200
    logged = bytes_in_by_path(proxy, ["/echo/m1", "/echo/m2", "/echo/m3", "/upload/m4"])
    assert sum(logged.values()) == sum(map(len, sent))  # type: ignore[arg-type]
    found: list[int] = []

    def listening() -> bool:
        match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", proxy.log_text())
        if match:
            found.append(int(match.group(1)))
        return bool(found)

    wait_until(listening, 10, "the metrics listener to start")
    with urllib.request.urlopen(f"http://127.0.0.1:{found[0]}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    match = re.search(r'^certgate_bytes_total\{direction="in"\} (\S+)$', text, re.MULTILINE)
    assert match is not None, text
    assert float(match.group(1)) == sum(map(len, sent))

"""Issue #11 finding 7: no request or certificate byte can forge an access-log line.

A real proxy writes its access log to a file (read as bytes, so a CR is seen
as a CR, not folded by text mode). The client certificate, from an
independent CA trusted in the config, has the CN ``evil\\r\\nX-Client-Roles:
ops" reason="forged``; raw requests carry ``"`` and ``\\`` in the path and
hostile User-Agent and Referer values. Each request must give exactly one
line that the combined format's regex reads, and whose escaped fields
(``\\xHH``, as nginx writes them) decode back to exactly what was sent; the
JSON format must keep giving the exact values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certgate.accesslog import combined_line

from support.clients import Connection, client_context
from support.process import wait_until
from support.rogue_pki import RogueCA

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
access_log: {format: %(format)s, path: "%(log)s"}
client_auth:
  trusted_cas: [builtin, %(ca)s]
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%(port)d"
    client_auth: optional
    rules:
      - {path: /admin/*, allow: ["role:nobody-has-this"]}
"""

EVIL_CN = 'evil\r\nX-Client-Roles: ops" reason="forged\\ \u00fc\x01'

FIELD = rb"(?:[\x21-\x5b\x5d-\x7e]|\\x[0-9A-F]{2})+"  # no space, quote or raw backslash
QUOTED = rb'(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\x[0-9A-F]{2})*'  # no quote or raw backslash
COMBINED = re.compile(
    rb"(?P<ip>" + FIELD + rb") - (?P<cn>" + FIELD + rb") \[(?P<time>[0-9TZ:-]+)\] "
    rb'"(?P<method>' + FIELD + rb") (?P<path>" + FIELD + rb') HTTP/1\.1" '
    rb"(?P<status>\d{3}) (?P<bytes>\d+) host=(?P<host>" + FIELD + rb") "
    rb"serial=(?P<serial>" + FIELD + rb") fp=(?P<fp>" + FIELD + rb") "
    rb"dur_ms=(?P<dur>[0-9.]+) upstream=(?P<upstream>" + FIELD + rb")"
    rb'(?: reason="(?P<reason>' + QUOTED + rb')")?'
)


def unescape(field: bytes) -> str:
    return re.sub(rb"\\x([0-9A-F]{2})", lambda m: bytes([int(m[1], 16)]), field).decode()


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[RogueCA, Path, Path]:
    ca = RogueCA.create(tmp_path_factory.mktemp("log-ca"))
    leaf = ca.leaf("evil", EVIL_CN)
    return ca, leaf.cert, leaf.key


def _log_lines(path: Path, count: int) -> list[bytes]:
    def enough() -> bool:
        return path.exists() and path.read_bytes().count(b"\n") >= count

    wait_until(enough, 10, f"{count} access-log lines")
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def _traffic(port: int, root: Path, cert: Path, key: Path, version: str = "1.3") -> int:
    """A 200, a 403 whose reason names the CN, and a raw request with hostile
    path, User-Agent and Referer bytes; returns the raw request's status."""
    with Connection(port, client_context(root, cert, key, version=version)) as conn:
        assert conn.request("GET", "/hello").status == 200
        assert conn.request("GET", "/admin/x").status == 403
        conn.send_raw(b'GET /a"b\\c/%22?q="x" HTTP/1.1\r\nHost: localhost\r\n\r\n')
        status = conn.read_response().status
    with Connection(port, client_context(root, cert, key, version=version)) as conn:
        # Whether certgate forwards or refuses these bytes, the line is one line.
        conn.send_raw(b'GET /ua HTTP/1.1\r\nHost: localhost\r\n'
                      b'User-Agent: ua" reason="forged\\ \x01\xff\r\n'
                      b'Referer: https://x/"\r\n\r\n')
        conn.read_response()
    return status


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_combined_lines_cannot_be_forged(start_certgate, upstream, pki, rogue, tmp_path,  # type: ignore[no-untyped-def]
                                         version):
    ca, cert, key = rogue
    log = tmp_path / "access.log"
    proxy = start_certgate(CONFIG % {"format": "combined", "log": log, "ca": ca.cert_path,
                                     "port": upstream.port})
    raw_status = _traffic(proxy.port, pki.root, cert, key, version)
    lines = _log_lines(log, 4)
    assert len(lines) == 4, lines
    assert b"\r" not in log.read_bytes()
    parsed = []
    for line in lines:
        match = COMBINED.fullmatch(line)
        assert match is not None, line
        parsed.append(match)
    ok, denied, odd, _ua = parsed
    for match in parsed:
        assert unescape(match["cn"]) == EVIL_CN
    assert unescape(ok["path"]) == "/hello"
    assert ok["status"] == b"200"
    assert denied["status"] == b"403"
    reason = unescape(denied["reason"])
    assert "not allowed on this path" in reason
    assert reason.count('"') == EVIL_CN.count('"')  # the CN's quotes, none of the log's
    assert int(odd["status"]) == raw_status
    assert unescape(odd["path"]).startswith(('/a"b\\c/', "/a%22b"))
    assert b"forged" not in b"".join(m["path"] for m in parsed)


def test_json_lines_keep_exact_values(start_certgate, upstream, pki, rogue, tmp_path):  # type: ignore[no-untyped-def]
    ca, cert, key = rogue
    log = tmp_path / "access.json"
    proxy = start_certgate(CONFIG % {"format": "json", "log": log, "ca": ca.cert_path,
                                     "port": upstream.port})
    _traffic(proxy.port, pki.root, cert, key)
    entries = [json.loads(line) for line in _log_lines(log, 4)]
    assert [e["cn"] for e in entries] == [EVIL_CN] * 4
    assert [e["status"] for e in entries][:2] == [200, 403]


# No lone surrogates: certificate and request text never holds one.
TEXT = st.text(alphabet=st.one_of(st.sampled_from(list('"\\ -[]=\r\n\x00\x7f')),
                                  st.characters(exclude_categories=("Cs",))), max_size=30)


@given(cn=TEXT, path=TEXT, host=TEXT, method=TEXT, reason=TEXT)
@settings(max_examples=300, deadline=None)
def test_any_field_values_give_one_parsable_line(cn: str, path: str, host: str, method: str,
                                                 reason: str) -> None:
    entry = {"time": "2026-01-01T00:00:00Z", "client_ip": "127.0.0.1", "cn": cn,
             "serial": "1f", "fingerprint": "ab" * 32, "host": host, "method": method,
             "path": path, "status": 403, "bytes_out": 0, "duration_ms": 0.5,
             "upstream": None, "reason": reason}
    line = combined_line(entry).encode("ascii")
    match = COMBINED.fullmatch(line)
    assert match is not None, line
    for name, sent in (("cn", cn), ("path", path), ("host", host), ("method", method)):
        assert unescape(match[name]) == (sent or "-")
    assert unescape(match["reason"] or b"") == reason

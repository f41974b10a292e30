"""One access-log line per request: identity, outcome, never the query string."""

from __future__ import annotations

import json

from support.clients import Connection
from support.process import wait_until

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
routes:
  - {host: localhost, upstream: whoami, client_auth: optional,
     rules: [{path: /admin/*, allow: ["role:nobody-has-this"]}]}
"""


def _entries(proxy) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    return [json.loads(line) for line in proxy.stdout_lines if line.startswith("{")]


def test_access_log_lines(start_certgate, pki):
    proxy = start_certgate(CONFIG)
    alice = pki["alice"]
    with Connection(proxy.port, pki.context("alice")) as conn:
        assert conn.request("GET", "/hello?token=s3cret").status == 200
        assert conn.request("GET", "/admin/x").status == 403
    wait_until(lambda: len(_entries(proxy)) >= 2, 5, "two access-log lines")
    ok, denied = _entries(proxy)[:2]
    assert ok["status"] == 200
    assert ok["path"] == "/hello"
    assert ok["cn"] == "alice"
    assert ok["serial"] == format(alice.serial, "x")
    assert ok["fingerprint"] == alice.fingerprint
    assert ok["client_ip"] == "127.0.0.1"
    assert ok["upstream"] == "whoami"
    assert denied["status"] == 403
    assert "not allowed" in str(denied["reason"])
    assert not any("s3cret" in line for line in proxy.stdout_lines)
    assert not any("BEGIN" in line for line in proxy.stdout_lines)

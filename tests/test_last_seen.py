"""Last seen (issue #13): a running certgate records each built-in certificate's
last use, batched, and ``ca list`` / ``ca show`` report it.

Real certgate subprocesses, real TLS clients with certgate-issued
certificates; every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from certgate.lastseen import DATABASE, FLUSH_ENV, MAX_TEXT

from support.clients import Connection, client_context
from support.process import free_port, wait_until

FAST = {FLUSH_ENV: "0.3"}


def _ca(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "certgate", "ca", *args, "--state", str(state)],
                            capture_output=True, text=True, check=False, cwd=state.parent,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def _rows(state: Path, *args: str) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(_ca(state, "list", "--json", *args).stdout)}


def _config(state: Path, port: int = 0, workers: int = 1) -> str:
    return f"""
state_dir: {state}
listen: ["127.0.0.1:{port}"]
workers: {workers}
client_auth: {{trusted_cas: [builtin], crls: [builtin]}}
routes:
  - {{host: localhost, upstream: whoami}}
  - {{host: localhost, path: /open, upstream: whoami, client_auth: optional}}
"""


@pytest.fixture
def devices(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    state = tmp_path / "state"
    _ca(state, "init")
    for name in ("phone", "laptop", "drawer"):
        _ca(state, "issue", name, "--role", "family", "--out", str(tmp_path))

    def context(name: str):  # type: ignore[no-untyped-def]
        return client_context(state / "ca" / "root.crt", tmp_path / f"{name}.chain.pem",
                              tmp_path / f"{name}.key")

    return state, {"context": context}


def _get(port: int, ctx: Any, path: str = "/", agent: str | None = None) -> int:
    headers = [("user-agent", agent)] if agent is not None else []
    with Connection(port, ctx, timeout=10) as conn:
        return conn.request("GET", path, headers=headers).status


def _get_raw(port: int, ctx: Any, agent: bytes) -> bytes:
    """A request whose User-Agent bytes go out exactly as given."""
    with Connection(port, ctx, timeout=10) as conn:
        conn.send_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: " + agent
                      + b"\r\nConnection: close\r\n\r\n")
        return conn.read_raw_until_close()


def test_a_request_shows_up_in_ca_list_within_a_minute(devices, start_certgate):
    state, clients = devices
    inventory = state / "ca" / "inventory.sqlite3"
    wal = inventory.with_name(inventory.name + "-wal")
    proxy = start_certgate(_config(state), env=FAST)
    before = {p: os.stat(p).st_mtime_ns for p in (inventory, wal) if p.exists()}
    started = time.time()
    assert _get(proxy.port, clients["context"]("phone"), "/open/x", "HomeAssistant/2024.5") == 200
    row = wait_until(lambda: _rows(state)["phone"]["last_seen"] and _rows(state)["phone"],
                     60, "phone's last_seen in ca list --json")
    assert isinstance(row, dict)
    seen = time.mktime(time.strptime(row["last_seen"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert started - 1 <= seen <= time.time() + 1
    assert row["last_ip"] == "127.0.0.1"
    assert row["last_user_agent"] == "HomeAssistant/2024.5"
    assert row["last_route"] == "localhost/open"
    assert row["roles"] == ["family"]
    never = _rows(state)["laptop"]
    assert [never[k] for k in ("last_seen", "last_ip", "last_user_agent", "last_route")] \
        == [None] * 4
    # The flush writes its own file, never the inventory the revocation
    # watcher polls (a write there would reload roles in every worker).
    assert {p: os.stat(p).st_mtime_ns for p in (inventory, wal) if p.exists()} == before
    assert (state / DATABASE).stat().st_mode & 0o777 == 0o600
    table = _ca(state, "list").stdout.splitlines()
    assert "LAST SEEN" in table[0]
    assert any(line.startswith("phone") and row["last_seen"] in line for line in table)
    assert any(line.startswith("laptop") and line.rstrip().endswith("never") for line in table)
    shown = json.loads(_ca(state, "show", "phone", "--json").stdout)
    assert shown["last_seen"] == row["last_seen"]
    assert shown["certificates"][0]["serial"] == row["serial"]
    assert shown["certificates"][0]["last_route"] == "localhost/open"
    text = _ca(state, "show", "phone").stdout
    assert "HomeAssistant/2024.5" in text
    assert row["serial"] in text


def test_only_honoured_builtin_certificates_are_recorded(devices, start_certgate, pki):
    """An anonymous request, a revoked certificate and another CA's are not "uses"."""
    state, clients = devices
    _ca(state, "revoke", "drawer")  # before the start: no request of it ever passes
    proxy = start_certgate(_config(state), env=FAST)
    try:
        refused = _get(proxy.port, clients["context"]("drawer")) == 403
    except (ConnectionError, OSError):  # refused in the handshake (an alert)
        refused = True
    assert refused
    anonymous = client_context(state / "ca" / "root.crt")
    assert _get(proxy.port, anonymous, "/open/") == 200
    assert _get(proxy.port, clients["context"]("laptop"), "/", "marker") == 200
    wait_until(lambda: _rows(state)["laptop"]["last_seen"], 60, "laptop's last_seen")
    assert _rows(state)["drawer"]["last_seen"] is None


HOSTILE = [
    # a C1 CSI (U+009B) in UTF-8, a bidi override, and markup
    "Mozilla/5.0 \u009b31m \u202eevil\u202c <script>alert(1)</script>".encode(),
    # raw bytes that are not UTF-8: 0x9b alone is the 8-bit CSI
    b"curl \x9b2J\xff\xfe",
    # far past the stored length (the head limit is 16 KiB)
    b"A" * 12000,
]


@pytest.mark.parametrize("agent", HOSTILE, ids=["c1-bidi-script", "raw-8bit", "huge"])
def test_a_hostile_user_agent_is_stored_cut_and_printed_safely(devices, start_certgate,
                                                               agent):
    state, clients = devices
    proxy = start_certgate(_config(state), env=FAST)
    assert b" 200 " in _get_raw(proxy.port, clients["context"]("phone"), agent)[:20]
    stored = wait_until(lambda: _rows(state)["phone"]["last_user_agent"], 60,
                        "the User-Agent to be stored")
    assert isinstance(stored, str)
    assert 0 < len(stored) <= MAX_TEXT
    assert not [ch for ch in stored if unicodedata.category(ch) in ("Cc", "Cf")]
    if b"<script>" in agent:
        assert "<script>alert(1)</script>" in stored  # kept as text; HTML must escape it
    for args in (("list",), ("show", "phone"), ("list", "--stale", "1s")):
        out = _ca(state, *args).stdout
        assert not [ch for ch in out if unicodedata.category(ch) in ("Cc", "Cf")
                    and ch != "\n"], args


def test_an_escape_in_the_user_agent_is_refused_and_never_stored(devices, start_certgate):
    """ESC is a control character in a header value: 400 before anything else;
    the certificate was still used, and what is stored is harmless."""
    state, clients = devices
    proxy = start_certgate(_config(state), env=FAST)
    reply = _get_raw(proxy.port, clients["context"]("phone"), b"x\x1b]0;owned\x07\x1b[2J")
    assert b" 400 " in reply[:20]
    stored = wait_until(lambda: _rows(state)["phone"]["last_seen"] and _rows(state)["phone"],
                        60, "the use to be stored")
    assert isinstance(stored, dict)
    assert "\x1b" not in stored["last_user_agent"]
    assert "\x07" not in stored["last_user_agent"]


def test_last_seen_is_written_on_a_clean_stop_and_survives_a_restart(devices,
                                                                     start_certgate):
    state, clients = devices
    # The default flush interval: what is stored here came from the stop.
    proxy = start_certgate(_config(state))
    assert _get(proxy.port, clients["context"]("phone"), agent="before-restart") == 200
    assert proxy.stop() == 0
    row = _rows(state)["phone"]
    assert row["last_user_agent"] == "before-restart"
    again = start_certgate(_config(state), env=FAST)
    assert _rows(state)["phone"]["last_seen"] == row["last_seen"]
    assert _get(again.port, clients["context"]("laptop"), agent="after-restart") == 200
    wait_until(lambda: _rows(state)["laptop"]["last_seen"], 60, "laptop's last_seen")
    assert _rows(state)["phone"]["last_user_agent"] == "before-restart"


def test_two_workers_each_flush_and_the_newest_sighting_wins(devices, start_certgate):
    state, clients = devices
    port = free_port()
    proxy = start_certgate(_config(state, port=port, workers=2), env=FAST)
    assert proxy.proc is not None
    ctx = clients["context"]("phone")
    # New connections each time: SO_REUSEPORT spreads them over both workers,
    # so both hold sightings of the same serial and both flush them.
    for number in range(1, 31):
        assert _get(port, ctx, agent=f"request-{number}") == 200
    wait_until(lambda: _rows(state)["phone"]["last_user_agent"] == "request-30", 60,
               "the newest sighting to be the stored one")
    # More flushes from either worker cannot put an older one back.
    assert _get(port, clients["context"]("laptop")) == 200
    wait_until(lambda: _rows(state)["laptop"]["last_seen"], 60, "laptop's last_seen")
    assert _rows(state)["phone"]["last_user_agent"] == "request-30"
    assert proxy.stop() == 0


def test_stale_lists_unused_and_never_seen_devices(devices, start_certgate):
    state, clients = devices
    proxy = start_certgate(_config(state), env=FAST)
    assert _get(proxy.port, clients["context"]("phone")) == 200
    wait_until(lambda: _rows(state)["phone"]["last_seen"], 60, "phone's last_seen")
    stale = _rows(state, "--stale", "30d")
    assert sorted(stale) == ["drawer", "laptop"]  # never seen; phone was just now
    assert all(row["last_seen"] is None for row in stale.values())
    table = _ca(state, "list", "--stale", "30d").stdout
    assert "never" in table
    assert "phone" not in table
    # Once a second has passed, phone's use is older than "1s": stale too.
    wait_until(lambda: "phone" in _rows(state, "--stale", "1s"), 10, "phone to be 1s stale")

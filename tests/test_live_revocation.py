"""Revocation and role changes reach a running certgate without a restart.

Covers the CA issue's acceptance 7 (curl gets through; after `ca revoke` it
does not) and the live half of the revocation issue: an open keep-alive
connection of the revoked certificate is closed, and a bad CRL is refused
while the previous one stays in force.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.clients import Connection, client_context
from support.process import wait_until


def _ca(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "certgate", "ca", *args, "--state", str(state)],
                            capture_output=True, text=True, check=False, cwd=state.parent)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def live(tmp_path: Path, start_certgate):  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    _ca(state, "init")
    for name in ("carol", "dave"):
        _ca(state, "issue", name, "--out", str(tmp_path))
    proxy = start_certgate(f"""
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin], crls: [builtin]}}
routes:
  - {{host: localhost, upstream: whoami}}
""")
    return tmp_path, state, proxy


def _curl(tmp_path: Path, state: Path, port: int, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--cacert", str(state / "ca" / "root.crt"),
         "--cert", str(tmp_path / f"{name}.chain.pem"), "--key", str(tmp_path / f"{name}.key"),
         f"https://localhost:{port}/"], capture_output=True, text=True, check=False)


def _revoked_alert(result: subprocess.CompletedProcess[str]) -> bool:
    """curl was refused with the certificate_revoked TLS alert (issue #12)."""
    return result.returncode != 0 and "alert certificate revoked" in result.stderr


def test_revoke_bites_without_restart(live):
    tmp_path, state, proxy = live
    assert json.loads(_curl(tmp_path, state, proxy.port, "carol").stdout)["cn"] == "carol"
    ctx = client_context(state / "ca" / "root.crt", tmp_path / "carol.chain.pem",
                         tmp_path / "carol.key")
    with Connection(proxy.port, ctx, timeout=5) as open_conn:
        assert open_conn.request("GET", "/").status == 200
        _ca(state, "revoke", "carol", "--reason", "keyCompromise")

        def refused() -> bool:
            result = _curl(tmp_path, state, proxy.port, "carol")
            return _revoked_alert(result)

        wait_until(refused, 5, "carol to be refused after revocation")
        # The keep-alive connection opened before the revocation is gone too.
        with pytest.raises((ConnectionError, OSError)):
            open_conn.request("GET", "/")
    assert json.loads(_curl(tmp_path, state, proxy.port, "dave").stdout)["cn"] == "dave"


def test_bad_crl_keeps_the_previous_one(live):
    tmp_path, state, proxy = live
    _ca(state, "revoke", "carol")
    wait_until(lambda: _revoked_alert(_curl(tmp_path, state, proxy.port, "carol")), 5,
               "carol to be refused")
    crl = state / "ca" / "crl.pem"
    crl.write_text("-----BEGIN X509 CRL-----\nnot a crl\n-----END X509 CRL-----\n")
    proxy.wait_for_log("revocation refresh failed", timeout=5)
    assert _revoked_alert(_curl(tmp_path, state, proxy.port, "carol"))
    assert json.loads(_curl(tmp_path, state, proxy.port, "dave").stdout)["cn"] == "dave"


def test_role_change_applies_without_restart(live):
    tmp_path, state, proxy = live

    def roles() -> list[str]:
        return list(json.loads(_curl(tmp_path, state, proxy.port, "dave").stdout)["roles"])

    assert roles() == []
    _ca(state, "role", "add", "dave", "ops")
    wait_until(lambda: roles() == ["ops"], 5, "the ops role to appear")
    _ca(state, "role", "remove", "dave", "ops")
    wait_until(lambda: roles() == [], 5, "the ops role to go")


def test_revocation_reaches_connections_from_before_a_reload(live):
    tmp_path, state, proxy = live
    ctx = client_context(state / "ca" / "root.crt", tmp_path / "carol.chain.pem",
                         tmp_path / "carol.key")
    with Connection(proxy.port, ctx, timeout=5) as old_conn:
        assert old_conn.request("GET", "/").status == 200
        proxy.signal(signal.SIGHUP)  # same config: a new runtime; old_conn keeps the old one
        proxy.wait_for_log("configuration reloaded")
        assert old_conn.request("GET", "/").status == 200
        _ca(state, "revoke", "carol")
        wait_until(lambda: _revoked_alert(_curl(tmp_path, state, proxy.port, "carol")), 5,
                   "carol to be refused on new connections")
        with pytest.raises((ConnectionError, OSError)):
            old_conn.request("GET", "/")

"""Policy acceptance 2: ``ca role add`` opens a role-protected path within 2 s,
without a restart, and ``ca role remove`` closes it again; also on a
keep-alive connection opened before the change (roles are looked up per
request, not per connection)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.clients import Connection, client_context
from support.process import wait_until

# The policy issue: "lets alice into /admin/* within 2 seconds".
ROLE_DEADLINE = 2.0
VERSIONS = ["1.2", "1.3"]


def _ca(state: Path, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "certgate", "ca", *args, "--state", str(state)],
                            capture_output=True, text=True, check=False, cwd=state.parent)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def live(tmp_path: Path, start_certgate):  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    _ca(state, "init")
    _ca(state, "issue", "alice", "--out", str(tmp_path))
    proxy = start_certgate(f"""
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin], crls: [builtin]}}
routes:
  - host: localhost
    upstream: whoami
    rules: [{{path: /admin/*, allow: [role:ops]}}]
""")
    return tmp_path, state, proxy


@pytest.mark.parametrize("version", VERSIONS)
def test_role_add_and_remove_apply_live(live, version):
    tmp_path, state, proxy = live
    ctx = client_context(state / "ca" / "root.crt", tmp_path / "alice.chain.pem",
                         tmp_path / "alice.key", version=version)

    def status() -> int:
        with Connection(proxy.port, ctx, timeout=5) as conn:
            return conn.request("GET", "/admin/x").status

    with Connection(proxy.port, ctx, timeout=5) as kept:
        refused = kept.request("GET", "/admin/x")
        assert refused.status == 403
        assert b"roles none" in refused.body

        _ca(state, "role", "add", "alice", "ops")
        started = time.monotonic()
        wait_until(lambda: status() == 200, ROLE_DEADLINE, "alice to get into /admin/*")
        assert time.monotonic() - started < ROLE_DEADLINE
        opened = kept.request("GET", "/admin/x")  # the connection from before the change
        assert opened.status == 200
        assert json.loads(opened.body)["roles"] == ["ops"]

        _ca(state, "role", "remove", "alice", "ops")
        wait_until(lambda: status() == 403, ROLE_DEADLINE, "alice to be shut out of /admin/*")
        assert kept.request("GET", "/admin/x").status == 403

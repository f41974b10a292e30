"""``certgate explain`` as a command: its output, its exit status (0 allow,
1 deny, 2 unusable input), and that it changes nothing in the CA state."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
state_dir: %s
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin], crls: [builtin]}
routes:
  - host: localhost
    upstream: http://127.0.0.1:9
    rules:
      - {path: /admin/*, allow: [role:ops]}
      - {path: /hook/*, client_auth: "off"}
  - {host: open.localhost, upstream: whoami, client_auth: "off"}
"""


@pytest.fixture
def config(tmp_path: Path, pki) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "certgate.yaml"
    path.write_text(CONFIG % pki.state)
    return path


def _explain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certgate", "explain", *args],
                          capture_output=True, text=True, check=False)


def _state_digest(state: Path) -> dict[str, str]:
    # The files that carry the CA's meaning; SQLite's -wal/-shm side files
    # may appear for any reader and are left out.
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((state / "ca").iterdir())
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def test_allow_deny_and_what_is_printed(config, pki):
    before = _state_digest(pki.state)
    alice = _explain("-c", str(config), "--cert", str(pki["alice"].cert),
                     "https://localhost:8443//admin/./x?q=1")
    assert alice.returncode == 0, alice.stdout + alice.stderr
    assert "path:        //admin/./x?q=1 -> /admin/x (query not used by the policy)" in alice.stdout
    assert "roles:       ops (built-in inventory: ops" in alice.stdout
    assert "rule:        /admin/*; client_auth require, allow [role:ops], deny []" in alice.stdout
    assert "upstream receives GET /admin/x?q=1" in alice.stdout

    bob = _explain("-c", str(config), "--cert", str(pki["bob"].cert), "--method", "POST",
                   "https://localhost/%61dmin/x")
    assert bob.returncode == 1
    assert ("decision:    deny: 403 not allowed on this path (route localhost/, rule /admin/*); "
            f"client: CN=bob serial {format(pki['bob'].serial, 'x')} roles none") in bob.stdout
    assert _state_digest(pki.state) == before


def test_handshake_outcomes(config, pki):
    anonymous = _explain("-c", str(config), "https://localhost/hook/x")
    assert anonymous.returncode == 0, anonymous.stdout
    assert "client certificate optional" in anonymous.stdout  # mixed name
    assert _explain("-c", str(config), "https://localhost/other").returncode == 1
    untrusted = _explain("-c", str(config), "--cert", str(pki["untrusted"].cert),
                         "https://localhost/")
    assert untrusted.returncode == 1
    assert "handshake would fail: not issued by a trusted CA" in untrusted.stdout
    expired = _explain("-c", str(config), "--cert", str(pki["expired"].cert),
                       "https://localhost/")
    assert expired.returncode == 1
    assert "handshake would fail: OpenSSL: certificate has expired" in expired.stdout
    ignored = _explain("-c", str(config), "--cert", str(pki["bob"].cert),
                       "https://open.localhost/")
    assert ignored.returncode == 0
    assert "does not ask for a certificate" in ignored.stdout


@pytest.mark.parametrize("args", [
    ["http://localhost/"],  # not https
    ["https:///x"],  # no host
    ["--cert", "/nonexistent.pem", "https://localhost/"],
    ["--method", "G T", "https://localhost/"],
])
def test_unusable_input_exits_2(config, args):
    result = _explain("-c", str(config), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("certgate: ")


def test_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - {host: localhost, upstream: whoami, allow: [san:x]}\n")
    result = _explain("-c", str(bad), "https://localhost/")
    assert result.returncode == 2
    assert f"{bad}:2: routes[0].allow[0]: san: needs a type" in result.stderr

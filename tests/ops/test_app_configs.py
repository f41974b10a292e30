"""config/home-assistant.yaml and config/immich.yaml are working configs.

1. They load the way ``certgate check`` loads them, and the only problems are
   their placeholder TLS files (as tests/config/test_loader.py checks
   config/certgate.example.yaml).
2. Run for real (same routes, rules, timeouts and limits; only the host name,
   addresses, state directory and server certificate swapped for the test
   PKI's), a client without a certificate reaches exactly the exempted paths
   (HA webhooks; Immich share pages and the API calls they make), and one
   with a certificate reaches everything. Under TLS 1.2 and 1.3.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from certgate.config.loader import load_config_text
from certgate.config.schema import ClientAuth
from certgate.errors import ConfigError
from certgate.routing import handshake_class

from support.clients import Connection

CONFIGS = Path(__file__).resolve().parents[2] / "config"
APPS = ["home-assistant.yaml", "immich.yaml"]
VERSIONS = ["1.2", "1.3"]


@pytest.mark.parametrize("name", APPS)
def test_loads_with_only_placeholder_files_missing(name: str, tmp_path: Path) -> None:
    path = CONFIGS / name
    with pytest.raises(ConfigError) as info:
        load_config_text(path.read_text(), str(path), tmp_path)
    problems = info.value.problems
    assert problems
    assert all("file not found: /etc/certgate/tls/" in p for p in problems), problems


@pytest.mark.parametrize("name", APPS)
def test_certgate_check_names_only_the_placeholder_files(name: str) -> None:
    result = subprocess.run([sys.executable, "-m", "certgate", "check", "-c",
                             str(CONFIGS / name)], capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(CONFIGS))]
    assert len(lines) == 2, result.stderr
    assert all("tls.certificates[0]" in line and "file not found" in line for line in lines)


@pytest.mark.parametrize("name", APPS)
def test_loads_with_real_files_and_asks_for_certificates_optionally(
        name: str, tmp_path: Path, pki: Any) -> None:
    """With its TLS files present the config is complete: no other problem."""
    alice = pki["alice"]  # any matching cert/key pair stands in for the server's
    text = (CONFIGS / name).read_text() \
        .replace("/etc/certgate/tls/fullchain.pem", str(alice.cert)) \
        .replace("/etc/certgate/tls/privkey.pem", str(alice.key))
    config = load_config_text(text, name, tmp_path)
    route, enroll = config.routes
    # The enrollment links share the app's name, under /certgate.
    assert enroll.upstream.is_enroll
    assert (enroll.host, enroll.path) == (route.host, "/certgate")
    assert route.client_auth is ClientAuth.REQUIRE
    assert route.max_body is None
    assert config.client_auth.crls == ("builtin",)
    # A require route with `off` rules: the handshake asks for a certificate
    # optionally and each request is judged by its rule.
    assert handshake_class(route.modes()) is ClientAuth.OPTIONAL
    assert all(rule.client_auth is ClientAuth.OFF for rule in route.rules)


def _runnable(name: str, state: Path, upstream_port: int) -> str:
    """The app config with only what cannot run in a test swapped out."""
    config = yaml.safe_load((CONFIGS / name).read_text())
    config["state_dir"] = str(state)
    config["listen"] = ["127.0.0.1:0"]
    config["workers"] = 1
    config["metrics"] = {"listen": "off"}
    config["access_log"] = {"path": "off"}
    del config["tls"]["certificates"]  # the built-in CA serves localhost
    route, enroll = config["routes"]
    route["host"] = enroll["host"] = "localhost"
    route["upstream"] = f"http://127.0.0.1:{upstream_port}"
    return yaml.safe_dump(config)


def _status(port: int, ctx: Any, method: str, target: str) -> int | str:
    try:
        with Connection(port, ctx) as conn:
            body = b"{}" if method in {"POST", "PUT"} else b""
            return conn.request(method, target, body=body).status
    except (ConnectionError, OSError) as exc:
        return type(exc).__name__


def _check(proxy: Any, pki: Any, upstream: Any, open_paths: list[tuple[str, str]],
           locked_paths: list[tuple[str, str]]) -> None:
    for version in VERSIONS:
        anonymous = pki.context(None, version)
        alice = pki.context("alice", version)
        for method, target in open_paths:
            assert _status(proxy.port, anonymous, method, target) == 200, \
                f"{method} {target} without a certificate (TLS {version})"
        for method, target in locked_paths:
            seen = len(upstream.requests)
            assert _status(proxy.port, anonymous, method, target) == 403, \
                f"{method} {target} without a certificate (TLS {version})"
            assert not any(r.path == target for r in upstream.requests[seen:]), \
                f"{method} {target} reached the upstream without a certificate"
            assert _status(proxy.port, alice, method, target) == 200, \
                f"{method} {target} with a certificate (TLS {version})"


def test_home_assistant_config_runs(start_certgate: Any, pki: Any, upstream: Any) -> None:
    proxy = start_certgate(_runnable("home-assistant.yaml", pki.state, upstream.port))
    _check(proxy, pki, upstream,
           open_paths=[("POST", "/api/webhook/0123abcd"), ("PUT", "/api/webhook/0123abcd"),
                       ("GET", "/certgate/enroll/ca.crt")],
           locked_paths=[("GET", "/"), ("GET", "/api/websocket"), ("GET", "/api/states"),
                         ("POST", "/auth/token"), ("GET", "/api/webhooks"),
                         ("GET", "/api/hassio/backups")])


def test_immich_config_runs(start_certgate: Any, pki: Any, upstream: Any) -> None:
    proxy = start_certgate(_runnable("immich.yaml", pki.state, upstream.port))
    asset = "/api/assets/9b0b8b7e-2f33-4a8e-9d3c-4e5f6a7b8c9d"
    _check(proxy, pki, upstream,
           open_paths=[("GET", "/certgate/enroll/ca.crt"),
                       ("GET", "/share/Zk3vQ"), ("GET", "/s/holiday"),
                       ("GET", "/_app/immutable/entry/start.js"), ("GET", "/favicon.ico"),
                       ("GET", "/api/shared-links/me?key=Zk3vQ"),
                       ("POST", "/api/shared-links/login?key=Zk3vQ"),
                       ("GET", "/api/server/config"), ("GET", "/api/albums/1?key=Zk3vQ"),
                       ("GET", "/api/timeline/buckets?key=Zk3vQ"),
                       ("GET", f"{asset}/thumbnail?key=Zk3vQ"),
                       ("GET", f"{asset}/original?key=Zk3vQ"),
                       ("GET", f"{asset}/video/playback?key=Zk3vQ"),
                       ("POST", "/api/download/archive?key=Zk3vQ")],
           locked_paths=[("GET", "/"), ("GET", "/photos"), ("GET", "/api/socket.io/?EIO=4"),
                         ("POST", "/api/auth/login"), ("GET", "/api/users/me"),
                         ("POST", "/api/assets"), ("DELETE", asset),
                         ("PUT", "/api/albums/1/assets"), ("POST", "/api/shared-links"),
                         ("GET", "/api/shared-links"), ("POST", "/share/Zk3vQ"),
                         ("GET", "/.well-known/immich")])

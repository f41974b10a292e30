"""``tls.verify_depth`` bounds the CA certificates between a client leaf and the
trust anchor, as nginx's ``ssl_verify_depth`` does (Python's ssl has no setter;
certgate sets it through libssl). explain refuses what the handshake refuses.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from certgate.config.loader import load_config_text
from certgate.errors import ConfigError

from support.clients import Connection, client_context
from support.forge import make_ca, make_leaf, name, write_client

VERSIONS = ["1.2", "1.3"]

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
tls: {{verify_depth: {depth}}}
client_auth: {{trusted_cas: [builtin, {{file: {root}, crl: none}}]}}
routes:
  - {{host: localhost, upstream: whoami, client_auth: require}}
"""


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A root, two intermediates below it and a leaf: depth 2."""
    d = tmp_path_factory.mktemp("deep")
    root = make_ca(name("Deep Root"))
    upper = make_ca(name("Deep Upper"), issuer=root)
    lower = make_ca(name("Deep Lower"), issuer=upper)
    (d / "root.pem").write_bytes(root.pem)
    cert, key = write_client(d, "deep", make_leaf(lower, name("deep")), lower, upper)
    return d / "root.pem", cert, key


def _get(proxy, pki, cert: Path, key: Path, version: str) -> int | None:  # type: ignore[no-untyped-def]
    try:
        with Connection(proxy.port, client_context(pki.root, cert, key, version=version)) \
                as conn:
            return conn.request("GET", "/").status
    except (ssl.SSLError, ConnectionError, OSError):
        return None


@pytest.mark.parametrize("version", VERSIONS)
def test_depth_bounds_the_chain(start_certgate, pki, deep, version):  # type: ignore[no-untyped-def]
    root, cert, key = deep
    shallow = start_certgate(CONFIG.format(state="{state}", depth=1, root=root))
    assert _get(shallow, pki, cert, key, version) is None, "a depth-2 chain got through"
    # Guard: certgate's own two-tier certificates still pass at depth 1.
    assert _get(shallow, pki, pki["alice"].cert, pki["alice"].key, version) == 200
    explained = subprocess.run(
        [sys.executable, "-m", "certgate", "explain", "-c", str(shallow.config_path),
         "--cert", str(cert), "https://localhost/"],
        capture_output=True, text=True, timeout=60, check=False)
    assert explained.returncode == 1, explained.stdout + explained.stderr
    assert "chain too long" in explained.stdout


@pytest.mark.parametrize("version", VERSIONS)
def test_depth_two_admits_it(start_certgate, pki, deep, version):  # type: ignore[no-untyped-def]
    root, cert, key = deep
    proxy = start_certgate(CONFIG.format(state="{state}", depth=2, root=root))
    assert _get(proxy, pki, cert, key, version) == 200


@pytest.mark.parametrize("value", ["-1", "17", "deep", "true"])
def test_depth_is_checked_at_load(tmp_path: Path, value: str) -> None:
    text = f"tls: {{verify_depth: {value}}}\nroutes: [{{host: a.test, upstream: whoami}}]\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, str(tmp_path / "c.yaml"), tmp_path)
    assert any("tls.verify_depth" in p for p in info.value.problems), info.value.problems

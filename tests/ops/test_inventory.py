"""The scrape-time inventory reports the server certificates a runtime serves, no others."""

from __future__ import annotations

from pathlib import Path

from certgate.ca import CertificateAuthority
from certgate.config.loader import load_config_text
from certgate.inventory import InventoryCollector
from certgate.runtime import build_runtime


def _config(state: Path, tls: str = "") -> str:
    return f"""
state_dir: {state}
listen: ["127.0.0.1:0"]
{tls}
routes: [{{host: app.test, upstream: whoami}}]
"""


def test_automatic_certificate_is_reported_until_a_configured_one_covers_the_host(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = load_config_text(_config(state), "c.yaml", base_dir=tmp_path)
    runtime = build_runtime(config)
    automatic = runtime.automatic_certificate
    runtime.close()
    assert automatic is not None
    servers = [e for e in InventoryCollector(config).expiries() if e.kind == "server"]
    assert [(e.name, e.not_after) for e in servers] == [("app.test", automatic.not_after)]

    ca = CertificateAuthority.open(state)
    issued = ca.issue_server(["app.test"], name="configured", days=10, out_dir=tmp_path)
    cert = next(p for p in issued.files if p.name.endswith(".pem") and "key" not in p.name)
    key = next(p for p in issued.files if p.name.endswith(".key"))
    tls = f"tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}"
    config = load_config_text(_config(state, tls), "c.yaml", base_dir=tmp_path)
    servers = [e for e in InventoryCollector(config).expiries() if e.kind == "server"]
    # Only the configured certificate: the automatic one is still on disk but
    # no longer served, so an expiry alert on it would be noise.
    assert [e.serial for e in servers] == [format(issued.serial, "x")]

"""The scrape-time inventory reports the server certificates a runtime serves, no others."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

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
    automatic = runtime.automatic_certificates
    runtime.close()
    # The default certificate (no SNI) names no route; app.test gets its own.
    assert [cert.names for cert in automatic] == [("localhost",), ("app.test",)]
    servers = [e for e in InventoryCollector(config).expiries() if e.kind == "server"]
    assert [(e.name, e.not_after) for e in servers] == [
        (cert.names[0], cert.not_after) for cert in automatic]

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


def _client_config(state: Path) -> str:
    return f"""
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin]}}
routes: [{{host: app.test, upstream: whoami, client_auth: require}}]
"""


def test_client_expiry_lists_only_certificates_in_use(tmp_path: Path) -> None:
    """Renewed (superseded) and revoked client certificates are no longer on a
    device's path to certgate: they must not feed the client expiry alert."""
    state = tmp_path / "state"
    config = load_config_text(_client_config(state), "c.yaml", base_dir=tmp_path)
    build_runtime(config).close()
    ca = CertificateAuthority.open(state)
    phone = ca.issue_client("alice-phone", days=10)
    laptop = ca.issue_client("bob-laptop", days=60)
    gone = ca.issue_client("old-tablet", days=30)
    collector = InventoryCollector(config)

    def clients() -> dict[str, tuple[str, float, float]]:
        return {e.serial: (e.name, e.not_before, e.not_after)
                for e in collector.expiries() if e.kind == "client"}

    assert set(clients()) == {format(c.serial, "x") for c in (phone, laptop, gone)}
    name, not_before, not_after = clients()[format(phone.serial, "x")]
    assert name == "alice-phone"
    assert not_after - not_before == pytest.approx(10 * 86400, abs=600)  # backdated for skew

    renewed = ca.renew("alice-phone", days=365)
    ca.revoke("old-tablet")
    assert set(clients()) == {format(renewed.serial, "x"), format(laptop.serial, "x")}


def test_an_expired_client_certificate_leaves_without_a_ca_change(tmp_path: Path) -> None:
    """The parsed inventory is cached until the database changes; expiry is a
    change of the clock, not of the database, and must still drop the series
    (otherwise the alert goes on firing until the next unrelated CA write)."""
    state = tmp_path / "state"
    config = load_config_text(_client_config(state), "c.yaml", base_dir=tmp_path)
    build_runtime(config).close()
    issued = CertificateAuthority.open(state).issue_client("kiosk", hours=1)
    now = [time.time()]
    collector = InventoryCollector(config, clock=lambda: now[0])
    serial = format(issued.serial, "x")
    assert serial in {e.serial for e in collector.expiries() if e.kind == "client"}
    now[0] = issued.not_after.timestamp() + 1
    assert serial not in {e.serial for e in collector.expiries() if e.kind == "client"}

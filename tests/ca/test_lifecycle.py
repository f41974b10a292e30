"""Init, permissions, offline and single-tier roots, rotation, renewal, roles."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from certgate.ca import CertificateAuthority
from certgate.ca.keys import pem_fingerprint, serial_hex
from certgate.errors import CAError, UsageError

from .conftest import Result, openssl


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(cli: Callable[..., Result], *args: str) -> dict[str, dict[str, object]]:
    result = cli("list", "--json", *args)
    assert result.code == 0, result.err
    return {row["serial"]: row for row in json.loads(result.out)}


def test_permissions(ca: CertificateAuthority, state: Path) -> None:
    ca.issue_server(["proxy.lan"])
    for directory in (state, state / "ca", ca.layout.keys_dir, ca.layout.servers_dir,
                      ca.layout.staging_dir):
        assert mode(directory) == 0o700, directory
    keys = list(ca.layout.keys_dir.iterdir()) + list(ca.layout.servers_dir.glob("*.key"))
    assert len(keys) == 3
    for key in keys:
        assert mode(key) == 0o600, key
    assert mode(ca.layout.database) == 0o600
    assert mode(ca.layout.audit_log) == 0o600


def test_init_refuses_to_overwrite(
    ca: CertificateAuthority, cli: Callable[..., Result], state: Path
) -> None:
    root = ca.root_cert_path.read_bytes()
    result = cli("init", "--name", "Other")
    assert result.code == 1
    assert "refusing to overwrite" in result.err
    with pytest.raises(CAError):
        CertificateAuthority.init(state)
    assert ca.root_cert_path.read_bytes() == root
    assert CertificateAuthority.exists(state)
    assert not CertificateAuthority.exists(state.parent / "elsewhere")
    with pytest.raises(CAError, match="ca init"):
        CertificateAuthority.open(state.parent / "elsewhere")


def test_offline_root(state: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    offline = tmp_path / "usb"
    result = cli("init", "--offline-root", offline)
    assert result.code == 0, result.err
    ca = CertificateAuthority.open(state)
    (root_key,) = offline.glob("root-*.key")
    assert mode(root_key) == 0o600
    secret = root_key.read_bytes()
    for path in state.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    assert [p.name.split("-")[0] for p in ca.layout.keys_dir.iterdir()] == ["intermediate"]
    ca.issue_client("still-works")  # the intermediate issues without the root
    refused = cli("rotate")
    assert refused.code == 2
    assert "--root-key" in refused.err
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(next(ca.layout.keys_dir.iterdir()).read_bytes())
    assert cli("rotate", "--root-key", wrong).code == 1
    assert cli("rotate", "--root-key", root_key).code == 0
    inside = cli("init", "--state", tmp_path / "s2", "--offline-root", tmp_path / "s2" / "k")
    assert inside.code == 2


def test_single_tier(state: Path, tmp_path: Path, out_dir: Path) -> None:
    ca = CertificateAuthority.init(state, single_tier=True)
    assert ca.issuing_cert_path.read_bytes() == ca.root_cert_path.read_bytes()
    issued = ca.issue_client("ha-ios")
    crt = out_dir / "ha.crt"
    crt.write_bytes(issued.cert_pem)
    openssl("verify", "-CAfile", ca.root_cert_path, crt)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    root = x509.load_pem_x509_certificate(ca.root_cert_path.read_bytes())
    assert cert.issuer == root.subject
    assert issued.chain_pem == issued.cert_pem
    openssl("crl", "-in", ca.crl_path, "-CAfile", ca.root_cert_path, "-noout")
    with pytest.raises(UsageError, match="exclude"):
        CertificateAuthority.init(tmp_path / "x", single_tier=True, offline_root=tmp_path / "o")


def test_rotate_keeps_old_and_new_in_bundle(
    ca: CertificateAuthority, cli: Callable[..., Result], out_dir: Path
) -> None:
    old_client = ca.issue_client("old")
    old_issuer = ca.issuing_cert_path.read_bytes()
    assert cli("rotate").code == 0
    new_issuer = ca.issuing_cert_path.read_bytes()
    assert new_issuer != old_issuer
    bundle = ca.trust_bundle_path.read_bytes()
    assert old_issuer in bundle
    assert new_issuer in bundle
    assert ca.root_cert_path.read_bytes() in bundle
    assert cli("bundle").out.encode() == bundle
    new_client = ca.issue_client("new")
    assert x509.load_pem_x509_certificate(new_client.cert_pem).issuer == (
        x509.load_pem_x509_certificate(new_issuer).subject
    )
    for issued in (old_client, new_client):
        crt = out_dir / f"{issued.name}.crt"
        crt.write_bytes(issued.cert_pem)
        openssl("verify", "-CAfile", ca.trust_bundle_path, crt)
    assert {row["status"] for row in listing(cli).values()} == {"valid"}


def test_rotate_root_cross_signs(
    ca: CertificateAuthority, cli: Callable[..., Result], tmp_path: Path, out_dir: Path
) -> None:
    old_root = tmp_path / "old-root.pem"
    old_root.write_bytes(ca.root_cert_path.read_bytes())
    result = cli("rotate", "--root")
    assert result.code == 0, result.err
    (cross,) = ca.layout.ca_dir.glob("cross-*.crt")
    assert ca.root_cert_path.read_bytes() != old_root.read_bytes()
    assert old_root.read_bytes() in ca.trust_bundle_path.read_bytes()
    issued = ca.issue_client("after-root-rotation")
    crt = out_dir / "c.crt"
    crt.write_bytes(issued.cert_pem)
    # A device that trusts only the old root reaches the new one via the cross cert.
    openssl("verify", "-CAfile", old_root, "-untrusted", cross, "-untrusted",
            ca.issuing_cert_path, crt)
    openssl("verify", "-CAfile", ca.root_cert_path, "-untrusted", ca.issuing_cert_path, crt)
    alone = openssl("verify", "-CAfile", old_root, "-untrusted", ca.issuing_cert_path, crt,
                    check=False)
    assert alone.returncode != 0


def test_renew_marks_superseded(
    ca: CertificateAuthority, cli: Callable[..., Result], out_dir: Path
) -> None:
    assert cli("issue", "short", "--hours", "8", "--role", "ops", "--out", out_dir).code == 0
    old_pem = (out_dir / "short.crt").read_bytes()
    result = cli("renew", "short", "--out", out_dir)
    assert result.code == 0, result.err
    assert (out_dir / "short.crt").read_bytes() != old_pem
    rows = list(listing(cli).values())
    by_status = {row["status"]: row for row in rows}
    assert set(by_status) == {"valid", "superseded"}
    assert by_status["superseded"]["superseded_by"] == by_status["valid"]["serial"]
    assert by_status["valid"]["roles"] == ["ops"]
    new = x509.load_pem_x509_certificate((out_dir / "short.crt").read_bytes())
    assert (new.not_valid_after_utc - new.not_valid_before_utc).total_seconds() <= 8 * 3600 + 600
    # The superseded certificate stays valid until it expires or is revoked.
    old_serial = int(str(by_status["superseded"]["serial"]), 16)
    assert ca.roles_for_serial(old_serial) == ("ops",)
    assert cli("renew", "short", "--out", out_dir).code == 0  # renew again
    assert cli("renew", "nobody", "--out", out_dir).code == 1


def test_role_add_remove(ca: CertificateAuthority, cli: Callable[..., Result]) -> None:
    issued = ca.issue_client("erin", roles=["viewer"])
    serial = serial_hex(issued.serial)
    assert cli("role", "add", "erin", "admin").code == 0
    assert listing(cli)[serial]["roles"] == ["viewer", "admin"]
    assert ca.inventory_snapshot() == {pem_fingerprint(issued.cert_pem): ("viewer", "admin")}
    assert cli("role", "remove", serial, "viewer").code == 0
    assert listing(cli)[serial]["roles"] == ["admin"]
    assert ca.roles_for_serial(issued.serial) == ("admin",)
    assert cli("role", "remove", "erin", "viewer").code == 1
    assert cli("role", "add", "erin", "bad role").code == 2
    assert list(listing(cli, "--role", "admin")) == [serial]
    assert listing(cli, "--role", "viewer") == {}


def test_list_expiring_and_json_fields(
    ca: CertificateAuthority, cli: Callable[..., Result]
) -> None:
    soon = ca.issue_client("soon", days=10)
    ca.issue_client("later", days=100)
    gone = ca.issue_client("gone", days=5)
    ca.revoke("gone", "privilegeWithdrawn")
    rows = listing(cli)
    assert len(rows) == 3
    row = rows[serial_hex(soon.serial)]
    for field in ("name", "serial", "roles", "not_before", "not_after", "status", "kind",
                  "revocation_reason"):
        assert field in row
    assert row["kind"] == "client"
    assert str(row["not_after"]).endswith("Z")
    assert rows[serial_hex(gone.serial)]["revocation_reason"] == "privilegeWithdrawn"
    assert list(listing(cli, "--expiring", "30d")) == [serial_hex(soon.serial)]
    table = cli("list").out
    assert "revoked (privilegeWithdrawn)" in table
    assert cli("list", "--expiring", "soon").code == 2


def test_rsa_ca(state: Path, out_dir: Path) -> None:
    ca = CertificateAuthority.init(state, key_type="rsa-3072")
    issued = ca.issue_client("rsa-client")
    crt = out_dir / "r.crt"
    crt.write_bytes(issued.cert_pem)
    openssl("verify", "-CAfile", ca.root_cert_path, "-untrusted", ca.issuing_cert_path, crt)
    text = openssl("x509", "-in", ca.root_cert_path, "-noout", "-text").stdout
    assert "Public-Key: (3072 bit)" in text


def test_config_option_is_wired(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli("list", "-c", tmp_path / "missing.yaml")
    assert result.code == 2  # ConfigError from certgate.config, not a crash
    assert "missing.yaml" in result.err


def test_renew_server_stays_in_state_dir(
    ca: CertificateAuthority, proc: Callable[..., Result], tmp_path: Path
) -> None:
    issued = ca.issue_server(["nas.lan"])
    fullchain, _key = ca.layout.server_files(issued.name)
    before = fullchain.read_bytes()
    result = proc("renew", issued.name)
    assert result.code == 0, result.err
    assert fullchain.read_bytes() != before
    assert not (tmp_path / f"{issued.name}.key").exists()  # not dropped into the cwd
    statuses = sorted(rec.status(ca.certificates().now) for rec in ca.certificates().records)
    assert statuses == ["superseded", "valid"]

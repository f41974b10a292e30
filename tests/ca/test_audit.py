"""Acceptance 5: the audit log detects edited, deleted and reordered lines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from certgate.ca import CertificateAuthority
from certgate.ca.audit import GENESIS, AuditError, line_hash, verify

from .conftest import Result


@pytest.fixture
def busy_ca(ca: CertificateAuthority) -> CertificateAuthority:
    """A CA with five audit entries: init, 3 issues, a revoke."""
    for name in ("a", "b", "c"):
        ca.issue_client(name, roles=["r"])
    ca.revoke("b", "superseded")
    return ca


def lines(ca: CertificateAuthority) -> list[bytes]:
    return ca.layout.audit_log.read_bytes().splitlines(keepends=True)


def rewrite(ca: CertificateAuthority, new: list[bytes]) -> None:
    ca.layout.audit_log.write_bytes(b"".join(new))


def test_entries_are_chained(busy_ca: CertificateAuthority, cli: Callable[..., Result]) -> None:
    entries = [json.loads(line) for line in lines(busy_ca)]
    assert [e["operation"] for e in entries] == ["init", "issue", "issue", "issue", "revoke"]
    assert entries[0]["prev"] == GENESIS
    for previous, entry in zip(lines(busy_ca), entries[1:], strict=False):
        assert entry["prev"] == line_hash(previous)
    for entry in entries:
        assert {"time", "operation", "name", "serial", "roles", "not_after", "actor"} <= set(entry)
        assert entry["time"].endswith("Z")
    assert entries[1]["roles"] == ["r"]
    assert len(entries[1]["serial"]) >= 31
    result = cli("audit", "verify")
    assert (result.code, result.out.strip()) == (0, "OK, 5 entries")


@pytest.mark.parametrize("number", [1, 3, 5])
def test_edited_line_is_named(
    busy_ca: CertificateAuthority, cli: Callable[..., Result], number: int
) -> None:
    content = lines(busy_ca)
    content[number - 1] = content[number - 1].replace(b'"actor":"', b'"actor":"x')
    rewrite(busy_ca, content)
    result = cli("audit", "verify")
    assert result.code == 1
    assert f"audit log line {number}:" in result.err
    assert "edited" in result.err


@pytest.mark.parametrize("number", [2, 5])
def test_deleted_line_is_named(
    busy_ca: CertificateAuthority, proc: Callable[..., Result], number: int
) -> None:
    content = lines(busy_ca)
    del content[number - 1]
    rewrite(busy_ca, content)
    result = proc("audit", "verify")
    assert result.code == 1
    assert f"audit log line {number}:" in result.err
    assert "deleted" in result.err


def test_reordered_lines_are_named(
    busy_ca: CertificateAuthority, cli: Callable[..., Result]
) -> None:
    content = lines(busy_ca)
    content[1], content[2] = content[2], content[1]
    rewrite(busy_ca, content)
    result = cli("audit", "verify")
    assert result.code == 1
    assert "audit log line 2:" in result.err
    assert "reordered" in result.err


def test_chain_alone_names_the_edited_line() -> None:
    """Without the database record (a copied log), the chain still points at it."""
    first = b'{"operation":"init","seq":1,"prev":"' + GENESIS.encode() + b'"}\n'
    second = b'{"operation":"issue","seq":2,"prev":"' + line_hash(first).encode() + b'"}\n'
    assert verify(first + second) == 2
    with pytest.raises(AuditError) as info:
        verify(first.replace(b"init", b"tini") + second)
    assert info.value.line == 1
    with pytest.raises(AuditError) as info:
        verify(first + second[:-1])
    assert info.value.line == 2


def test_forged_high_seq_line_does_not_swallow_entries(
    ca: CertificateAuthority, cli: Callable[..., Result]
) -> None:
    forged = b'{"operation":"forged","seq":99,"prev":"' + GENESIS.encode() + b'"}\n'
    with ca.layout.audit_log.open("ab") as handle:
        handle.write(forged)
    ca.issue_client("after-forgery")
    operations = [json.loads(line)["operation"] for line in lines(ca)]
    assert operations == ["init", "forged", "issue"]
    result = cli("audit", "verify")
    assert result.code == 1
    assert "audit log line 2:" in result.err


def test_no_secrets_in_log(tmp_path: Path, ca: CertificateAuthority) -> None:
    issued = ca.issue_client("secret")
    log = ca.layout.audit_log.read_bytes()
    assert b"PRIVATE KEY" not in log
    assert issued.key_pem not in log

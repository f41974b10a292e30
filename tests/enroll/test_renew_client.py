"""``certgate renew`` without a server: when it is due, how the files are swapped
and recovered after a crash, and what a returned chain must be to be taken."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certgate.ca import CertificateAuthority, Delivery
from certgate.ca.keys import serial_hex
from certgate.ca.renewal import SUPERSEDED, presented_problem
from certgate.renew import files, schedule
from certgate.renew.client import verify_chain
from certgate.renew.files import RenewError

from support.forge import make_ca, make_leaf, name

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_due_at_two_thirds_of_the_lifetime() -> None:
    hour = schedule.plan(T0, T0 + timedelta(hours=1), T0 + timedelta(minutes=39))
    assert not hour.renew_now
    assert hour.due == T0 + timedelta(minutes=40)
    assert schedule.plan(T0, T0 + timedelta(hours=1), T0 + timedelta(minutes=40)).renew_now
    assert schedule.plan(T0, T0 + timedelta(days=1), T0, force=True).renew_now
    gone = schedule.plan(T0, T0 + timedelta(hours=1), T0 + timedelta(hours=1), force=True)
    assert gone.expired
    assert not gone.renew_now


def test_sleeps_are_bounded() -> None:
    assert schedule.sleep_until(T0 + timedelta(days=200), T0) == schedule.MAX_SLEEP
    assert schedule.sleep_until(T0 - timedelta(days=1), T0) == 1.0
    assert schedule.retry_delay(T0 + timedelta(days=30), T0) == schedule.MAX_RETRY
    assert schedule.retry_delay(T0 + timedelta(seconds=10), T0) == schedule.MIN_RETRY


@pytest.fixture
def pair(tmp_path: Path) -> tuple[CertificateAuthority, Path, Path]:
    ca = CertificateAuthority.init(tmp_path / "state", name="client test CA")
    ca.issue_client("dev", hours=24, delivery=Delivery(tmp_path))
    return ca, tmp_path / "dev.chain.pem", tmp_path / "dev.key"


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _signed_for(ca: CertificateAuthority, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A chain for ``key`` from the CA, as the renewal endpoint would return it."""
    from cryptography.hazmat.primitives import hashes

    csr = (x509.CertificateSigningRequestBuilder().subject_name(name("dev"))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    ca.revoke("dev")  # make room for a second "dev" under sign_csr's rules
    return ca.sign_csr(csr, name="dev", hours=24).chain_pem


def test_an_interrupted_swap_is_finished_before_anything_else(pair) -> None:  # type: ignore[no-untyped-def]
    ca, cert, key = pair
    new_key, again = files.pending_key(key)
    assert not again
    assert files.staged(key).stat().st_mode & 0o777 == 0o600
    chain = _signed_for(ca, new_key)
    # Crash after staging the chain: both staged files match, both are moved.
    files.staged(cert).write_bytes(chain)
    assert files.recover(cert, key) is not None
    assert files.load_pair(cert, key).leaf.serial_number == \
        x509.load_pem_x509_certificates(chain)[0].serial_number
    assert not files.staged(cert).exists()
    assert not files.staged(key).exists()


def test_a_crash_between_the_two_renames_is_finished(pair) -> None:  # type: ignore[no-untyped-def]
    ca, cert, key = pair
    new_key, _ = files.pending_key(key)
    chain = _signed_for(ca, new_key)
    files.staged(cert).write_bytes(chain)
    files.staged(key).replace(key)  # the key moved, then the crash
    with pytest.raises(RenewError, match="does not belong"):
        files.load_pair(cert, key)
    assert files.recover(cert, key) is not None
    assert files.matches(files.load_pair(cert, key).leaf, new_key)


def test_a_lone_pending_key_is_kept_and_reused_and_junk_is_dropped(pair) -> None:  # type: ignore[no-untyped-def]
    _, cert, key = pair
    first, _ = files.pending_key(key)
    files.staged(cert).write_bytes(b"not a certificate")
    assert files.recover(cert, key) is None
    assert not files.staged(cert).exists()
    again, reused = files.pending_key(key)
    assert reused
    assert _pem(again) == _pem(first)
    files.load_pair(cert, key)  # the old pair was never touched


def test_only_the_asked_for_chain_from_a_known_ca_is_taken(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca, cert, key = pair
    old = files.load_pair(cert, key)
    root = x509.load_pem_x509_certificate(ca.root_cert_path.read_bytes())
    new_key = ec.generate_private_key(ec.SECP256R1())
    chain = _signed_for(ca, new_key)
    now = datetime.now(UTC)
    assert verify_chain(chain, new_key, old, (), now)[0].subject == name("dev")
    assert verify_chain(chain, new_key, old, (root,), now)
    with pytest.raises(RenewError, match="not for the key"):
        verify_chain(chain, ec.generate_private_key(ec.SECP256R1()), old, (), now)
    # Another CA's certificate for the same name and key, with its own chain.
    other = make_ca(name("Other CA"))
    forged = make_leaf(other, name("dev"))
    forged_chain = forged.pem + other.pem
    with pytest.raises(RenewError, match="issuer"):
        verify_chain(forged_chain, forged.key, old, (), now)  # type: ignore[arg-type]
    with pytest.raises(RenewError, match="not valid now"):
        verify_chain(chain, new_key, old, (), now + timedelta(days=2))
    with pytest.raises(RenewError, match="not a PEM"):
        verify_chain(b"<html>", new_key, old, (), now)


def test_who_may_renew_is_decided_by_the_inventory(pair) -> None:  # type: ignore[no-untyped-def]
    ca, cert, _ = pair
    record = ca.certificates().records[0]
    der = x509.load_pem_x509_certificates(cert.read_bytes())[0].public_bytes(
        serialization.Encoding.DER)
    now = datetime.now(UTC)
    assert presented_problem(record, der, now) is None
    assert presented_problem(None, der, now) is not None
    assert "does not match" in str(presented_problem(record, der[:-1] + b"\0", now))
    assert "expired" in str(presented_problem(record, der, now + timedelta(days=2)))
    ca.renew("dev")
    superseded = ca.certificates().records[0]
    assert presented_problem(superseded, der, now) == SUPERSEDED
    ca.revoke(serial_hex(superseded.serial))
    assert "revoked" in str(presented_problem(ca.certificates().records[0], der, now))


def test_a_staged_companion_follows_the_commit_mark(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """NAME.crt.next is moved in only once CERT.next (the commit mark) was; a
    crash before that mark leaves all three old files."""
    ca, cert, key = pair
    crt = tmp_path / "dev.crt"
    old_crt = crt.read_bytes()
    new_key, _ = files.pending_key(key)
    chain = _signed_for(ca, new_key)
    new_leaf = x509.load_pem_x509_certificates(chain)[0]
    leaf_pem = new_leaf.public_bytes(serialization.Encoding.PEM)
    # Crash after staging the companion, before CERT.next: dropped, old files kept.
    files.staged(crt).write_bytes(leaf_pem)
    assert files.recover(cert, key) is None
    assert not files.staged(crt).exists()
    assert crt.read_bytes() == old_crt
    files.load_pair(crt, key)
    # Crash after the key and the chain moved, before the companion did.
    files.staged(crt).write_bytes(leaf_pem)
    files.staged(key).replace(key)
    cert.write_bytes(chain)
    done = files.recover(cert, key)
    assert done is not None
    assert str(crt) in done
    assert files.load_pair(crt, key).leaf == new_leaf
    assert not files.staged(crt).exists()


def test_only_a_companion_holding_the_old_leaf_is_rewritten(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, cert, key = pair
    crt = tmp_path / "dev.crt"
    old = files.load_pair(cert, key)
    assert files.companion_paths(cert, key) == [crt]
    assert files.companion_paths(crt, key) == [cert]
    found = files.companions(cert, key, old.leaf)
    assert [(c.path, c.leaf_only) for c in found.rewrite] == [(crt, True)]
    assert files.companions(crt, key, old.leaf).rewrite[0].leaf_only is False
    crt.write_bytes(crt.read_bytes() + b"# a note someone added\n")
    assert files.companions(cert, key, old.leaf) == files.Companions((), (crt,))
    crt.unlink()
    crt.symlink_to(cert)  # the same file as --cert: not a companion
    assert files.companion_paths(cert, key) == []

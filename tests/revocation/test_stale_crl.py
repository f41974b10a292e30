"""Acceptance 3 of the revocation issue: a CRL past its nextUpdate.

Under the default (``stale_crl: reject``) every client of the CA whose CRL is
stale gets a 403 whose body says "stale CRL", while a client of another
trusted CA (with no CRL configured) is still admitted: staleness is per
issuer, not a global outage. With ``stale_crl: allow`` the same clients are
admitted, the log warns, and a certificate the stale CRL lists as revoked
stays refused. A CRL that turns stale while certgate runs starts refusing
with no file change at all, and a fresh CRL written over a stale one lifts
the refusal within the 2 s pickup.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from pathlib import Path

import pytest

from .conftest import LocalCA, attempt, make_local_ca, outcome, refused_as
from support.clients import Connection, client_context
from support.process import wait_until

VERSIONS = ["1.2", "1.3"]
STALE = "stale CRL"


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    """A second trusted CA, with no CRL configured for it."""
    return make_local_ca(tmp_path_factory.mktemp("other-pki"), names=("mallory",),
                         ca_name="another trusted CA")


def _mallory(local_ca: LocalCA, other: LocalCA, version: str) -> ssl.SSLContext:
    """The other CA's client, verifying certgate's server certificate (local_ca's)."""
    mallory = other["mallory"]
    return client_context(local_ca.root, mallory.cert, mallory.key, version=version)


def _stale_crl(local_ca: LocalCA, revoked: list[int]) -> bytes:
    now = dt.datetime.now(dt.UTC)
    return local_ca.crl(revoked, last_update=now - dt.timedelta(days=2),
                        next_update=now - dt.timedelta(days=1))


def _config(local_ca: LocalCA, other: LocalCA, upstream_port: int, crl: Path,
            policy: str | None) -> str:
    stale = f", stale_crl: {policy}" if policy else ""
    return f"""
state_dir: {local_ca.state}
listen: ["127.0.0.1:0"]
tls: {{session_tickets: true}}
client_auth: {{trusted_cas: [builtin, "{other.ca.trust_bundle_path}"], crls: ["{crl}"]{stale}}}
routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream_port}"}}
"""


@pytest.fixture
def crl_file(tmp_path: Path, local_ca: LocalCA) -> Path:
    """A stale CRL in which erin is revoked."""
    path = tmp_path / "issuing.crl.pem"
    path.write_bytes(_stale_crl(local_ca, [local_ca["erin"].serial]))
    return path


@pytest.mark.parametrize("version", VERSIONS)
def test_stale_crl_refuses_every_client_of_that_ca_by_default(
        start_certgate, local_ca: LocalCA, other_ca: LocalCA, upstream, crl_file: Path,
        version: str) -> None:
    proxy = start_certgate(_config(local_ca, other_ca, upstream.port, crl_file, None))
    for name in ("carol", "dave"):
        assert refused_as(proxy.port, local_ca.context(name, version), STALE), name
    # erin is revoked and of a stale CRL's issuer: refused either way, and
    # as revoked (the CRL names her), in the handshake.
    assert refused_as(proxy.port, local_ca.context("erin", version), "revoked")
    # A client of the other trusted CA is not affected by this CA's CRL.
    assert outcome(proxy.port, _mallory(local_ca, other_ca, version)) == 200
    proxy.wait_for_log("refusing its clients (stale_crl: reject)", timeout=5)


def test_explicit_reject_is_the_default(start_certgate, local_ca: LocalCA, other_ca: LocalCA,
                                        upstream, crl_file: Path) -> None:
    proxy = start_certgate(_config(local_ca, other_ca, upstream.port, crl_file, "reject"))
    assert refused_as(proxy.port, local_ca.context("carol"), STALE)


@pytest.mark.parametrize("version", VERSIONS)
def test_stale_crl_admits_with_allow_and_warns(start_certgate, local_ca: LocalCA,
                                               other_ca: LocalCA, upstream, crl_file: Path,
                                               version: str) -> None:
    proxy = start_certgate(_config(local_ca, other_ca, upstream.port, crl_file, "allow"))
    for name in ("carol", "dave"):
        assert outcome(proxy.port, local_ca.context(name, version)) == 200, name
    # allow admits despite staleness, never despite a revocation.
    assert refused_as(proxy.port, local_ca.context("erin", version), "revoked")
    assert outcome(proxy.port, _mallory(local_ca, other_ca, version)) == 200
    proxy.wait_for_log("past its nextUpdate", timeout=5)
    assert "admitting its clients anyway (stale_crl: allow)" in proxy.log_text()
    assert str(crl_file) in proxy.log_text()


def test_fresh_crl_over_a_stale_one_lifts_the_refusal(start_certgate, local_ca: LocalCA,
                                                      other_ca: LocalCA, upstream,
                                                      crl_file: Path) -> None:
    proxy = start_certgate(_config(local_ca, other_ca, upstream.port, crl_file, None))
    assert refused_as(proxy.port, local_ca.context("carol"), STALE)
    tmp = crl_file.with_name("next.tmp")
    tmp.write_bytes(local_ca.crl([local_ca["erin"].serial], number=2))
    os.replace(tmp, crl_file)
    wait_until(lambda: outcome(proxy.port, local_ca.context("carol")) == 200, 2,
               "carol to be admitted once the CRL is fresh")
    assert refused_as(proxy.port, local_ca.context("erin"), "revoked")


def test_crl_turning_stale_while_running_refuses(start_certgate, local_ca: LocalCA,
                                                 other_ca: LocalCA, upstream,
                                                 tmp_path: Path) -> None:
    """No file changes: the clock passing nextUpdate is enough, for new and
    resumed connections alike."""
    now = dt.datetime.now(dt.UTC)
    crl = tmp_path / "soon-stale.crl.pem"
    crl.write_bytes(local_ca.crl([], last_update=now - dt.timedelta(minutes=1),
                                 next_update=now + dt.timedelta(seconds=8)))
    proxy = start_certgate(_config(local_ca, other_ca, upstream.port, crl, None))
    ctx = local_ca.context("carol", "1.3")
    with Connection(proxy.port, ctx, timeout=5) as conn:
        assert conn.request("GET", "/echo").status == 200
        session = conn.sock.session
    wait_until(lambda: refused_as(proxy.port, ctx, STALE), 15, "the CRL to turn stale")
    status, body, reused = attempt(proxy.port, ctx, session=session)
    assert reused
    assert status == 403
    assert STALE.encode() in body

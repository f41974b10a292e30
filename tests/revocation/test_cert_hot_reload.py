"""Acceptance 4 of the revocation issue: server certificates reload hot.

A route is served with a certificate from files in ``tls.certificates``.
When the files are replaced, new connections see the new certificate (its
serial, from the handshake) within a few seconds, and a keep-alive
connection opened before keeps working on the old one. Two ways of
replacing are covered: an atomic rename of both files, and a certbot
renewal, where ``live/NAME/{privkey,fullchain}.pem`` are symlinks into
``archive/NAME/`` that certbot re-points one after the other (unlink, then
symlink: for a moment the key is new and the chain old).

A key that does not match its certificate is refused with a logged failure
and the old certificate stays in service; a matching pair afterwards is
picked up again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import (
    LocalCA,
    issue_server,
    make_local_ca,
    outcome,
    peer_serial,
    replace_file,
    served_serial,
)
from support.clients import Connection, client_context
from support.process import wait_until

HOST = "site.test"
SWAP_TIMEOUT = 6.0  # two 1 s polls (change, then held still) plus a rebuild


def _config(local_ca: LocalCA, upstream_port: int, cert: Path, key: Path) -> str:
    return f"""
state_dir: {local_ca.state}
listen: ["127.0.0.1:0"]
tls:
  certificates:
    - {{cert: "{cert}", key: "{key}"}}
client_auth: {{trusted_cas: [builtin]}}
routes:
  - {{host: {HOST}, upstream: "http://127.0.0.1:{upstream_port}"}}
"""


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_atomic_rename_serves_the_new_certificate(start_certgate, local_ca: LocalCA, upstream,
                                                  tmp_path: Path, version: str) -> None:
    live = tmp_path / "tls"
    live.mkdir()
    chain1, key1, serial1 = issue_server(local_ca, tmp_path / "issue1", HOST)
    cert, key = live / "fullchain.pem", live / "privkey.pem"
    cert.write_bytes(chain1)
    key.write_bytes(key1)
    proxy = start_certgate(_config(local_ca, upstream.port, cert, key))
    ctx = local_ca.context("carol", version)

    with Connection(proxy.port, ctx, sni=HOST, timeout=10) as before:
        assert before.request("GET", "/echo", host=HOST).status == 200
        assert peer_serial(before) == serial1

        chain2, key2, serial2 = issue_server(local_ca, tmp_path / "issue2", HOST)
        assert serial2 != serial1
        replace_file(key, key2)
        replace_file(cert, chain2)
        wait_until(lambda: served_serial(proxy.port, ctx, HOST) == serial2, SWAP_TIMEOUT,
                   "new connections to see the new certificate")
        # The connection from before the swap keeps working.
        assert before.request("GET", "/echo", host=HOST).status == 200
        assert before.request("GET", "/echo", host=HOST).status == 200
    assert "reload failed" not in proxy.log_text()


def _certbot_renew(live: Path, archive: Path, version: int, chain: bytes, key: bytes) -> None:
    """certbot's storage.py: write archive/*N.pem, then re-point each live link
    in turn (cert, privkey, chain, fullchain), each by unlink + symlink."""
    leaf = x509.load_pem_x509_certificates(chain)[0].public_bytes(serialization.Encoding.PEM)
    files = {"cert": leaf, "privkey": key, "chain": chain[len(leaf):], "fullchain": chain}
    for kind, data in files.items():
        (archive / f"{kind}{version}.pem").write_bytes(data)
    relative = Path("..") / ".." / archive.parent.name / archive.name
    for kind in files:
        link = live / f"{kind}.pem"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(relative / f"{kind}{version}.pem")


def test_certbot_symlink_renewal_serves_the_new_certificate(start_certgate, local_ca: LocalCA,
                                                            upstream, tmp_path: Path) -> None:
    live = tmp_path / "letsencrypt" / "live" / HOST
    archive = tmp_path / "letsencrypt" / "archive" / HOST
    live.mkdir(parents=True)
    archive.mkdir(parents=True)
    chain1, key1, serial1 = issue_server(local_ca, tmp_path / "issue1", HOST)
    _certbot_renew(live, archive, 1, chain1, key1)
    proxy = start_certgate(_config(local_ca, upstream.port, live / "fullchain.pem",
                                   live / "privkey.pem"))
    ctx = local_ca.context("carol")

    with Connection(proxy.port, ctx, sni=HOST, timeout=10) as before:
        assert before.request("GET", "/echo", host=HOST).status == 200
        assert peer_serial(before) == serial1
        for version in (2, 3):  # two renewals in a row
            chain, key, serial = issue_server(local_ca, tmp_path / f"issue{version}", HOST)
            _certbot_renew(live, archive, version, chain, key)
            wait_until(lambda: serial == served_serial(proxy.port, ctx, HOST),  # noqa: B023
                       SWAP_TIMEOUT, f"new connections to see renewal {version}")
            assert before.request("GET", "/echo", host=HOST).status == 200
        assert peer_serial(before) == serial1
    # certbot swaps the links back to back; the rebuild waits for them to
    # hold still, so a new key is never paired with the old chain.
    assert "reload failed" not in proxy.log_text()


def test_mismatched_key_keeps_the_old_certificate(start_certgate, local_ca: LocalCA, upstream,
                                                  tmp_path: Path) -> None:
    live = tmp_path / "tls"
    live.mkdir()
    chain1, key1, serial1 = issue_server(local_ca, tmp_path / "issue1", HOST)
    cert, key = live / "fullchain.pem", live / "privkey.pem"
    cert.write_bytes(chain1)
    key.write_bytes(key1)
    proxy = start_certgate(_config(local_ca, upstream.port, cert, key))
    ctx = local_ca.context("carol")

    with Connection(proxy.port, ctx, sni=HOST, timeout=10) as before:
        assert before.request("GET", "/echo", host=HOST).status == 200
        stranger = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        replace_file(key, stranger)
        proxy.wait_for_log("reload failed", timeout=SWAP_TIMEOUT)
        assert f"{key}: does not match the certificate in {cert}" in proxy.log_text()
        assert served_serial(proxy.port, ctx, HOST) == serial1
        assert before.request("GET", "/echo", host=HOST).status == 200

        # A new certificate whose chain does not match the stranger key either.
        chain2, key2, serial2 = issue_server(local_ca, tmp_path / "issue2", HOST)
        replace_file(cert, chain2)
        wait_until(lambda: proxy.log_text().count("reload failed") >= 2, SWAP_TIMEOUT,
                   "the second mismatch to be refused")
        assert served_serial(proxy.port, ctx, HOST) == serial1

        # The matching key arrives: the new certificate goes into service.
        replace_file(key, key2)
        wait_until(lambda: served_serial(proxy.port, ctx, HOST) == serial2, SWAP_TIMEOUT,
                   "the matching pair to be served")
        assert before.request("GET", "/echo", host=HOST).status == 200


def test_trusted_ca_file_change_applies_to_new_connections(start_certgate, local_ca: LocalCA,
                                                           upstream, tmp_path: Path) -> None:
    """A trusted CA bundle is hot-reloaded too: adding a CA admits its clients,
    removing it refuses them on new connections (in the handshake), while a
    connection opened before keeps its state."""
    other = make_local_ca(tmp_path / "other", names=("mallory",), ca_name="partner CA")
    unrelated = make_local_ca(tmp_path / "unrelated", names=(), ca_name="unrelated CA")
    bundle = tmp_path / "partners.pem"
    bundle.write_bytes(unrelated.ca.trust_bundle_path.read_bytes())
    proxy = start_certgate(f"""
state_dir: {local_ca.state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin, "{bundle}"]}}
routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream.port}"}}
""")
    mallory = other["mallory"]
    ctx = client_context(local_ca.root, mallory.cert, mallory.key)
    assert outcome(proxy.port, ctx) == "closed"

    replace_file(bundle, other.ca.trust_bundle_path.read_bytes())
    wait_until(lambda: outcome(proxy.port, ctx) == 200, SWAP_TIMEOUT,
               "the partner CA's client to be admitted")
    with Connection(proxy.port, ctx, timeout=10) as before:
        assert before.request("GET", "/echo").status == 200
        replace_file(bundle, unrelated.ca.trust_bundle_path.read_bytes())
        wait_until(lambda: outcome(proxy.port, ctx) == "closed", SWAP_TIMEOUT,
                   "the partner CA's client to be refused again")
        assert before.request("GET", "/echo").status == 200
    assert outcome(proxy.port, local_ca.context("carol")) == 200

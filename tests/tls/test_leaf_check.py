"""A revoked certificate is refused inside the handshake with the
certificate_revoked alert (issue #12: "certificate_revoked where certgate
itself refuses after the handshake").

The unit tests run a real handshake through memory BIOs between a Python
client and a server context with :func:`certgate.tls.openssl.set_leaf_check`,
so they can count the check's calls and see what it may and may not change:
it only narrows OpenSSL's verdict, runs once per verified chain, and a check
that breaks refuses. The end-to-end tests revoke a certificate with the real
CLI and read the alert with ``openssl s_client -msg`` under TLS 1.2 and 1.3.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from certgate.ca import CertificateAuthority
from certgate.tls import openssl

from support.clients import TLS_VERSIONS
from support.forge import Issued, make_ca, make_leaf, name, write_client
from support.process import wait_until

VERSIONS = ["1.2", "1.3"]
FLAG = {"1.2": "-tls1_2", "1.3": "-tls1_3"}


class Handshake:
    """A client and a server SSLObject wired together through memory BIOs."""

    def __init__(self, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
        self.c_in, self.c_out, self.s_in, self.s_out = (ssl.MemoryBIO() for _ in range(4))
        self.client = client_ctx.wrap_bio(self.c_in, self.c_out, server_hostname="localhost")
        self.server = server_ctx.wrap_bio(self.s_in, self.s_out, server_side=True)

    def run(self) -> tuple[BaseException | None, BaseException | None]:
        """Step both sides until neither moves (bounded); each side's error or None."""
        errors: dict[str, BaseException | None] = {"client": None, "server": None}
        done = {"client": False, "server": False}
        for _ in range(20):
            for side, obj in (("client", self.client), ("server", self.server)):
                if done[side] or errors[side] is not None:
                    continue
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    errors[side] = exc
            self.s_in.write(self.c_out.read())
            self.c_in.write(self.s_out.read())
            if (done["client"] or errors["client"]) and (done["server"] or errors["server"]):
                break
        # A TLS 1.3 client finishes before the server has judged its
        # certificate; the verdict reaches it on its first read.
        if errors["client"] is None and errors["server"] is not None:
            try:
                self.client.read(1)
            except ssl.SSLError as exc:
                errors["client"] = exc
        return errors["client"], errors["server"]


@pytest.fixture(scope="module")
def forged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | Issued]:
    base = tmp_path_factory.mktemp("leafcheck")
    root = make_ca(name("leaf-check root"))
    other = make_ca(name("someone else"))
    server = make_leaf(root, name("localhost"), eku=False,
                       sans=[x509.DNSName("localhost")])
    files: dict[str, Path | Issued] = {"root_issued": root}
    files["root"] = base / "root.pem"
    files["root"].write_bytes(root.pem)  # type: ignore[union-attr]
    files["server"], files["server_key"] = write_client(base, "server", server)
    files["good"], files["good_key"] = write_client(base, "good", make_leaf(root, name("good")))
    files["foreign"], files["foreign_key"] = write_client(base, "foreign",
                                                          make_leaf(other, name("mallory")))
    return files


def _server(forged: dict[str, Path | Issued], version: str,
            check: Callable[[bytes], int] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[version]
    ctx.load_cert_chain(str(forged["server"]), str(forged["server_key"]))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(forged["root"]))
    if check is not None:
        openssl.set_leaf_check(ctx, check)
    return ctx


def _client(forged: dict[str, Path | Issued], who: str, version: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(forged["root"]))
    ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[version]
    ctx.load_cert_chain(str(forged[who]), str(forged[f"{who}_key"]))
    return ctx


def _leaf_der(forged: dict[str, Path | Issued], who: str) -> bytes:
    pem = Path(str(forged[who])).read_bytes()
    return ssl.PEM_cert_to_DER_cert(pem.decode().split("-----END CERTIFICATE-----")[0]
                                    + "-----END CERTIFICATE-----\n")


@pytest.mark.parametrize("version", VERSIONS)
def test_a_passing_check_runs_once_on_the_leaf(forged, version: str) -> None:  # type: ignore[no-untyped-def]
    seen: list[bytes] = []
    server = _server(forged, version, lambda der: seen.append(der) or 0)
    client_error, server_error = Handshake(server, _client(forged, "good", version)).run()
    assert (client_error, server_error) == (None, None)
    assert seen == [_leaf_der(forged, "good")]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_revoked_verdict_sends_certificate_revoked(forged, version: str) -> None:  # type: ignore[no-untyped-def]
    server = _server(forged, version, lambda der: openssl.X509_V_ERR_CERT_REVOKED)
    client_error, server_error = Handshake(server, _client(forged, "good", version)).run()
    assert isinstance(server_error, ssl.SSLCertVerificationError)
    assert server_error.verify_code == openssl.X509_V_ERR_CERT_REVOKED
    assert isinstance(client_error, ssl.SSLError)
    assert client_error.reason == "SSLV3_ALERT_CERTIFICATE_REVOKED"


@pytest.mark.parametrize("version", VERSIONS)
def test_a_broken_check_refuses(forged, version: str) -> None:  # type: ignore[no-untyped-def]
    def broken(der: bytes) -> int:
        raise RuntimeError("bug")

    server = _server(forged, version, broken)
    client_error, server_error = Handshake(server, _client(forged, "good", version)).run()
    assert isinstance(server_error, ssl.SSLCertVerificationError)
    assert server_error.verify_code == openssl.X509_V_ERR_APPLICATION_VERIFICATION
    assert client_error is not None


@pytest.mark.parametrize("version", VERSIONS)
def test_the_check_cannot_admit_what_openssl_refused(forged, version: str) -> None:  # type: ignore[no-untyped-def]
    seen: list[bytes] = []
    server = _server(forged, version, lambda der: seen.append(der) or 0)
    client_error, server_error = Handshake(server, _client(forged, "foreign", version)).run()
    assert isinstance(server_error, ssl.SSLCertVerificationError)
    assert server_error.verify_code != 0
    assert client_error is not None
    assert seen == [], "the check ran on a chain OpenSSL had refused"


def test_the_callback_survives_a_later_verify_mode_change(forged) -> None:  # type: ignore[no-untyped-def]
    """CPython keeps the context's verify callback when verify_mode is set
    again; if it did not, the readback in set_leaf_check would be the only
    guard, so this pins the behaviour certgate relies on."""
    seen: list[bytes] = []
    server = _server(forged, "1.3", lambda der: seen.append(der) or 0)
    server.verify_mode = ssl.CERT_OPTIONAL
    server.verify_mode = ssl.CERT_REQUIRED
    assert Handshake(server, _client(forged, "good", "1.3")).run() == (None, None)
    assert len(seen) == 1


def test_a_second_callback_is_refused(forged) -> None:  # type: ignore[no-untyped-def]
    server = _server(forged, "1.3", lambda der: 0)
    with pytest.raises(openssl.Unavailable):
        openssl.set_leaf_check(server, lambda der: 0)


# -- end to end -----------------------------------------------------------------

CONFIG = """
state_dir: %(state)s
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - {host: localhost, upstream: whoami, client_auth: require}
"""


@pytest.fixture(scope="module")
def revoked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """A CA of its own (revoking in the session PKI would touch other tests):
    carol revoked, dave good."""
    base = tmp_path_factory.mktemp("revoked")
    ca = CertificateAuthority.init(base / "state", name="revocation alert CA")
    files: dict[str, tuple[Path, Path]] = {}
    for who in ("carol", "dave"):
        issued = ca.issue_client(who, days=30)
        cert, key = base / f"{who}.chain.pem", base / f"{who}.key"
        cert.write_bytes(issued.chain_pem)
        key.write_bytes(issued.key_pem)
        key.chmod(0o600)
        files[who] = (cert, key)
    ca.revoke("carol", "keyCompromise")
    return base / "state", files


@pytest.mark.parametrize("version", VERSIONS)
def test_openssl_s_client_sees_certificate_revoked(start_certgate, revoked, version: str) -> None:  # type: ignore[no-untyped-def]
    state, files = revoked
    proxy = start_certgate(CONFIG % {"state": state})
    cert, key = files["carol"]
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-servername",
            "localhost", FLAG[version], "-msg", "-CAfile", str(state / "ca" / "root.crt"),
            "-cert", str(cert), "-key", str(key)]
    done = subprocess.run(["bash", "-c", 'sleep 1 | "$@"', "-", *args], capture_output=True,
                          text=True, timeout=30, check=False)
    out = done.stdout + done.stderr
    assert f"<<< TLS {version}, Alert [length 0002], fatal certificate_revoked" in out, out
    # The log says what happened, in words.
    wait_until(lambda: "certificate revoked" in proxy.log_text(), 5, "the refusal in the log")
    # A good certificate of the same CA still gets through.
    good, good_key = files["dave"]
    ok = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert",
                         str(state / "ca" / "root.crt"), "--cert", str(good), "--key",
                         str(good_key), f"https://localhost:{proxy.port}/"],
                        capture_output=True, text=True, timeout=30, check=False)
    assert '"cn": "dave"' in ok.stdout or '"cn":"dave"' in ok.stdout, ok.stdout + ok.stderr


def test_the_registry_keeps_no_owner_alive(forged) -> None:  # type: ignore[no-untyped-def]
    """A runtime's bound method is held weakly: a reloaded-away runtime is
    freed, and a handshake on its context then falls back to OpenSSL's
    verdict (the post-handshake checks still run in the proxy)."""
    import gc
    import weakref

    class Owner:
        def check(self, der: bytes) -> int:
            return openssl.X509_V_ERR_CERT_REVOKED

    owner = Owner()
    server = _server(forged, "1.3", owner.check)
    gone = weakref.ref(owner)
    del owner
    gc.collect()
    assert gone() is None
    assert Handshake(server, _client(forged, "good", "1.3")).run() == (None, None)


def test_a_collected_context_leaves_the_registry(forged) -> None:  # type: ignore[no-untyped-def]
    import gc

    before = len(openssl._checks)
    server = _server(forged, "1.3", lambda der: 0)
    assert len(openssl._checks) == before + 1
    del server
    gc.collect()
    assert len(openssl._checks) == before

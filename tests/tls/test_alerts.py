"""A refused handshake says why: the TLS alert goes out, and the CertificateRequest
names the trusted CAs (issue #12, acceptance 1 and 2).

Before, certgate closed the TCP connection without the alert OpenSSL had
written, so clients reported an empty reply or an unexpected EOF, and the
CertificateRequest carried no CA names ("No client certificate CA names
sent"), so browsers offered every certificate they held. Every case runs
under TLS 1.2 and 1.3 with ``openssl s_client``, curl and Python's ssl.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin, {file: %(other)s, crl: none}]}
routes:
  - {host: localhost, upstream: whoami, client_auth: require}
"""

VERSIONS = ["1.2", "1.3"]
FLAG = {"1.2": "-tls1_2", "1.3": "-tls1_3"}


@pytest.fixture
def proxy(start_certgate, pki):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"other": pki.other_ca_root})


def _s_client(port: int, root: Path, version: str, cert: Path | None = None,
              key: Path | None = None) -> str:
    """``openssl s_client -msg`` output; stdin stays open for a second so a
    TLS 1.3 client reads the server's answer to its certificate flight."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
            "localhost", FLAG[version], "-msg", "-CAfile", str(root)]
    if cert is not None:
        args += ["-cert", str(cert), "-key", str(key)]
    done = subprocess.run(["bash", "-c", 'sleep 1 | "$@"', "-", *args], capture_output=True,
                          text=True, timeout=30, check=False)
    return done.stdout + done.stderr


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("who", "alert"), [
    (None, {"1.2": "fatal handshake_failure", "1.3": "fatal certificate_required"}),
    ("untrusted", {"1.2": "fatal unknown_ca", "1.3": "fatal unknown_ca"}),
    ("expired", {"1.2": "fatal certificate_expired", "1.3": "fatal certificate_expired"}),
])
def test_refused_handshake_sends_the_alert(proxy, pki, version, who, alert):  # type: ignore[no-untyped-def]
    cert = pki[who] if who else None
    out = _s_client(proxy.port, pki.root, version, cert.cert if cert else None,
                    cert.key if cert else None)
    assert f"<<< TLS {version}, Alert [length 0002], {alert[version]}" in out, out
    # The refusal is logged and counted under its real reason, not as an EOF.
    proxy.wait_for_log("TLS handshake failed")
    assert "reason=UNEXPECTED_EOF" not in proxy.log_text()


@pytest.mark.parametrize("version", VERSIONS)
def test_python_client_learns_a_certificate_is_required(proxy, pki, version):  # type: ignore[no-untyped-def]
    with pytest.raises(ssl.SSLError) as info, Connection(proxy.port, pki.context(None, version)) \
            as conn:
        conn.request("GET", "/")
    reason = info.value.reason or ""
    assert "ALERT" in reason, info.value
    assert reason != "UNEXPECTED_EOF_WHILE_READING"


def test_curl_says_what_went_wrong(proxy, pki):  # type: ignore[no-untyped-def]
    done = subprocess.run(["curl", "-sS", "--cacert", str(pki.root),
                           f"https://localhost:{proxy.port}/"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0
    assert "Empty reply" not in done.stderr
    assert "alert" in done.stderr.lower(), done.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_certificate_request_names_every_trusted_ca(proxy, pki, version):  # type: ignore[no-untyped-def]
    out = _s_client(proxy.port, pki.root, version)
    assert "Acceptable client certificate CA names" in out, out
    listed = out.split("Acceptable client certificate CA names", 1)[1]
    for path in (pki.ca.root_cert_path, pki.ca.issuing_cert_path, pki.other_ca_root):
        from cryptography import x509

        subject = x509.load_pem_x509_certificate(path.read_bytes()).subject
        cn = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert f"CN = {cn}" in listed, (cn, listed)

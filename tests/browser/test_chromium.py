"""What a real browser shows (issue #12, acceptance 1 and 3), in headless Chromium.

a. a default ``require`` route, no client certificate: Chromium reports a
   client-certificate error (it reads the TLS alert certgate now sends), not
   "site can't be reached" (ERR_EMPTY_RESPONSE / ERR_CONNECTION_CLOSED);
b. ``no_certificate: page``, no certificate: the 496 page is shown;
c. ``no_certificate: page`` and a certificate from an untrusted CA (imported
   and auto-selected by policy): the handshake still fails.

Server trust: certgate's root is imported into an NSS database under a
temporary HOME with certutil (Chromium on Linux reads ``~/.pki/nssdb``), so
no ``--ignore-certificate-errors`` is needed and the server certificate is
really verified. The net error is read from the DevTools protocol
(``Network.loadingFailed`` in the performance log).

Skipped only when chromium is not installed and CI is not true; in CI they run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import PrivateFormat, load_pem_private_key, pkcs12
from cryptography.hazmat.primitives.serialization.pkcs12 import PBES

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if (CHROMIUM is None or CHROMEDRIVER is None) and os.environ.get("CI") != "true":
    pytest.skip("chromium and chromium-driver are not installed (they are required when "
                "CI=true): apt-get install --no-install-recommends chromium chromium-driver "
                "libnss3-tools", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
routes:
  - {host: locked.localhost, upstream: whoami}
  - {host: page.localhost, upstream: whoami, no_certificate: page}
"""

POLICY_DIR = Path("/etc/chromium/policies/managed")
POLICY_FILE = POLICY_DIR / "certgate-test-client-cert.json"
PAGE_LOAD_TIMEOUT = 15  # seconds: each load is one loopback handshake
CLIENT_AUTH_ERRORS = {"net::ERR_BAD_SSL_CLIENT_AUTH_CERT", "net::ERR_SSL_CLIENT_AUTH_CERT_NEEDED"}


@pytest.fixture
def proxy(start_certgate):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG)


@pytest.fixture
def home(tmp_path: Path, pki) -> Path:  # type: ignore[no-untyped-def]
    """A HOME whose NSS database trusts certgate's root for servers."""
    nssdb = tmp_path / "home" / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    _run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"])
    _run(["certutil", "-A", "-d", f"sql:{nssdb}", "-n", "certgate test root", "-t", "C,,",
          "-i", str(pki.root)])
    return tmp_path / "home"


def _run(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def _import_client(home: Path, cert: Path, key: Path, tmp: Path) -> None:
    """Put a client certificate and key into the NSS database (pk12util)."""
    chain = x509.load_pem_x509_certificates(cert.read_bytes())
    private = load_pem_private_key(key.read_bytes(), None)
    p12 = pkcs12.serialize_key_and_certificates(
        b"device", private, chain[0], chain[1:],  # type: ignore[arg-type]
        PrivateFormat.PKCS12.encryption_builder()
        .key_cert_algorithm(PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256())
        .build(b"pw"))
    path = tmp / "device.p12"
    path.write_bytes(p12)
    _run(["pk12util", "-i", str(path), "-d", f"sql:{home / '.pki' / 'nssdb'}", "-W", "pw",
          "-K", ""])


@pytest.fixture
def auto_select() -> Iterator[None]:
    """A managed policy that picks a client certificate without a prompt
    (headless Chromium has no picker); removed after the test."""
    if not os.access(POLICY_DIR.parent.parent, os.W_OK) and not POLICY_DIR.exists():
        pytest.skip(f"cannot write the managed policy under {POLICY_DIR}")
    POLICY_DIR.mkdir(parents=True, exist_ok=True)
    rule = json.dumps({"pattern": "https://[*.]localhost", "filter": {}})
    POLICY_FILE.write_text(json.dumps({"AutoSelectCertificateForUrls": [rule]}))
    try:
        yield
    finally:
        POLICY_FILE.unlink(missing_ok=True)


class Browser:
    def __init__(self, home: Path, profile: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                     # Kept for other names; the tests use *.localhost, which
                     # Chromium itself resolves to loopback: with *.test and only
                     # these rules, about one load in four still failed with
                     # ERR_NAME_NOT_RESOLVED.
                     "--host-resolver-rules=MAP *.test 127.0.0.1"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        env = {**os.environ, "HOME": str(home)}
        service = Service(executable_path=str(CHROMEDRIVER), env=env)
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)

    def load(self, url: str) -> tuple[str | None, int | None, str]:
        """(net error of the main document, its HTTP status, page text)."""
        self.driver.get_log("performance")  # drop what came before
        # An error page may count as a failed navigation; the log says why.
        with contextlib.suppress(WebDriverException):
            self.driver.get(url)
        error: str | None = None
        status: int | None = None
        ours: set[str] = set()  # request ids of this URL (not of Chromium's own fetches)
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent" \
                    and params["request"]["url"].startswith(url):
                ours.add(params["requestId"])
            if params.get("requestId") not in ours or params.get("type") != "Document":
                continue
            if message["method"] == "Network.loadingFailed":
                error = params.get("errorText")
            elif message["method"] == "Network.responseReceived":
                status = params["response"]["status"]
        text = self.driver.execute_script("return document.body ? document.body.innerText : ''")
        return error, status, str(text)

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture
def browser(home: Path, tmp_path: Path) -> Iterator[Browser]:
    b = Browser(home, tmp_path / "profile")
    try:
        yield b
    finally:
        b.quit()


def test_no_certificate_shows_a_client_certificate_error(proxy, browser):  # type: ignore[no-untyped-def]
    error, _, text = browser.load(f"https://locked.localhost:{proxy.port}/")
    assert error in CLIENT_AUTH_ERRORS, (error, text[:300])


def test_page_setting_shows_the_page(proxy, browser):  # type: ignore[no-untyped-def]
    error, status, text = browser.load(f"https://page.localhost:{proxy.port}/")
    assert error is None
    assert status == 496
    assert "This site needs a device certificate" in text
    assert "certgate test CA" in text


def test_untrusted_certificate_still_fails_with_the_page_on(proxy, pki, home, tmp_path,  # type: ignore[no-untyped-def]
                                                             auto_select):
    # Chromium offers only certificates whose issuer is among the CA names
    # certgate sends, so the untrusted certificate claims the built-in issuing
    # CA as issuer (name and key identifier) while another key signed it:
    # offered by the browser, refused by OpenSSL in the handshake.
    from cryptography import x509

    from support.forge import Issued, make_leaf, name, new_key, write_client

    issuing = x509.load_pem_x509_certificate(pki.ca.issuing_cert_path.read_bytes())
    forged = make_leaf(Issued(issuing, new_key("p256")), name("mallory"))
    cert, key = write_client(tmp_path, "forged", forged)
    _import_client(home, cert, key, tmp_path)
    b = Browser(home, tmp_path / "profile-untrusted")
    try:
        error, status, text = b.load(f"https://page.localhost:{proxy.port}/")
    finally:
        b.quit()
    assert error is not None, (status, text[:300])
    assert error.startswith("net::ERR_"), error
    assert error not in {"net::ERR_CONNECTION_REFUSED", "net::ERR_NAME_NOT_RESOLVED"}
    assert "This site needs a device certificate" not in text

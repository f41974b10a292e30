"""The console in a real browser (issue #14, acceptance 1 and 5).

Headless Debian Chromium, with an admin certificate issued by ``certgate ca
issue --role admin --p12`` and imported into an NSS database with pk12util
(chosen without a prompt by the AutoSelectCertificateForUrls managed
policy, as in test_chromium.py), walks through the console: the overview,
New device, the form, the QR code on the page (a screenshot of ``#qr``
decoded by zxing-cpp must give exactly the link shown in ``#link``), the
enrollment completed with httpx over the CSR endpoint, one request with the
new certificate, the device listed with its last use, Revoke... and the
confirmation, and then the proxy refusing that certificate within 2 s. The
DevTools performance log must show no request to any other origin.

The same run takes screenshots of every page at desktop (1280x900) and
phone (390x844) widths, and checks that no page is wider than a phone.
With ``CERTGATE_SCREENSHOTS=1`` they are written to
docs/img/console-<page>-<desktop|phone>.png (docs/console.md shows them):
``CERTGATE_SCREENSHOTS=1 python3 -m pytest tests/browser/test_console.py``.

Skipped only when chromium is not installed and CI is not true.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zxingcpp
from console.conftest import CONFIG, CONSOLE_HOST
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certgate.ca import CertificateAuthority

from support.chromium import requested_urls
from support.enrolling import Enrolling, running_enrolling
from support.png import read_grey
from support.process import wait_until
from support.screenshots import screenshot_dir
from support.sightings import builtin_leaf

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if (CHROMIUM is None or CHROMEDRIVER is None) and os.environ.get("CI") != "true":
    pytest.skip("chromium and chromium-driver are not installed (they are required when "
                "CI=true): apt-get install --no-install-recommends chromium chromium-driver "
                "libnss3-tools", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

ADMIN = "console-admin"
DEVICE = "anna-phone"
DEVICE_UA = "Mozilla/5.0 (Linux; Android 14; Pixel 8) certgate-test"
P12_PASSWORD = "console-test"  # a throwaway test bundle; never a real secret

# (label, width, height, device pixel ratio, mobile)
VIEWPORTS = (("desktop", 1280, 900, 1, False), ("phone", 390, 844, 2, True))
MAX_SHOT_HEIGHT = 2400  # CSS pixels: a long audit log is cut, not a 20 MB picture
POLICY_DIR = Path("/etc/chromium/policies/managed")
POLICY_FILE = POLICY_DIR / "certgate-test-console.json"
REFUSED_WITHIN = 2.0  # seconds, issue #14 acceptance 1


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def _issue(env: Enrolling, name: str, *roles: str) -> tuple[Path, Path]:
    issued = CertificateAuthority.open(env.state).issue_client(name, roles=roles, days=30)
    cert = env.state.parent / f"{name}.chain.pem"
    key = env.state.parent / f"{name}.key"
    cert.write_bytes(issued.chain_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    return cert, key


def _client(env: Enrolling, who: tuple[Path, Path], host: str,
            user_agent: str = "certgate-test") -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(env.root))
    ctx.load_cert_chain(str(who[0]), str(who[1]))
    return httpx.Client(base_url=f"https://127.0.0.1:{env.port}", verify=ctx, timeout=10,
                        headers={"host": f"{host}:{env.port}", "user-agent": user_agent})


def _get(env: Enrolling, who: tuple[Path, Path], host: str, path: str = "/",
         user_agent: str = "certgate-test") -> int:
    """The status of one GET on a fresh connection (0: refused in the handshake)."""
    try:
        with _client(env, who, host, user_agent) as client:
            return client.get(path, extensions={"sni_hostname": host}).status_code
    except (ssl.SSLError, httpx.TransportError, OSError):
        return 0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Enrolling]:
    yield from running_enrolling(tmp_path, CONFIG)


@pytest.fixture
def admin(env: Enrolling, tmp_path: Path) -> Path:
    """The admin's PKCS#12 bundle, made the way docs/console.md says."""
    out = tmp_path / "admin-out"
    _run([sys.executable, "-m", "certgate", "ca", "issue", ADMIN, "--role", "admin",
          "--p12-password", P12_PASSWORD, "--out", str(out), "--state", str(env.state)])
    who = (out / f"{ADMIN}.chain.pem", out / f"{ADMIN}.key")
    # The proxy reads roles from the inventory about once a second.
    wait_until(lambda: _get(env, who, CONSOLE_HOST) == 200, 10, "the admin role to reach the proxy")
    return out / f"{ADMIN}.p12"


@pytest.fixture
def seeded(env: Enrolling) -> None:
    """A few devices so the screenshots show a CA in use: one seen, one
    revoked by the CLI, one enrollment link still pending."""
    laptop = _issue(env, "laptop-jonas", "family", "ops")
    _issue(env, "kid-tablet", "family")
    _issue(env, "old-phone", "family")
    env.ca("revoke", "old-phone", "--reason", "superseded")
    env.enroll("tv-livingroom", "--role", "media")
    assert _get(env, laptop, "localhost",
                user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0") == 200


@pytest.fixture
def policy() -> Iterator[None]:
    if not os.access(POLICY_DIR.parent.parent, os.W_OK) and not POLICY_DIR.exists():
        pytest.skip(f"cannot write the managed policy under {POLICY_DIR}")
    POLICY_DIR.mkdir(parents=True, exist_ok=True)
    rule = json.dumps({"pattern": f"https://{CONSOLE_HOST}", "filter": {}})
    POLICY_FILE.write_text(json.dumps({"AutoSelectCertificateForUrls": [rule]}))
    try:
        yield
    finally:
        POLICY_FILE.unlink(missing_ok=True)


@pytest.fixture
def driver(env: Enrolling, admin: Path, policy: None, tmp_path: Path
           ) -> Iterator[webdriver.Chrome]:
    # Server trust and the admin's certificate in an NSS database under a
    # temporary HOME: the server certificate is really verified.
    nssdb = tmp_path / "home" / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    db = f"sql:{nssdb}"
    _run(["certutil", "-N", "-d", db, "--empty-password"])
    _run(["certutil", "-A", "-d", db, "-n", "certgate console root", "-t", "C,,",
          "-i", str(env.root)])
    _run(["pk12util", "-i", str(admin), "-d", db, "-W", P12_PASSWORD, "-K", ""])
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
                 # *.localhost resolves to loopback in Chromium itself; the
                 # rule only keeps any other name off the network.
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE *.localhost"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER),
                      env={**os.environ, "HOME": str(tmp_path / "home")})
    chrome = webdriver.Chrome(service=service, options=options)
    chrome.set_page_load_timeout(15)
    _viewport(chrome, VIEWPORTS[0])
    try:
        yield chrome
    finally:
        chrome.quit()


def _viewport(chrome: webdriver.Chrome, view: tuple[str, int, int, int, bool]) -> None:
    _label, width, height, scale, mobile = view
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile})



class Walk:
    """The browser on the console, remembering every URL it requested."""

    def __init__(self, chrome: webdriver.Chrome, port: int, images: Path) -> None:
        self.chrome = chrome
        self.images = images
        self.origin = f"https://{CONSOLE_HOST}:{port}"
        self.requested: list[str] = []
        chrome.get_log("performance")  # Chromium's own start-up (new tab page)

    def open(self, path: str) -> None:
        self.chrome.get(self.origin + path)
        self.note()

    def note(self) -> None:
        self.requested += requested_urls(self.chrome)

    def heading(self) -> str:
        return str(self.chrome.find_element(By.TAG_NAME, "h1").text)

    def expect_heading(self, wanted: str, timeout: float = 10.0) -> None:
        """Wait for the page with this heading: a click on a form returns
        before the POST's answer (and its redirect) has replaced the page."""
        seen: list[str] = []

        def arrived() -> bool:
            try:
                seen.append(self.heading())
            except (StaleElementReferenceException, NoSuchElementException):
                return False
            return seen[-1] == wanted

        wait_until(arrived, timeout, f"the page headed {wanted!r}")

    def shoot(self, page: str) -> None:
        """Full-page screenshots at both widths; none may scroll sideways."""
        for view in VIEWPORTS:
            label, width, height, _scale, _mobile = view
            _viewport(self.chrome, view)
            wide = self.chrome.execute_script("return document.documentElement.scrollWidth")
            assert wide <= width, f"{page} is {wide}px wide at {label} width {width}"
            tall = self.chrome.execute_script("return document.documentElement.scrollHeight")
            shot = self.chrome.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width,
                         "height": max(height, min(int(tall), MAX_SHOT_HEIGHT)), "scale": 1}})
            png = base64.b64decode(shot["data"])
            (self.images / f"console-{page}-{label}.png").write_bytes(png)
        _viewport(self.chrome, VIEWPORTS[0])
        self.note()


def _csr_enroll(env: Enrolling, link: str, pin: str, directory: Path) -> tuple[Path, Path]:
    """What a device does with the link and PIN: a key of its own, a CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, DEVICE)]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with env.client() as client:
        done = env.request(client, "POST", f"{httpx.URL(link).path}/csr",
                           content=json.dumps({"pin": pin, "csr": csr.decode()}),
                           headers={"content-type": "application/json"})
    assert done.status_code == 200, done.text
    cert = directory / f"{DEVICE}.chain.pem"
    key_path = directory / f"{DEVICE}.key"
    cert.write_bytes(done.content)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert, key_path


def _device_row(walk: Walk) -> str:
    rows = walk.chrome.find_elements(By.XPATH, f"//tr[td/a[text()='{DEVICE}']]")
    return str(rows[0].text) if rows else ""


def test_console_walk_through(env: Enrolling, seeded: None, driver: webdriver.Chrome,
                              tmp_path: Path) -> None:
    walk = Walk(driver, env.port, screenshot_dir(tmp_path))

    # Overview: the admin's certificate was picked by policy and let in.
    walk.open("/")
    walk.expect_heading("Overview")
    assert f"signed in as {ADMIN}" in driver.find_element(By.TAG_NAME, "header").text
    # The style sheet applies (served by the console itself under 'self').
    colour = driver.execute_script(
        "return getComputedStyle(document.querySelector('header')).backgroundColor")
    assert colour == "rgb(20, 50, 79)"
    walk.shoot("overview")

    # New device: fill in the form, look at it, submit.
    driver.find_element(By.LINK_TEXT, "New device").click()
    walk.note()
    walk.expect_heading("New device")
    driver.find_element(By.ID, "name").send_keys(DEVICE)
    driver.find_element(By.ID, "roles").send_keys("family")
    days = driver.find_element(By.ID, "days")
    days.clear()
    days.send_keys("90")
    Select(driver.find_element(By.ID, "platform")).select_by_value("android")
    walk.shoot("new")
    driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    walk.note()
    walk.expect_heading(f"Enroll {DEVICE}")

    # The QR code on screen decodes to exactly the link shown under it.
    link = str(driver.find_element(By.ID, "link").text)
    pin = str(driver.find_element(By.ID, "pin").text)
    assert link.startswith(f"https://enroll.localhost:{env.port}/enroll/"), link
    image = read_grey(driver.find_element(By.ID, "qr").screenshot_as_png)
    decoded = [code.text for code in zxingcpp.read_barcodes(image)]
    assert decoded == [link]
    walk.shoot("enroll-qr")

    # The phone completes it; one request with its new certificate.
    device = _csr_enroll(env, link, pin, tmp_path)
    assert _get(env, device, "localhost", user_agent=DEVICE_UA) == 200

    # Devices: listed, with last seen set (flushed every 0.5 s here).
    deadline = time.monotonic() + 15
    while True:
        walk.open("/devices")
        row = _device_row(walk)
        if row and "never" not in row and DEVICE_UA in row:
            break
        assert time.monotonic() < deadline, f"no last seen for {DEVICE}: {row!r}"
        time.sleep(0.3)
    assert "valid" in row
    assert "localhost" in row  # the route it was seen on
    walk.shoot("devices")

    # The device page, then Revoke... and the confirmation step.
    driver.find_element(By.LINK_TEXT, DEVICE).click()
    walk.note()
    walk.expect_heading(f"{DEVICE} valid")
    history = driver.find_element(By.XPATH, "//h2[text()='History']/following-sibling::div").text
    assert "enrollment link created" in history
    assert f"{ADMIN} (console)" in history
    walk.shoot("device")
    driver.find_element(By.LINK_TEXT, "Revoke…").click()
    walk.note()
    walk.expect_heading(f"Revoke {DEVICE}?")
    Select(driver.find_element(By.ID, "reason")).select_by_value("keyCompromise")
    walk.shoot("revoke")
    driver.find_element(By.CSS_SELECTOR, "button.danger").click()
    walk.note()
    revoked_at = time.monotonic()
    walk.expect_heading(f"{DEVICE} revoked")

    # The proxy refuses the certificate within 2 s of the click's answer.
    wait_until(lambda: _get(env, device, "localhost", user_agent=DEVICE_UA) != 200,
               REFUSED_WITHIN - (time.monotonic() - revoked_at) + 0.05,
               f"the proxy to refuse {DEVICE}'s certificate", interval=0.05)
    entry = [e for e in env.audit() if e["operation"] == "revoke"][-1]
    assert entry["name"] == DEVICE
    assert entry["admin"]["cn"] == ADMIN

    # A leaf the CA's key signed outside the inventory (an adopted CA's old
    # device) makes one request: the Unknown certificates page lists it.
    stray = builtin_leaf(env.state, tmp_path, "old-laptop", x509.Name(
        [x509.NameAttribute(x509.NameOID.COMMON_NAME, "old-laptop")]))
    assert _get(env, (stray[0], stray[1]), "localhost", user_agent="OldLaptop/1.0") == 200
    deadline = time.monotonic() + 15
    while True:
        walk.open("/unknown")
        walk.expect_heading("Unknown certificates")
        table = str(driver.find_element(By.TAG_NAME, "table").text)
        if "old-laptop" in table:
            break
        assert time.monotonic() < deadline, f"old-laptop not listed: {table!r}"
        time.sleep(0.3)
    assert "OldLaptop/1.0" in table
    assert DEVICE not in table
    walk.shoot("unknown")

    walk.open("/audit")
    walk.expect_heading("Audit log")
    verdict = driver.find_element(By.ID, "verdict")
    assert "hash chain intact" in verdict.text
    assert verdict.get_attribute("class") == "ok"
    walk.shoot("audit")

    # Nothing but the console's own origin was ever asked for.
    assert walk.requested
    assert [u for u in walk.requested if not u.startswith(walk.origin + "/")] == []

"""Issue #13 acceptance 4: the enrollment page in headless Chromium at a phone's
viewport (390x844): the PIN field, then the platform choices, and not one
request to another origin (DevTools performance log).

With ``CERTGATE_SCREENSHOTS=1`` the screenshots are written to docs/img/
(the page docs/phone.md shows); otherwise to the test's own directory.
Skipped only when chromium is not installed and CI is not true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support.chromium import requested_urls
from support.enrolling import ENROLL_HOST, Enrolling, running_enrolling
from support.screenshots import screenshot_dir

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if (CHROMIUM is None or CHROMEDRIVER is None) and os.environ.get("CI") != "true":
    pytest.skip("chromium and chromium-driver are not installed (they are required when "
                "CI=true)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

WIDTH, HEIGHT = 390, 844


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Enrolling]:
    yield from running_enrolling(tmp_path)


@pytest.fixture
def driver(env: Enrolling, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    # Server trust through an NSS database under a temporary HOME (as in
    # test_chromium.py): the page's certificate is really verified.
    nssdb = tmp_path / "home" / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    for args in (["-N", "--empty-password"],
                 ["-A", "-n", "certgate enroll root", "-t", "C,,", "-i", str(env.root)]):
        subprocess.run(["certutil", *args, "-d", f"sql:{nssdb}"], check=True,
                       capture_output=True, timeout=30)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER),
                      env={**os.environ, "HOME": str(tmp_path / "home")})
    chrome = webdriver.Chrome(service=service, options=options)
    chrome.set_page_load_timeout(15)
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 2, "mobile": True})
    try:
        yield chrome
    finally:
        chrome.quit()



def test_enrollment_page_on_a_phone(env: Enrolling, driver: webdriver.Chrome,
                                    tmp_path: Path) -> None:
    images = screenshot_dir(tmp_path)
    link = env.enroll("phone", "--role", "family")
    origin = f"https://{ENROLL_HOST}:{env.port}"
    url = f"{origin}{urlsplit(link.url).path}"
    driver.get_log("performance")  # drop Chromium's own start-up (new tab page)
    driver.get(url)
    pin = driver.find_element(By.ID, "pin")
    assert pin.is_displayed()
    assert pin.rect["width"] <= WIDTH
    # The inline style sheet applies (allowed by its hash in the CSP).
    colour = driver.execute_script(
        "return getComputedStyle(document.querySelector('button')).backgroundColor")
    assert colour == "rgb(11, 92, 173)"
    driver.save_screenshot(str(images / "enroll-pin.png"))

    pin.send_keys(link.pin)
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    heading = driver.find_element(By.TAG_NAME, "h1").text
    assert heading == "Certificate for phone"
    summaries = [s.text for s in driver.find_elements(By.TAG_NAME, "summary")]
    assert summaries[0].startswith("Android")
    assert any(s.startswith("iPhone") for s in summaries)
    assert all(s.is_displayed() for s in driver.find_elements(By.TAG_NAME, "summary"))
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= WIDTH  # nothing wider than the phone: no sideways scrolling
    driver.save_screenshot(str(images / "enroll-choose.png"))

    requested = requested_urls(driver)
    assert requested
    assert [u for u in requested if not u.startswith(origin + "/")] == []

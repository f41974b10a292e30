"""The console over real TLS with httpx (issue #14, acceptance 2-4 and the
security headers); the browser walk-through is tests/browser/test_console.py."""

from __future__ import annotations

import json
import ssl
import time

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from certgate.console import guard

from .conftest import CONSOLE_HOST, Console, issue, wait_for_roles
from support.clients import Connection
from support.process import wait_until
from support.sightings import builtin_leaf

PAGES = ["/", "/devices", "/devices/kid-tablet", "/devices/kid-tablet/revoke", "/new",
         "/audit", "/unknown", "/ca.crt", "/crl.pem", "/static/console.css"]
ACTIONS = [("/devices/kid-tablet/revoke", {"reason": "keyCompromise"}),
           ("/devices/kid-tablet/roles", {"role": "admin", "action": "add"}),
           ("/new", {"name": "sneaky", "roles": "admin", "days": "30"}),
           ("/enrollments/0000abcd/cancel", {})]


def test_every_page_answers_an_admin_with_strict_headers(console: Console) -> None:
    for path in PAGES:
        page = console.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        if page.headers["content-type"].startswith("text/html"):
            csp = page.headers["content-security-policy"]
            assert "default-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert "<script" not in page.text


def test_overview_counts_devices_and_shows_the_crl(console: Console) -> None:
    page = console.get("/").text
    assert "root" in page
    assert "CRL number" in page
    # root-admin and kid-tablet are both valid.
    assert '<div class="big">2</div>\n<a href="/devices?status=valid">valid</a>' in page


def test_a_certificate_without_the_role_gets_403_everywhere(console: Console) -> None:
    for path in PAGES:
        assert console.get(path, console.user).status_code == 403, path
    for path, form in ACTIONS:
        form = {**form, "csrf": "0" * 64}
        assert console.post(path, form, who=console.user).status_code == 403, path
    assert console.ca_list()["kid-tablet"]["status"] == "valid"


def test_no_certificate_gets_no_page_at_all(console: Console) -> None:
    ctx = console.context(None)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)), \
            Connection(console.port, ctx, sni=CONSOLE_HOST) as conn:
        conn.request("GET", "/", host=CONSOLE_HOST)


@pytest.mark.parametrize(("csrf", "origin", "extra"), [
    (None, "default", {}),                      # no token
    ("f" * 64, "default", {}),                  # wrong token
    ("right", "https://evil.example", {}),      # another origin
    ("right", "null", {}),                      # a sandboxed or file: page
    ("right", "null", {"sec-fetch-site": "cross-site"}),  # the same, from a browser
    ("right", "null", {"sec-fetch-site": "same-site"}),   # a sibling host's page
    ("right", None, {}),                        # neither Origin nor Sec-Fetch-Site
    ("right", None, {"sec-fetch-site": "cross-site"}),
    ("right", "https://ca.localhost:1", {}),    # same host, another port
])
def test_a_forged_post_changes_nothing_and_is_logged(console: Console, csrf: str | None,
                                                     origin: str | None,
                                                     extra: dict[str, str]) -> None:
    form = {"reason": "keyCompromise"}
    if csrf is not None:
        form["csrf"] = console.csrf() if csrf == "right" else csrf
    answer = console.post("/devices/kid-tablet/revoke", form, origin=origin, headers=extra)
    assert answer.status_code in (400, 403), answer.text
    assert console.ca_list()["kid-tablet"]["status"] == "valid"
    console.env.proxy.wait_for_log("console: refused POST /devices/kid-tablet/revoke")
    assert (form.get("csrf") or "none") not in console.env.proxy.log_text() or csrf is None


def test_another_admins_token_does_not_work(console: Console) -> None:
    """The token is bound to the certificate: a second admin's token (say,
    leaked from their browser) is useless with the first admin's certificate."""
    other = issue(console.env, "other-admin", "admin")
    wait_for_roles(console, other)
    token = console.csrf(other)
    assert token != console.csrf()
    answer = console.post("/devices/kid-tablet/revoke", {"reason": "unspecified",
                                                          "csrf": token})
    assert answer.status_code == 403
    assert console.ca_list()["kid-tablet"]["status"] == "valid"


def test_same_origin_by_sec_fetch_site_alone_is_accepted(console: Console) -> None:
    answer = console.post("/devices/kid-tablet/roles",
                          {"role": "homework", "action": "add", "csrf": console.csrf()},
                          origin=None, headers={"sec-fetch-site": "same-origin"})
    assert answer.status_code == 303, answer.text
    assert "homework" in console.ca_list()["kid-tablet"]["roles"]


def test_origin_null_from_the_console_itself_is_accepted(console: Console) -> None:
    """What Chromium really sends on the console's own form POST: the pages'
    Referrer-Policy: no-referrer turns Origin into "null"; Sec-Fetch-Site,
    which no page can set, still says same-origin (tests/browser/test_console.py
    submits real forms)."""
    answer = console.post("/devices/kid-tablet/roles",
                          {"role": "homework", "action": "add", "csrf": console.csrf()},
                          origin="null", headers={"sec-fetch-site": "same-origin"})
    assert answer.status_code == 303, answer.text
    assert "homework" in console.ca_list()["kid-tablet"]["roles"]


def test_revoke_from_the_console_is_audited_with_the_admin(console: Console) -> None:
    form = {"reason": "keyCompromise", "csrf": console.csrf()}
    answer = console.post("/devices/kid-tablet/revoke", form)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/devices/kid-tablet"
    assert console.ca_list()["kid-tablet"]["status"] == "revoked"
    entry = [e for e in console.env.audit() if e["operation"] == "revoke"][-1]
    assert entry["name"] == "kid-tablet"
    assert entry["via"] == "console"
    assert entry["admin"]["cn"] == "root-admin"
    assert len(entry["admin"]["fingerprint"]) == 64
    assert entry["admin"]["serial"]
    # The device page shows it, and who did it.
    page = console.get("/devices/kid-tablet").text
    assert "status-revoked" in page
    assert "root-admin (console)" in page
    # The proxy refuses the certificate within 2 s.
    tablet = console.context(console.user)

    def refused() -> bool:
        try:
            with Connection(console.port, tablet) as conn:
                return conn.request("GET", "/").status != 200
        except (ssl.SSLError, ConnectionError, OSError):
            return True

    wait_until(refused, 2, "the revoked tablet to be refused")


def test_roles_and_cli_changes_show_both_ways(console: Console) -> None:
    csrf = console.csrf()
    assert console.post("/devices/kid-tablet/roles",
                        {"role": "ops", "action": "add", "csrf": csrf}).status_code == 303
    assert "ops" in console.ca_list()["kid-tablet"]["roles"]
    assert console.post("/devices/kid-tablet/roles",
                        {"role": "family", "action": "remove", "csrf": csrf}).status_code == 303
    assert console.ca_list()["kid-tablet"]["roles"] == ["ops"]
    # The CLI revokes; the console's next page shows it.
    console.env.ca("revoke", "kid-tablet")
    assert "status-revoked" in console.get("/devices/kid-tablet").text


def test_a_new_device_link_enrolls(console: Console) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    answer = console.post("/new", {"name": "grandma-phone", "roles": "family", "days": "90",
                                   "platform": "iphone", "csrf": console.csrf()})
    assert answer.status_code == 200, answer.text
    page = answer.text
    assert "<svg" in page
    import re

    url = re.search(r'<code id="link">([^<]+)</code>', page)
    pin = re.search(r'<span class="pin" id="pin">(\d+)</span>', page)
    assert url
    assert pin
    link = url.group(1).replace("&amp;", "&")
    assert link.startswith(f"https://enroll.localhost:{console.port}/enroll/")
    # Complete it with httpx, as certgate enroll would (CSR endpoint).
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    path = httpx.URL(link).path
    with console.env.client() as client:
        done = console.env.request(client, "POST", f"{path}/csr",
                                   content=json.dumps({"pin": pin.group(1),
                                                       "csr": csr.decode()}),
                                   headers={"content-type": "application/json"})
    assert done.status_code == 200, done.text
    assert console.ca_list()["grandma-phone"]["roles"] == ["family"]
    entry = [e for e in console.env.audit() if e["operation"] == "enroll-create"][-1]
    assert entry["admin"]["cn"] == "root-admin"
    assert "grandma-phone" in console.get("/devices").text


def test_hostile_user_agent_is_escaped_on_every_page(console: Console) -> None:
    evil = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    with httpx.Client(base_url=f"https://127.0.0.1:{console.port}",
                      verify=console.context(console.user),
                      headers={"host": "localhost", "user-agent": evil}) as client:
        assert client.get("/", extensions={"sni_hostname": "localhost"}).status_code == 200

    def shown() -> bool:
        return "kid-tablet" in console.get("/devices").text and \
            "alert(1)" in console.get("/devices").text

    wait_until(shown, 10, "the sighting to reach the console")
    for path in ("/", "/devices", "/devices/kid-tablet", "/devices?q=alert"):
        page = console.get(path).text
        assert "<script>alert" not in page, path
        assert "<img src=x" not in page, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in console.get("/devices").text


def test_a_certificate_outside_the_inventory_is_listed_as_unknown_and_escaped(
        console: Console) -> None:
    """A leaf the CA's own issuing key signed that the inventory never
    recorded (what an adopted CA's other devices hold), with markup in its
    name and User-Agent, makes one request through the proxy: /unknown lists
    it, escaped, and the overview counts it; the inventory's devices are not
    listed there."""
    evil_cn = '<b id="cn">x</b>'
    evil_agent = '<script>alert(3)</script>"><img src=x onerror=alert(4)>'
    base = console.env.state.parent
    chain, key, leaf_fingerprint = builtin_leaf(
        console.env.state, base, "stray", x509.Name([x509.NameAttribute(
            NameOID.COMMON_NAME, evil_cn)]))
    assert "None seen" in console.get("/unknown").text
    ctx = ssl.create_default_context(cafile=str(console.env.root))
    ctx.load_cert_chain(str(chain), str(key))
    with httpx.Client(base_url=f"https://127.0.0.1:{console.port}", verify=ctx,
                      headers={"host": "localhost", "user-agent": evil_agent}) as client:
        assert client.get("/", extensions={"sni_hostname": "localhost"}).status_code == 200
    wait_until(lambda: "alert(3)" in console.get("/unknown").text, 10,
               "the stray leaf's sighting to reach the console")
    page = console.get("/unknown").text
    assert "&lt;b id=&#34;cn&#34;&gt;x&lt;/b&gt;" in page
    assert '<b id="cn">' not in page
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    table = page[page.index("<table>"):]
    assert "kid-tablet" not in table
    assert "root-admin" not in table  # the admin's own sighting is a known device's
    assert table.count("<tr>") == 2  # the header and the stray leaf
    assert leaf_fingerprint not in page  # the serial is shown; the fingerprint is not needed
    overview = console.get("/").text
    assert '<div class="big">1</div><a href="/unknown">unknown certificate</a> seen' in overview


@pytest.mark.parametrize(("name", "status"), [("bad/name", 400), ("kid-tablet", 409)])
def test_a_refused_new_device_says_bad_input_or_conflict(console: Console, name: str,
                                                         status: int) -> None:
    """A name the CA refuses as such is the form's fault (400); a taken one
    conflicts with the CA's state (409). Both were 409."""
    answer = console.post("/new", {"name": name, "roles": "", "days": "30",
                                   "platform": "android", "csrf": console.csrf()})
    assert answer.status_code == status, answer.text


def test_several_workers_share_the_csrf_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every worker signs and checks tokens with the one STATE/console.key,
    so a page from one worker and a POST to another agree."""
    from .conftest import CONFIG
    from support.enrolling import start_enrolling
    from support.process import free_port

    config = CONFIG.replace('listen: ["127.0.0.1:0"]',
                            f'listen: ["127.0.0.1:{free_port()}"]\nworkers: 2')
    env = start_enrolling(tmp_path, config)
    try:
        console = Console(env, issue(env, "root-admin", "admin"),
                          issue(env, "kid-tablet", "family"))
        wait_for_roles(console, console.admin, in_a_row=12)  # every worker knows the role
        tokens = [console.csrf() for _ in range(12)]  # new connections: both workers
        # A token carries its page's second, so two may differ in that; every
        # one must be signed with the one secret in the state directory.
        secret = guard.load_secret(env.state)
        cert = x509.load_pem_x509_certificate(console.admin[0].read_bytes())
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        assert all(guard.check_token(secret, fingerprint, token, time.time()).ok
                   for token in tokens), tokens
        for role, token in zip(("a", "b", "c", "d"), tokens[::3], strict=True):
            # each POST on a new connection too, with a token from any worker
            answer = console.post("/devices/kid-tablet/roles",
                                  {"role": role, "action": "add", "csrf": token})
            assert answer.status_code == 303, answer.text
        assert set(console.ca_list()["kid-tablet"]["roles"]) >= {"a", "b", "c", "d"}
        key = env.state / "console.key"
        assert key.stat().st_mode & 0o777 == 0o600
    finally:
        env.proxy.stop()

"""Attacks on the CA's web console (red team, session 4).

The attacker is a web page the admin visits (cross-site requests carry the
admin's certificate), an app sharing certgate with the console, a client
with another certificate fronting onto the console's name, or anyone who
controls a field the console shows (User-Agent, query, form values).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from console.conftest import CONSOLE_HOST, Console, issue, running_console, wait_for_roles
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certgate.config.loader import load_config_text
from certgate.console import guard
from certgate.errors import ConfigError

from support.enrolling import ENROLL_HOST
from support.process import wait_until


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    yield from running_console(tmp_path)


def _still_valid(console: Console) -> None:
    rows = console.ca_list()
    assert rows["kid-tablet"]["status"] == "valid"
    assert rows["kid-tablet"]["roles"] == ["family"]


# -- CSRF and origin -------------------------------------------------------------


def test_forged_origins_are_refused(console: Console) -> None:
    own = f"{CONSOLE_HOST}:{console.port}"
    token = console.csrf()
    for origin, extra in (
        (f"https://{CONSOLE_HOST}.:{console.port}", {}),     # trailing dot: another origin
        (f"https://{own}.evil.test", {}),
        (f"https://evil.test#{own}", {}),
        (f"https://{own}@evil.test", {}),
        (f"http://{own}", {}),                                # scheme
        (f"https://{own}/", {}),                              # not an origin at all
        (f"https://{own}, https://evil.test", {}),
        # An opaque origin (sandboxed frame, file:, data:) is "null" and
        # cross-site; "null" with same-origin is the console's own form under
        # its no-referrer policy (accepted: tests/console).
        ("null", {"sec-fetch-site": "cross-site"}),
        ("null", {}),
        (f"https://{ENROLL_HOST}:{console.port}", {}),        # a sibling certgate name
        (None, {"sec-fetch-site": "same-site"}),
        (None, {"sec-fetch-site": "none"}),
    ):
        answer = console.post("/devices/kid-tablet/revoke",
                              {"reason": "keyCompromise", "csrf": token},
                              origin=origin, headers=extra)
        assert answer.status_code == 403, (origin, extra, answer.text)
        assert token not in answer.text
    _still_valid(console)
    assert token not in console.env.proxy.log_text()
    assert token not in console.env.access_log.read_text()


def test_the_token_must_be_the_first_and_only_in_a_form_body(console: Console) -> None:
    token = console.csrf()
    with console.client() as client:
        sent = {"origin": f"https://{CONSOLE_HOST}:{console.port}"}
        ext = {"sni_hostname": CONSOLE_HOST}
        answers = [
            # a wrong token first, the right one second: the first is read
            client.post("/devices/kid-tablet/roles", extensions=ext,
                        content=f"csrf=bad&csrf={token}&role=x&action=add",
                        headers=sent | {"content-type": "application/x-www-form-urlencoded"}),
            # JSON and multipart bodies carrying the right token are not forms
            client.post("/devices/kid-tablet/roles", extensions=ext,
                        content=json.dumps({"csrf": token, "role": "x", "action": "add"}),
                        headers=sent | {"content-type": "application/json"}),
            client.post("/devices/kid-tablet/roles", extensions=ext,
                        files={"csrf": (None, token), "role": (None, "x"),
                               "action": (None, "add")}, headers=sent),
            # the token in the query string, an empty body
            client.post(f"/devices/kid-tablet/roles?csrf={token}&role=x&action=add",
                        extensions=ext, headers=sent),
        ]
    for answer in answers:
        assert answer.status_code in (400, 403), answer.text
    _still_valid(console)


def test_a_get_changes_nothing(console: Console) -> None:
    token = console.csrf()
    with console.client() as client:
        ext = {"sni_hostname": CONSOLE_HOST}
        for path in (f"/devices/kid-tablet/revoke?reason=keyCompromise&csrf={token}",
                     f"/devices/kid-tablet/roles?role=x&action=add&csrf={token}",
                     f"/new?name=evil&csrf={token}"):
            for method in ("GET", "HEAD"):
                answer = client.request(method, path, extensions=ext,
                                        headers={"x-http-method-override": "POST",
                                                 "x-method-override": "POST"})
                assert answer.status_code in (200, 405), (method, path, answer.status_code)
    _still_valid(console)
    assert "evil" not in console.ca_list()


def _fronted(console: Console, who: tuple[Path, Path], sni: str | None) -> bytes:
    ctx = console.context(who)
    if sni is None:
        ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", console.port), timeout=20) as sock, \
            ctx.wrap_socket(sock, server_hostname=sni) as tls:
        tls.sendall(f"GET /new HTTP/1.1\r\nHost: {CONSOLE_HOST}:{console.port}\r\n"
                    "Connection: close\r\n\r\n".encode())
        out = b""
        for _ in range(1000):
            chunk = tls.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def test_the_console_cannot_be_fronted_from_another_name(console: Console) -> None:
    """Host the console's, SNI another name. From the enroll name (an
    optional-class handshake): 421 before any console page, even with the
    admin certificate. From a require-class name (whoami on localhost, or no
    SNI): the console's own route judges the request as if sent to it, so a
    certificate without the admin role still gets 403 (fronting across names
    of one class is the proxy's documented rule, not a way past the role)."""
    for who, sni, wanted in ((console.admin, ENROLL_HOST, b"421"),
                             (console.user, "localhost", b"403"),
                             (console.user, None, b"403")):
        out = _fronted(console, who, sni)
        assert out.split(b" ", 2)[1] == wanted, (sni, out[:200])
        assert b'name="csrf"' not in out


# -- what the console shows ------------------------------------------------------

EVIL = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def test_query_parameters_and_form_values_are_escaped(console: Console) -> None:
    from urllib.parse import quote

    q = quote(EVIL)
    for path in (f"/devices?q={q}", f"/devices?sort={q}&status={q}&desc={q}",
                 f"/?q={q}", f"/audit?x={q}"):
        page = console.get(path)
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text, path
        assert "<img src=x" not in page.text, path
    # A new-device form sent back with an error echoes every field escaped.
    answer = console.post("/new", {"name": EVIL, "roles": EVIL, "days": EVIL,
                                   "platform": EVIL, "csrf": console.csrf()})
    assert answer.status_code == 400, answer.text  # bad input, not a conflict
    assert "<script>alert" not in answer.text
    assert "<img src=x" not in answer.text
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")


def test_a_raw_or_huge_user_agent_breaks_no_page(console: Console) -> None:
    """Last seen stores what a device sends. Raw bytes (invalid UTF-8, ESC)
    are refused by the proxy's parser (400) or stored sanitised; UTF-8 with a
    bidi override is stored and shown escaped; 1 MB never gets that far."""
    ctx = console.context(console.user)
    # The last sighting of a serial wins, so the one to look for is sent last.
    agents = ((b"a" * (1024 * 1024), (b"400", b"431", b"closed")),
              (b"\xff\xfe<script>alert(0)</script>\x1b[31mred\x7f\xc3", (b"200", b"400")),
              ("<script>alert(1)</script>\u202eevil\u00e9".encode(), (b"200",)))
    for agent, wanted in agents:
        with socket.create_connection(("127.0.0.1", console.port), timeout=20) as sock, \
                ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            try:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: " + agent
                            + b"\r\nConnection: close\r\n\r\n")
                head = tls.recv(65536)
            except (ConnectionError, ssl.SSLError):
                head = b"HTTP/1.1 closed"
        assert head.split(b" ", 2)[1] in wanted, head[:100]

    def shown() -> bool:
        return "alert(1)" in console.get("/devices").text

    wait_until(shown, 10, "the sighting to reach the console")
    for path in ("/", "/devices", "/devices/kid-tablet"):
        page = console.get(path)
        assert page.status_code == 200, path
        assert "<script>" not in page.text, path
        assert "\x1b" not in page.text, path
        assert "\u202e" not in page.text, path
    listing = console.env.ca("list").stdout + console.env.ca("show", "kid-tablet").stdout
    assert "\x1b" not in listing
    assert "\u202e" not in listing
    assert "a" * 300 not in console.get("/devices").text


def test_a_second_admin_cannot_use_the_first_admins_token(console: Console) -> None:
    other = issue(console.env, "other-admin", "admin")
    wait_for_roles(console, other)
    theirs = console.csrf(other)
    answer = console.post("/devices/kid-tablet/roles",
                          {"role": "x", "action": "add", "csrf": theirs})
    assert answer.status_code == 403
    _still_valid(console)


# -- configuration ---------------------------------------------------------------

BASE = """
state_dir: /tmp/x
listen: ["127.0.0.1:8443"]
routes:
{routes}
"""


@pytest.mark.parametrize("neighbour", [
    "{host: ca.test, path: /, upstream: 'http://127.0.0.1:8123'}",
    "{host: ca.test, path: /app, upstream: 'http://127.0.0.1:8123'}",
    "{host: ca.test, path: /app, upstream: 'http://127.0.0.1:8123', client_auth: 'off'}",
])
def test_the_console_needs_an_origin_of_its_own(neighbour: str) -> None:
    """An app on the console's host name is the console's origin: any page
    it serves (an upload, an XSS in it) can read the console's CSRF token and
    POST as the admin. The loader refuses such a neighbour."""
    console = "{host: ca.test, path: /console, upstream: console, allow: ['role:admin']}"
    if "path: /," in neighbour:
        console = console.replace("/console", "/ca")
    text = BASE.format(routes=f"  - {console}\n  - {neighbour}\n")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "t.yaml", Path("/"))
    assert "console" in str(info.value)


@pytest.mark.parametrize("neighbour", [
    "{host: ca.test, path: /enroll, upstream: enroll}",
    "{host: ca.test, path: /who, upstream: whoami}",
    "{host: apps.test, upstream: 'http://127.0.0.1:8123'}",
    "{host: '*.test', upstream: 'http://127.0.0.1:8123'}",
])
def test_certgates_own_services_and_other_names_may_share(neighbour: str) -> None:
    console = "{host: ca.test, upstream: console, allow: ['role:admin']}"
    if "/enroll" in neighbour or "/who" in neighbour:
        console = console.replace("upstream:", "path: /console, upstream:")
    text = BASE.format(routes=f"  - {console}\n  - {neighbour}\n")
    load_config_text(text, "t.yaml", Path("/"))


# -- the CSRF secret -------------------------------------------------------------


def test_a_short_secret_file_is_not_used_or_replaced(tmp_path: Path) -> None:
    key = tmp_path / guard.SECRET_FILE
    key.write_bytes(b"x" * 8)
    key.chmod(0o600)
    with pytest.raises(OSError, match="not a console secret"):
        guard.load_secret(tmp_path)
    assert key.read_bytes() == b"x" * 8


def test_a_secret_file_that_is_a_symlink_or_readable_by_others_is_refused(
        tmp_path: Path) -> None:
    """A 32-byte file elsewhere (known to whoever planted the link) would make
    every CSRF token predictable: fail closed."""
    known = tmp_path / "known"
    known.write_bytes(b"k" * guard.SECRET_BYTES)
    state = tmp_path / "state"
    state.mkdir()
    (state / guard.SECRET_FILE).symlink_to(known)
    with pytest.raises(OSError, match="symbolic link"):
        guard.load_secret(state)
    (state / guard.SECRET_FILE).unlink()
    loose = state / guard.SECRET_FILE
    loose.write_bytes(b"k" * guard.SECRET_BYTES)
    os.chmod(loose, 0o644)
    with pytest.raises(OSError, match="0600"):
        guard.load_secret(state)
    os.chmod(loose, 0o600)
    assert guard.load_secret(state) == b"k" * guard.SECRET_BYTES


# -- the CSRF token's age -----------------------------------------------------------

SECRET = b"s" * guard.SECRET_BYTES
FP = "ab" * 32
NOW = 1_800_000_000.0


def test_a_token_works_for_its_lifetime_and_not_a_second_longer() -> None:
    token = guard.csrf_token(SECRET, FP, NOW)
    assert guard.check_token(SECRET, FP, token, NOW).ok
    assert guard.check_token(SECRET, FP, token, NOW + guard.TOKEN_LIFETIME).ok
    late = guard.check_token(SECRET, FP, token, NOW + guard.TOKEN_LIFETIME + 1)
    assert not late.ok
    assert "expired" in late.reason
    assert token not in late.reason


@pytest.mark.parametrize("forge", [
    lambda t: str(int(t.split("-")[0]) + 3600) + "-" + t.split("-")[1],  # moved forward
    lambda t: t.split("-")[1],                                          # the MAC alone
    lambda t: t.upper(),
    lambda t: t + "0",
    lambda t: " " + t,
    lambda t: t.replace("-", "-0"),
    lambda t: "99999999999999-" + t.split("-")[1],
    lambda t: "",
])
def test_an_edited_token_is_refused(forge) -> None:  # type: ignore[no-untyped-def]
    """The time is under the MAC: moving an old page's time forward breaks it."""
    token = guard.csrf_token(SECRET, FP, NOW)
    verdict = guard.check_token(SECRET, FP, forge(token), NOW + 60)
    assert not verdict.ok
    assert "missing or wrong" in verdict.reason


def test_a_token_from_the_future_is_refused() -> None:
    ahead = guard.csrf_token(SECRET, FP, NOW + guard.TOKEN_FUTURE_SLACK + 60)
    verdict = guard.check_token(SECRET, FP, ahead, NOW)
    assert not verdict.ok
    assert "future" in verdict.reason
    assert guard.check_token(SECRET, FP, guard.csrf_token(SECRET, FP, NOW + 10), NOW).ok


def test_an_expired_token_changes_nothing_over_http(console: Console) -> None:
    """A page made 13 hours ago (a token minted with the console's own secret
    for the right certificate, only older): 403, and the device stays valid."""
    secret = guard.load_secret(console.env.state)
    cert = x509.load_pem_x509_certificate(console.admin[0].read_bytes())
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    old = guard.csrf_token(secret, fingerprint, time.time() - 13 * 3600)
    fresh = console.csrf()
    assert fresh.split("-")[1] != old.split("-")[1]
    answer = console.post("/devices/kid-tablet/revoke",
                          {"reason": "keyCompromise", "csrf": old})
    assert answer.status_code == 403
    assert "expired" in answer.text
    assert console.ca_list()["kid-tablet"]["status"] == "valid"
    # The same token made now is accepted: only its age was wrong.
    now = guard.csrf_token(secret, fingerprint, time.time())
    answer = console.post("/devices/kid-tablet/roles",
                          {"role": "homework", "action": "add", "csrf": now})
    assert answer.status_code == 303, answer.text


def test_an_admin_demoted_mid_connection_loses_the_console(console: Console) -> None:
    """The role is looked up per request, not per connection: after
    `ca role remove` a keep-alive connection opened as admin gets 403 within
    a few seconds, and its token no longer changes anything."""
    other = issue(console.env, "other-admin", "admin")
    wait_for_roles(console, other)
    with console.client(other) as client:
        ext = {"sni_hostname": CONSOLE_HOST}
        assert client.get("/", extensions=ext).status_code == 200
        token = console.csrf(other)
        console.env.ca("role", "remove", "other-admin", "admin")
        wait_until(lambda: client.get("/", extensions=ext).status_code == 403, 10,
                   "the demoted admin to be refused on its open connection")
        answer = client.post("/devices/kid-tablet/roles", extensions=ext,
                             data={"role": "x", "action": "add", "csrf": token},
                             headers={"origin": f"https://{CONSOLE_HOST}:{console.port}"})
        assert answer.status_code == 403
    _still_valid(console)

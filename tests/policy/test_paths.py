"""Policy acceptance 1 and 5: no spelling of a path gets around a path rule,
and ``certgate explain`` agrees with the running proxy on every spelling.

The route's ``/admin/*`` rule needs role ops: alice holds it (built-in
inventory), bob does not. Each request line is written byte for byte (no
HTTP library in between to tidy it up), under TLS 1.2 and 1.3.

Invariants checked for every case:
* bob never reaches the upstream on a path the upstream would read as
  ``/admin`` or below (also with ``;params`` stripped, as a servlet does);
* whatever reaches the upstream is in normal form (no empty, dot or
  encoded-unreserved segments) and is exactly the path the table expects;
* ``certgate explain`` says allow exactly when the proxy let the request
  through, deny exactly when it refused it.

Rules match case-sensitively as configured, and a request must also pass
with letter case ignored (a case-insensitive upstream reads ``/ADMIN`` as
``/admin``); it reaches the upstream spelled as sent.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import ssl
from dataclasses import dataclass

import pytest

from certgate.cli import main as certgate_main

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%d"
    client_auth: require
    rules:
      - {path: /admin/*, allow: [role:ops]}
"""

VERSIONS = ["1.2", "1.3"]


@dataclass(frozen=True)
class Case:
    target: str
    alice: int  # status alice gets
    bob: int  # status bob gets
    forwarded: str | None  # what the upstream sees when let through
    method: str = "GET"


CASES = [
    # The list.
    Case("/admin", 200, 403, "/admin"),
    Case("/admin/", 200, 403, "/admin/"),
    # Another path to a case-sensitive upstream, but /admin to Express, ASP.NET
    # or IIS: judged under both readings, so bob is refused.
    Case("/ADMIN", 200, 403, "/ADMIN"),
    Case("//admin/x", 200, 403, "/admin/x"),
    Case("/./admin/x", 200, 403, "/admin/x"),
    Case("/x/../admin/x", 200, 403, "/admin/x"),
    Case("/%61dmin/x", 200, 403, "/admin/x"),
    Case("/admin%2fx", 400, 400, None),
    Case("/admin;x", 200, 403, "/admin;x"),
    Case("/admin/x?y=/public", 200, 403, "/admin/x?y=/public"),
    Case("/public/..%2fadmin/x", 400, 400, None),
    Case("/%2e%2e/admin", 400, 400, None),
    # More of the same family.
    Case("/public/%2e%2e/admin/x", 200, 403, "/admin/x"),
    Case("/public/%2E%2E/%2E/admin//x", 200, 403, "/admin/x"),
    Case("/public;/../admin/x", 200, 403, "/admin/x"),
    Case("/admin;jsessionid=1/x", 200, 403, "/admin;jsessionid=1/x"),
    Case("/admin/..;/x", 400, 400, None),
    Case("/admin%5cx", 400, 400, None),
    Case("/admin\\x", 400, 400, None),
    Case("/admin%00/x", 400, 400, None),
    Case("/admin%zz", 400, 400, None),
    Case("/admin/x#frag", 400, 400, None),
    Case("/../admin/x", 400, 400, None),
    Case("/%2561dmin/x", 200, 200, "/%2561dmin/x"),  # one decoding: "%61dmin", not admin
    Case("https://localhost/admin/x", 400, 400, None),  # absolute-form on a normal route
    Case("/admin/x", 200, 403, "/admin/x", method="get"),
    Case("/admin/x", 200, 403, "/admin/x", method="DELETE"),
    Case("/admin/x", 200, 403, "/admin/x", method="HEAD"),
    Case("/public", 200, 200, "/public"),
]

_ID = itertools.count()


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % upstream.port)


def _send(port: int, ctx: ssl.SSLContext, case: Case, tag: str) -> int:
    """Write the request line byte for byte; return the status code."""
    head = (f"{case.method} {case.target} HTTP/1.1\r\nHost: localhost\r\nX-Case: {tag}\r\n"
            "Connection: close\r\n\r\n").encode("ascii")
    with Connection(port, ctx) as conn:
        conn.send_raw(head)
        reply = conn.read_raw_until_close()
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
    assert match, reply[:200]
    return int(match.group(1))


def _under_admin(target: str) -> bool:
    """Would an upstream (a plain router or a servlet container) serve /admin for this?"""
    path = target.partition("?")[0]
    for candidate in (path, "/".join(s.partition(";")[0] for s in path.split("/"))):
        if candidate == "/admin" or candidate.startswith("/admin/"):
            return True
    return False


def _is_normal(target: str) -> bool:
    path = target.partition("?")[0]
    segments = path.split("/")[1:]
    return (path.startswith("/") and "//" not in path
            and not any(s.partition(";")[0] in (".", "..") for s in segments)
            and re.search(r"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DdEe]|5[Ff]|7[Ee])", path)
            is None)


def _explain(config: str, cert: str, port: int, case: Case) -> int:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = certgate_main(["explain", "-c", config, "--cert", cert, "--method", case.method,
                              f"https://localhost:{port}{case.target}"])
    assert code in (0, 1), out.getvalue()
    return code


@pytest.mark.parametrize("version", VERSIONS)
def test_no_spelling_gets_bob_into_admin(proxy, pki, upstream, version):
    for who, case in itertools.product(("alice", "bob"), CASES):
        tag = f"{who}-{next(_ID)}"
        status = _send(proxy.port, pki.context(who, version), case, tag)
        seen = [r for r in upstream.requests if ("x-case", tag) in r.headers]
        expected = case.alice if who == "alice" else case.bob
        assert status == expected, f"{who} {case}: got {status}"
        if status == 200:
            assert [(r.method, r.path) for r in seen] == [(case.method, case.forwarded)], case
            assert _is_normal(seen[0].path), seen[0].path
        else:
            assert seen == [], case
        if who == "bob":
            assert not any(_under_admin(r.path) for r in seen), (case, seen)


def test_explain_agrees_with_the_proxy(proxy, pki, upstream):
    assert proxy.config_path is not None
    # A URL always makes an origin-form request line: the absolute-form case
    # has no URL spelling, so it is the one case left out.
    cases = [case for case in CASES if case.target.startswith("/")]
    for who, case in itertools.product(("alice", "bob"), cases):
        status = _send(proxy.port, pki.context(who), case, f"{who}-explain-{next(_ID)}")
        verdict = _explain(str(proxy.config_path), str(pki[who].cert), proxy.port, case)
        assert (verdict == 0) == (status == 200), f"{who} {case}: proxy {status}, explain {verdict}"

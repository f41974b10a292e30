"""Path parameters must not change which route serves a path.

A servlet container (Tomcat, Jetty, Spring) strips ``;parameters`` from each
segment before routing, so ``/admin;x/y`` is its ``/admin/y``. With a public
``/`` route and a protected ``/admin`` route in front of one such upstream,
judging ``/admin;x/y`` by the route of the path as sent would let an
anonymous client into the admin application. (Found by the path property
tests of issue #11; path *rules* already judged both spellings.)
"""

from __future__ import annotations

import json

import pytest

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - {host: localhost, path: /, upstream: "http://127.0.0.1:%(port)d", client_auth: "off"}
  - {host: localhost, path: /admin, upstream: "http://127.0.0.1:%(port)d",
     client_auth: require}
"""

VERSIONS = ["1.2", "1.3"]


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"port": upstream.port})


@pytest.mark.parametrize("version", VERSIONS)
def test_parameters_cannot_move_a_path_to_the_public_route(proxy, pki, upstream, version):
    before = len(upstream.requests)
    with Connection(proxy.port, pki.context(None, version)) as conn:
        guard = conn.request("GET", "/admin/y")
        assert guard.status == 403
    for target in ("/admin;x/y", "/admin;/y", "/admin;jsessionid=1", "/admin;a=b;c/y"):
        with Connection(proxy.port, pki.context(None, version)) as conn:
            response = conn.request("GET", target)
            assert response.status == 400, (target, response.body)
            assert b"path parameters" in response.body
    assert len(upstream.requests) == before, "a refused request reached the upstream"


@pytest.mark.parametrize("version", VERSIONS)
def test_parameters_inside_one_route_still_work(proxy, pki, upstream, version):
    """Guard: ;jsessionid on a page of the public route, and with a
    certificate inside /admin, are served as before."""
    with Connection(proxy.port, pki.context(None, version)) as conn:
        response = conn.request("GET", "/app/page;jsessionid=1")
        assert response.status == 200
        assert json.loads(response.body)["path"] == "/app/page;jsessionid=1"
    with Connection(proxy.port, pki.context("alice", version)) as conn:
        response = conn.request("GET", "/admin/page;jsessionid=1")
        assert response.status == 200


CASE_CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - host: localhost
    path: /
    upstream: "http://127.0.0.1:%(port)d"
    client_auth: optional
    rules:
      - {path: /private/*, allow: [role:ops]}
      - {path: /Photos/*, allow: [role:ops]}
  - {host: localhost, path: /admin, upstream: "http://127.0.0.1:%(port)d",
     client_auth: require}
"""


@pytest.fixture
def case_proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CASE_CONFIG % {"port": upstream.port})


@pytest.mark.parametrize("version", VERSIONS)
def test_letter_case_cannot_move_a_path_off_its_route_or_rule(case_proxy, pki, upstream,
                                                              version):
    """Express (and so Immich's NestJS), ASP.NET and IIS route /ADMIN as /admin
    and /PRIVATE/x as /private/x: a request must pass under that reading too."""
    before = len(upstream.requests)
    for target, status in (("/ADMIN", 400), ("/Admin/x", 400), ("/ADMIN;x/y", 400),
                           ("/PRIVATE/x", 403), ("/Private/x", 403), ("/photos/x", 403),
                           ("/PHOTOS/x", 403)):
        with Connection(case_proxy.port, pki.context("bob", version)) as conn:
            response = conn.request("GET", target)
            assert response.status == status, (target, response.body)
    assert len(upstream.requests) == before, "a refused request reached the upstream"
    # Guards: mixed case elsewhere is served, and ops still reads /Photos.
    with Connection(case_proxy.port, pki.context("bob", version)) as conn:
        assert conn.request("GET", "/api/assets/AbC123").status == 200
    with Connection(case_proxy.port, pki.context("alice", version)) as conn:
        assert conn.request("GET", "/Photos/x").status == 200
        assert conn.request("GET", "/PRIVATE/x").status == 200

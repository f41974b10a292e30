"""Path-parameter spellings that still moved a path to another route or rule.

The route check of issue #11 strips ``;params`` from each segment and asks
whether the route changes. Two spellings slipped past it:

* ``/;x/admin``: the stripped path is ``//admin``, which certgate's router
  does not merge, so the public ``/`` route serves it both ways. Tomcat and
  Spring strip the parameter, then merge the empty segment: ``/admin``.
* ``/admin%3Bx/y``: the path normaliser treats ``%3B`` as ``;`` for dot
  segments (a framework that decodes the path before stripping parameters
  reads ``..%3B`` as ``..``), but the route check did not, so the same
  framework served ``/admin/y`` from a request judged by ``/``.

Each case checks the upstream received nothing from a refused request.
"""

from __future__ import annotations

import pytest

from certgate.policy import strip_parameters

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - host: localhost
    path: /
    upstream: "http://127.0.0.1:%(port)d"
    client_auth: "off"
    rules:
      - {path: /private/*, client_auth: require}
  - {host: localhost, path: /admin, upstream: "http://127.0.0.1:%(port)d",
     client_auth: require}
"""

VERSIONS = ["1.2", "1.3"]

ROUTE_MOVERS = ["/;x/admin", "/;/admin/y", "/;x/;y/admin", "/admin%3Bx/y", "/admin%3b/y",
                "/;x/admin%3B/y"]
RULE_MOVERS = ["/;x/private/data", "/private%3Bx/data", "/;/;/private/data"]


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"port": upstream.port})


@pytest.mark.parametrize("version", VERSIONS)
def test_leading_or_encoded_parameters_cannot_reach_a_protected_path(
        proxy, pki, upstream, version):  # type: ignore[no-untyped-def]
    before = len(upstream.requests)
    for target in ROUTE_MOVERS + RULE_MOVERS:
        with Connection(proxy.port, pki.context(None, version)) as conn:
            response = conn.request("GET", target)
            assert response.status in (400, 403), (target, response.status, response.body)
    assert len(upstream.requests) == before, "a refused request reached the upstream"


@pytest.mark.parametrize("version", VERSIONS)
def test_parameters_that_stay_public_are_served(proxy, pki, upstream, version):  # type: ignore[no-untyped-def]
    """Guard: parameters that do not change the route or rule still pass."""
    for target in ("/page;jsessionid=1", "/app%3Bx/page", "/;x/app"):
        with Connection(proxy.port, pki.context(None, version)) as conn:
            assert conn.request("GET", target).status == 200, target


def test_strip_parameters_reads_paths_as_a_servlet_does() -> None:
    assert strip_parameters("/;x/admin") == "/admin"
    assert strip_parameters("/admin%3Bx/y") == "/admin/y"
    assert strip_parameters("/admin/;x") == "/admin/"
    assert strip_parameters("/a;b/c;d/") == "/a/c/"
    assert strip_parameters("/;x") == "/"

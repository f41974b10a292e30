"""A console route must demand a certificate with a role (issue #14): the
loader refuses anything that could open it wider, naming the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from certgate.config.loader import load_config_text
from certgate.errors import ConfigError

BASE = """
state_dir: /tmp/x
listen: ["127.0.0.1:8443"]
routes:
  - {route}
"""


def _load(route: str) -> None:
    load_config_text(BASE.format(route=route), "t.yaml", Path("/"))


def test_a_console_route_with_an_admin_role_loads() -> None:
    config = load_config_text(
        BASE.format(route='{host: ca.test, upstream: console, allow: ["role:admin", "role:ops"]}'),
        "t.yaml", Path("/"))
    assert config.console_routes[0].upstream.is_console


@pytest.mark.parametrize(("route", "says"), [
    ("{host: ca.test, upstream: console}", "needs an allow list of roles"),
    ('{host: ca.test, upstream: console, allow: ["cn:alice"]}', "allows roles only"),
    ('{host: ca.test, upstream: console, allow: [any]}', "allows roles only"),
    ('{host: ca.test, upstream: console, allow: ["role:admin", "cn:bob"]}', "roles only"),
    ('{host: ca.test, upstream: console, client_auth: optional, allow: ["role:admin"]}',
     "needs client_auth: require"),
    ('{host: ca.test, upstream: console, client_auth: "off", allow: ["role:admin"]}',
     "client_auth"),
    ('{host: ca.test, upstream: console, allow: ["role:admin"], '
     'rules: [{path: /ca.crt, client_auth: "off"}]}', "takes no rules"),
    ('{host: ca.test, upstream: console, allow: ["role:admin"], no_certificate: page}',
     "takes no no_certificate"),
    ('{host: ca.test, upstream: console, allow: ["role:admin"], trust_forwarded: true}',
     "takes no trust_forwarded"),
])
def test_a_console_route_that_could_be_opened_is_refused(route: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(route)
    text = str(info.value)
    assert "t.yaml:5:" in text, text
    assert says in text, text

"""Loading policy config: role rules and matchers are checked at load time,
each problem as FILE:LINE: key.path: reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from certgate.config.loader import load_config_text
from certgate.errors import ConfigError
from certgate.matchers import Kind

ROUTE = """\
routes:
  - host: localhost
    upstream: whoami
"""


def _problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, str(tmp_path / "c.yaml"), tmp_path)
    return info.value.problems


def test_role_rules_load(tmp_path: Path) -> None:
    config = load_config_text("""\
client_auth:
  roles:
    - match: san:URI:spiffe://example.org/ns/ops/*
      roles: [ops, ops, deploy]
    - {match: [issuer:CN=Step Root CA, ou:Platform], roles: staff}
""" + ROUTE, "c.yaml", tmp_path)
    first, second = config.client_auth.roles
    assert [m.kind for m in first.match] == [Kind.SAN]
    assert first.roles == ("ops", "deploy")
    assert [str(m) for m in second.match] == ["issuer:CN=Step Root CA", "ou:Platform"]
    assert second.roles == ("staff",)


def test_bad_role_rules_name_file_line_and_key(tmp_path: Path) -> None:
    problems = _problems("""\
client_auth:
  roles:
    - match: sna:URI:spiffe://x
      roles: [ops]
    - match: [cn:a, role:ops]
      roles: ["a b"]
    - {match: cn:a, roles: []}
    - {match: cn:a}
    - {match: cn:a, roles: [x], extra: 1}
""" + ROUTE, tmp_path)
    where = f"{tmp_path / 'c.yaml'}"
    assert problems[0].startswith(f"{where}:3: client_auth.roles[0].match: expected any or one of")
    assert problems[1].startswith(f"{where}:5: client_auth.roles[1].match[1]: role: cannot")
    assert problems[2].startswith(f"{where}:6: client_auth.roles[1].roles[0]: role name 'a b'")
    assert problems[3].startswith(f"{where}:7: client_auth.roles[2].roles: needs at least one")
    assert problems[4].startswith(f"{where}:8: client_auth.roles[3].roles: required key")
    assert problems[5].startswith(f"{where}:9: client_auth.roles[4].extra: unknown key")
    assert len(problems) == 6


def test_route_matchers_are_validated(tmp_path: Path) -> None:
    problems = _problems(ROUTE + """\
    allow: [cn:ok, "fingerprint:12", "san:nope"]
    deny: serial:-1
    rules:
      - {path: /a/*, allow: [issuer:, "o:x"]}
""", tmp_path)
    assert sorted(p.split(": ", 2)[1] for p in problems) == [
        "routes[0].allow[1]", "routes[0].allow[2]", "routes[0].deny", "routes[0].rules[0].allow[0]"]


def test_allow_next_to_off_is_an_error(tmp_path: Path) -> None:
    problems = _problems(ROUTE + """\
    rules:
      - {path: /hook/*, client_auth: "off", allow: [role:ops]}
  - host: open.example
    upstream: whoami
    client_auth: off
    deny: [cn:x]
    rules: [{path: /x/*, allow: [any]}]
""", tmp_path)
    assert len(problems) == 3
    assert all("has no effect under client_auth: off" in p for p in problems)

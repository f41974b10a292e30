"""The strict config loader: every problem, with FILE:LINE: key.path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from certgate.config.loader import load_config_text
from certgate.config.schema import BUILTIN, ClientAuth, ForwardCert
from certgate.errors import ConfigError

MINIMAL = """\
routes:
  - host: ha.example.com
    upstream: http://127.0.0.1:8123
"""


def _problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, str(tmp_path / "c.yaml"), tmp_path)
    return info.value.problems


def test_minimal_config_gets_safe_defaults(tmp_path):
    config = load_config_text(MINIMAL, "c.yaml", tmp_path)
    route = config.routes[0]
    assert route.client_auth is ClientAuth.REQUIRE
    assert route.max_body is None
    assert route.upstream.port == 8123
    assert config.client_auth.trusted_cas == (BUILTIN,)
    assert config.state_dir == tmp_path / "certgate-data"
    assert not config.tls.session_tickets


def test_issue_interface_shape_loads(tmp_path):
    (tmp_path / "fullchain.pem").write_text("")  # existence only; content checked below
    text = """\
state_dir: ./certgate-data
listen: ["0.0.0.0:8443", "[::1]:8443"]
workers: auto
metrics: {listen: "127.0.0.1:9464"}
client_auth:
  trusted_cas: [builtin]
  crls: [builtin]
routes:
  - host: ha.example.com
    upstream: http://127.0.0.1:8123
    client_auth: require
    forward_client_cert: xfcc
    rules:
      - {path: /api/webhook/*, client_auth: "off"}
      - {path: /admin/*, allow: [role:ops]}
  - host: "*.example.com"
    upstream: whoami
    client_auth: optional
    max_body: 10M
"""
    config = load_config_text(text, "c.yaml", tmp_path)
    assert config.workers is None
    assert [str(listen) for listen in config.listen] == ["0.0.0.0:8443", "[::1]:8443"]
    ha, wild = config.routes
    assert ha.rules[0].client_auth is ClientAuth.OFF
    assert [str(m) for m in ha.rules[1].allow or ()] == ["role:ops"]
    assert ha.forward_cert is ForwardCert.XFCC
    assert wild.host == "*.example.com"
    assert wild.upstream.is_whoami
    assert wild.max_body == 10 * 1024 * 1024


def test_every_problem_is_reported_with_line_and_path(tmp_path):
    text = """\
listen: ["nonsense"]
routes:
  - host: ha.example.com
    upstream: ftp://x
    clent_auth: require
    timeouts: {read: -1}
  - host: "bad host"
    upstream: whoami
    client_auth: sometimes
"""
    problems = _problems(text, tmp_path)
    joined = "\n".join(problems)
    assert f"{tmp_path / 'c.yaml'}:1: listen[0]:" in joined
    assert ":4: routes[0].upstream:" in joined
    assert ":5: routes[0].clent_auth: unknown key (did you mean 'client_auth'?)" in joined
    assert ":6: routes[0].timeouts.read:" in joined
    assert ":7: routes[1].host:" in joined
    assert ":9: routes[1].client_auth: must be one of: require, optional, off" in joined
    assert len(problems) == 6


def test_yaml_off_is_not_a_boolean_trap(tmp_path):
    config = load_config_text(MINIMAL + "    client_auth: off\n", "c.yaml", tmp_path)
    assert config.routes[0].client_auth is ClientAuth.OFF


def test_unknown_matcher_kind_is_an_error(tmp_path):
    problems = _problems(MINIMAL + "    allow: [rol:ops]\n", tmp_path)
    assert "routes[0].allow[0]" in problems[0]


def test_duplicate_route_is_an_error(tmp_path):
    problems = _problems(MINIMAL + MINIMAL.split("\n", 1)[1], tmp_path)
    assert any("same host and path as routes[0]" in p for p in problems)


def test_yaml_syntax_error_names_the_line(tmp_path):
    problems = _problems("routes:\n  - host: [unclosed\n", tmp_path)
    assert problems[0].startswith(f"{tmp_path / 'c.yaml'}:")


@pytest.mark.parametrize("value", [
    "!!binary x",                         # bad base64
    "!!python/name:os.system x",          # a tag the safe loader refuses
    "!!python/object/apply:os.system [id]",
    "!!int abc",
    "!!float abc",
    "!!timestamp 2026-13-45",
])
def test_a_value_with_a_tag_that_cannot_be_read_is_a_problem_not_a_traceback(
        tmp_path, value):
    problems = _problems(f"state_dir: {value}\n" + MINIMAL, tmp_path)
    assert problems[0].startswith(f"{tmp_path / 'c.yaml'}:1: state_dir: "), problems
    assert len([p for p in problems if ":1: state_dir:" in p]) == 1, problems


def test_check_cli_reports_an_unreadable_tag_with_exit_2(tmp_path):
    config = tmp_path / "certgate.yaml"
    config.write_text("routes:\n  - host: ha.example.com\n    upstream: !!binary x\n")
    done = subprocess.run([sys.executable, "-m", "certgate", "check", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"{config}:3: routes[0].upstream: cannot read this value" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_check_cli_names_typo_and_missing_file(tmp_path):
    """Acceptance 7: exit 2, both problems with file:line."""
    config = tmp_path / "certgate.yaml"
    config.write_text("""\
tls:
  certificates:
    - {cert: /nonexistent/fullchain.pem, key: /nonexistent/privkey.pem}
routes:
  - host: ha.example.com
    upstream: http://127.0.0.1:8123
    upstreem_tls: {verify: false}
""")
    result = subprocess.run([sys.executable, "-m", "certgate", "check", "-c", str(config)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert f"{config}:3: tls.certificates[0].cert: file not found: /nonexistent/fullchain.pem" \
        in result.stderr
    assert f"{config}:7: routes[0].upstreem_tls: unknown key (did you mean 'upstream_tls'?)" \
        in result.stderr


def test_check_cli_accepts_a_good_config(tmp_path):
    config = tmp_path / "certgate.yaml"
    config.write_text(MINIMAL)
    result = subprocess.run([sys.executable, "-m", "certgate", "check", "-c", str(config)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_mismatched_key_is_reported(tmp_path, pki):
    alice, bob = pki["alice"], pki["bob"]
    text = f"""\
tls:
  certificates:
    - {{cert: {alice.cert}, key: {bob.key}}}
""" + MINIMAL
    problems = _problems(text, tmp_path)
    assert "tls.certificates[0]" in problems[0]
    assert "does not match" in problems[0]


def test_example_config_documents_a_loadable_config(tmp_path):
    """config/certgate.example.yaml parses; only its placeholder file paths are missing."""
    example = Path(__file__).parents[2] / "config" / "certgate.example.yaml"
    problems = _problems(example.read_text(), tmp_path)
    assert problems
    assert all("file not found" in p for p in problems), problems


def test_port_zero_needs_a_single_worker(tmp_path: Path) -> None:
    text = 'listen: ["127.0.0.1:0"]\nworkers: 2\nroutes: [{host: a.test, upstream: whoami}]\n'
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "c.yaml", base_dir=tmp_path)
    assert any("c.yaml:1: listen: port 0" in p for p in caught.value.problems), \
        caught.value.problems


def test_no_certificate_page_loads_and_defaults_to_refuse(tmp_path):
    from certgate.config.schema import NoCertificate
    config = load_config_text(MINIMAL + "    no_certificate: page\n", "c.yaml", tmp_path)
    assert config.routes[0].no_certificate is NoCertificate.PAGE
    config = load_config_text(MINIMAL, "c.yaml", tmp_path)
    assert config.routes[0].no_certificate is NoCertificate.REFUSE


def test_no_certificate_is_checked(tmp_path):
    problems = _problems(MINIMAL + "    no_certificate: html\n", tmp_path)
    assert problems == [f"{tmp_path / 'c.yaml'}:4: routes[0].no_certificate: "
                        "must be one of: refuse, page"]
    problems = _problems(MINIMAL + '    client_auth: "off"\n    no_certificate: page\n',
                         tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'c.yaml'}:5: routes[0].no_certificate: "
                                  "page has no effect")

"""Issue #11, finding 0: revocation is never silently off.

* Trusting ``builtin`` implies the built-in CA's CRL: a hand-written minimal
  config with no ``crls`` (or ``crls: []``) still refuses a certificate
  revoked with the real ``certgate ca revoke`` within the 2 s pickup.
* Any other trusted CA without a CRL source is a warning, naming the CA
  file, from ``certgate check`` and at start; ``crl: none`` on its entry
  says that is intended and silences it; ``crl: PATH`` gives it one.
* ``certgate explain`` names the CRL that governs the certificate it judges.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from certgate.config.loader import load_config_text
from certgate.errors import ConfigError
from certgate.explain import run as explain_run

from .conftest import LocalCA, ca_cli, outcome, refused_as
from support.clients import client_context
from support.foreign_ca import ForeignCA, make_foreign_ca
from support.process import wait_until

PICKUP = 2.0  # the README: a revocation bites within ~2 s
NO_CRL = "has no CRL"


@pytest.fixture
def foreign(tmp_path: Path) -> ForeignCA:
    return make_foreign_ca(tmp_path / "foreign")


@pytest.mark.parametrize("client_auth", ["", "client_auth: {crls: []}\n",
                                         "client_auth: {trusted_cas: [builtin], crls: []}\n"],
                         ids=["no-client-auth", "crls-empty", "builtin-crls-empty"])
def test_ca_revoke_bites_without_crls_configured(start_certgate, local_ca: LocalCA, upstream,
                                                 client_auth: str) -> None:
    proxy = start_certgate(f"""
state_dir: {local_ca.state}
listen: ["127.0.0.1:0"]
{client_auth}routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream.port}"}}
""")
    assert outcome(proxy.port, local_ca.context("carol")) == 200
    ca_cli(local_ca.state, "revoke", "carol")
    wait_until(lambda: refused_as(proxy.port, local_ca.context("carol"), "revoked"), PICKUP,
               "carol to be refused after `certgate ca revoke`")
    assert outcome(proxy.port, local_ca.context("dave")) == 200


def _check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "check.yaml"
    config.write_text(text)
    return subprocess.run([sys.executable, "-m", "certgate", "check", "-c", str(config)],
                          capture_output=True, text=True, check=False, timeout=60)


def _ca_config(state: Path, entry: str, crls: str = "") -> str:
    return f"""
state_dir: {state}
client_auth:
  trusted_cas: [builtin, {entry}]
{crls}routes:
  - {{host: localhost, upstream: whoami}}
"""


def test_check_warns_for_a_trusted_ca_without_crl(tmp_path: Path, foreign: ForeignCA) -> None:
    result = _check(tmp_path, _ca_config(tmp_path / "state", f'"{foreign.path}"'))
    assert result.returncode == 0, result.stderr
    warning = [line for line in (result.stdout + result.stderr).splitlines() if NO_CRL in line]
    assert len(warning) == 1, result.stdout + result.stderr
    assert str(foreign.path) in warning[0]
    assert "crl: none" in warning[0]  # says how to silence it


def test_check_is_silent_with_crl_none_or_a_crl(tmp_path: Path, foreign: ForeignCA) -> None:
    crl = foreign.directory / "ca.crl"
    crl.write_bytes(foreign.crl([]))
    for entry, crls in ((f'{{file: "{foreign.path}", crl: none}}', ""),
                        (f'{{file: "{foreign.path}", crl: "{crl}"}}', ""),
                        (f'"{foreign.path}"', f'  crls: ["{crl}"]\n')):
        result = _check(tmp_path, _ca_config(tmp_path / "state", entry, crls))
        assert result.returncode == 0, result.stderr
        assert NO_CRL not in result.stdout + result.stderr, (entry, result.stdout)
        assert "OK" in result.stdout


def test_crl_entry_keys_are_checked(tmp_path: Path, foreign: ForeignCA) -> None:
    for entry, problem in (
        ("{file: builtin, crl: none}", "the built-in CA's CRL is always checked"),
        (f'{{file: "{foreign.path}", crl: sometimes}}', "file not found"),
        (f'{{file: "{foreign.path}", crls: none}}', "unknown key"),
        ("{crl: none}", "file: required key is missing"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_config_text(_ca_config(tmp_path / "state", entry), "t.yaml", tmp_path)
        assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_start_warns_naming_the_ca_file(start_certgate, local_ca: LocalCA, upstream,
                                        foreign: ForeignCA) -> None:
    proxy = start_certgate(f"""
state_dir: {local_ca.state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin, "{foreign.path}"]}}
routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream.port}"}}
""")
    lines = [line for line in proxy.log_text().splitlines() if NO_CRL in line]
    assert lines, proxy.log_text()
    assert str(foreign.path) in lines[0]
    assert "WARNING" in lines[0]
    # Still serves that CA's clients (a warning, not a refusal).
    mallory = foreign.issue("mallory")
    ctx = client_context(local_ca.root, mallory.cert, mallory.key)
    assert outcome(proxy.port, ctx) == 200


def _explain(config: str, tmp_path: Path, cert: Path) -> str:
    out = io.StringIO()
    explain_run(load_config_text(config, str(tmp_path / "e.yaml"), tmp_path),
                "https://localhost/", "GET", cert, out)
    return out.getvalue()


def test_explain_names_the_governing_crl(tmp_path: Path, local_ca: LocalCA,
                                         foreign: ForeignCA) -> None:
    ca_cli(local_ca.state, "revoke", "erin")  # CRL number 2 at least
    mallory = foreign.issue("mallory")
    base = f"""
state_dir: {local_ca.state}
client_auth:
  trusted_cas: [builtin, %s]
routes:
  - {{host: localhost, upstream: whoami}}
"""
    text = _explain(base % f'"{foreign.path}"', tmp_path, local_ca["carol"].cert)
    crl_line = next(line for line in text.splitlines() if line.strip().startswith("crl:"))
    assert str(local_ca.ca.crl_path) in crl_line, text
    assert "number" in crl_line
    assert "thisUpdate" in crl_line

    uncovered = _explain(base % f'"{foreign.path}"', tmp_path, mallory.cert)
    assert "WARNING no CRL" in uncovered, uncovered
    opted_out = _explain(base % f'{{file: "{foreign.path}", crl: none}}', tmp_path,
                         mallory.cert)
    assert "none (crl: none)" in opted_out, opted_out


def test_builtin_trust_implies_its_crl_in_the_schema(tmp_path: Path) -> None:
    config = load_config_text("routes: [{host: localhost, upstream: whoami}]\n", "t.yaml",
                              tmp_path)
    assert config.client_auth.crls == ("builtin",)


"""config/prometheus/: the alert rules and scrape config pass promtool, and the
rule tests (an expiring server certificate fires its alert, acceptance 5;
a client certificate with 10 days left fires its alert, issue #12 acceptance 6;
stale CRLs and failed reloads fire theirs) pass ``promtool test rules``.

promtool comes with Debian's ``prometheus`` package, which ``.ci/run``
installs; where it is missing these tests skip and say so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "config" / "prometheus"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian: apt-get install --no-install-recommends "
                    "prometheus; .ci/run installs it)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], cwd=PROMETHEUS_DIR, capture_output=True,
                          text=True, check=False, timeout=60)


def test_alert_rules_pass_promtool_check_rules() -> None:
    result = _run("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_scrape_config_passes_promtool_check_config() -> None:
    result = _run("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # The example loads alerts.yml, and promtool checked it as part of the config.
    assert "alerts.yml" in result.stdout


def test_there_are_rule_tests_for_expiry_revocation_and_reload() -> None:
    text = "\n".join(path.read_text() for path in RULE_TESTS)
    for alert in ("CertgateServerCertificateExpiringSoon", "CertgateCACertificateExpiringSoon",
                  "CertgateClientCertificateExpiringSoon", "CertgateCRLStale",
                  "CertgateCRLNextUpdateSoon", "CertgateConfigReloadFailed"):
        assert f"alertname: {alert}" in text, f"no promtool test exercises {alert}"


@pytest.mark.parametrize("rule_test", RULE_TESTS, ids=[p.stem for p in RULE_TESTS])
def test_promtool_rule_tests_pass(rule_test: Path) -> None:
    result = _run("test", "rules", str(rule_test.relative_to(PROMETHEUS_DIR)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_severity_and_a_summary() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    for rule in alerts:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]

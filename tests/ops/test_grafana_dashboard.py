"""config/grafana/certgate.json is an importable Grafana dashboard: valid JSON
in Grafana's dashboard model, every panel on the data source variable, every
variable it uses defined, and every query valid PromQL (checked by promtool
after Grafana's variables are substituted)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "certgate.json"
# Grafana's own variables; https://grafana.com/docs/grafana/latest/dashboards/variables/
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__range_s"}
# What Grafana would put in their place, so promtool can parse the query.
SUBSTITUTE = {"__rate_interval": "2m", "__interval": "30s", "__range": "6h", "__range_s": "21600",
              "instance": ".*", "route": ".*"}
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")

Dashboard = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> Dashboard:
    loaded: Dashboard = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(dashboard: Dashboard) -> list[Dashboard]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _queries(dashboard: Dashboard) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p["targets"]]


def test_is_a_grafana_dashboard(dashboard: Dashboard) -> None:
    assert dashboard["uid"] == "certgate"
    assert dashboard["title"] == "certgate"
    assert dashboard["id"] is None  # so that importing never overwrites another dashboard
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["y"] >= 0, panel["title"]
        assert grid["h"] > 0, panel["title"]


def test_panels_do_not_overlap(dashboard: Dashboard) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_has_the_panels_the_issue_asks_for(dashboard: Dashboard) -> None:
    queries = "\n".join(_queries(dashboard))
    assert "sum by (result) (rate(certgate_tls_handshakes_total" in queries
    assert "sum by (route, code_class) (rate(certgate_requests_total" in queries
    assert "histogram_quantile(0.99, sum by (route, le) " \
           "(rate(certgate_request_duration_seconds_bucket" in queries
    assert "certgate_denials_total" in queries
    tables = [p for p in _panels(dashboard) if p["type"] == "table"]
    assert any("certgate_certificate_expiry_timestamp_seconds" in t["expr"]
               for p in tables for t in p["targets"]), "no certificate expiry table"


def test_every_panel_uses_the_data_source_variable(dashboard: Dashboard) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, \
            panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_variable_used_is_defined(dashboard: Dashboard) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]} | BUILTIN_VARIABLES
    used = {name for expr in _queries(dashboard) for name in _VARIABLE.findall(expr)}
    assert used, "the queries use no variables at all?"
    assert used <= defined, f"undefined: {sorted(used - defined)}"


def test_every_query_is_valid_promql(dashboard: Dashboard, tmp_path: Path) -> None:
    """promtool has no query parser of its own on the command line, so each
    query becomes a recording rule and ``promtool check rules`` parses it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install --no-install-recommends "
                    "prometheus; .ci/run installs it)")
    exprs = _queries(dashboard) + [
        v["query"]["query"] for v in dashboard["templating"]["list"]
        if v["type"] == "query" and not v["query"]["query"].startswith("label_values(")
    ]

    def concrete(expr: str) -> str:
        return _VARIABLE.sub(lambda m: SUBSTITUTE[m.group(1)], expr)

    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": concrete(expr)} for i, expr in enumerate(exprs)
    ]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout

"""The alerts and the dashboard query only metrics certgate exports, with the
labels and label values it exports them with.

``EXPORTED`` is the metric contract of issue #6 (what ``certgate.metrics``
registers). A typo such as ``code="5xx"`` for ``code_class="5xx"`` or
``result="failure"`` on the handshake counter would make an alert silently
never fire, so every selector and every ``by (...)`` clause is checked here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "config" / "grafana" / "certgate.json"

HANDSHAKE_REASONS = {"", "no_cert", "unknown_ca", "expired", "revoked", "bad_eku", "stale_crl",
                     "bad_cert", "protocol", "timeout", "other"}

# metric -> {label: allowed values, or None for free-form values}
EXPORTED: dict[str, dict[str, set[str] | None]] = {
    "certgate_tls_handshakes_total": {"listener": None, "result": {"ok", "failed"},
                                      "reason": HANDSHAKE_REASONS},
    "certgate_connections_active": {},
    "certgate_connections_total": {"listener": None},
    "certgate_requests_total": {"route": None,
                                "code_class": {"1xx", "2xx", "3xx", "4xx", "5xx"}},
    "certgate_request_duration_seconds": {"route": None},
    "certgate_denials_total": {"route": None, "reason": None},
    "certgate_upstream_errors_total": {"route": None,
                                       "kind": {"refused", "reset", "timeout", "tls",
                                                "protocol", "other"}},
    "certgate_bytes_total": {"direction": {"in", "out"}},
    "certgate_certificate_expiry_timestamp_seconds": {"kind": {"server", "ca", "client"},
                                                      "name": None, "serial": None},
    "certgate_certificate_not_before_timestamp_seconds": {"kind": {"server", "ca", "client"},
                                                          "name": None, "serial": None},
    "certgate_crl_next_update_timestamp_seconds": {"issuer": None},
    "certgate_crl_revoked": {"issuer": None},
    "certgate_crl_stale_admissions_total": {"issuer": None},
    "certgate_config_reloads_total": {"result": {"success", "failure"}},
    "certgate_build_info": {"version": None},
    "certgate_enrollments_total": {"result": {"created", "downloaded", "burned", "expired",
                                              "cancelled"}},
}
HISTOGRAMS = {"certgate_request_duration_seconds"}
# Added by Prometheus to every series it scrapes (job, instance), and the
# histogram bucket bound.
TARGET_LABELS = {"job", "instance"}

_SELECTOR = re.compile(r"\b(certgate_[a-z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _walk(node: object) -> Iterator[dict[str, object]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[str] = []
    for node in _walk(dashboard):
        if isinstance(node.get("expr"), str):
            found.append(node["expr"])  # type: ignore[arg-type]
        query = node.get("query")
        if isinstance(query, dict) and isinstance(query.get("query"), str):
            found.append(query["query"])
    return found


def _base(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def _problems(expr: str) -> list[str]:
    problems: list[str] = []
    for match in _SELECTOR.finditer(expr):
        name = match.group(1)
        base = _base(name)
        if base not in EXPORTED:
            problems.append(f"{name}: not a metric certgate exports")
            continue
        labels = EXPORTED[base]
        extra = {"le"} if name.endswith("_bucket") else set()
        for label, op, value in _MATCHER.findall(match.group(2) or ""):
            if label in TARGET_LABELS or label in extra:
                continue
            if label not in labels:
                problems.append(f"{name}: no label {label!r} (has {sorted(labels)})")
                continue
            allowed = labels[label]
            if allowed is None or "$" in value:
                continue
            values = value.split("|") if op in ("=~", "!~") else [value]
            for item in values:
                if item not in allowed:
                    problems.append(f"{name}: {label}={item!r} is never exported "
                                    f"(values: {sorted(allowed)})")
    every_label = {label for labels in EXPORTED.values() for label in labels}
    every_label |= TARGET_LABELS | {"le"}
    for group in _GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in every_label:
                problems.append(f"by/on ({label}): no certgate metric has that label")
    return problems


@pytest.mark.parametrize(("where", "expressions"), [
    ("alerts.yml", alert_expressions),
    ("certgate.json", dashboard_expressions),
])
def test_queries_use_only_exported_metrics_and_labels(
        where: str, expressions: Callable[[], list[str]]) -> None:
    found = expressions()
    assert found, f"no expressions found in {where}"
    problems = [f"{where}: {problem}\n    in: {expr.strip()}"
                for expr in found for problem in _problems(expr)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_typos() -> None:
    """The check above is not vacuous: each kind of mistake is reported."""
    assert _problems('certgate_request_total{route="x"}')
    assert _problems('certgate_requests_total{code="5xx"}')
    assert _problems('certgate_tls_handshakes_total{result="failure"}')
    assert _problems('certgate_tls_handshakes_total{reason=~"expired|revokd"}')
    assert _problems("sum by (rout) (rate(certgate_requests_total[5m]))")
    assert not _problems('sum by (le, route) (rate(certgate_request_duration_seconds_bucket'
                         '{route=~"$route", le="0.5"}[5m]))')


def test_the_dashboard_shows_every_exported_metric() -> None:
    used = {_base(m.group(1)) for expr in dashboard_expressions()
            for m in _SELECTOR.finditer(expr)}
    assert set(EXPORTED) - used == set()

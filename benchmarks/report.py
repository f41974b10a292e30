"""The printed table and the JSON file: one place that knows each scenario's columns.

``python -m benchmarks.report RESULTS.json`` prints a result file's tables as
Markdown, which is how ``benchmarks/README.md`` gets its numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.options import SCENARIOS

Column = tuple[str, str, str]  # header, row key, format spec ("" = str)

_HANDSHAKE: list[Column] = [
    ("workers", "workers", ""), ("variant", "variant", ""), ("server", "server", ""),
    ("hs/s", "handshakes_per_s", ".0f"),
    ("srv ms/hs", "server_cpu_ms_per_handshake", ".2f"),
    ("cg/ngx rate", "certgate_over_nginx", ".2f"),
    ("gen cores", "generator_cpu_cores", ".2f"), ("busy cores", "machine_busy_cores", ".2f"),
    ("errors", "errors", ""),
]

COLUMNS: dict[str, list[Column]] = {
    "1": _HANDSHAKE,
    "2": _HANDSHAKE,
    "3": [*_HANDSHAKE[:-1], ("resumed", "resumed_fraction", ".0%"), ("errors", "errors", "")],
    "4": [
        ("workers", "workers", ""), ("server", "server", ""),
        ("req/s", "requests_per_s", ".0f"), ("p50 ms", "p50_ms", ".2f"),
        ("p99 ms", "p99_ms", ".2f"), ("srv ms/req", "server_cpu_ms_per_request", ".3f"),
        ("upstream conns/1k req", "upstream_connections_per_1k_requests", ".1f"),
        ("cg/ngx rate", "certgate_over_nginx", ".2f"),
        ("gen cores", "generator_cpu_cores", ".2f"), ("busy cores", "machine_busy_cores", ".2f"),
        ("errors", "errors", ""),
    ],
    "5": [
        ("workers", "workers", ""), ("server", "server", ""),
        ("at req/s", "target_rate", ".0f"), ("p50 ms", "p50_ms", ".3f"),
        ("p99 ms", "p99_ms", ".3f"), ("direct p50", "direct_p50_ms", ".3f"),
        ("direct p99", "direct_p99_ms", ".3f"), ("added p50", "added_p50_ms", ".3f"),
        ("added p99", "added_p99_ms", ".3f"), ("errors", "errors", ""),
    ],
    "6": [
        ("workers", "workers", ""), ("server", "server", ""), ("direction", "direction", ""),
        ("MB/s", "mb_per_s", ".0f"), ("peak RSS MB", "peak_rss_mb", ".1f"),
        ("idle RSS MB", "start_rss_mb", ".1f"), ("srv CPU s/GiB", "server_cpu_s_per_gib", ".2f"),
        ("cg/ngx MB/s", "certgate_over_nginx", ".2f"), ("errors", "errors", ""),
    ],
    "7": [
        ("workers", "workers", ""), ("server", "server", ""), ("held", "connections", ""),
        ("KiB/conn", "kib_per_connection", ".1f"), ("RSS before MB", "rss_before_mb", ".1f"),
        ("RSS held MB", "rss_held_mb", ".1f"), ("errors", "errors", ""),
    ],
    "8": [
        ("measure", "measure", ""), ("value", "value", ".3f"), ("unit", "unit", ""),
        ("target", "target", ""),
    ],
}


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if fmt and isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, fmt)
    return str(value)


def table(scenario: str, rows: list[dict[str, Any]]) -> str:
    columns = COLUMNS[scenario]
    cells = [[header for header, _, _ in columns]]
    cells += [[_cell(row, key, fmt) for _, key, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(line, widths, strict=True)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """Every scenario's table with its notes, in scenario order."""
    out: list[str] = []
    for number, key in SCENARIOS.items():
        section = results["scenarios"].get(key)
        if section is None:
            continue
        source = section.get("certgate_commit")
        dirty = " + uncommitted src changes" if section.get("src_changes") else ""
        out.append(f"\n== {key} ==" + (f"  (certgate {source}{dirty})" if source else ""))
        if section["rows"]:
            out.append(table(number, section["rows"]))
        out.extend(f"  note: {note}" for note in section.get("notes", []))
    out.extend(f"note: {note}" for note in results.get("notes", []))
    return "\n".join(out)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")


def markdown(results: dict[str, Any]) -> str:
    """Every scenario's table as Markdown (same columns as the printed table)."""
    out: list[str] = []
    for number, key in SCENARIOS.items():
        section = results["scenarios"].get(key)
        if not section or not section["rows"]:
            continue
        columns = COLUMNS[number]
        source = section.get("certgate_commit")
        out.append(f"\n**{key}**" + (f" (certgate `{source}`)" if source else "") + "\n")
        out.append("| " + " | ".join(header for header, _, _ in columns) + " |")
        out.append("|" + "---|" * len(columns))
        out.extend("| " + " | ".join(_cell(row, k, f) for _, k, f in columns) + " |"
                   for row in section["rows"])
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))

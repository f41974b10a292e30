"""The benchmark suite's quick mode runs end to end and writes its JSON.

No timing is asserted (the machine is shared); the invariant is that every
scenario ran against a real certgate and produced a number, so the suite
cannot rot unnoticed between full runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "1_full_handshake_tls13": "handshakes_per_s",
    "2_full_handshake_tls12": "handshakes_per_s",
    "3_resumed_handshake": "handshakes_per_s",
    "4_keepalive": "requests_per_s",
    "5_added_latency": "p50_ms",
    "6_streaming": "mb_per_s",
    "7_idle_memory": "connections",
}


@pytest.mark.timeout(240)
def test_quick_benchmark_writes_every_scenario(tmp_path: Path) -> None:
    output = tmp_path / "quick.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["meta"]["quick"] is True
    scenarios = results["scenarios"]
    assert set(scenarios) == {*SCENARIOS, "8_revocation"}
    for key, metric in SCENARIOS.items():
        ours = [row for row in scenarios[key]["rows"] if row["server"].startswith("certgate")]
        assert ours, f"{key}: no certgate row"
        assert all(isinstance(row[metric], float | int) and row[metric] > 0 for row in ours), \
            f"{key}: {metric} missing in {ours}"
    measures = {row["measure"]: row["value"] for row in scenarios["8_revocation"]["rows"]}
    assert any(name.startswith("RevocationIndex.check") for name in measures)
    assert all(value >= 0 for value in measures.values())

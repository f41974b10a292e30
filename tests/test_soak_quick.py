"""benchmarks/soak.py --quick: faults and a small soak against a real certgate.

Invariant (issue #11, acceptance 3, at CI sizes): every fault gets an
expected outcome, no worker crashes (pids unchanged), no CA record is lost,
and after the held connections and the failed handshakes the fd count of
certgate's process tree returns to its baseline and RSS grows < 20 MB. The
module itself checks all of this and exits non-zero otherwise; this test
runs it and asserts the JSON's shape, never timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHASES = {"upstream_reset", "upstream_short", "upstream_long", "websocket_upstream_abort",
          "websocket_client_abort", "client_upload_reset", "reload_storm", "held_connections",
          "failed_handshakes"}


@pytest.mark.timeout(240)
def test_quick_soak_passes_its_checks(tmp_path: Path) -> None:
    output = tmp_path / "soak.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--quick", "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["ok"] is True
    assert result["failures"] == []
    assert result["meta"]["quick"] is True
    phases = {p["name"]: p for p in result["phases"]}
    assert set(phases) == PHASES
    assert all(p["errors"] == 0 for p in phases.values())
    assert phases["held_connections"]["outcomes"]["held"] == result["meta"]["sizes"]["held"]
    assert phases["failed_handshakes"]["outcomes"]["refused"] == \
        result["meta"]["sizes"]["handshakes"]
    assert phases["reload_storm"]["outcomes"]["sighup"] == 100

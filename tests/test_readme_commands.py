"""The README opens with two commands for a fresh machine; CI runs the second verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text)[:2]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    run, test = _readme_commands()
    assert "certgate run" in run
    assert "pytest" in test
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[-1] == test


def test_both_commands_use_a_fresh_venv() -> None:
    # A system python3 on Debian/Ubuntu refuses `pip install` (PEP 668), and
    # a venv without system site-packages shows a missing test dependency.
    for command in _readme_commands():
        assert command.startswith("python3 -m venv .venv && ")
        assert "--system-site-packages" not in command

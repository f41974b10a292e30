"""Fixtures for the CA tests: a fresh CA, the CLI in-process and as a process.

Everything runs against real files in ``tmp_path`` and is checked with the
real ``openssl`` binary where an outside opinion matters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certgate.ca import CertificateAuthority
from certgate.ca.commands import add_subcommands
from certgate.errors import CertgateError

OPENSSL = "/usr/bin/openssl"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def openssl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the system openssl; with ``check`` fail the test on a non-zero exit."""
    proc = subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"openssl {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


@pytest.fixture
def ca(state: Path) -> CertificateAuthority:
    return CertificateAuthority.init(state, name="Test CA")


@pytest.fixture
def cli(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Result]:
    """Run ``certgate ca ARGS --state STATE`` in-process, like cli.py would."""

    def run(*args: str | Path) -> Result:
        parser = argparse.ArgumentParser(prog="certgate")
        add_subcommands(parser.add_subparsers(dest="command"))
        argv = ["ca", *map(str, args)]
        if "--state" not in argv and "-c" not in argv:
            argv += ["--state", str(state)]
        parsed = parser.parse_args(argv)
        capsys.readouterr()
        try:
            code = int(parsed.handler(parsed))
        except CertgateError as exc:
            captured = capsys.readouterr()
            return Result(exc.exit_code, captured.out, captured.err + f"certgate: {exc}\n")
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def proc(state: Path, tmp_path: Path) -> Callable[..., Result]:
    """Run ``python -m certgate.ca ARGS --state STATE`` in a subprocess."""

    def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
        argv = [sys.executable, "-m", "certgate.ca", *map(str, args), "--state", str(state)]
        completed = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
            env={**os.environ, **(env or {})},
        )
        return Result(completed.returncode, completed.stdout, completed.stderr)

    return run

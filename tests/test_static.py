"""The code stays `ruff` and `mypy --strict` clean (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ruff_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "src"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


_IMPORT_EACH = """
import importlib, pkgutil, sys
import certgate
names = sorted(m.name for m in pkgutil.walk_packages(certgate.__path__, "certgate.")
               if m.name != "certgate.__main__")
failed = []
for name in names:
    for loaded in [k for k in sys.modules if k == "certgate" or k.startswith("certgate.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(len(names))
print("\\n".join(failed))
"""


def test_every_module_imports_on_its_own() -> None:
    """Each module imports first, in a process with no certgate module loaded
    yet: an import cycle held apart only by the usual import order (the
    config package importing its loader, which needs tls.contexts, which
    needs the config schema) fails here."""
    result = subprocess.run([sys.executable, "-c", _IMPORT_EACH], cwd=ROOT / "src",
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    count, _, failed = result.stdout.partition("\n")
    assert int(count) > 100
    assert failed.strip() == "", failed

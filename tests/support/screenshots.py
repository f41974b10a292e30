"""Where the browser tests save their screenshots.

``docs/img/`` (the pages docs/console.md and docs/phone.md show) only when
``CERTGATE_SCREENSHOTS=1`` asks for it, so an ordinary test run never
rewrites tracked files; otherwise a directory of the test's own.
"""

from __future__ import annotations

import os
from pathlib import Path

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"


def screenshot_dir(tmp_path: Path) -> Path:
    target = DOCS_IMAGES if os.environ.get("CERTGATE_SCREENSHOTS") == "1" else tmp_path / "img"
    target.mkdir(parents=True, exist_ok=True)
    return target

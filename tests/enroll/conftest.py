"""Fixtures for tests/enroll (helpers live in support/enrolling.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.enrolling import Enrolling, running_enrolling


@pytest.fixture
def enrolling(tmp_path: Path) -> Iterator[Enrolling]:
    yield from running_enrolling(tmp_path)

"""The CRL high-water rule and its state file, fed with values and real CRLs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from certgate.revocation import RevocationError, RevocationSources
from certgate.revocation_state import STATE_FILE, HighWater, rollback

from .conftest import LocalCA

SEEN = HighWater(5, 1000.0, "aa")


@pytest.mark.parametrize(("new", "refused"), [
    (HighWater(5, 1000.0, "aa"), None),  # the same CRL again
    (HighWater(4, 1000.0, "bb"), "lower than 5"),
    (HighWater(6, 999.0, "bb"), "older than"),  # a higher number cannot make up for it
    (HighWater(5, 1000.0, "bb"), "same CRL number 5"),
    (HighWater(5, 1001.0, "bb"), None),  # the issuer re-signed later: its newer word
    (HighWater(6, 1001.0, "bb"), None),
    (HighWater(None, 1001.0, "bb"), None),  # no CRLNumber: thisUpdate decides
    (HighWater(None, 999.0, "bb"), "older than"),
])
def test_rollback_rule(new: HighWater, refused: str | None) -> None:
    reason = rollback(new, SEEN)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None
        assert refused in reason
    assert rollback(new, None) is None


def _sources(local_ca: LocalCA, crl: Path, state: Path) -> RevocationSources:
    return RevocationSources((crl,), local_ca.ca.trust_bundle_path.read_text(), None, state)


def test_state_file_is_private_and_survives(tmp_path: Path, local_ca: LocalCA) -> None:
    crl, state = tmp_path / "a.crl", tmp_path / "state" / STATE_FILE
    now = dt.datetime.now(dt.UTC)
    crl.write_bytes(local_ca.crl([local_ca["carol"].serial], number=3))
    _sources(local_ca, crl, state).load()
    assert state.stat().st_mode & 0o777 == 0o600
    assert [entry["number"] for entry in json.loads(state.read_text())["crls"]] == [3]
    crl.write_bytes(local_ca.crl([], number=2, last_update=now - dt.timedelta(hours=1)))
    with pytest.raises(RevocationError, match="rollback"):
        _sources(local_ca, crl, state).load()  # a fresh process: nothing in memory
    # Without persisting (explain), nothing is written.
    other = tmp_path / "other" / STATE_FILE
    _sources(local_ca, crl, other).load(persist=False)
    assert not other.exists()


def test_corrupt_state_file_fails_closed(tmp_path: Path, local_ca: LocalCA) -> None:
    crl, state = tmp_path / "a.crl", tmp_path / STATE_FILE
    crl.write_bytes(local_ca.crl([], number=1))
    state.write_text("{not json")
    with pytest.raises(RevocationError, match="malformed CRL high-water state"):
        _sources(local_ca, crl, state).load()

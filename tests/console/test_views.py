"""The console's pure views, on records from a real CA."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from certgate.ca import CertificateAuthority
from certgate.console import views


def test_a_device_never_seen_is_unseen_only_once_older_than_the_window(tmp_path: Path) -> None:
    """The overview listed a device issued five minutes ago under "valid, not
    seen for 30 days" (newcomer trial)."""
    ca = CertificateAuthority.init(tmp_path / "state", name="Views CA")
    ca.issue_client("new-phone", roles=["family"], days=365)
    records = ca.certificates().records
    issued = records[-1].issued_at
    young = views.devices(records, {}, issued + timedelta(minutes=5))
    old = views.devices(records, {}, issued + views.STALE + timedelta(minutes=1))
    assert [d.name for d in young if d.unseen_for(issued + timedelta(minutes=5),
                                                  views.STALE)] == []
    assert [d.name for d in old if d.unseen_for(issued + views.STALE + timedelta(minutes=1),
                                                views.STALE)] == ["new-phone"]
    summary = views.overview(young, 0, issued + timedelta(minutes=5))
    assert summary.unseen == []

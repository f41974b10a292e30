"""Attacks on the enrollment service: racing on one token, flooding, big
bodies, guessing; and the store's transitions under concurrency."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from certgate.ca import CertificateAuthority
from certgate.ca import enrollments as store
from certgate.enroll.ratelimit import RateLimiter

from support.enrolling import CONFIG, Enrolling, hidden, start_enrolling
from support.process import free_port

RACERS = 8


def test_racing_workers_one_token_exactly_one_wins(tmp_path: Path) -> None:
    """Eight threads, each with its own CA session (own lock descriptor, own
    SQLite connection, as two workers have), redeem the same token at once."""
    ca = CertificateAuthority.init(tmp_path / "state", name="race CA")
    new = store.create(ca, "racer")
    barrier = threading.Barrier(RACERS, timeout=30)
    results: list[str] = []

    def race() -> None:
        barrier.wait()
        try:
            store.redeem(ca, new.token, new.pin, "127.0.0.1", "p12", store.issue_with_key)
            results.append("won")
        except store.Gone:
            results.append("gone")

    threads = [threading.Thread(target=race) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == ["gone"] * (RACERS - 1) + ["won"]
    assert [r.name for r in ca.certificates().records] == ["racer"]
    downloads = [line for line in (tmp_path / "state" / "ca" / "audit.jsonl").read_text()
                 .splitlines() if '"enroll-download"' in line]
    assert len(downloads) == 1


def test_concurrent_wrong_pins_are_all_counted(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "state", name="count CA")
    new = store.create(ca, "counted")
    wrong = "000000" if new.pin != "000000" else "111111"
    barrier = threading.Barrier(RACERS, timeout=30)
    outcomes: list[str] = []

    def guess() -> None:
        barrier.wait()
        try:
            store.check_pin(ca, new.token, wrong, "192.0.2.1")
        except store.WrongPin:
            outcomes.append("wrong")
        except store.Gone:
            outcomes.append("gone")

    threads = [threading.Thread(target=guess) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Four counted wrong, the fifth burns, the rest find it burned.
    assert outcomes.count("wrong") == store.MAX_ATTEMPTS - 1
    assert [e.state for e in store.listing(ca)] == ["burned"]
    with pytest.raises(store.Gone):
        store.check_pin(ca, new.token, new.pin, "192.0.2.1")


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Enrolling]:
    port = free_port()
    env = start_enrolling(tmp_path, CONFIG.replace(
        'listen: ["127.0.0.1:0"]', f'listen: ["127.0.0.1:{port}"]\nworkers: 2'))
    try:
        yield env
    finally:
        env.proxy.stop()


def test_racing_downloads_through_certgate(two_workers: Enrolling) -> None:
    env = two_workers
    link = env.enroll("contested")
    with env.client() as client:
        chosen = env.request(client, "POST", link.path, data={"pin": link.pin})
    password = hidden(chosen.text, "password")
    barrier = threading.Barrier(RACERS, timeout=30)
    statuses: list[int] = []

    def download() -> None:
        with env.client() as client:
            barrier.wait()
            got = env.request(client, "POST", f"{link.path}/p12",
                              data={"pin": link.pin, "password": password})
            statuses.append(got.status_code)

    threads = [threading.Thread(target=download) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [200] + [410] * (RACERS - 1)


def test_rate_limit_per_address(enrolling: Enrolling) -> None:
    env = enrolling
    link = env.enroll("flooded")
    statuses = []
    with env.client() as client:
        for _ in range(30):
            got = env.request(client, "GET", link.path)
            statuses.append(got.status_code)
            if got.status_code == 429:
                assert int(got.headers["retry-after"]) >= 1
                break
        # The public root is not limited: a phone can always fetch it.
        assert env.request(client, "GET", "/enroll/ca.crt").status_code == 200
    assert statuses[-1] == 429
    assert statuses[:-1] == [200] * (len(statuses) - 1)
    # Nothing was used up by the flood.
    assert [e["state"] for e in json.loads(env.ca("enroll", "--list", "--json").stdout)] \
        == ["pending"]


def test_rate_limiter_refills_and_forgets() -> None:
    limiter = RateLimiter(burst=2, interval=10.0, max_clients=2)
    assert limiter.allow("a", 0.0) == 0
    assert limiter.allow("a", 0.0) == 0
    assert limiter.allow("a", 0.0) == pytest.approx(10.0)
    assert limiter.allow("a", 10.0) == 0  # one refilled
    limiter.allow("b", 10.0)
    limiter.allow("c", 10.0)
    assert "a" not in limiter._buckets  # least recently seen, dropped


def test_big_body_is_refused(enrolling: Enrolling) -> None:
    env = enrolling
    link = env.enroll("big")
    with env.client() as client:
        got = env.request(client, "POST", f"{link.path}/csr", content=b"x" * (70 * 1024))
    assert got.status_code == 413
    assert [e["state"] for e in json.loads(env.ca("enroll", "--list", "--json").stdout)] \
        == ["pending"]


def test_pin_in_the_url_is_not_a_pin(enrolling: Enrolling) -> None:
    """The PIN travels only in a POST body: a query string carries nothing."""
    env = enrolling
    link = env.enroll("query")
    with env.client() as client:
        got = env.request(client, "POST", f"{link.path}?pin={link.pin}")
    assert got.status_code == 403
    assert "attempts left" in got.text

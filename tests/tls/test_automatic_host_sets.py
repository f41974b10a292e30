"""Which automatic server certificates a config gets (routing.automatic_host_sets):
pure, so checked by feeding host lists."""

from __future__ import annotations

from certgate.routing import automatic_host_sets


def test_one_certificate_per_host_and_a_default_that_names_no_route() -> None:
    assert automatic_host_sets(["a.test", "b.test"], configured=False) == [
        ("localhost",), ("a.test",), ("b.test",)]


def test_a_wildcard_route_gets_a_wildcard_certificate() -> None:
    assert automatic_host_sets(["*.example.com"], configured=False) == [
        ("localhost",), ("*.example.com",)]


def test_ip_literal_hosts_go_to_the_default_certificate() -> None:
    # Clients send no SNI for an address (RFC 6066 s.3): only the default
    # certificate can ever be shown to them.
    assert automatic_host_sets(["10.0.0.1", "a.test", "::1"], configured=False) == [
        ("10.0.0.1", "::1"), ("a.test",)]


def test_a_localhost_route_shares_the_default() -> None:
    assert automatic_host_sets(["localhost", "a.test"], configured=False) == [
        ("localhost",), ("a.test",)]


def test_with_a_configured_certificate_it_stays_the_default() -> None:
    assert automatic_host_sets(["a.test"], configured=True) == [("a.test",)]
    assert automatic_host_sets([], configured=False) == []

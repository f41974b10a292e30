"""Properties of the host normaliser as routing uses it (hypothesis).

test_hostnames.py checks that normalise_host's output is canonical and
idempotent. Here the invariant is the one domain fronting depends on: every
spelling of one host (case, one trailing dot, a port, IDNA U-label vs
A-label, bracketed IPv6) normalises to the same string and so selects the
same route and the same handshake class, whether it came as SNI (no port) or
as a Host header (maybe a port); and no accepted spelling of one host selects
another host's route.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from certgate.config.schema import ClientAuth, Route, Upstream
from certgate.hostnames import InvalidHost, normalise_host
from certgate.routing import RouteTable

_LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
names = st.lists(_LABEL, min_size=1, max_size=3).map(lambda ls: ".".join([*ls, "test"]))


def _spellings(host: str, upper: int, port: int, dot: bool) -> list[str]:
    mixed = "".join(c.upper() if upper >> i & 1 else c for i, c in enumerate(host))
    return [host, mixed, mixed + ("." if dot else ""), f"{mixed}:{port}",
            f"{mixed}.:{port}" if dot else mixed]


def _table(hosts: list[str]) -> RouteTable:
    upstream = Upstream("whoami")
    modes = [ClientAuth.REQUIRE, ClientAuth.OFF, ClientAuth.OPTIONAL]
    return RouteTable([Route(host=h, upstream=upstream, client_auth=modes[i % 3])
                       for i, h in enumerate(hosts)])


@settings(max_examples=150, deadline=None)
@given(st.lists(names, min_size=1, max_size=4, unique=True), st.data())
def test_every_spelling_of_a_host_selects_its_own_route(hosts: list[str],
                                                         data: st.DataObject) -> None:
    table = _table(hosts)
    for host in hosts:
        entry = table.for_host(host)
        assert entry is not None
        assert entry.pattern == host
        upper = data.draw(st.integers(0, 2**64))
        port = data.draw(st.integers(1, 65535))
        dot = data.draw(st.booleans())
        for spelling in _spellings(host, upper, port, dot):
            canonical = normalise_host(spelling)
            assert canonical == host, (spelling, canonical)
            assert table.for_host(canonical) is entry
            assert table.handshake_mode(canonical) is entry.mode


@settings(max_examples=150, deadline=None)
@given(st.lists(names, min_size=2, max_size=4, unique=True),
       st.text(st.sampled_from("ABab.-:0123456789[]%xn-\u00df\u0430\u3002\uff0e"), max_size=16))
def test_no_spelling_reaches_another_hosts_route(hosts: list[str], junk: str) -> None:
    table = _table(hosts)
    for host in hosts:
        for candidate in (host + junk, junk + host, host.replace(".", junk, 1)):
            try:
                canonical = normalise_host(candidate)
            except InvalidHost:
                continue
            entry = table.for_host(canonical)
            # A name that routes anywhere routes to the host it canonically is.
            assert entry is None or entry.pattern == canonical, (candidate, canonical)


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=6), st.integers(1, 65535))
def test_ipv6_spellings_agree(address: object, port: int) -> None:
    text = str(address)
    canonical = normalise_host(f"[{text}]")
    assert normalise_host(f"[{text.upper()}]:{port}") == canonical
    assert normalise_host(canonical if ":" not in canonical else f"[{canonical}]") == canonical

"""The JSON access-log line filled into a template (issue #15) is byte for
byte what ``json.dumps(entry_of(item), separators=(",", ":"))`` wrote
before: the oracle below is that old formatter, kept as it was.

Invariant: for every input, hostile ones included (control characters,
quotes, backslashes, U+2028, lone surrogates from non-UTF-8 names, non-ASCII
method bytes, very long values, odd numbers: NaN, infinities, huge and
negative values, ints where floats are expected, bool), the new line equals
the oracle's, and the per-object fragment caches never serve one object's
text for another's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from certgate import accesslog
from certgate.accesslog import _Clock, _duration_ms, _Fragments, _Pending, entry_of, json_line
from certgate.config.schema import ClientAuth, Route, Upstream
from certgate.proxy.info import ConnectionInfo


def oracle(item: _Pending) -> str:
    return json.dumps(entry_of(item, _Clock()), separators=(",", ":"))


@dataclass(frozen=True)
class FakeIdentity:
    """The three fields the log reads from a ClientIdentity."""

    cn: Any
    serial_hex: Any
    fingerprint: Any


@dataclass(frozen=True)
class FakeRequest:
    """An h11.Request as the log reads it; bytes h11 itself would refuse
    reach the formatter only through a bug, but must still format alike."""

    method: bytes
    target: bytes


@dataclass(frozen=True)
class FakeAdmitted:
    route: Route
    host: Any
    path: Any


# Every code point, surrogates too (what surrogateescape makes of non-UTF-8).
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None,
                         exclude_categories=())
HOSTILE = st.sampled_from(['"', "\\", "\n", "\r", "\x00", "\x1f", "\x7f", "\u2028",
                           "\u2029", "\udcff", "\ud800", "\ufffd", "é", "😀", "/enroll/",
                           "/Enroll/", "%2f", "nroll", "</script>"])
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    st.lists(st.one_of(HOSTILE, st.text(max_size=5)), max_size=12).map("".join),
    # very long values, made by repetition (drawing 5,000 characters one by
    # one would make each example slow)
    st.tuples(st.text(st.sampled_from("ab\"\\\u2028\x01"), min_size=1, max_size=4),
              st.integers(500, 2000)).map(lambda t: t[0] * t[1]),
)
ASCII = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 200, 404, 502, True, False]),
)
DURATION = st.one_of(
    st.floats(min_value=0, max_value=120, allow_nan=False),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.0005, 0.0015, 0.0025, 999_999.9999995, 1e6 - 1e-7, 1e6,
                     1e-9, -1e-9, 5e-7, 0.1234565]),
    st.integers(min_value=-(10**9), max_value=10**9),
)

INFOS = st.builds(ConnectionInfo, st.just("127.0.0.1:8443"), TEXT,
                  st.one_of(st.none(), TEXT), st.sampled_from(list(ClientAuth)))
IDENTITIES = st.one_of(st.none(), st.builds(FakeIdentity, TEXT, TEXT, TEXT))
UPSTREAMS = st.one_of(
    st.builds(Upstream, st.sampled_from(["http", "https"]), st.one_of(ASCII, TEXT),
              st.integers(0, 65535)),
    st.builds(Upstream, st.sampled_from(["whoami", "enroll", "console"])),
)
ROUTES = st.builds(Route, st.one_of(ASCII, TEXT), UPSTREAMS, st.one_of(ASCII, TEXT))
REQUESTS = st.one_of(st.none(), st.builds(FakeRequest, st.binary(max_size=20),
                                          st.binary(max_size=60)))
ADMITTED = st.one_of(st.none(), st.builds(FakeAdmitted, ROUTES, TEXT, TEXT))


@st.composite
def items(draw: st.DrawFn) -> _Pending:
    return _Pending(draw(st.floats(0, 4e9)), draw(INFOS), draw(IDENTITIES),
                    draw(REQUESTS), draw(ADMITTED), draw(NUMBER), draw(NUMBER),
                    draw(NUMBER), draw(DURATION), draw(st.one_of(st.none(), TEXT)))


def same_or_same_error(item: _Pending, fragments: _Fragments) -> None:
    try:
        expected = oracle(item)
    except Exception as exc:  # e.g. an int too long for str(): both must refuse
        try:
            json_line(item, _Clock(), fragments)
        except type(exc):
            return
        raise AssertionError(f"the oracle raised {exc!r}, the template did not") from exc
    assert json_line(item, _Clock(), fragments) == expected


@settings(max_examples=600, deadline=None)
@given(items())
def test_every_line_matches_json_dumps(item: _Pending) -> None:
    same_or_same_error(item, _Fragments())


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_shared_fragments_never_mix_objects(data: st.DataObject) -> None:
    """Lines drawn from small pools of connections, certificates and routes,
    formatted with one fragment cache (hits, misses, and a cache emptied at
    its limit) each still equal the oracle."""
    infos = data.draw(st.lists(INFOS, min_size=1, max_size=3))
    identities = data.draw(st.lists(IDENTITIES, min_size=1, max_size=3))
    admitted = data.draw(st.lists(ADMITTED, min_size=1, max_size=3))
    fragments = _Fragments()
    fragments.LIMIT = data.draw(st.integers(1, 4))  # type: ignore[misc]
    for _ in range(data.draw(st.integers(1, 6))):
        base = data.draw(items())
        item = base._replace(info=data.draw(st.sampled_from(infos)),
                             identity=data.draw(st.sampled_from(identities)),
                             admitted=data.draw(st.sampled_from(admitted)))
        same_or_same_error(item, fragments)


def test_fresh_objects_at_a_reused_address_get_their_own_text() -> None:
    """A cached entry holds its object, so a new certificate can never be
    handed the text of one that was freed at the same address."""
    fragments = _Fragments()
    seen = set()
    for n in range(50):
        identity = FakeIdentity(f"cn{n}", f"{n:x}", "ab" * 32)
        text = fragments.identity(identity)  # type: ignore[arg-type]
        assert f'"cn":"cn{n}"' in text
        seen.add(text)
        del identity
    assert len(seen) == 50


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.floats(min_value=0, max_value=1e6 + 1),
                 st.floats(min_value=0, max_value=1e-2),
                 st.integers(0, 10**12).map(lambda n: n / 1e6),
                 st.floats()))
def test_duration_matches_round_and_repr(duration: float) -> None:
    assert _duration_ms(duration) == json.dumps(round(duration * 1000, 3))


def test_duration_ties_and_edges() -> None:
    """Values at the rounding boundaries, where a fast formatting could
    disagree with round(): half-way decimals that binary cannot hold."""
    for micro in range(0, 3_000_000, 7):
        duration = micro / 1e9 + 5e-7
        assert _duration_ms(duration) == json.dumps(round(duration * 1000, 3))
    for value in (math.inf, -math.inf, math.nan, -0.0, 1e6, 1e6 - 5e-7, 2**53, 0):
        assert _duration_ms(value) == json.dumps(round(value * 1000, 3))


def test_a_realistic_line_is_unchanged() -> None:
    route = Route("app.example", Upstream("http", "::1", 9000), "/api")
    item = _Pending(1_800_000_000.25,
                    ConnectionInfo("l", "192.0.2.7", "app.example", ClientAuth.REQUIRE),
                    FakeIdentity("Ann \u2028 \"x\"", "1f", "ab" * 32),  # type: ignore[arg-type]
                    FakeRequest(b"GET", b"/enroll/SECRET?x=1"),  # type: ignore[arg-type]
                    FakeAdmitted(route, "app.example", "/enroll/SECRET"),  # type: ignore[arg-type]
                    200, 10, 2, 0.0123456, "via /enroll/SECRET")
    line = json_line(item, _Clock(), _Fragments())
    assert line == oracle(item)
    assert "SECRET" not in line
    assert '"upstream":"http://[::1]:9000"' in line
    assert accesslog.QUEUE_LINES > 0

"""normalise_host / normalise_pattern / HostTable: one canonical spelling per host.

Property checked by hypothesis: whatever normalise_host accepts comes out as
lowercase ASCII made of labels, an IPv4 dotted quad or a compressed IPv6
address, and normalising that output again changes nothing.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certgate.hostnames import (
    HostTable,
    InvalidHost,
    is_ip_literal,
    normalise_host,
    normalise_pattern,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("example.com:443", "example.com"),
        ("EXAMPLE.com.:8443", "example.com"),
        ("localhost", "localhost"),
        ("a-b_c.example", "a-b_c.example"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::1]:8443", "::1"),
        ("::1", "::1"),
        ("[2001:DB8:0:0:0:0:0:1]", "2001:db8::1"),
        ("[::ffff:192.0.2.1]", "::ffff:c000:201"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.Example:443", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("straße.example", "strasse.example"),  # IDNA2003 maps ß to ss
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("example\u3002com", "example.com"),  # ideographic full stop separates labels
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        (".".join(["a" * 61] * 4) + ".x", ".".join(["a" * 61] * 4) + ".x"),  # 253 chars
        ("host:00443", "host"),
    ],
)
def test_normalise_host_accepts(raw: str, expected: str) -> None:
    assert normalise_host(raw) == expected
    assert normalise_host(expected) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        (".", "empty"),
        ("example.com..", "empty label"),
        ("a..b", "empty label"),
        (".example.com", "empty label"),
        (" example.com", "whitespace"),
        ("exa mple.com", "whitespace"),
        ("example.com\t", "whitespace"),
        ("exa\x00mple.com", "control"),
        ("exa\x7fmple.com", "control"),
        ("exa\u0085mple.com", "control"),
        ("example.com/evil", "'/'"),
        ("user@example.com", "'@'"),
        ("example.com\\x", "'\\\\'"),
        ("example.com?x", "'?'"),
        ("example.com#x", "'#'"),
        ("exa%41mple.com", "'%'"),
        ("*.example.com", "'*'"),
        ("example.com:", "not a number"),
        ("example.com:http", "not a number"),
        ("example.com:-1", "not a number"),
        ("example.com:+80", "not a number"),
        ("example.com:٤٤٣", "not a number"),  # Arabic-Indic digits
        ("example.com:0", "out of range"),
        ("example.com:65536", "out of range"),
        ("example.com:123456", "not a number"),
        ("a:b:c", "brackets"),
        ("[::1", "unterminated"),
        ("[::1]x", "junk"),
        ("[::1]:", "not a number"),
        ("[example.com]", "invalid IPv6"),
        ("[fe80::1%25eth0]", "'%'"),
        ("[1.2.3.4]", "invalid IPv6"),
        ("a" * 64 + ".example", "label longer than 63"),
        (".".join(["a" * 63] * 4), "longer than 253"),
        ("a" * 5000, "too long"),
        ("exa!mple.com", "invalid character"),
        ("exa$mple.com", "invalid character"),
        ("[::1]]", "junk"),
        ("1.2.3", "numeric host"),
        ("256.1.1.1", "numeric host"),
        ("01.2.3.4", "numeric host"),
        ("0x7f.1", "numeric host"),
        ("example.123", "numeric host"),
        ("a\u200eb.example", "internationalised"),  # bidi mark: prohibited by nameprep
        ("a\uff0fb.example", "invalid character"),  # fullwidth solidus maps to "/"
    ],
)
def test_normalise_host_rejects(raw: str, reason: str) -> None:
    with pytest.raises(InvalidHost) as info:
        normalise_host(raw)
    assert re.search(re.escape(reason), str(info.value)), str(info.value)


def test_invalid_host_is_a_value_error() -> None:
    assert issubclass(InvalidHost, ValueError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("*", "*"),
        ("*.Example.COM.", "*.example.com"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        ("Example.com", "example.com"),
        ("[::1]", "::1"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_normalise_pattern_accepts(raw: str, expected: str) -> None:
    assert normalise_pattern(raw) == expected
    assert normalise_pattern(expected) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "example.com:443",
        "*.example.com:443",
        "[::1]:443",
        "a.*.example.com",
        "*a.example.com",
        "**.example.com",
        "*.*.example.com",
        "*.",
        "*..example.com",
        "*.0.0.1",
        "*.[::1]",
        "",
    ],
)
def test_normalise_pattern_rejects(raw: str) -> None:
    with pytest.raises(InvalidHost):
        normalise_pattern(raw)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("2001:db8::1", True),
        ("example.com", False),
        ("1.2.3", False),
        ("fe80::1%eth0", False),
        ("", False),
        ("[example]", False),
        ("١٢٧.0.0.1", False),
    ],
)
def test_is_ip_literal(host: str, expected: bool) -> None:
    assert is_ip_literal(host) is expected


# -- HostTable ----------------------------------------------------------------


TABLE = HostTable(
    [
        ("example.com", "apex"),
        ("*.example.com", "wild"),
        ("api.example.com", "api"),
        ("*.b.example.com", "deep-wild"),
        ("10.0.0.1", "ip"),
        ("::1", "ip6"),
    ]
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", "apex"),
        ("api.example.com", "api"),  # exact beats wildcard
        ("a.example.com", "wild"),
        ("a.b.example.com", "deep-wild"),
        ("x.a.example.com", None),  # one label only
        ("b.example.com", "wild"),
        ("example.org", None),
        ("com", None),
        ("10.0.0.1", "ip"),
        ("::1", "ip6"),
        ("", None),
    ],
)
def test_host_table_lookup(host: str, expected: str | None) -> None:
    assert TABLE.lookup(host) == expected


def test_host_table_catch_all() -> None:
    table = HostTable([("*", "default"), ("*.example.com", "wild"), ("example.com", "apex")])
    assert table.lookup("example.com") == "apex"
    assert table.lookup("a.example.com") == "wild"
    assert table.lookup("a.b.example.com") == "default"
    assert table.lookup("other.test") == "default"
    assert table.lookup("192.0.2.1") == "default"
    assert len(table) == 3


def test_host_table_catch_all_value_may_be_falsy() -> None:
    table: HostTable[int] = HostTable([("*", 0)])
    assert table.lookup("anything") == 0


def test_empty_host_table() -> None:
    table: HostTable[str] = HostTable([])
    assert table.lookup("example.com") is None
    assert len(table) == 0


@pytest.mark.parametrize(
    "entries",
    [
        [("example.com", 1), ("example.com", 2)],
        [("*.example.com", 1), ("*.example.com", 2)],
        [("*", 1), ("*", 2)],
    ],
)
def test_host_table_rejects_duplicates(entries: list[tuple[str, int]]) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        HostTable(entries)


@pytest.mark.parametrize(
    "pattern", ["Example.com", "example.com.", "bücher.example", "[::1]", "a..b", "example.com:80"]
)
def test_host_table_rejects_unnormalised_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        HostTable([(pattern, 1)])


# -- properties ---------------------------------------------------------------

_CANONICAL = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")

_PIECES = [*"aZ09-_.:[]%/@\\ *ßüÜ例\u3002\u00ad\u200d\uff0f", "xn--", "::", "443", "1.2"]
host_like = st.lists(st.sampled_from(_PIECES), max_size=20).map("".join) | st.text(max_size=20)


@settings(max_examples=500, deadline=None)
@given(host_like)
def test_normalise_host_output_is_canonical_and_idempotent(raw: str) -> None:
    try:
        host = normalise_host(raw)
    except InvalidHost:
        return
    assert host.isascii()
    assert host == host.lower()
    assert len(host) <= 253
    assert is_ip_literal(host) or _CANONICAL.fullmatch(host), host
    assert normalise_host(host) == host
    assert normalise_pattern(host) == host


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z0-9]{1,5}", fullmatch=True), min_size=1, max_size=4),
    st.from_regex(r"[a-z]{1,5}", fullmatch=True),
)
def test_wildcard_matches_exactly_one_label(labels: list[str], first: str) -> None:
    parent = ".".join([*labels, "test"])
    table = HostTable([("*." + parent, "hit")])
    assert table.lookup(f"{first}.{parent}") == "hit"
    assert table.lookup(parent) is None
    assert table.lookup(f"x.{first}.{parent}") is None

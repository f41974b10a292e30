"""Properties of the path normaliser, stated against what an upstream does.

test_target.py checks the *shape* of normalise_path's output. This file checks
its *meaning*: the policy judges the normalised path, but the upstream decodes
it again, and different stacks decode differently. For every path the
normaliser accepts, these invariants must hold:

1. Idempotent: ``normalise_path(normalise_path(p)) == normalise_path(p)``.
2. Clean: starts with ``/``; no empty, ``.`` or ``..`` segment; no NUL or
   other control byte, raw or encoded; no encoded ``/`` or ``\\``; only
   printable ASCII.
3. One meaning: every upstream view below, applied to the normalised path,
   yields a path with the same segments as the normalised path itself (after
   the same view). In particular a path the router files under ``/public``
   is under ``/public`` for the upstream, and a path it does not file under
   ``/admin`` is not ``/admin`` for the upstream. Views modelled (each
   decodes percent-escapes exactly once; double decoding is out of scope, see
   target.py):

   * ``rfc``: decode, then remove dot segments and empty segments
     (Go's ``path.Clean``, Starlette/Werkzeug, Node's URL).
   * ``servlet``: strip ``;parameters`` from each segment, then decode, then
     resolve dots (Tomcat's order).
   * ``decode-then-strip``: decode first, then strip ``;parameters``, then
     resolve dots (frameworks that decode the whole path first, the order
     behind Jetty CVE-2021-34429 and Spring's ``%3B`` firewall rule).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from certgate.http.target import BadTarget, normalise_path

_TOKENS = [
    "/", "//", ".", "..", "...", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "%00",
    "%0a", "%7f", "%3b", "%3B", ";", ";x", ";..", "%3b..", "=", "a", "admin", "public", "Admin",
    "%61dmin", "%41", "%25", "%252e", "%", "%z", "%c3%a9", "\\", "|", "~", "-", "_", ":", "@",
    "%20", "+", "%40", "%2c", ",", "%3f", "%23",
]  # fmt: skip

paths = st.lists(st.sampled_from(_TOKENS), max_size=16).map(lambda t: "/" + "".join(t))
printable_paths = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(lambda t: "/" + t)


def _resolve(segments: list[str]) -> list[str] | None:
    """RFC 3986 s.5.2.4 on segments plus empty-segment merging; None = climbs above root."""
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if not out:
                return None
            out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    return out


def _strip_params(segment: str) -> str:
    return segment.partition(";")[0]


def _segments(path: str, kind: str) -> list[str]:
    """The segments ``kind`` sees in ``path``, before it resolves dot segments."""
    raw = path.split("/")[1:]
    if kind == "rfc":
        return [unquote(s, errors="surrogateescape") for s in raw]
    if kind == "servlet":
        return [unquote(_strip_params(s), errors="surrogateescape") for s in raw]
    assert kind == "decode-then-strip"
    return [_strip_params(s) for s in unquote(path, errors="surrogateescape").split("/")[1:]]


def _view(path: str, kind: str) -> list[str] | None:
    """The path ``kind`` finally acts on, as segments; None if it climbs above the root."""
    return _resolve(_segments(path, kind))


VIEWS = ("rfc", "servlet", "decode-then-strip")


def _check_clean(path: str) -> None:
    assert path.startswith("/"), path
    assert path.isascii(), path
    assert path.isprintable(), path
    assert "\x00" not in path
    segments = path.split("/")[1:]
    # Only the last segment may be empty (a kept trailing slash), and only
    # when the path is more than "/".
    for segment in segments[:-1]:
        assert segment, path
    for segment in segments:
        assert _strip_params(segment) not in (".", ".."), path
    assert not re.search(r"%(2f|5c|[01][0-9a-f]|7f)", path, re.IGNORECASE), path


def _under(segments: list[str], prefix: str) -> bool:
    want = prefix.strip("/").split("/")
    return segments[: len(want)] == want


@settings(max_examples=1500, deadline=None)
@given(paths | printable_paths)
@example("/public/..%3B/admin")
@example("/public/..%3b/admin")
@example("/public/%2e%2e%3b/admin")
@example("/public/.%3B/x")
def test_normalised_path_is_idempotent_clean_and_means_one_thing(raw: str) -> None:
    try:
        path = normalise_path(raw)
    except BadTarget:
        return
    assert normalise_path(path) == path
    _check_clean(path)
    for kind in VIEWS:
        # The upstream finds nothing to resolve: no view reads a dot or an
        # empty segment into the path certgate judged, so no view climbs or
        # lands elsewhere.
        literal = [s for s in _segments(path, kind) if s]
        assert _view(path, kind) == literal, (kind, raw, path)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(["/public/", "/public/x/"]), paths)
def test_a_path_judged_under_public_is_never_admin_upstream(prefix: str, tail: str) -> None:
    try:
        path = normalise_path(prefix + tail.lstrip("/"))
    except BadTarget:
        return
    judged = path.split("/")[1:]
    for kind in VIEWS:
        seen = _view(path, kind)
        assert seen is not None, (kind, path)
        if _under(judged, "/public"):
            assert _under([_strip_params(s) for s in seen], "/public"), (kind, path, seen)
        assert not _under([_strip_params(s) for s in seen], "/admin") or \
            _under([_strip_params(s) for s in judged], "/admin"), (kind, path, seen)


@pytest.mark.parametrize("raw", [
    "/public/..%3B/admin", "/public/..%3b/admin", "/public/%2e%2e%3Bx/admin", "/public/.%3B/x",
])
def test_dot_segment_with_encoded_parameters_is_refused(raw: str) -> None:
    """Regression (found by the property above): ``..%3B`` is ``..;`` to an
    upstream that decodes before it strips parameters, so ``/public/..%3B/admin``
    is ``/admin`` there while certgate judged ``/public/..%3B/admin``."""
    with pytest.raises(BadTarget, match="dot segment"):
        normalise_path(raw)

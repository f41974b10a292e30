"""Reference readers for certgate's identity headers, written from the specs.

They are the tests' oracle, so they are written from Envoy's description of
``X-Forwarded-Client-Cert`` and from certgate's documented ``X-Client-SAN``
rule, never from certgate's encoder: elements split on unquoted ``,``,
pairs on unquoted ``;``, ``key=value``, double-quoted values with ``\\"``
and ``\\\\`` unescaped, a quote counting as a delimiter only after an even
number of backslashes (as Envoy's own ``xfcc_value`` formatter reads it),
then each value percent-decoded as certgate documents.
"""

from __future__ import annotations

from urllib.parse import unquote


def _split_unquoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes; a quote preceded by an odd
    number of backslashes is escaped (Envoy's ``countBackslashes`` rule)."""
    parts: list[str] = []
    start = 0
    in_quotes = False
    backslashes = 0
    for i, ch in enumerate(text):
        if ch == '"' and backslashes % 2 == 0:
            in_quotes = not in_quotes
        elif ch == sep and not in_quotes:
            parts.append(text[start:i])
            start = i + 1
        backslashes = backslashes + 1 if ch == "\\" else 0
    if in_quotes:
        raise ValueError(f"unmatched quote in {text!r}")
    parts.append(text[start:])
    return parts


def _unescape(raw: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw) and raw[i + 1] in '"\\':
            out.append(raw[i + 1])
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def parse_xfcc(value: str) -> list[list[tuple[str, str]]]:
    """Elements of pairs (key as sent, value unquoted, unescaped, percent-decoded)."""
    elements = []
    for element in _split_unquoted(value, ","):
        pairs = []
        for pair in _split_unquoted(element, ";"):
            key, eq, raw = pair.partition("=")
            assert eq, f"pair without '=': {pair!r}"
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1]
            pairs.append((key.strip(), unquote(_unescape(raw), errors="strict")))
        elements.append(pairs)
    return elements


def parse_san_header(value: str) -> list[str]:
    """X-Client-SAN as documented: split on ',', trim, percent-decode each entry."""
    if not value:
        return []
    return [unquote(entry.strip(), errors="strict") for entry in value.split(",")]

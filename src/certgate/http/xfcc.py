"""Envoy's ``X-Forwarded-Client-Cert`` element for one verified certificate.

Envoy's format (``configuration/http/http_conn_man/headers`` in Envoy's
docs): the header is a ``,``-separated list of elements, one per proxy; an
element is ``;``-separated ``Key=value`` pairs; a value containing ``,``,
``;`` or ``=`` is double-quoted, with ``"`` written ``\\"``. Envoy's own
reader (the ``xfcc_value`` formatter) also unescapes ``\\\\`` and treats a
``"`` after an odd number of backslashes as escaped, so ``\\`` is escaped
too. certgate writes the keys ``Hash``, ``Cert``, ``Subject``, then one
``URI`` per URI SAN, then one ``DNS`` per DNS SAN (each in certificate
order, as in Envoy's examples), and never ``By`` (certgate has no SPIFFE
ID of its own to put there).

Certificate values are attacker-chosen bytes (any CA you trust may sign a
DNS SAN ``a.test;URI=spiffe://.../admin``), so every value goes through one
rule, and the element reads back to exactly the certificate's values:

1. percent-escape (UTF-8) ``%``, control bytes, DEL and non-ASCII: a header
   is one line of visible ASCII (``Cert`` is URL-encoded PEM, as Envoy
   writes it, which is the same rule applied to the PEM);
2. double-quote the result if it contains ``,``, ``;``, ``=``, ``"``,
   ``\\`` or a space, or is empty, escaping ``"`` and ``\\`` with ``\\``;
   ``Subject`` is always quoted, as in Envoy.

A reader unquotes (step 2 backwards) and percent-decodes (step 1). Ordinary
values (hex hashes, LDH DNS names, SPIFFE IDs) need neither step, so they
look exactly as Envoy would write them.
"""

from __future__ import annotations

from urllib.parse import quote

from certgate.tls.identity import ClientIdentity, percent_encode

__all__ = ["xfcc_element", "xfcc_value"]

# Step 1 keeps visible ASCII and space raw, except '%' (the escape itself).
_RAW = frozenset(range(0x20, 0x7F)) - {ord("%")}
# Step 2: any of these, anywhere in the value, makes it quoted.
_NEEDS_QUOTES = frozenset(',;="\\ ')


def xfcc_value(text: str, *, always_quote: bool = False) -> str:
    """One XFCC value: percent-escaped, then quoted when it must be."""
    value = percent_encode(text, _RAW)
    if always_quote or not value or not _NEEDS_QUOTES.isdisjoint(value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def xfcc_element(identity: ClientIdentity, pem: str) -> bytes:
    """The XFCC element for ``identity`` (``pem`` is its certificate as PEM).

    The result is visible ASCII only, ready to be a header value as is (it
    must not go through ``escape_value`` again: that would escape the
    ``%`` of step 1 a second time).
    """
    parts = [
        f"Hash={identity.fingerprint}",
        f"Cert={quote(pem, safe='')}",
        f"Subject={xfcc_value(identity.dn, always_quote=True)}",
    ]
    for key, prefix in (("URI", "URI:"), ("DNS", "DNS:")):
        parts += [f"{key}={xfcc_value(san[len(prefix):])}"
                  for san in identity.sans if san.startswith(prefix)]
    return ";".join(parts).encode("ascii")

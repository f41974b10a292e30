"""The default name of a new CA: one a person can tell apart from the others.

Key pickers (Chromium's, Android's, iOS's) show a certificate by its
issuer's common name. Every CA used to be "certgate CA", so two
certgate-issued certificates on one phone looked the same. The default now
adds the short host name the CA was made on and a random tag:
``certgate CA nas 3f9a``. ``ca init --name`` still wins.

The name becomes the root's and intermediates' organisation and, with
" Root R1" or " Issuing I12" appended, their common names; X.509 bounds both
at 64 characters (RFC 5280, ub-common-name), so the default stays short
enough that the suffix and the tag are never cut off.
"""

from __future__ import annotations

import re
import secrets
import socket

PREFIX = "certgate CA"
#: Room left for " Issuing I1234" / " Root R1234" inside the 64-character CN.
MAX_DEFAULT_LENGTH = 64 - len(" Issuing I1234")
# Host names are not always tame (a container's can be anything the runtime
# was given); only letters, digits and '-' go into a certificate subject.
_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")


def short_host(hostname: str) -> str:
    """The first label of ``hostname``, reduced to letters, digits and '-'."""
    first = hostname.strip().split(".", 1)[0]
    return _UNSAFE.sub("", first).strip("-")


def default_ca_name(hostname: str | None = None) -> str:
    """``certgate CA <short host> <4 hex>``, at most MAX_DEFAULT_LENGTH characters."""
    host = short_host(socket.gethostname() if hostname is None else hostname)
    tag = secrets.token_hex(2)
    room = MAX_DEFAULT_LENGTH - len(PREFIX) - len(tag) - 2  # two separating spaces
    host = host[:room].rstrip("-")
    return " ".join(part for part in (PREFIX, host, tag) if part)

"""What a state-changing console request must show (pure; issue #14).

Theory of operation
-------------------
The console is authenticated by the TLS client certificate alone: no
password, no cookie. A browser sends that certificate with *every* request
to the origin, including one a hostile page makes it send (a cross-site form
POST), so each state change also needs proof that it came from the console's
own page:

* a CSRF token in the form: ``ISSUED-MAC``, the Unix time the page was made
  and HMAC-SHA256 under a secret kept in the state directory over that time
  and the admin certificate's SHA-256 fingerprint. It is useless with any
  other certificate, and after :data:`TOKEN_LIFETIME` (a token copied out of
  a saved page or a screenshot does not work forever); a page of another
  origin cannot read it (no CORS, ``frame-ancestors 'none'``);
* the request's origin: ``Origin`` must be this console's own
  ``https://HOST[:PORT]``; without an ``Origin`` header, or with the opaque
  ``Origin: null``, ``Sec-Fetch-Site`` must say ``same-origin``; with
  neither, the request is refused (every browser since 2020 sends one of
  them on a form POST). ``null`` needs this fallback because the console's
  own ``Referrer-Policy: no-referrer`` makes Chromium send ``Origin: null``
  on its same-origin form POSTs (the Fetch standard's rule for that
  policy); a sandboxed frame or a ``file:`` page also sends ``null``, but
  the browser marks those ``cross-site``, which a page cannot change.

Both must pass. The secret is 32 random bytes in ``STATE/console.key``
(0600, written atomically, the first worker to need it makes it; the others
read it), so every worker and every restart accepts the same tokens.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from certgate.fsutil import atomic_write

__all__ = ["TOKEN_LIFETIME", "Verdict", "check_origin", "check_token", "csrf_token",
           "load_secret"]

SECRET_FILE = "console.key"
SECRET_BYTES = 32
#: How long a console page's forms work: a working day and then some. An
#: older page gets "reload the page", never a silent success.
TOKEN_LIFETIME = 12 * 3600
#: Workers and the clock share one machine; a little slack for a clock step.
TOKEN_FUTURE_SLACK = 300
_TOKEN = re.compile(r"([0-9]{1,12})-([0-9a-f]{64})")


def _read(path: Path) -> bytes:
    """The secret file's bytes: a regular file of ours, 0600, not a link.

    A symlink to a 32-byte file elsewhere, or a file others can read, would
    make every CSRF token known to someone else: refused (fail closed).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise OSError(f"{path}: a symbolic link, not a console secret; remove it") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 \
                or info.st_uid != os.geteuid():
            raise OSError(f"{path}: not a console secret (not a 0600 file of this user); "
                          "remove it")
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return stream.read(SECRET_BYTES + 1)
    finally:
        os.close(fd)


def load_secret(state_dir: Path) -> bytes:
    """The console's CSRF secret, made on first use (blocking: call off-loop)."""
    path = state_dir / SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        data = _read(path)
        if len(data) == SECRET_BYTES:
            return data
    candidate = secrets.token_bytes(SECRET_BYTES)
    # Two workers may race here; link() refuses to replace an existing file,
    # so exactly one secret wins and both read it back.
    staging = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    atomic_write(staging, candidate, mode=0o600)
    try:
        os.link(staging, path)
    except FileExistsError:
        pass
    finally:
        staging.unlink(missing_ok=True)
    data = _read(path)
    if len(data) != SECRET_BYTES:
        raise OSError(f"{path}: not a console secret ({len(data)} bytes); remove it")
    return data


def _mac(secret: bytes, fingerprint: str, issued: int) -> str:
    message = b"certgate console csrf\0%s\0%d" % (fingerprint.encode("ascii"), issued)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def csrf_token(secret: bytes, fingerprint: str, now: float) -> str:
    """The token the forms of a page made at ``now`` for this admin carry."""
    issued = int(now)
    return f"{issued}-{_mac(secret, fingerprint, issued)}"


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str = ""


def check_token(secret: bytes, fingerprint: str, sent: str | None, now: float) -> Verdict:
    """Whether ``sent`` is a token this admin's page got in the last
    :data:`TOKEN_LIFETIME` seconds. The reason never quotes the token."""
    match = _TOKEN.fullmatch(sent or "")
    if match is None:
        return Verdict(False, "CSRF token missing or wrong: reload the page and try again")
    issued = int(match.group(1))
    if not hmac.compare_digest(_mac(secret, fingerprint, issued), match.group(2)):
        return Verdict(False, "CSRF token missing or wrong: reload the page and try again")
    # Judged only once the MAC holds: a forged time learns nothing.
    if issued > now + TOKEN_FUTURE_SLACK:
        return Verdict(False, "CSRF token from the future (has the clock stepped back?): "
                              "reload the page and try again")
    if now - issued > TOKEN_LIFETIME:
        return Verdict(False, f"CSRF token expired (a page's forms work for "
                              f"{TOKEN_LIFETIME // 3600} hours): reload the page and try again")
    return Verdict(True)


def _origin_of(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.endswith(":443"):
        host = host[:-4]
    return f"https://{host}"


def check_origin(host_header: bytes | None, origin: bytes | None,
                 fetch_site: bytes | None) -> Verdict:
    """Whether a POST comes from this console's own pages."""
    if host_header is None:
        return Verdict(False, "no Host header")
    try:
        own = _origin_of(host_header.decode("ascii"))
    except UnicodeDecodeError:
        return Verdict(False, "a Host header that is not ASCII")
    if origin is not None:
        try:
            sent = origin.decode("ascii").strip().lower()
        except UnicodeDecodeError:
            return Verdict(False, "an Origin header that is not ASCII")
        if sent.endswith(":443"):
            sent = sent[:-4]
        if sent == own:
            return Verdict(True)
        if sent != "null":
            return Verdict(False, "a request from another origin")
        if fetch_site is None:
            return Verdict(False, "Origin: null without Sec-Fetch-Site")
    if fetch_site is not None:
        if fetch_site.strip().lower() == b"same-origin":
            return Verdict(True)
        return Verdict(False, "a request from another site (Sec-Fetch-Site)")
    return Verdict(False, "a request without Origin or Sec-Fetch-Site")

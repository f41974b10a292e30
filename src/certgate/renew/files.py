"""The certificate and key files ``certgate renew`` replaces, crash-safely.

``ca issue`` and ``certgate enroll`` write three files for a device:
``NAME.chain.pem`` (leaf + issuing CA), ``NAME.crt`` (leaf only) and
``NAME.key``. Renew is given one certificate file and the key; the other
certificate file (a *companion*: same stem as ``--cert`` or the key) is
rewritten too, or it would keep the superseded certificate beside the new
key. Only a companion that holds exactly the old certificate (the old leaf
first, nothing but PEM certificates) is touched; each certificate file keeps
its shape (leaf only stays leaf only) and its mode.

Several files must change together, and no rename swaps two files at once.
So the new files are staged next to the old ones and moved in a fixed order,
and whatever a crash leaves behind is finished (or dropped) on the next run
by :func:`recover`, before anything else reads the files:

1. ``KEY.next`` (0600): the new private key, written *before* the request.
   If the answer is lost, the next run asks again with this same key and
   the CA returns the certificate it already issued for it
   (:mod:`certgate.ca.renewal`).
2. ``COMPANION.next`` for each companion, then ``CERT.next``: the new
   certificates, written once the chain has been verified. ``CERT.next``
   is written last: it is the commit mark. A failure before it removes the
   staged certificates and leaves all old files as they were.
3. ``KEY.next`` -> ``KEY``, ``CERT.next`` -> ``CERT``, then each
   ``COMPANION.next`` -> ``COMPANION`` (renames), then the directories are
   fsynced.

After a crash: both staged files matching -> step 3 is redone; ``KEY`` new
and ``CERT.next`` matching it -> the second rename is redone; a lone
``KEY.next`` is kept for the next request; a ``CERT.next`` that matches no
key is deleted. Then a ``COMPANION.next`` for the (now) current key is moved
in and any other is deleted (staged before the commit mark: the old files
stay). The old files are never touched before step 3.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from certgate.errors import CertgateError
from certgate.fsutil import PRIVATE_FILE_MODE, atomic_write, fsync_dir

__all__ = ["CertFile", "CertPair", "Companions", "RenewError", "companions", "install",
           "load_pair", "pending_key", "recover", "staged"]

#: The names ``ca issue`` and ``certgate enroll`` give a device's files.
CHAIN_SUFFIX = ".chain.pem"
LEAF_SUFFIX = ".crt"
KEY_SUFFIX = ".key"
#: A chain file is a few KB; anything larger is not ours.
MAX_FILE = 256 * 1024


class RenewError(CertgateError):
    """Renewal failed; the old certificate and key are unchanged."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class CertPair:
    chain: tuple[x509.Certificate, ...]  # leaf first
    key: PrivateKeyTypes

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def staged(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE + 1)
    except OSError as exc:
        raise RenewError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE:
        raise RenewError(f"{path} is larger than {MAX_FILE} bytes: not a certificate or key")
    return data


def read_chain(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        chain = tuple(x509.load_pem_x509_certificates(_read(path)))
    except ValueError:
        raise RenewError(f"{path} holds no PEM certificate") from None
    return chain


def read_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError):
        # The parser's message could carry key material; keep it out.
        raise RenewError(f"{path} holds no unencrypted PEM private key") from None


def _public(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    return _public(cert) == _public(key)


def load_pair(cert_path: Path, key_path: Path) -> CertPair:
    """The current chain and key; they must belong together."""
    chain = read_chain(cert_path)
    key = read_key(key_path)
    if not matches(chain[0], key):
        raise RenewError(f"the key in {key_path} does not belong to the certificate in "
                         f"{cert_path}")
    return CertPair(chain, key)


@dataclass(frozen=True, slots=True)
class CertFile:
    """A certificate file to rewrite: where, in which shape, with which mode."""

    path: Path
    leaf_only: bool  # it held the leaf alone (NAME.crt), not a chain
    mode: int  # kept: a user who made it 0640 did so on purpose

    @classmethod
    def of(cls, path: Path, held: Sequence[x509.Certificate]) -> CertFile:
        return cls(path, len(held) == 1, stat.S_IMODE(path.stat().st_mode))

    def render(self, chain: Sequence[x509.Certificate]) -> bytes:
        kept = chain[:1] if self.leaf_only else chain
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kept)


@dataclass(frozen=True, slots=True)
class Companions:
    rewrite: tuple[CertFile, ...]  # they hold the old certificate
    left_alone: tuple[Path, ...]  # they exist and hold something else


def companion_paths(cert_path: Path, key_path: Path) -> list[Path]:
    """NAME.crt and NAME.chain.pem for the stems of ``--cert`` and the key, but
    not those two files themselves."""
    stems: list[Path] = []
    for path, suffix in ((cert_path, CHAIN_SUFFIX), (cert_path, LEAF_SUFFIX),
                         (key_path, KEY_SUFFIX)):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            stems.append(path.with_name(path.name[:-len(suffix)]))
    found: list[Path] = []
    for stem in stems:
        for suffix in (LEAF_SUFFIX, CHAIN_SUFFIX):
            path = stem.with_name(stem.name + suffix)
            if path not in found and not _same(path, cert_path) and not _same(path, key_path):
                found.append(path)
    return found


def _same(a: Path, b: Path) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _only_certificates(path: Path) -> tuple[x509.Certificate, ...] | None:
    """The certificates in ``path`` if it holds PEM certificates and nothing
    else (no key, no text a person added), else None."""
    try:
        chain = read_chain(path)
    except RenewError:
        return None
    ours = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    theirs = _read(path)
    return chain if b"".join(theirs.split()) == b"".join(ours.split()) else None


def companions(cert_path: Path, key_path: Path, old_leaf: x509.Certificate) -> Companions:
    """The companion files to rewrite with the new certificate, and those left alone.

    Only a regular file whose first certificate is exactly ``old_leaf`` is
    rewritten: a symlink, another device's certificate or a combined
    cert+key file is somebody else's business.
    """
    rewrite: list[CertFile] = []
    alone: list[Path] = []
    for path in companion_paths(cert_path, key_path):
        try:
            info = path.lstat()
        except OSError:
            continue
        held = _only_certificates(path) if stat.S_ISREG(info.st_mode) else None
        if held is None or held[0] != old_leaf:
            alone.append(path)
        else:
            rewrite.append(CertFile.of(path, held))
    return Companions(tuple(rewrite), tuple(alone))


def _drop(path: Path) -> None:
    # A staged name taken by something we cannot remove (a directory) is
    # left; the next install fails on it with a clear message.
    with contextlib.suppress(OSError):
        path.unlink()


def _fsync_dirs(*paths: Path) -> None:
    for directory in {p.resolve().parent for p in paths}:
        fsync_dir(directory)


def _try_chain(path: Path) -> tuple[x509.Certificate, ...] | None:
    try:
        return read_chain(path) if path.exists() else None
    except RenewError:
        return None


def _try_key(path: Path) -> PrivateKeyTypes | None:
    try:
        return read_key(path) if path.exists() else None
    except RenewError:
        return None


def recover(cert_path: Path, key_path: Path) -> str | None:
    """Finish or drop a replacement a crash interrupted; what was done, if anything."""
    done = _recover_pair(cert_path, key_path)
    moved = _recover_companions(cert_path, key_path)
    if moved:
        names = ", ".join(str(p) for p in moved)
        done = f"{done}; and {names}" if done else \
            f"finished replacing {names} (interrupted before)"
    return done


def _recover_pair(cert_path: Path, key_path: Path) -> str | None:
    next_cert, next_key = staged(cert_path), staged(key_path)
    chain = _try_chain(next_cert)
    if chain is None:
        if next_cert.exists():
            _drop(next_cert)
        return None
    pending = _try_key(next_key)
    if pending is not None and matches(chain[0], pending):
        os.replace(next_key, key_path)
        os.replace(next_cert, cert_path)
        _fsync_dirs(cert_path, key_path)
        return "finished replacing the certificate and key (interrupted before)"
    current = _try_key(key_path)
    if current is not None and matches(chain[0], current):
        os.replace(next_cert, cert_path)
        _fsync_dirs(cert_path)
        return "finished replacing the certificate (interrupted before)"
    _drop(next_cert)
    return None


def _recover_companions(cert_path: Path, key_path: Path) -> list[Path]:
    """Move in a staged companion for the current key (past the commit mark);
    drop any other (staged before it, for a renewal that did not happen)."""
    moved: list[Path] = []
    current: PrivateKeyTypes | None = None
    for path in companion_paths(cert_path, key_path):
        next_path = staged(path)
        if not os.path.lexists(next_path):
            continue
        chain = _try_chain(next_path) if next_path.is_file() else None
        current = current or _try_key(key_path)
        if chain is not None and current is not None and matches(chain[0], current):
            os.replace(next_path, path)
            moved.append(path)
        else:
            _drop(next_path)
    if moved:
        _fsync_dirs(*moved)
    return moved


def pending_key(key_path: Path, make: type[ec.EllipticCurve] = ec.SECP256R1
                ) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """(the key to ask with, whether it was left by an earlier attempt).

    A new P-256 key is written to ``KEY.next`` (0600, atomically) before it
    is used, so a lost answer can be asked for again with the same key.
    """
    path = staged(key_path)
    earlier = _try_key(path)
    if isinstance(earlier, ec.EllipticCurvePrivateKey) and isinstance(earlier.curve, make):
        return earlier, True
    key = ec.generate_private_key(make())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write(path, pem, mode=PRIVATE_FILE_MODE)
    return key, False


def install(key_path: Path, cert: CertFile, others: Sequence[CertFile],
            chain: Sequence[x509.Certificate]) -> list[Path]:
    """Steps 2 and 3: stage the verified chain in every file's shape, then move
    them in; the paths written. Raises RenewError, with all old files as they
    were, when staging fails."""
    next_key = staged(key_path)
    done: list[Path] = []
    try:
        for target in (*others, cert):  # cert last: CERT.next is the commit mark
            atomic_write(staged(target.path), target.render(chain), mode=target.mode)
            done.append(staged(target.path))
    except OSError as exc:
        for path in done:
            _drop(path)
        failed = staged((*others, cert)[len(done)].path)
        raise RenewError(f"cannot write {failed}: {exc.strerror or exc}; nothing was "
                         "replaced (the next run asks for the same certificate again)"
                         ) from None
    os.replace(next_key, key_path)
    os.replace(staged(cert.path), cert.path)
    for other in others:
        os.replace(staged(other.path), other.path)
    written = [cert.path, key_path, *(o.path for o in others)]
    _fsync_dirs(*written)
    return written


def discard_pending(key_path: Path) -> None:
    """Drop ``KEY.next`` when the CA will never issue for it (refused for good)."""
    with contextlib.suppress(FileNotFoundError):
        staged(key_path).unlink()

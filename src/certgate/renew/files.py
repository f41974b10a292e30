"""The certificate and key files ``certgate renew`` replaces, crash-safely.

Two files must change together, and no rename swaps two files at once. So
the new pair is staged next to the old one and moved in a fixed order,
and whatever a crash leaves behind is finished (or dropped) on the next run
by :func:`recover`, before anything else reads the files:

1. ``KEY.next`` (0600): the new private key, written *before* the request.
   If the answer is lost, the next run asks again with this same key and
   the CA returns the certificate it already issued for it
   (:mod:`certgate.ca.renewal`).
2. ``CERT.next``: the new chain, written once it has been verified.
3. ``KEY.next`` -> ``KEY``, then ``CERT.next`` -> ``CERT`` (renames), then
   the directories are fsynced.

After a crash: both staged files matching -> step 3 is redone; ``KEY`` new
and ``CERT.next`` matching it -> the second rename is redone; a lone
``KEY.next`` is kept for the next request; a ``CERT.next`` that matches no
key is deleted. The old pair is never touched before step 3.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from certgate.errors import CertgateError
from certgate.fsutil import PRIVATE_FILE_MODE, atomic_write, fsync_dir

__all__ = ["CertPair", "RenewError", "install", "load_pair", "pending_key", "recover",
           "staged"]

#: Certificates are public; the key file is 0600 like every key certgate writes.
CERT_MODE = 0o644
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
    next_cert, next_key = staged(cert_path), staged(key_path)
    chain = _try_chain(next_cert)
    if chain is None:
        if next_cert.exists():
            next_cert.unlink()
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
    next_cert.unlink()
    return None


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


def install(cert_path: Path, key_path: Path, chain_pem: bytes) -> None:
    """Steps 2 and 3: stage the verified chain, then move the pair in."""
    next_cert, next_key = staged(cert_path), staged(key_path)
    atomic_write(next_cert, chain_pem, mode=CERT_MODE)
    os.replace(next_key, key_path)
    os.replace(next_cert, cert_path)
    _fsync_dirs(cert_path, key_path)


def discard_pending(key_path: Path) -> None:
    """Drop ``KEY.next`` when the CA will never issue for it (refused for good)."""
    with contextlib.suppress(FileNotFoundError):
        staged(key_path).unlink()

"""Crash-safe file writes.

Every file certgate writes (keys, certificates, CRLs, configs it generates)
goes through :func:`atomic_write`: the data lands in a temporary file in the
same directory, is fsynced, then renamed over the target, and the directory is
fsynced so the rename itself survives a power cut. A reader therefore sees the
old file or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def fsync_dir(path: Path) -> None:
    """Flush a directory entry change (rename, create) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file.

    The file is created with ``mode`` from the start (not chmod-ed afterwards),
    so a private key is never readable by others, not even for a moment.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(directory)


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and make it 0700."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, PRIVATE_DIR_MODE)
    return directory


def make_missing_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """Create ``path`` and any missing parents, each private (0700); return them.

    Unlike :func:`ensure_private_dir` this never changes the mode of a
    directory that already exists (``--out .`` must not chmod the user's
    working directory). Raises OSError as ``mkdir`` does, e.g. when a part of
    ``path`` is a file.
    """
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    created: list[Path] = []
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by someone else
            directory.mkdir(mode=PRIVATE_DIR_MODE)
            os.chmod(directory, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask
            created.append(directory)
    return created


#: What :func:`read_input` reads of a certificate or key file someone names:
#: a bundle of thousands of certificates fits, ``/dev/zero`` does not.
MAX_INPUT_BYTES = 16 << 20


def read_input(path: str | os.PathLike[str], limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a file named on the command line, bounded and without hanging.

    A regular file or a pipe (``--key-password-file <(pass ca)``), at most
    ``limit`` bytes. The open never blocks: a FIFO nobody writes reads as
    empty instead of waiting forever; a device (``/dev/zero``) or anything
    else is refused. Errors are OSError with a ``strerror`` fit for a
    one-line message.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "it is a directory")
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISFIFO(info.st_mode)):
            raise OSError(errno.EINVAL, "not a regular file or pipe")
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        # A pipe with a writer: wait for its data (a FIFO without one has
        # already read as end of file).
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)

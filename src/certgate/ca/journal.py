"""Crash-safe publication of the files that belong to one database commit.

Theory of operation
-------------------
An operation such as ``ca issue`` produces a database row *and* files (the
client's ``NAME.crt``/``NAME.key``/``NAME.chain.pem``, a server's key, a new
CA key). A crash must leave all of them or none. The database commit is the
single point of decision; files are arranged around it:

1. Build everything in memory (keys, certificates, PKCS#12).
2. Write a journal ``STATE/ca/staging/<marker>.json`` listing, for each file,
   a staging name next to its final name (same directory, so the later
   rename is atomic). ``marker`` is the serial of the row step 4 inserts.
3. Write every file to its staging name (:func:`atomic_write`: temp file,
   fsync, rename, fsync of the directory). Nothing is visible yet.
4. COMMIT the database transaction that inserts the row with that serial.
5. Rename each staging file onto its final name, fsync the directories,
   delete the journal.

Before every later operation, :func:`recover` replays leftover journals: if
the marker's row exists the commit happened, so the renames are finished
(roll forward); if not, the staging files are deleted (roll back). A crash
at any point therefore ends in "fully there" or "not at all" by the time
anyone next uses the CA; the window between is invisible to users because
final names only ever appear by rename. Journals hold paths and serials
only, never key material.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from certgate.errors import CAError
from certgate.fsutil import atomic_write, fsync_dir

JOURNAL_SUFFIX = ".json"


@dataclass(frozen=True, slots=True)
class Output:
    """One file to publish: final path, contents and permission bits."""

    path: Path
    data: bytes
    mode: int = 0o644


def _staging_name(final: Path, marker: str) -> Path:
    return final.parent / f".{final.name}.{marker[:16]}.staged"


@dataclass(frozen=True, slots=True)
class Staged:
    """Files written under staging names, awaiting the commit."""

    journal: Path
    pairs: tuple[tuple[Path, Path], ...]  # (staging, final)

    def publish(self) -> None:
        """Step 5: the commit happened; move every file into place."""
        _roll_forward(self.pairs)
        _remove_journal(self.journal)

    def discard(self) -> None:
        """The commit did not happen; remove the staging files."""
        _roll_back(self.pairs)
        _remove_journal(self.journal)


def stage(staging_dir: Path, marker: str, outputs: Sequence[Output]) -> Staged:
    """Steps 2 and 3: journal, then write each output under its staging name."""
    journal = staging_dir / f"{marker}{JOURNAL_SUFFIX}"
    finals = [out.path.absolute() for out in outputs]
    pairs = tuple((_staging_name(final, marker), final) for final in finals)
    for _staging, final in pairs:
        if not final.parent.is_dir():
            raise CAError(f"output directory {final.parent} does not exist")
    record = {"marker": marker, "files": [[str(s), str(f)] for s, f in pairs]}
    atomic_write(journal, json.dumps(record).encode(), mode=0o600)
    try:
        for (staging, _final), out in zip(pairs, outputs, strict=True):
            atomic_write(staging, out.data, mode=out.mode)
    except BaseException:
        _roll_back(pairs)
        _remove_journal(journal)
        raise
    return Staged(journal, pairs)


def recover(staging_dir: Path, committed: Callable[[str], bool]) -> list[str]:
    """Finish or undo every journal left by a crash; return their markers."""
    done: list[str] = []
    for journal in sorted(staging_dir.glob(f"*{JOURNAL_SUFFIX}")):
        try:
            record = json.loads(journal.read_bytes())
            marker = str(record["marker"])
            pairs = tuple((Path(s), Path(f)) for s, f in record["files"])
        except (ValueError, KeyError, TypeError):
            # A journal is written atomically, so this is not a torn write;
            # someone put a stray file here. Leave it for a human.
            continue
        if committed(marker):
            _roll_forward(pairs)
        else:
            _roll_back(pairs)
        _remove_journal(journal)
        done.append(marker)
    return done


def _roll_forward(pairs: Iterable[tuple[Path, Path]]) -> None:
    directories: set[Path] = set()
    for staging, final in pairs:
        # Missing staging file: renamed before the crash, or its directory
        # (a user's --out) is gone; either way there is nothing left to do.
        with contextlib.suppress(FileNotFoundError):
            os.replace(staging, final)
            directories.add(final.parent)
    for directory in directories:
        fsync_dir(directory)


def _roll_back(pairs: Iterable[tuple[Path, Path]]) -> None:
    for staging, _final in pairs:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)


def _remove_journal(journal: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    fsync_dir(journal.parent)

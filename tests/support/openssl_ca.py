"""An accidental CA made the way people make one: the openssl command line.

``make_recipe_ca`` runs the common three-command recipe (a self-signed CA,
then ``openssl x509 -req`` leaves, no extension file), so the import and
adoption tests work on exactly the certificates people carry, not on ones
cryptography shaped for us.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr


@dataclass(frozen=True)
class RecipeCA:
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    def leaf(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"


def make_recipe_ca(directory: Path, leaves: tuple[str, ...] = ("phone", "laptop"), *,
                   key: str = "rsa:2048", serial: str | None = None) -> RecipeCA:
    """``ca.crt``/``ca.key`` and a leaf per name; ``serial`` sets every leaf's
    serial (``-set_serial``, as copied recipes do) instead of ``-CAcreateserial``."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", key, "-days", "3650", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-subj", "/CN=Home CA", cwd=directory)
    for name in leaves:
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        numbering = ["-set_serial", serial] if serial is not None else ["-CAcreateserial"]
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 *numbering, "-out", f"{name}.crt", "-days", "365", cwd=directory)
    return RecipeCA(directory)

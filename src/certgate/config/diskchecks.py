"""The config's checks against the disk: files that must be there, readable, matching.

Everything else in :mod:`certgate.config` reads only the YAML text it is
given; this module is where loading a config looks at the file system. It
is kept apart so that it is plain which problems depend on the machine the
config is checked on (a file missing here may exist on the server) rather
than on the text, and so that every such check reports through the same
:class:`~certgate.config.yamlread.Reader`, placed at the line that names the
file: a key file that does not match its certificate is found by
``certgate check``, not by the first handshake.

The checks run each time a config is loaded: at start, by ``certgate
check`` and on every reload.
"""

from __future__ import annotations

import os
from pathlib import Path

from certgate.config.schema import CertificateFiles
from certgate.config.yamlread import Node, Reader
from certgate.tls.contexts import TLSSetupError, read_server_certificate


def existing_file(r: Reader, node: Node, where: str) -> Path | None:
    """A path that must name a readable file now (checked at load time)."""
    path = r.path(node, where)
    if path is None:
        return None
    if not path.is_file():
        r.problem(node, where, f"file not found: {path}")
        return None
    if not os.access(path, os.R_OK):
        r.problem(node, where, f"file not readable: {path}")
        return None
    return path


def server_certificate(r: Reader, item: Node, where: str,
                       entry: dict[str, Node]) -> CertificateFiles | None:
    """``{cert: FILE, key: FILE}`` for the server side: both readable, the key the
    certificate's. A problem with the pair as a whole is placed at ``item``."""
    cert = existing_file(r, entry["cert"], f"{where}.cert")
    key = existing_file(r, entry["key"], f"{where}.key")
    if cert is None or key is None:
        return None
    files = CertificateFiles(cert, key)
    try:
        read_server_certificate(files)
    except TLSSetupError as exc:
        r.problem(item, where, str(exc))
        return None
    return files

"""The README's first run, as a new user types it: no config, embedded default."""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from support.process import CertgateProcess


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_embedded_default_first_run(tmp_path: Path) -> None:
    if not _port_free(8443):
        pytest.fail("port 8443 is taken; the embedded default listens there")
    process = CertgateProcess(None, tmp_path).start()
    try:
        assert process.port == 8443
        log = process.log_text()
        assert "created a new private CA" in log
        assert "certgate ca issue" in log
        state = tmp_path / "certgate-data"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        root = state / "ca" / "root.crt"
        assert root.is_file()
        # A distinguishable default name (host and random tag), not "certgate CA".
        subject = x509.load_pem_x509_certificate(root.read_bytes()).subject
        common_name = subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert re.fullmatch(r"certgate CA (\S+ )?[0-9a-f]{4} Root R1", str(common_name))

        issue = subprocess.run(
            [sys.executable, "-m", "certgate", "ca", "issue", "--state", str(state), "me",
             "--out", str(tmp_path)], capture_output=True, text=True, check=False, cwd=tmp_path)
        assert issue.returncode == 0, issue.stderr
        key = tmp_path / "me.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

        curl = ["curl", "-sS", "--max-time", "10", "--cacert", str(root)]
        ok = subprocess.run(
            [*curl, "--cert", str(tmp_path / "me.chain.pem"), "--key", str(key),
             "https://localhost:8443/"], capture_output=True, text=True, check=False)
        assert ok.returncode == 0, ok.stderr
        who = json.loads(ok.stdout)
        assert who["verified"] is True
        assert who["cn"] == "me"

        refused = subprocess.run([*curl, "https://localhost:8443/"], capture_output=True,
                                 text=True, check=False)
        assert refused.returncode != 0
    finally:
        assert process.stop() == 0

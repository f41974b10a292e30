"""``certgate ca enroll``: the printed link, its QR code (acceptance 5), and the
embedded default serving enrollment out of the box."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zxingcpp
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certgate.ca import CertificateAuthority

from support.process import CertgateProcess, wait_until

# segno's compact terminal output: two QR rows per text line; a block
# character's upper/lower half printed means that module is light.
_HALVES = {"█": (1, 1), "▀": (1, 0), "▄": (0, 1), " ": (0, 0)}
SCALE = 4


class _Image:
    """A grey-scale image for zxing-cpp (array interface, no numpy needed)."""

    def __init__(self, rows: list[list[int]]) -> None:
        width = max(len(row) for row in rows) * SCALE
        data = bytearray()
        for row in rows:
            line = b"".join(bytes([255 if v else 0]) * SCALE for v in row)
            data += (line + bytes(width - len(line))) * SCALE
        self.__array_interface__ = {"shape": (len(rows) * SCALE, width), "typestr": "|u1",
                                    "data": bytes(data), "version": 3}


def decode_terminal_qr(lines: list[str]) -> list[str]:
    rows: list[list[int]] = []
    for line in lines:
        rows.append([_HALVES[c][0] for c in line])
        rows.append([_HALVES[c][1] for c in line])
    return [code.text for code in zxingcpp.read_barcodes(_Image(rows))]


def _ca(state: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certgate", "ca", *args, "--state", str(state)],
                          capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


def test_terminal_qr_decodes_to_the_printed_url(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ca = CertificateAuthority.init(state, name="qr test CA")
    proc = _ca(state, "enroll", "phone", "--role", "family", "--url-base",
               "https://enroll.example.com")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    url = next(line.split(": ", 1)[1] for line in lines if line.startswith("open on the device"))
    pin = next(line.rsplit(": ", 1)[1] for line in lines if line.startswith("PIN"))
    qr = [line for line in lines if line and set(line) <= set(_HALVES)]
    assert decode_terminal_qr(qr) == [url]
    root = x509.load_pem_x509_certificate(ca.root_cert_path.read_bytes())
    assert url.startswith("https://enroll.example.com/enroll/")
    assert url.endswith(f"?fp={root.fingerprint(hashes.SHA256()).hex()}")
    assert pin not in url
    assert len(pin) == 6
    assert pin.isdigit()
    # The token is at least 128 bits: 43 URL-safe characters = 256 bits.
    assert len(url.split("/enroll/")[1].split("?")[0]) >= 22


def test_enroll_refuses_a_name_in_use_and_lists(tmp_path: Path) -> None:
    state = tmp_path / "state"
    CertificateAuthority.init(state, name="cli test CA").issue_client("taken")
    base = ("--url-base", "https://e.example")
    assert "revoke it first" in _ca(state, "enroll", "taken", *base).stderr
    first = _ca(state, "enroll", "fresh", *base, "--json", "--hours", "24")
    assert set(json.loads(first.stdout)) >= {"url", "pin", "expires"}
    assert "pending enrollment" in _ca(state, "enroll", "fresh", *base).stderr
    listed = _ca(state, "enroll", "--list")
    assert "fresh" in listed.stdout
    assert "pending" in listed.stdout
    assert _ca(state, "enroll", "--cancel", "fresh").returncode == 0
    assert _ca(state, "enroll", "--cancel", "fresh").returncode == 1
    bad = _ca(state, "enroll", "x", "--url-base", "http://plain.example")
    assert bad.returncode == 2


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_embedded_default_enrolls_a_phone(tmp_path: Path) -> None:
    """``certgate run`` with no config, then ``certgate ca enroll phone``: the
    printed link works as it is (enroll.localhost on the default port)."""
    # Another test (tests/test_first_run.py) may hold the default port a moment.
    wait_until(lambda: _port_free(8443), 60, "port 8443 to be free", interval=0.5)
    process = CertgateProcess(None, tmp_path).start()
    try:
        assert "enrollment links: https://enroll.localhost:8443/" in process.log_text()
        made = subprocess.run([sys.executable, "-m", "certgate", "ca", "enroll", "phone",
                               "--json"], capture_output=True, text=True, timeout=60,
                              check=False, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        link = json.loads(made.stdout)
        assert link["url"].startswith("https://enroll.localhost:8443/enroll/")
        root = tmp_path / "certgate-data" / "ca" / "root.crt"
        # A phone without a certificate gets the page (the handshake does not insist)...
        page = subprocess.run(["curl", "-sS", "--cacert", str(root), "--resolve",
                               "enroll.localhost:8443:127.0.0.1", link["url"]],
                              capture_output=True, text=True, timeout=30, check=False)
        assert page.returncode == 0, page.stderr
        assert 'name="pin"' in page.stdout
        # ...while localhost still refuses it in the handshake.
        locked = subprocess.run(["curl", "-sS", "--cacert", str(root),
                                 "https://localhost:8443/"],
                                capture_output=True, text=True, timeout=30, check=False)
        assert locked.returncode != 0
        out = tmp_path / "device"
        enrolled = subprocess.run([sys.executable, "-m", "certgate", "enroll", link["url"],
                                   "--pin", link["pin"], "--out", str(out)],
                                  capture_output=True, text=True, timeout=60, check=False)
        assert enrolled.returncode == 0, enrolled.stderr
        who = subprocess.run(["curl", "-sS", "--cacert", str(root), "--cert",
                              str(out / "phone.chain.pem"), "--key", str(out / "phone.key"),
                              "https://localhost:8443/"],
                             capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(who.stdout)["cn"] == "phone"
    finally:
        process.stop()


@pytest.mark.parametrize("url_base", ["https://enroll.example.com/certgate"])
def test_url_base_keeps_a_prefix(tmp_path: Path, url_base: str) -> None:
    state = tmp_path / "state"
    CertificateAuthority.init(state, name="prefix CA")
    made = _ca(state, "enroll", "phone", "--json", "--url-base", url_base)
    assert json.loads(made.stdout)["url"].startswith(f"{url_base}/enroll/")

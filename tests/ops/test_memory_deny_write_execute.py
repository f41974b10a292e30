"""certgate works under the unit's MemoryDenyWriteExecute=yes.

systemd 252 (Debian 12) implements that setting as a seccomp filter: mmap
with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC, and
shmat with SHM_EXEC fail with EPERM. ``mdwe_exec.c`` installs the same filter
and execs a command, so without running systemd we can check what would break:
a W+X mapping is refused (the filter is real), and certgate still starts two
workers, serves an mTLS request through uvloop and OpenSSL, reloads, writes a
PKCS#12 and a CRL with cryptography, and exits 0 on SIGTERM.

What is known to break under the filter, and why certgate is not affected
(see docs/systemd.md): cffi's ABI-mode ``ffi.callback()`` needs W+X memory
("Cannot allocate write+execute memory for ffi.callback()"); certgate never
uses it, and cryptography's bindings are Rust. ctypes callbacks work (libffi's
static trampolines).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certgate.ca import CertificateAuthority

from support.clients import Connection, client_context
from support.process import wait_until

HELPER_SOURCE = Path(__file__).with_name("mdwe_exec.c")
READY = re.compile(r"certgate: ready on ")


@pytest.fixture(scope="module")
def mdwe_exec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("the seccomp helper is written for x86-64 Linux")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the seccomp helper (apt-get install gcc)")
    binary = tmp_path_factory.mktemp("mdwe") / "mdwe_exec"
    build = subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-o", str(binary),
                            str(HELPER_SOURCE)], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr
    return binary


def _run(mdwe_exec: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(mdwe_exec), sys.executable, *args], cwd=cwd,
                          capture_output=True, text=True, check=False, timeout=60)


def test_the_filter_refuses_write_execute_memory(mdwe_exec: Path, tmp_path: Path) -> None:
    probe = ("import mmap\n"
             "mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE)\n"
             "try:\n"
             "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
             "except PermissionError:\n"
             "    print('refused')\n")
    result = _run(mdwe_exec, "-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def own_ca(tmp_path: Path) -> CertificateAuthority:
    """A CA of this test's own: it issues and re-signs, so not the shared PKI."""
    ca = CertificateAuthority.init(tmp_path / "state", name="mdwe test CA")
    issued = ca.issue_client("alice", days=1)
    (tmp_path / "alice.chain.pem").write_bytes(issued.chain_pem)
    (tmp_path / "alice.key").write_bytes(issued.key_pem)
    return ca


@pytest.fixture
def filtered_certgate(mdwe_exec: Path, tmp_path: Path, own_ca: CertificateAuthority,
                      upstream: Any) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    port = _free_port()
    config = tmp_path / "certgate.yaml"
    config.write_text(f"""\
state_dir: {own_ca.state_dir}
listen: ["127.0.0.1:{port}"]
workers: 2
metrics: {{listen: "off"}}
access_log: {{path: "off"}}
client_auth: {{trusted_cas: [builtin], crls: [builtin]}}
routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream.port}"}}
""")
    proc = subprocess.Popen([str(mdwe_exec), sys.executable, "-m", "certgate", "run", "-c",
                             str(config)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        yield proc, port, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        reader.join(5)
        proc.stderr.close()


def test_certgate_runs_under_memory_deny_write_execute(
        filtered_certgate: tuple[subprocess.Popen[str], int, list[str]], mdwe_exec: Path,
        own_ca: CertificateAuthority, tmp_path: Path) -> None:
    proc, port, lines = filtered_certgate
    state = str(own_ca.state_dir)

    def alice(version: str | None = None) -> Any:
        return client_context(own_ca.root_cert_path, tmp_path / "alice.chain.pem",
                              tmp_path / "alice.key", version=version)

    def ready() -> bool:
        assert proc.poll() is None, "certgate exited under the filter:\n" + "".join(lines)
        return any(READY.search(line) for line in lines)

    wait_until(ready, 30, "certgate to be ready under the MemoryDenyWriteExecute filter")
    for version in ("1.2", "1.3"):
        with Connection(port, alice(version)) as conn:
            assert conn.request("GET", "/echo").status == 200

    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: sum("configuration reloaded" in line for line in lines) >= 2, 30,
               "both workers to reload")
    with Connection(port, alice()) as conn:
        assert conn.request("GET", "/echo").status == 200

    issued = _run(mdwe_exec, "-m", "certgate", "ca", "issue", "--state", state,
                  "mdwe-phone", "--p12", "--out", str(tmp_path), cwd=tmp_path)
    assert issued.returncode == 0, issued.stderr
    assert (tmp_path / "mdwe-phone.p12").stat().st_size > 0
    crl = _run(mdwe_exec, "-m", "certgate", "ca", "crl", "--state", state, cwd=tmp_path)
    assert crl.returncode == 0, crl.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, "".join(lines)
    assert not any("Traceback" in line for line in lines), "".join(lines)

"""Files that change while a reload is being built are not lost.

A reload builds the new runtime (reading CRLs, certificates and keys) and
swaps it in a moment later. Two bugs lived in that moment:

* a CRL written in between became the watcher's new baseline without ever
  being read: the revoked client, refused by the old runtime, was admitted
  again by the new one until the next CRL change;
* a certificate renewed in between was never served: the watcher's rebuild
  request was dropped because a reload was running, and the swap took the
  renewed files as the new baseline (with certbot, the next renewal comes
  60 days later, after the old certificate has expired).

To land the change in that window every time, the reload's config sends the
access log to a FIFO: the build opens it after reading everything else and
blocks until a reader appears. The tests wait until a thread of certgate
sits in that open (``/proc/PID/task/*/wchan`` is ``wait_for_partner``,
Linux), change the files, then open the FIFO to let the reload finish.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import (
    LocalCA,
    issue_server,
    outcome,
    refused_as,
    replace_file,
    served_serial,
)
from support.process import CertgateProcess, wait_until

HOST = "site.test"
SWAP_TIMEOUT = 6.0  # two 1 s polls (change, then held still) plus a rebuild

pytestmark = pytest.mark.skipif(not Path("/proc/self/wchan").exists(),
                                reason="needs Linux /proc/PID/task/*/wchan")


def _blocked_opening_a_fifo(pid: int) -> bool:
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "wchan").read_text().strip() == "wait_for_partner":
                return True
        except OSError:
            continue
    return False


def _drain(fd: int) -> None:
    """Read the access log until certgate closes it (bounded by a 60 s silence)."""
    try:
        while select.select([fd], [], [], 60)[0] and os.read(fd, 65536):
            pass
    finally:
        os.close(fd)


@contextmanager
def reload_held(proxy: CertgateProcess, config: str, tmp_path: Path) -> Iterator[None]:
    """SIGHUP into ``config`` plus a FIFO access log; the body runs while the
    build is blocked after reading every file; on exit the reload finishes."""
    assert proxy.proc is not None
    assert proxy.config_path is not None
    pid = proxy.proc.pid
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reloads = proxy.log_text().count("configuration reloaded")
    proxy.config_path.write_text(config + f'access_log: {{path: "{fifo}"}}\n')
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: _blocked_opening_a_fifo(pid), 10,
               "the reload build to block opening the access log")
    yield
    drain = threading.Thread(target=_drain, args=(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK),),
                             daemon=True)
    drain.start()
    wait_until(lambda: proxy.log_text().count("configuration reloaded") > reloads, 10,
               "the held reload to finish")


def test_crl_written_during_a_reload_build_is_applied(start_certgate, local_ca: LocalCA,
                                                      upstream, tmp_path: Path) -> None:
    crl = tmp_path / "issuing.crl.pem"
    crl.write_bytes(local_ca.crl([], number=1))
    config = f"""
state_dir: {local_ca.state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin], crls: ["{crl}"]}}
routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream.port}"}}
metrics: {{listen: "off"}}
"""
    proxy = start_certgate(config)
    carol = local_ca.context("carol")
    assert outcome(proxy.port, carol) == 200

    with reload_held(proxy, config, tmp_path):
        replace_file(crl, local_ca.crl([local_ca["carol"].serial], number=2))
        wait_until(lambda: refused_as(proxy.port, carol, "revoked"), 5,
                   "the running config to refuse carol")
    wait_until(lambda: refused_as(proxy.port, carol, "revoked"), 3,
               "the reloaded config to refuse carol too")
    assert outcome(proxy.port, local_ca.context("dave")) == 200


@pytest.mark.parametrize("seen", [True, False], ids=["seen-during-build", "unseen"])
def test_certificate_renewed_during_a_reload_build_is_served(
        start_certgate, local_ca: LocalCA, upstream, tmp_path: Path, seen: bool) -> None:
    """``seen``: the watcher notices the renewal (and asks for a rebuild)
    while the reload runs; otherwise the reload finishes before its next poll."""
    live = tmp_path / "tls"
    live.mkdir()
    chain1, key1, serial1 = issue_server(local_ca, tmp_path / "issue1", HOST)
    cert, key = live / "fullchain.pem", live / "privkey.pem"
    cert.write_bytes(chain1)
    key.write_bytes(key1)
    config = f"""
state_dir: {local_ca.state}
listen: ["127.0.0.1:0"]
tls:
  certificates:
    - {{cert: "{cert}", key: "{key}"}}
client_auth: {{trusted_cas: [builtin]}}
routes:
  - {{host: {HOST}, upstream: "http://127.0.0.1:{upstream.port}"}}
metrics: {{listen: "off"}}
"""
    proxy = start_certgate(config)
    ctx = local_ca.context("carol")
    assert served_serial(proxy.port, ctx, HOST) == serial1
    chain2, key2, serial2 = issue_server(local_ca, tmp_path / "issue2", HOST)

    with reload_held(proxy, config, tmp_path):
        replace_file(key, key2)
        replace_file(cert, chain2)
        if seen:
            proxy.wait_for_log("certificate or CA files changed", timeout=SWAP_TIMEOUT)
    wait_until(lambda: served_serial(proxy.port, ctx, HOST) == serial2, SWAP_TIMEOUT,
               f"new connections to {HOST} to see the renewed certificate")
    assert "reload failed" not in proxy.log_text()

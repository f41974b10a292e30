"""A CRL written while a reload is being built is not lost.

A reload builds the new runtime (reading the CRLs) and swaps it in some time
later. A CRL change that lands in between used to become the watcher's new
baseline without ever being read: the revoked client, refused by the old
runtime, was admitted again by the new one until the next CRL change.

To land the change in that window every time, the reload's config sends the
access log to a FIFO: the build opens it after reading the CRLs and blocks
until a reader appears. The test waits until a thread of certgate sits in
that open (``/proc/PID/task/*/wchan`` is ``wait_for_partner``, Linux), writes
the new CRL, waits for the old runtime to refuse the client, then opens the
FIFO to let the reload finish.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from pathlib import Path

import pytest

from .conftest import LocalCA, outcome, refused_as
from support.process import wait_until

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
"""
    proxy = start_certgate(config)
    assert proxy.proc is not None
    assert proxy.config_path is not None
    carol = local_ca.context("carol")
    assert outcome(proxy.port, carol) == 200

    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    proxy.config_path.write_text(config + f'access_log: {{path: "{fifo}"}}\n'
                                 + 'metrics: {listen: "off"}\n')
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: _blocked_opening_a_fifo(proxy.proc.pid), 10,  # type: ignore[union-attr]
               "the reload build to block opening the access log")

    tmp = crl.with_name("next.tmp")
    tmp.write_bytes(local_ca.crl([local_ca["carol"].serial], number=2))
    os.replace(tmp, crl)
    wait_until(lambda: refused_as(proxy.port, carol, "revoked"), 5,
               "the running config to refuse carol")

    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    drain = threading.Thread(target=_drain, args=(reader,), daemon=True)
    drain.start()
    proxy.wait_for_log("configuration reloaded")
    wait_until(lambda: refused_as(proxy.port, carol, "revoked"), 3,
               "the reloaded config to refuse carol too")
    assert outcome(proxy.port, local_ca.context("dave")) == 200
    proxy.stop()
    drain.join(10)

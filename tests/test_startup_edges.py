"""Issue #12, point 4: `certgate run` at first contact, as real processes.

* A busy listen port is one line naming the address and, when it can be
  found, the process holding it; no traceback, exit non-zero (with one
  worker and with several).
* The running instance owns its pid file: a second `certgate run` on the
  same state directory refuses to start, names the pid that holds the lock,
  and leaves the pid file alone, so `certgate reload` still reaches the
  first; a second run that fails to bind (another state directory) does not
  touch the first's pid file either.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.process import CertgateProcess, free_port

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:{port}"]
workers: {workers}
metrics: {{listen: "off"}}
routes: [{{host: localhost, upstream: whoami}}]
"""


def run_once(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certgate", "run", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


@pytest.mark.parametrize("workers", [1, 2])
def test_busy_listen_port_is_one_line_naming_address_and_holder(
        tmp_path: Path, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(CONFIG.format(state=tmp_path / "state", port=busy,
                                        workers=workers))
        result = run_once(config, tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    line = f"listen 127.0.0.1:{busy}: cannot listen: Address already in use"
    assert line in result.stderr, result.stderr
    # This test process holds the port; /proc tells who (same user, so readable).
    if Path("/proc/net/tcp").exists():
        assert f"held by pid {os.getpid()}" in result.stderr, result.stderr


def test_second_instance_on_the_same_state_refuses_and_leaves_the_pid_file(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    text = CONFIG.format(state=state, port=port, workers=1)
    first = CertgateProcess(text, tmp_path).start()
    try:
        assert first.proc is not None
        pid_file = state / "certgate.pid"
        assert int(pid_file.read_text()) == first.proc.pid
        second = run_once(tmp_path / "certgate.yaml", tmp_path)
        assert second.returncode != 0
        assert "Traceback" not in second.stderr, second.stderr
        assert f"pid {first.proc.pid}" in second.stderr, second.stderr
        assert str(state) in second.stderr
        assert int(pid_file.read_text()) == first.proc.pid

        reload = subprocess.run([sys.executable, "-m", "certgate", "reload", "-c",
                                 str(tmp_path / "certgate.yaml")], capture_output=True,
                                text=True, timeout=60, check=False, cwd=tmp_path)
        assert reload.returncode == 0, reload.stderr
        first.wait_for_log("configuration reloaded")
    finally:
        assert first.stop() == 0
    assert not (state / "certgate.pid").exists()


def test_second_instance_failing_to_bind_leaves_the_first_pid_file(
        tmp_path: Path) -> None:
    """Another state directory, the same port: the bind fails, nothing of the
    first instance is touched, and the message names the first as holder."""
    state = tmp_path / "state"
    port = free_port()
    first = CertgateProcess(CONFIG.format(state=state, port=port, workers=1),
                            tmp_path).start()
    try:
        assert first.proc is not None
        other = tmp_path / "other.yaml"
        other.write_text(CONFIG.format(state=tmp_path / "other-state", port=port, workers=1))
        second = run_once(other, tmp_path)
        assert second.returncode != 0
        assert "Traceback" not in second.stderr, second.stderr
        assert f"listen 127.0.0.1:{port}: cannot listen" in second.stderr
        assert f"held by pid {first.proc.pid}" in second.stderr
        assert int((state / "certgate.pid").read_text()) == first.proc.pid
        assert not (tmp_path / "other-state" / "certgate.pid").exists()
    finally:
        assert first.stop() == 0


TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1
   2: 0100007F:1F90 0100007F:94F6 01 00000000:00000000 00:00000000 00000000     0        0 333 1
"""


def test_listening_inodes_matches_address_and_wildcards() -> None:
    from certgate.ports import listening_inodes

    if sys.byteorder != "little":
        pytest.skip("the sample table is in little-endian words")
    assert listening_inodes(TABLE, "127.0.0.1", 8443) == [111]  # 0.0.0.0:8443 blocks it
    assert listening_inodes(TABLE, "127.0.0.1", 8080) == [222]  # the established one is not
    assert listening_inodes(TABLE, "127.0.0.2", 8080) == []
    assert listening_inodes(TABLE, "0.0.0.0", 8080) == [222]
    assert listening_inodes("garbage\n1: zz:zz 0 0A a b c d e f\n", "127.0.0.1", 1) == []


def _reload(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certgate", "reload", "-c", str(config)],
                          capture_output=True, text=True, errors="replace", timeout=60,
                          check=False, cwd=cwd)


def test_reload_with_another_file_than_the_running_one_refuses(tmp_path: Path) -> None:
    """A SIGHUP makes certgate re-read the file it was started with. `certgate
    reload -c OTHER` (same state directory) printed "OK; asked certgate to
    reload" and the running proxy reloaded its own file: OTHER's routes and
    listeners never appeared (found by a newcomer trial)."""
    state = tmp_path / "state"
    first = CertgateProcess(CONFIG.format(state=state, port=free_port(), workers=1),
                            tmp_path).start()
    try:
        assert first.proc is not None
        other = tmp_path / "other.yaml"
        other.write_text(CONFIG.format(state=state, port=free_port(), workers=1))
        refused = _reload(other, tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert "Traceback" not in refused.stderr
        running = str((tmp_path / "certgate.yaml").resolve())
        assert f"certgate (pid {first.proc.pid}) runs {running}, not {other}" \
            in refused.stderr, refused.stderr
        assert "OK" not in refused.stdout
        # The file it runs, named another way (relative, from elsewhere): reloads.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        same = _reload(Path("..") / "certgate.yaml", elsewhere)
        assert same.returncode == 0, same.stderr
        first.wait_for_log("configuration reloaded")
    finally:
        assert first.stop() == 0
    assert "certgate stopped" in first.log_text()  # a clean stop says so


def test_reload_cannot_switch_the_embedded_default_to_a_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    first = CertgateProcess(None, tmp_path, env={"CERTGATE_STATE_DIR": str(state),
                                                 "CERTGATE_LISTEN": f"127.0.0.1:{port}"})
    first.start()
    try:
        assert first.proc is not None
        config = tmp_path / "mine.yaml"
        config.write_text(CONFIG.format(state=state, port=free_port(), workers=1))
        refused = _reload(config, tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert f"certgate (pid {first.proc.pid}) runs the embedded default" in refused.stderr
        assert f"certgate run -c {config}" in refused.stderr
        second = run_once(config, tmp_path)  # and run says what runs there
        assert second.returncode != 0
        assert "running (embedded default)" in second.stderr, second.stderr
    finally:
        assert first.stop() == 0


def test_reload_through_a_swapped_symlink_reloads(tmp_path: Path) -> None:
    """The usual deploy: current.yaml -> v1.yaml, write v2.yaml, point the
    symlink at it, reload. The running certgate re-reads current.yaml (v2);
    the lock recorded current.yaml resolved (v1), so reload refused the very
    file certgate re-reads. Also: the file found through $CERTGATE_CONFIG."""
    state = tmp_path / "state"
    (tmp_path / "v1.yaml").write_text(CONFIG.format(state=state, port=free_port(), workers=1))
    current = tmp_path / "current.yaml"
    current.symlink_to("v1.yaml")
    first = CertgateProcess(None, tmp_path, env={"CERTGATE_CONFIG": str(current)}).start()
    try:
        (tmp_path / "v2.yaml").write_text(CONFIG.format(state=state, port=free_port(),
                                                        workers=1))
        (tmp_path / "next.yaml").symlink_to("v2.yaml")
        os.replace(tmp_path / "next.yaml", current)
        swapped = _reload(current, tmp_path)
        assert swapped.returncode == 0, swapped.stderr
        first.wait_for_log("configuration reloaded")
        # Named through the target it now points at: the same file, reloads too.
        target = _reload(tmp_path / "v2.yaml", tmp_path)
        assert target.returncode == 0, target.stderr
        # The old target is not what certgate re-reads: refused.
        old = _reload(tmp_path / "v1.yaml", tmp_path)
        assert old.returncode == 2, old.stderr
    finally:
        assert first.stop() == 0


def test_a_config_path_that_is_not_utf8_or_has_a_newline_runs_and_reloads(
        tmp_path: Path) -> None:
    """The lock file holds the config path: a path of bytes that are not
    UTF-8 (legal on Linux) made `certgate run` die with a UnicodeEncodeError
    traceback; one with a newline was cut at it, and reload then refused it."""
    for name in (os.fsdecode(b"cfg-\xff.yaml"), "two\nlines.yaml"):
        state = tmp_path / "state"
        first = CertgateProcess(CONFIG.format(state=state, port=free_port(), workers=1),
                                tmp_path, name=name).start()
        try:
            same = _reload(tmp_path / name, tmp_path)
            assert same.returncode == 0, same.stderr
            first.wait_for_log("configuration reloaded")
        finally:
            assert first.stop() == 0

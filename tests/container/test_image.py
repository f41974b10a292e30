"""The container image, built from this checkout and run the way the docs say (issue #16).

One container serves a mounted config with its state on a named volume, as
strictly as it can be run: read-only root *without* podman's default tmpfs
on /tmp (Docker's --read-only gives none), all capabilities dropped, no new
privileges. The tests run in order on it: healthy, a certificate issued
through `podman run ... ca issue` gets whoami and nothing else does, SIGHUP
reloads, `podman stop` exits 0 in time, and a restart keeps the CA.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.podman import (
    RUN_FLAGS,
    UID,
    Timings,
    healthy,
    podman,
    remove_container,
    remove_volume,
    volume_path,
    wait_for,
)
from support.process import free_port

CONFIG = """\
state_dir: /var/lib/certgate
listen: ["127.0.0.1:{port}"]
metrics: {{listen: "127.0.0.1:{metrics}"}}
limits: {{shutdown_grace: 10s}}
client_auth: {{trusted_cas: [builtin], crls: [builtin]}}
routes:
  - host: localhost
    upstream: whoami
    client_auth: require
    allow: {allow}
"""

STRICT = ["--read-only", "--read-only-tmpfs=false", "--cap-drop=all",
          "--security-opt", "no-new-privileges"]
STOP_GRACE = 20


@dataclass
class Served:
    name: str
    volume: str
    port: int
    metrics: int
    config: Path
    out: Path

    def write_config(self, allow: str = "[any]") -> None:
        self.config.write_text(CONFIG.format(port=self.port, metrics=self.metrics,
                                             allow=allow))
        self.config.chmod(0o644)

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *command, check=False)

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        root = volume_path(self.volume) / "ca" / "root.crt"
        return subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(root),
                               *args, f"https://localhost:{self.port}/"],
                              capture_output=True, text=True, timeout=30, check=False)

    def curl_as(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.curl("--cert", str(self.out / f"{name}.chain.pem"),
                         "--key", str(self.out / f"{name}.key"), *args)

    def status_as(self, name: str) -> str:
        return self.curl_as(name, "-o", "/dev/null", "-w", "%{http_code}").stdout

    def access_log(self) -> list[dict[str, object]]:
        """certgate's JSON access log: the container's stdout."""
        out = podman("logs", self.name, check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def served(image: str, timings: Timings, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("container")
    base.chmod(0o755)  # mounted at /etc/certgate, read by the image's user
    tag = f"certgate-test-{os.getpid()}"
    out = base / "out"
    out.mkdir()
    os.chown(out, UID, UID)  # `ca issue` runs as the image's user
    served = Served(tag, f"{tag}-state", free_port(), free_port(), base / "certgate.yaml", out)
    served.write_config()
    remove_container(served.name)
    remove_volume(served.volume)
    podman("volume", "create", served.volume)
    try:
        with timings.step("start the container and wait until healthy"):
            podman("run", "--detach", "--name", served.name, *RUN_FLAGS, "--network", "host",
                   *STRICT, "--stop-timeout", str(STOP_GRACE),
                   "--volume", f"{served.volume}:/var/lib/certgate",
                   # The directory, not the file: an editor that replaces the
                   # file would leave a file mount showing the old one.
                   "--volume", f"{base}:/etc/certgate:ro", image)
            wait_for(lambda: healthy(served.name), 60, "the health check to pass",
                     logs=served.logs)
        yield served
    finally:
        remove_container(served.name)
        remove_volume(served.volume)


def ca(served: Served, image: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`podman run --rm IMAGE ca ...` on the served state, as the docs show it."""
    return podman("run", "--rm", "--no-healthcheck", *RUN_FLAGS, "--network", "none",
                  *STRICT, "--volume", f"{served.volume}:/var/lib/certgate",
                  "--volume", f"{served.config.parent}:/etc/certgate:ro",
                  "--volume", f"{served.out}:/out", image, "ca", *args, check=False)


def test_1_health_check_turns_healthy(served: Served) -> None:
    status = podman("inspect", "--format", "{{.State.Health.Status}}", served.name).stdout
    assert status.strip() == "healthy"
    assert "certgate: ready on 127.0.0.1" in served.logs()


def test_2_issued_certificate_gets_whoami(served: Served, image: str, timings: Timings) -> None:
    with timings.step("ca issue through podman run"):
        issued = ca(served, image, "issue", "alice", "--role", "family")
    assert issued.returncode == 0, issued.stderr
    assert (served.out / "alice.key").is_file()
    answer = served.curl_as("alice")
    assert answer.returncode == 0, answer.stderr
    who = json.loads(answer.stdout)
    assert who["cn"] == "alice"
    assert who["verified"] is True


def test_3_refused_without_a_certificate(served: Served, pki) -> None:  # type: ignore[no-untyped-def]
    assert served.curl().returncode != 0
    # A certificate from another CA is refused as well.
    foreign = served.curl("--cert", str(pki["untrusted"].cert),
                          "--key", str(pki["untrusted"].key))
    assert foreign.returncode != 0
    # Logs go to the container's stdout: the access log names who was served.
    assert {"cn": "alice", "status": 200} in [
        {"cn": entry.get("cn"), "status": entry.get("status")} for entry in served.access_log()]


def test_4_sighup_reloads(served: Served, timings: Timings) -> None:
    """`podman kill -s HUP` reaches certgate as PID 1 and applies the changed file."""
    before = served.logs().count("configuration reloaded")
    served.write_config(allow="[cn:nobody-has-this]")
    with timings.step("podman kill -s HUP and see the reload"):
        podman("kill", "--signal", "HUP", served.name)
        wait_for(lambda: served.logs().count("configuration reloaded") > before, 15,
                 "the reload in the log")
    assert served.status_as("alice") == "403"
    served.write_config()
    podman("kill", "--signal", "HUP", served.name)
    wait_for(lambda: served.logs().count("configuration reloaded") > before + 1, 15,
             "the second reload")
    assert served.status_as("alice") == "200"


def test_5_non_root_read_only_no_capabilities(served: Served) -> None:
    assert served.exec("id", "-u").stdout.strip() == str(UID)
    inspect = podman("inspect", "--format",
                     "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}", served.name).stdout
    assert inspect.split() == [f"{UID}:{UID}", "true"]
    status = served.exec("cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, (cap, fields[cap])
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Uid"].split()[0] == str(UID)
    for path in ("/opt/certgate/x", "/etc/certgate/x", "/tmp/x"):
        assert served.exec("touch", path).returncode != 0, path


def test_6_state_is_private(served: Served) -> None:
    listing = served.exec("sh", "-c", "stat -c '%a %u %n' /var/lib/certgate "
                          "/var/lib/certgate/ca /var/lib/certgate/ca/keys "
                          "/var/lib/certgate/ca/keys/* /var/lib/certgate/ca/servers/*.key")
    assert listing.returncode == 0, listing.stderr
    rows = [line.split(" ", 2) for line in listing.stdout.splitlines()]
    assert len(rows) >= 6
    for mode, uid, path in rows:
        assert uid == str(UID), path
        wanted = "600" if path.endswith(".key") else "700"
        assert mode == wanted, (path, mode)


def test_7_stop_exits_0_within_grace_and_state_survives(served: Served, image: str,
                                                        timings: Timings) -> None:
    root = (volume_path(served.volume) / "ca" / "root.crt").read_bytes()
    with timings.step("podman stop"):
        started = time.monotonic()
        podman("stop", "--time", str(STOP_GRACE), served.name, timeout=STOP_GRACE + 30)
        took = time.monotonic() - started
    assert took < STOP_GRACE, f"podman stop took {took:.1f} s (SIGKILL after {STOP_GRACE})"
    code = podman("inspect", "--format", "{{.State.ExitCode}}", served.name).stdout.strip()
    assert code == "0"
    with timings.step("podman start and wait until healthy"):
        podman("start", served.name)
        wait_for(lambda: healthy(served.name), 60, "the health check after the restart",
                 logs=served.logs)
    assert (volume_path(served.volume) / "ca" / "root.crt").read_bytes() == root
    listed = ca(served, image, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["name"] for row in rows if row["name"] == "alice"] == ["alice"]
    assert served.status_as("alice") == "200"


def test_8_embedded_default_listens_on_all_interfaces(image: str, timings: Timings) -> None:
    """No config mounted: the embedded default, on 0.0.0.0:8443 of the container's
    own network namespace (a bridge here, so nothing on the host is in the way)."""
    env = podman("image", "inspect", "--format", "{{json .Config.Env}}", image).stdout
    assert "CERTGATE_LISTEN=0.0.0.0:8443" in json.loads(env)
    name = f"certgate-default-{os.getpid()}"
    volume = f"{name}-state"
    remove_container(name)
    try:
        with timings.step("embedded default: start on a bridge and reach it from the host"):
            podman("run", "--detach", "--name", name, *RUN_FLAGS, *STRICT,
                   "--volume", f"{volume}:/var/lib/certgate", image)
            wait_for(lambda: healthy(name), 60, "the embedded default to be healthy",
                     logs=lambda: podman("logs", name, check=False).stderr)
            address = podman("inspect", "--format",
                             "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                             name).stdout.strip()
            assert address
            root = volume_path(volume) / "ca" / "root.crt"
            answer = subprocess.run(
                ["curl", "-sS", "--max-time", "10", "--cacert", str(root),
                 "--resolve", f"localhost:8443:{address}", "-o", "/dev/null",
                 "-w", "%{http_code}", "https://localhost:8443/"],
                capture_output=True, text=True, timeout=30, check=False)
        # Reached over the bridge, and refused for want of a certificate.
        assert answer.returncode != 0
        assert "alert" in answer.stderr or "certificate" in answer.stderr, answer.stderr
        logs = podman("logs", name).stderr
        assert "running on the embedded default" in logs
        assert "certgate listening on 0.0.0.0:8443" in logs
    finally:
        remove_container(name)
        remove_volume(volume)


def test_9_image_size(image: str) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    assert size < 200 * 1000 * 1000, f"{size / 1e6:.0f} MB"

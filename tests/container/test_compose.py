"""compose/home-assistant, brought up with podman-compose in front of a stand-in HA.

The stand-in (tests/container/ha_standin) applies HA's forwarded-header rules
with trusted_proxies set as compose.yaml's comment tells HA users to set it,
and echoes what it received. The compose file is used as shipped: only the
image names and the published port come from the variables it offers.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.podman import (
    BASE,
    ROOT,
    RUN_FLAGS,
    UID,
    Timings,
    healthy,
    podman,
    volume_path,
    wait_for,
)
from support.process import free_port

STANDIN = "localhost/ha-standin:test"
HOST = "ha.example.com"
SUBNET = "172.30.16.0/24"  # compose.yaml's `ha` network, trusted by HA


@dataclass
class Stack:
    directory: Path
    project: str
    port: int
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "podman_compose", "--project-name", self.project,
             "--podman-args", "--runtime runc",
             "--podman-run-args", " ".join(RUN_FLAGS), *args],
            cwd=self.directory, env=self.env, capture_output=True, text=True,
            timeout=timeout, check=False)
        return result

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def curl(self, path: str, *args: str) -> subprocess.CompletedProcess[str]:
        root = volume_path(f"{self.project}_certgate-data") / "ca" / "root.crt"
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(root),
             "--resolve", f"{HOST}:{self.port}:127.0.0.1", *args,
             f"https://{HOST}:{self.port}{path}"],
            capture_output=True, text=True, timeout=30, check=False)

    def curl_as(self, name: str, path: str, *args: str) -> subprocess.CompletedProcess[str]:
        out = self.directory / "out"
        return self.curl(path, "--cert", str(out / f"{name}.chain.pem"),
                         "--key", str(out / f"{name}.key"), *args)


@pytest.fixture(scope="module")
def stack(image: str, timings: Timings, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    # From PyPI (the [test] extra): Debian 12's podman-compose 1.0.3 knows
    # neither a network's ipam subnet nor a service's ipv4_address.
    pytest.importorskip("podman_compose", reason="podman-compose is in the [test] extra")
    with timings.step("build the stand-in HA image"):
        podman("build", *RUN_FLAGS[:2], "--network", "host", "--build-arg",
               f"BASE_IMAGE={BASE}", "--tag", STANDIN,
               str(Path(__file__).parent / "ha_standin"))
    base = tmp_path_factory.mktemp("compose")
    directory = base / "home-assistant"
    shutil.copytree(ROOT / "compose" / "home-assistant", directory)
    (directory / "certgate").chmod(0o755)
    (directory / "certgate" / "certgate.yaml").chmod(0o644)
    (directory / "ha-config").mkdir()
    out = directory / "out"
    out.mkdir()
    os.chown(out, UID, UID)
    stack = Stack(directory, f"cgha{os.getpid()}", free_port(),
                  {**os.environ, "CERTGATE_IMAGE": image, "HA_IMAGE": STANDIN})
    stack.env["CERTGATE_PORT"] = str(stack.port)
    try:
        with timings.step("podman-compose up (Home Assistant) and wait until healthy"):
            up = stack.compose("up", "-d")
            assert up.returncode == 0, up.stdout + up.stderr
            wait_for(lambda: healthy(stack.container("certgate")), 60,
                     "certgate in the compose stack to be healthy",
                     logs=lambda: podman("logs", stack.container("certgate"),
                                         check=False).stderr)
        with timings.step("podman-compose run --rm certgate ca issue"):
            issued = stack.compose("run", "--rm", "--no-deps", "-T", "-v", f"{out}:/out",
                                   "certgate", "ca", "issue", "phone")
            assert issued.returncode == 0, issued.stdout + issued.stderr
        yield stack
    finally:
        with timings.step("podman-compose down"):
            stack.compose("down", "--volumes", "--timeout", "10")
        podman("volume", "rm", "--force", f"{stack.project}_certgate-data", check=False)


Headers = dict[str, list[str]]


def _headers(answer: subprocess.CompletedProcess[str]) -> tuple[dict[str, object], Headers]:
    assert answer.returncode == 0, answer.stderr
    body = json.loads(answer.stdout)
    headers: dict[str, list[str]] = {}
    for name, value in body.get("headers", []):
        headers.setdefault(name, []).append(value)
    return body, headers


def test_routes_to_ha_with_the_forwarded_headers_it_expects(stack: Stack) -> None:
    # A client trying to pass itself off as someone else through X-Forwarded-For.
    answer = stack.curl_as("phone", "/api/", "-H", "X-Forwarded-For: 203.0.113.9",
                           "-H", "X-Client-CN: admin")
    body, headers = _headers(answer)
    assert "error" not in body, body  # the stand-in's HA rules accepted certgate
    # From the subnet trusted_proxies names.
    assert ipaddress.ip_address(str(body["peer"])) in ipaddress.ip_network(SUBNET)
    forwarded = headers["x-forwarded-for"]
    assert len(forwarded) == 1
    assert forwarded[0] != "203.0.113.9"  # replaced, never appended to
    ipaddress.ip_address(forwarded[0])  # one bare address, as HA's parser wants it
    assert headers["x-forwarded-proto"] == ["https"]
    # The Host the client sent (the published port is not 443 in this test).
    assert headers["x-forwarded-host"] == [f"{HOST}:{stack.port}"]
    # The identity of the certificate the phone presented, not what it claimed.
    assert headers["x-client-verify"] == ["SUCCESS"]
    assert headers["x-client-cn"] == ["phone"]
    # forward_client_cert: none: the certificate itself is not passed on.
    assert "x-client-cert" not in headers
    assert "x-forwarded-client-cert" not in headers


def test_no_certificate_is_refused_but_webhooks_pass(stack: Stack) -> None:
    refused = stack.curl("/api/", "-o", "/dev/null", "-w", "%{http_code}")
    assert refused.stdout == "403"
    webhook = stack.curl("/api/webhook/some-secret-id")
    body, _ = _headers(webhook)
    assert body["path"] == "/api/webhook/some-secret-id"


def test_ha_is_reachable_only_through_certgate(stack: Stack) -> None:
    ports = podman("port", stack.container("homeassistant"), check=False)
    assert ports.stdout.strip() == ""
    published = podman("port", stack.container("certgate")).stdout
    assert f":{stack.port}" in published
    user = podman("inspect", "--format", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}",
                  stack.container("certgate")).stdout.split()
    assert user == [f"{UID}:{UID}", "true"]

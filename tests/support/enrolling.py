"""tests/enroll: a certgate with the enrollment service, a CA of its own, the CLI."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from certgate.ca import CertificateAuthority

from support.process import CertgateProcess

ENROLL_HOST = "enroll.localhost"

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
access_log: {{path: {log}}}
metrics: {{listen: "off"}}
routes:
  - {{host: localhost, upstream: whoami}}
  - {{host: enroll.localhost, upstream: enroll}}
"""


@dataclass
class Link:
    url: str
    pin: str
    expires: str
    id: str
    out: str = ""

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def token(self) -> str:
        return self.path.rsplit("/", 1)[1]


@dataclass
class Enrolling:
    """certgate + its CA: run ``ca`` verbs, speak HTTPS to the enroll host."""

    state: Path
    root: Path
    proxy: CertgateProcess
    access_log: Path
    cli_output: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.proxy.port

    def ca(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "certgate.ca", *args, "--state", str(self.state)],
            capture_output=True, text=True, timeout=60, check=False,
            cwd=self.state.parent, env=dict(os.environ))
        self.cli_output += [proc.stdout, proc.stderr]
        if check and proc.returncode != 0:
            raise AssertionError(f"ca {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def enroll(self, name: str, *args: str) -> Link:
        proc = self.ca("enroll", name, "--json", "--url-base",
                       f"https://{ENROLL_HOST}:{self.port}", *args)
        doc = json.loads(proc.stdout)
        return Link(doc["url"], doc["pin"], doc["expires"], doc["id"], proc.stdout)

    def client(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.root))
        return httpx.Client(base_url=f"https://127.0.0.1:{self.port}", verify=ctx,
                            headers={"host": ENROLL_HOST}, timeout=20,
                            follow_redirects=False)

    def request(self, client: httpx.Client, method: str, path: str,
                **kwargs: Any) -> httpx.Response:
        return client.request(method, path, extensions={"sni_hostname": ENROLL_HOST},
                              **kwargs)

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "ca" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


def start_enrolling(tmp_path: Path, config: str = CONFIG) -> Enrolling:
    state = tmp_path / "state"
    ca = CertificateAuthority.init(state, name="enroll test CA")
    log = tmp_path / "access.log"
    # Last seen is flushed every half second here, so `ca list` shows a use at once.
    proxy = CertgateProcess(config.format(state=state, log=log), tmp_path,
                            env={"CERTGATE_LAST_SEEN_FLUSH_SECONDS": "0.5"})
    proxy.start()
    return Enrolling(state, ca.root_cert_path, proxy, log)


def hidden(html: str, name: str) -> str:
    """The value of a hidden form field on the page."""
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


def running_enrolling(tmp_path: Path, config: str = CONFIG) -> Iterator[Enrolling]:
    """:func:`start_enrolling` for a fixture: the proxy stops when it closes."""
    env = start_enrolling(tmp_path, config)
    try:
        yield env
    finally:
        env.proxy.stop()

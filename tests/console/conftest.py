"""Fixtures for tests/console: certgate with a console, an enroll route and
whoami, a CA of its own, an admin certificate and one without the role."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.enrolling import CONFIG as ENROLL_CONFIG
from support.enrolling import Enrolling, start_enrolling
from support.process import wait_until

CONSOLE_HOST = "ca.localhost"

# The enrollment tests' certgate, plus the console on a name of its own.
CONFIG = ENROLL_CONFIG + """\
  - {{host: ca.localhost, upstream: console, client_auth: require, allow: ["role:admin"]}}
"""


@dataclass
class Console:
    env: Enrolling
    admin: tuple[Path, Path]
    user: tuple[Path, Path]

    @property
    def port(self) -> int:
        return self.env.port

    def context(self, who: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.env.root))
        if who is not None:
            ctx.load_cert_chain(str(who[0]), str(who[1]))
        return ctx

    def client(self, who: tuple[Path, Path] | None = None, host: str = CONSOLE_HOST
               ) -> httpx.Client:
        return httpx.Client(base_url=f"https://127.0.0.1:{self.port}",
                            verify=self.context(who if who is not None else self.admin),
                            headers={"host": f"{host}:{self.port}"}, timeout=20,
                            follow_redirects=False)

    def get(self, path: str, who: tuple[Path, Path] | None = None) -> httpx.Response:
        with self.client(who) as client:
            return client.get(path, extensions={"sni_hostname": CONSOLE_HOST})

    def post(self, path: str, data: dict[str, str], *, who: tuple[Path, Path] | None = None,
             origin: str | None = "default", headers: dict[str, str] | None = None
             ) -> httpx.Response:
        sent = dict(headers or {})
        if origin == "default":
            sent["origin"] = f"https://{CONSOLE_HOST}:{self.port}"
        elif origin is not None:
            sent["origin"] = origin
        with self.client(who) as client:
            return client.post(path, data=data, headers=sent,
                               extensions={"sni_hostname": CONSOLE_HOST})

    def csrf(self, who: tuple[Path, Path] | None = None) -> str:
        page = self.get("/new", who)
        assert page.status_code == 200, page.text
        match = re.search(r'name="csrf" value="([0-9]+-[0-9a-f]{64})"', page.text)
        assert match, "no CSRF field on the page"
        return match.group(1)

    def ca_list(self) -> dict[str, dict[str, Any]]:
        out = subprocess.run([sys.executable, "-m", "certgate.ca", "list", "--json", "--state",
                              str(self.env.state)], capture_output=True, text=True,
                             check=True, timeout=60)
        rows = json.loads(out.stdout)
        return {row["name"]: row for row in rows if row["status"] in ("valid", "revoked")}


def issue(env: Enrolling, name: str, *roles: str) -> tuple[Path, Path]:
    from certgate.ca import CertificateAuthority

    ca = CertificateAuthority.open(env.state)
    issued = ca.issue_client(name, roles=roles, days=30)
    cert = env.state.parent / f"{name}.chain.pem"
    key = env.state.parent / f"{name}.key"
    cert.write_bytes(issued.chain_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    return cert, key


def wait_for_roles(console: Console, who: tuple[Path, Path], in_a_row: int = 1) -> None:
    """The proxy reads roles from the inventory about once a second: wait
    until a certificate issued just now is let in with its role. With
    several workers each reads on its own: ask for ``in_a_row`` admissions
    on new connections (the kernel spreads them over the workers)."""
    wait_until(lambda: all(console.get("/", who).status_code == 200 for _ in range(in_a_row)),
               10, f"{who[0].name}'s admin role to reach the proxy")


def running_console(tmp_path: Path) -> Iterator[Console]:
    """certgate with the console, an admin (root-admin) whose role has reached
    the proxy, and kid-tablet (family); stopped when the generator closes."""
    env = start_enrolling(tmp_path, CONFIG)
    try:
        made = Console(env, issue(env, "root-admin", "admin"),
                       issue(env, "kid-tablet", "family"))
        wait_for_roles(made, made.admin)
        yield made
    finally:
        env.proxy.stop()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    yield from running_console(tmp_path)

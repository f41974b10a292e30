"""Drive podman for tests/container: the local base image, runs, waits.

No registry is reachable where these tests run, so the base image is made
here: debootstrap a minimal Debian with python3 and its venv module, trim
what an image never needs (the package cache and lists, docs, man pages,
locales: the official slim Python images leave them out too) and import it as
``localhost/debian-python:bookworm``. That takes about a minute and is done
once per machine: an existing image of that name is reused.

Podman here needs the runc runtime (crun fails on this kernel's hybrid
cgroups) and explicit rlimits (its defaults exceed the machine's hard
limits): every command goes through :func:`podman` and every container gets
:data:`RUN_FLAGS`. Each step is timed; the times are printed at the end of
the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.process import wait_until

ROOT = Path(__file__).resolve().parents[2]
BASE = "localhost/debian-python:bookworm"
IMAGE = "localhost/certgate:test"
RUNTIME = ["--runtime", "runc"]
RUN_FLAGS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
# The image's user (Containerfile: ARG UID).
UID = 10001
# The host's CA bundle, lent to the build so that pip trusts whatever this
# machine's TLS egress trusts; the image keeps its own bundle.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# Trimmed from the debootstrap tree before import (paths relative to it).
TRIM = ["var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
        "usr/share/locale", "usr/share/info"]


def missing_tools() -> str | None:
    if shutil.which("podman") is None:
        return ("podman is not installed (Debian packages podman, runc; .ci/run installs "
                "them)")
    if shutil.which("runc") is None:
        return "runc is not installed (Debian package runc; .ci/run installs it)"
    if os.geteuid() != 0:
        return "the container tests run rootful podman (debootstrap, volumes): run as root"
    return None


def podman(*args: str, timeout: float = 120, check: bool = True,
           input_bytes: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """``podman --runtime runc ARGS``; output captured; a failure shows it."""
    result = subprocess.run(["podman", *RUNTIME, *args], capture_output=True, timeout=timeout,
                            check=False, input=input_bytes)
    out = subprocess.CompletedProcess(result.args, result.returncode,
                                      result.stdout.decode(errors="replace"),
                                      result.stderr.decode(errors="replace"))
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {out.returncode}:\n"
                             f"{out.stdout}\n{out.stderr}")
    return out


@dataclass
class Timings:
    steps: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.steps.append((name, time.monotonic() - start))

    def report(self) -> str:
        lines = [f"  {seconds:6.1f} s  {name}" for name, seconds in self.steps]
        total = sum(seconds for _, seconds in self.steps)
        return "\n".join(["container test steps:", *lines, f"  {total:6.1f} s  total"])


def build_base(timings: Timings) -> None:
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    if shutil.which("debootstrap") is None:
        pytest.skip(f"no {BASE} image and debootstrap is not installed (Debian package "
                    "debootstrap; .ci/run installs it)")
    with tempfile.TemporaryDirectory(prefix="certgate-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        with timings.step("debootstrap the base (once per machine)"):
            subprocess.run(["debootstrap", "--variant=minbase",
                            "--include=python3,python3-venv,ca-certificates", "bookworm",
                            str(rootfs)], check=True, capture_output=True, timeout=600)
        for part in TRIM:
            target = rootfs / part
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        with timings.step("import the base"):
            tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], check=True,
                                 capture_output=True, timeout=300)
            podman("import", "-", BASE, input_bytes=tar.stdout, timeout=300)


def volume_path(name: str) -> Path:
    """Where a named volume lives on the host (rootful podman)."""
    return Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout.strip())


def wait_for(condition: Callable[[], object], timeout: float, what: str,
             interval: float = 0.25, logs: Callable[[], str] | None = None) -> object:
    """:func:`support.process.wait_until`, polling at podman's pace."""
    return wait_until(condition, timeout, what, interval, logs)


def healthy(name: str) -> bool:
    """Run the image's HEALTHCHECK once (no systemd here to run it on a timer)."""
    return podman("healthcheck", "run", name, check=False, timeout=60).returncode == 0


def remove_container(name: str) -> None:
    podman("rm", "--force", "--time", "5", name, check=False, timeout=60)


def remove_volume(name: str) -> None:
    podman("volume", "rm", "--force", name, check=False, timeout=60)

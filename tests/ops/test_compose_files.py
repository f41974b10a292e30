"""compose/ and the Containerfile, checked without podman (tests/container runs them).

The certgate configs under compose/ are the ones of config/ moved into a
container: they must load as they are, and keep config/'s rules, timeouts
and limits, so that a fix to one is not silently missing from the other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from certgate.config.loader import load_config_text

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [("home-assistant", "home-assistant.yaml"), ("immich", "immich.yaml")]


@pytest.mark.parametrize(("folder", "original"), PAIRS)
def test_compose_config_loads_and_keeps_the_routes_of_config(folder: str, original: str,
                                                             tmp_path: Path) -> None:
    path = ROOT / "compose" / folder / "certgate" / "certgate.yaml"
    config = load_config_text(path.read_text(), str(path), tmp_path)
    assert config.state_dir == Path("/var/lib/certgate")
    assert [str(listen) for listen in config.listen] == ["0.0.0.0:8443"]
    assert config.metrics.listen is not None  # the image's health check asks it
    ours: Any = yaml.safe_load(path.read_text())["routes"]
    theirs: Any = yaml.safe_load((ROOT / "config" / original).read_text())["routes"]
    # The app's route, then the enrollment links' route (docs/phone.md).
    assert len(ours) == len(theirs) == 2
    for mine, original in zip(ours, theirs, strict=True):
        for key in ("host", "path", "client_auth", "allow", "rules", "timeouts", "max_body",
                    "forward_client_cert", "trust_forwarded"):
            assert mine.get(key) == original.get(key), key
    assert ours[0]["upstream"].startswith("http://")
    assert "127.0.0.1" not in ours[0]["upstream"]
    assert ours[1]["upstream"] == theirs[1]["upstream"] == "enroll"


def test_ha_compose_network_matches_the_trusted_proxies_it_documents() -> None:
    text = (ROOT / "compose" / "home-assistant" / "compose.yaml").read_text()
    compose: Any = yaml.safe_load(text)
    subnet = compose["networks"]["ha"]["ipam"]["config"][0]["subnet"]
    assert re.search(rf"trusted_proxies:\n#\s+- {re.escape(subnet)}", text)
    services = compose["services"]
    assert "ports" not in services["homeassistant"]
    certgate = services["certgate"]
    assert certgate["read_only"] is True
    assert certgate["cap_drop"] == ["ALL"]
    assert certgate["ports"] == ["${CERTGATE_PORT:-443}:8443"]


def test_immich_override_adds_only_certgate() -> None:
    compose: Any = yaml.safe_load(
        (ROOT / "compose" / "immich" / "certgate.compose.yaml").read_text())
    assert list(compose["services"]) == ["certgate"]
    assert compose["services"]["certgate"]["depends_on"] == ["immich-server"]


def test_containerfile_essentials() -> None:
    text = (ROOT / "Containerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=docker\.io/library/python:\S+-slim", text, re.M)
    assert re.search(r"^USER \$\{UID\}:\$\{GID\}$", text, re.M)
    assert re.search(r"^ARG UID=(\d+)$", text, re.M).group(1) != "0"  # type: ignore[union-attr]
    assert 'ENTRYPOINT ["certgate"]' in text
    assert 'CMD ["run"]' in text
    assert "EXPOSE 8443" in text
    assert 'CMD ["certgate", "health"]' in text


def test_ignore_files_agree_and_keep_secrets_out() -> None:
    container = (ROOT / ".containerignore").read_text()
    assert (ROOT / ".dockerignore").read_text() == container
    lines = [line for line in container.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"  # everything out, then only what the build needs
    assert {line for line in lines if line.startswith("!")} == {
        "!pyproject.toml", "!README.md", "!src/"}

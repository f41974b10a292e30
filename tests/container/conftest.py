"""Build certgate's container image from this checkout, on a local base (see
support.podman), once per session; every test here is marked ``container``."""

from __future__ import annotations

import pytest

from support.podman import (
    BASE,
    HOST_CA_BUNDLE,
    IMAGE,
    ROOT,
    RUN_FLAGS,
    Timings,
    build_base,
    missing_tools,
    podman,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.container)
            item.add_marker(pytest.mark.timeout(900))


_TIMINGS = Timings()


@pytest.fixture(scope="session")
def timings() -> Timings:
    return _TIMINGS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TIMINGS.steps:
        terminalreporter.write_line(_TIMINGS.report())


@pytest.fixture(scope="session")
def image(timings: Timings) -> str:
    """The image built from this checkout's Containerfile on the local base."""
    why = missing_tools()
    if why is not None:
        pytest.skip(why)
    build_base(timings)
    volume = ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"] \
        if HOST_CA_BUNDLE.is_file() else []
    with timings.step("build the image"):
        podman("build", "--format", "docker", *RUN_FLAGS[:2], "--network", "host",
               "--build-arg", f"BASE_IMAGE={BASE}", *volume, "--tag", IMAGE,
               "--file", str(ROOT / "Containerfile"), str(ROOT), timeout=900)
    return IMAGE



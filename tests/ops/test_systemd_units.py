"""systemd/: the units pass ``systemd-analyze verify`` with nothing to report,
the service's ``systemd-analyze security`` exposure stays "OK" or better, and
the commands the units run work as written.

``systemd-analyze verify`` also checks that each ExecStart binary exists. The
units name /usr/bin/python3 (Debian's interpreter, with certgate installed
for it); where that is not the interpreter running these tests, the files are
verified as shipped when /usr/bin/python3 exists, and always as a copy whose
interpreter is this one, so the check never depends on the host's Python.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from certgate.ca import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
UNIT_FILES = sorted([*UNITS.glob("*.service"), *UNITS.glob("*.timer")])
SHIPPED_PYTHON = "/usr/bin/python3"
STATE_DIR = "/var/lib/certgate"
CONFIG = "/etc/certgate/certgate.yaml"
# "OK" is below 5.0 in systemd-analyze's scale; the service is at 1.4 today,
# so 2.0 catches a hardening line lost in an edit long before it gets there.
MAX_EXPOSURE = {"certgate.service": 2.0, "certgate-crl.service": 1.0,
                "certgate-renew.service": 2.0}
_EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+) (\w+)")


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze not installed (Debian: apt-get install "
                    "--no-install-recommends systemd; .ci/run installs it)")
    return found


def _directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _verify(paths: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_analyze(), "verify", *map(str, paths)], cwd=cwd,
                          capture_output=True, text=True, check=False, timeout=60)


def test_units_verify_with_this_python(tmp_path: Path) -> None:
    analyze = _analyze()
    copies = []
    for unit in UNIT_FILES:
        text = unit.read_text()
        if unit.suffix == ".service":
            assert f"ExecStart={SHIPPED_PYTHON} -m certgate " in text, unit.name
            text = text.replace(f"={SHIPPED_PYTHON} ", f"={sys.executable} ")
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(copy)
    result = subprocess.run([analyze, "verify", *map(str, copies)], cwd=tmp_path,
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_units_verify_as_shipped() -> None:
    _analyze()
    if not Path(SHIPPED_PYTHON).exists():
        pytest.skip(f"{SHIPPED_PYTHON} (the units' ExecStart) does not exist on this host")
    result = _verify(UNIT_FILES, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_would_notice_a_broken_unit(tmp_path: Path) -> None:
    """The verify tests above are not vacuous: a missing binary is reported."""
    broken = tmp_path / "certgate.service"
    broken.write_text((UNITS / "certgate.service").read_text()
                      .replace(SHIPPED_PYTHON, "/nonexistent/python3"))
    result = _verify([broken], tmp_path)
    assert result.returncode != 0
    assert "/nonexistent/python3" in result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_security_exposure_is_ok_or_better(name: str) -> None:
    analyze = _analyze()
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager",
                             str(UNITS / name)],
                            capture_output=True, text=True, check=False, timeout=60)
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (needs systemd 250 or later)")
    match = _EXPOSURE.search(result.stdout)
    assert match is not None, result.stdout + result.stderr
    exposure, level = float(match.group(2)), match.group(3)
    assert level in {"PERFECT", "SAFE", "OK"}, result.stdout
    assert exposure <= MAX_EXPOSURE[name], result.stdout


def test_service_runs_certgate_as_the_docs_say() -> None:
    unit = _directives(UNITS / "certgate.service")
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == [f"{SHIPPED_PYTHON} -m certgate run -c {CONFIG}"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["StateDirectory"] == ["certgate"]
    assert unit["ConfigurationDirectory"] == ["certgate"]
    # certgate.metrics keeps its multiprocess files under $RUNTIME_DIRECTORY.
    assert unit["RuntimeDirectory"] == ["certgate"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["MemoryDenyWriteExecute"] == ["yes"]
    assert unit["User"] == ["certgate"]
    # TimeoutStopSec must leave room for limits.shutdown_grace (30 s by default).
    assert int(unit["TimeoutStopSec"][0].rstrip("s")) > 30


def test_example_configs_keep_their_state_where_the_units_look() -> None:
    crl_args = shlex.split(_directives(UNITS / "certgate-crl.service")["ExecStart"][0])
    assert crl_args[crl_args.index("--state") + 1] == STATE_DIR
    condition = _directives(UNITS / "certgate-crl.service")["ConditionPathExists"][0]
    assert condition.startswith(STATE_DIR + "/")
    for name in ("home-assistant.yaml", "immich.yaml"):
        config = yaml.safe_load((ROOT / "config" / name).read_text())
        assert config["state_dir"] == STATE_DIR, name


def test_crl_service_command_re_signs_the_crl(tmp_path: Path) -> None:
    """The CRL unit's ExecStart, run as written against a real CA state."""
    state = tmp_path / "state"
    ca = CertificateAuthority.init(state, name="timer test CA")
    unit = _directives(UNITS / "certgate-crl.service")
    assert unit["Type"] == ["oneshot"]
    condition = Path(unit["ConditionPathExists"][0].replace(STATE_DIR, str(state)))
    assert condition.is_file(), "the unit's condition must hold once a CA exists"
    args = shlex.split(unit["ExecStart"][0])
    assert args[0] == SHIPPED_PYTHON
    args = [sys.executable, *(str(state) if a == STATE_DIR else a for a in args[1:])]
    crl = state / "ca" / "crl.pem"
    before = crl.read_bytes()
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert crl.read_bytes() != before
    assert ca.root_cert_path.is_file()


def test_timer_runs_the_crl_service_daily() -> None:
    timer = _directives(UNITS / "certgate-crl.timer")
    assert timer["OnCalendar"] == ["daily"]
    assert timer["Persistent"] == ["true"]
    assert timer["WantedBy"] == ["timers.target"]


def test_renew_timer_runs_the_renew_service_hourly() -> None:
    """A 24-hour certificate is due 16 hours in: hourly checks leave 8 hours."""
    timer = _directives(UNITS / "certgate-renew.timer")
    assert timer["OnCalendar"] == ["hourly"]
    assert timer["Persistent"] == ["true"]
    service = _directives(UNITS / "certgate-renew.service")
    assert service["Type"] == ["oneshot"]
    args = shlex.split(service["ExecStart"][0])
    assert args[:4] == [SHIPPED_PYTHON, "-m", "certgate", "renew"]
    assert "--daemon" not in args  # the timer starts it; each run decides and exits

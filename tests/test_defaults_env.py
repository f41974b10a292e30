"""$CERTGATE_CONFIG, $CERTGATE_STATE_DIR and $CERTGATE_LISTEN: the container image's
defaults, moved without editing any file (see certgate.defaults)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from certgate.config.schema import Listen
from certgate.defaults import embedded_default, existing_config_file
from certgate.errors import ConfigError, UsageError


def test_embedded_default_unchanged_without_env(tmp_path: Path) -> None:
    config = embedded_default(tmp_path, env={})
    assert config.listen == (Listen("127.0.0.1", 8443),)
    assert config.state_dir == tmp_path / "certgate-data"
    assert config.source == "<embedded default>"


def test_env_moves_listen_and_state(tmp_path: Path) -> None:
    config = embedded_default(tmp_path, env={"CERTGATE_LISTEN": "0.0.0.0:8443, [::]:8443",
                                             "CERTGATE_STATE_DIR": "/var/lib/certgate"})
    assert config.listen == (Listen("0.0.0.0", 8443), Listen("::", 8443))
    assert config.state_dir == Path("/var/lib/certgate")


def test_env_values_cannot_inject_yaml(tmp_path: Path) -> None:
    """A value is one quoted YAML string: it cannot add keys to the config."""
    config = embedded_default(tmp_path, env={
        "CERTGATE_STATE_DIR": '/x"\nworkers: 7\nrouted: "'})
    assert config.workers != 7
    assert str(config.state_dir).startswith("/x")
    with pytest.raises(ConfigError) as caught:
        embedded_default(tmp_path, env={"CERTGATE_LISTEN": 'nonsense"]\nworkers: 7 #'})
    assert any("CERTGATE_LISTEN" in problem for problem in caught.value.problems)


def test_a_directory_where_the_config_should_be_is_an_error(tmp_path: Path) -> None:
    """docker run -v ./certgate.yaml:/etc/certgate/certgate.yaml with no such host file
    mounts a directory; running the embedded default instead would hide it."""
    mounted = tmp_path / "certgate.yaml"
    assert existing_config_file({"CERTGATE_CONFIG": str(mounted)}) is None
    mounted.mkdir()
    with pytest.raises(UsageError, match="is not a file"):
        existing_config_file({"CERTGATE_CONFIG": str(mounted)})


def _certgate(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certgate", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=cwd,
                          env={**os.environ, **env})


def test_ca_verbs_follow_the_config_run_would_use(tmp_path: Path) -> None:
    """In the container, `ca issue` without --state must use the mounted config's
    state_dir, the CA `run` serves, not a second one somewhere else."""
    state = tmp_path / "state"
    config = tmp_path / "etc" / "certgate.yaml"
    config.parent.mkdir()
    config.write_text(f"state_dir: {state}\nroutes: [{{host: localhost, upstream: whoami}}]\n")
    env = {"CERTGATE_CONFIG": str(config), "CERTGATE_STATE_DIR": str(tmp_path / "elsewhere")}
    init = _certgate("ca", "init", cwd=tmp_path, env=env)
    assert init.returncode == 0, init.stderr
    assert (state / "ca" / "root.crt").is_file()
    assert not (tmp_path / "elsewhere").exists()
    issue = _certgate("ca", "issue", "me", "--out", str(tmp_path / "out"), cwd=tmp_path,
                      env=env)
    assert issue.returncode == 0, issue.stderr
    # With no config at $CERTGATE_CONFIG, $CERTGATE_STATE_DIR names the state.
    config.unlink()
    listed = _certgate("ca", "list", cwd=tmp_path, env=env)
    assert listed.returncode != 0
    assert "elsewhere" in listed.stderr
    assert "$CERTGATE_CONFIG or $CERTGATE_STATE_DIR" in listed.stderr
    # --state still wins over both.
    explicit = _certgate("ca", "list", "--state", str(state), cwd=tmp_path, env=env)
    assert explicit.returncode == 0, explicit.stderr
    assert "me" in explicit.stdout


def test_start_hints_name_the_certgate_that_runs(tmp_path: Path) -> None:
    """The README installs into .venv without activating it: the printed
    next steps said `certgate ca issue ...`, which is not on PATH then. They
    name the program as it was started when `certgate` on PATH is another."""
    bin_dir = tmp_path / "venv-bin"
    bin_dir.mkdir()
    script = bin_dir / "certgate"
    script.write_text(f"#!{sys.executable}\nfrom certgate.defaults import command_name\n"
                      "print(command_name())\n")
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    env["PATH"] = "/usr/bin:/bin"  # no certgate there
    shown = subprocess.run([str(script)], capture_output=True, text=True, timeout=60,
                           check=True, env=env).stdout.strip()
    assert shown == str(script)
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    shown = subprocess.run([str(script)], capture_output=True, text=True, timeout=60,
                           check=True, env=env).stdout.strip()
    assert shown == "certgate"

"""Issue #12, point 4: the `ca` verbs at first contact, run as a user types them.

Every test runs ``python3 -m certgate ca ...`` as a real process in a
temporary working directory:

* ``--out DIR`` creates a missing directory, private (0700), for every verb
  that takes it (the README's own ``--out ./out``);
* ``ca list | head -1`` ends quietly when the reader goes away (no
  BrokenPipe traceback), as coreutils do;
* a verb run where there is no CA says where it looked and how to point
  elsewhere before it mentions ``ca init``;
* a new CA's default name tells two CAs apart (host name and a random tag),
  and ``--name`` still wins.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID


def certgate(*args: str | Path, cwd: Path, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "certgate", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _common_name(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A working directory with a CA in ./certgate-data, as after `ca init`."""
    certgate("ca", "init", cwd=tmp_path)
    return tmp_path


# -- --out creates the directory ------------------------------------------------------


@pytest.mark.parametrize("verb", ["issue", "renew", "sign", "issue-server"])
def test_out_creates_a_missing_directory_private(home: Path, verb: str) -> None:
    out = Path("out") / "nested"
    if verb == "renew":
        certgate("ca", "issue", "alice-phone", "--out", "first", cwd=home)
        certgate("ca", "renew", "alice-phone", "--out", out, cwd=home)
        assert (home / out / "alice-phone.key").is_file()
    elif verb == "sign":
        key = home / "dev.key"
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-subj",
                        "/CN=dev", "-out", str(home / "dev.csr")], check=True,
                       capture_output=True, timeout=60)
        certgate("ca", "sign", "dev.csr", "--out", out, cwd=home)
        assert (home / out / "dev.crt").is_file()
    elif verb == "issue-server":
        certgate("ca", "issue-server", "nas.home.test", "--out", out, cwd=home)
        assert any((home / out).iterdir())
    else:
        certgate("ca", "issue", "alice-phone", "--role", "family", "--p12", "--out", out,
                 cwd=home)
        assert (home / out / "alice-phone.p12").is_file()
    for created in (home / "out", home / out):
        assert stat.S_IMODE(created.stat().st_mode) == 0o700, created


def test_out_leaves_an_existing_directory_mode_alone(home: Path) -> None:
    shared = home / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    certgate("ca", "issue", "me", "--out", shared, cwd=home)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_out_that_is_a_file_is_a_one_line_error(home: Path) -> None:
    (home / "taken").write_text("x")
    proc = certgate("ca", "issue", "me", "--out", "taken", cwd=home, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--out taken" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- closed pipe ----------------------------------------------------------------------


@pytest.mark.parametrize("form", [["--json"], []])
def test_list_into_a_closed_pipe_ends_quietly(home: Path, form: list[str]) -> None:
    """`ca list | head -1`, made deterministic: the reader is gone before the
    first write (head exits after one line; what is written after that fails)."""
    certgate("ca", "issue", "alice-phone", cwd=home)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        lister = subprocess.run([sys.executable, "-m", "certgate", "ca", "list", *form],
                                cwd=home, stdout=write_end, stderr=subprocess.PIPE,
                                timeout=60, check=False)
    finally:
        os.close(write_end)
    assert lister.stderr.decode() == ""
    assert lister.returncode in (0, 141, -13), lister.returncode  # quiet, like coreutils


def test_list_into_head_prints_the_first_line(home: Path) -> None:
    certgate("ca", "issue", "alice-phone", cwd=home)
    proc = subprocess.run(f"{sys.executable} -m certgate ca list --json | head -1",
                          shell=True, cwd=home, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.stdout == "[\n"
    assert proc.stderr == ""


def test_list_shows_each_devices_expiry(home: Path) -> None:
    certgate("ca", "issue", "alice-phone", "--days", "10", cwd=home)
    rows = json.loads(certgate("ca", "list", "--json", cwd=home).stdout)
    assert {"name", "serial", "kind", "roles", "not_before", "not_after",
            "status"} <= set(rows[0])
    (row,) = [r for r in rows if r["name"] == "alice-phone"]
    table = certgate("ca", "list", cwd=home).stdout.splitlines()
    assert "NOT AFTER" in table[0]
    assert any("alice-phone" in line and row["not_after"] in line for line in table)


# -- no CA here -------------------------------------------------------------------------


@pytest.mark.parametrize("verb", [["list"], ["issue", "me"], ["bundle"], ["crl"]])
def test_no_ca_here_says_where_it_looked_and_how_to_point_elsewhere(
        tmp_path: Path, verb: list[str]) -> None:
    proc = certgate("ca", *verb, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    text = proc.stderr
    looked = str(tmp_path / "certgate-data")
    assert looked in text
    assert "--state DIR" in text
    assert "-c certgate.yaml" in text
    init = text.index("certgate ca init")
    assert text.index("--state DIR") < init
    assert text.index(looked) < init
    assert not any(tmp_path.iterdir()), "a verb must not create state where there is none"


def test_no_ca_in_the_state_dir_named_by_a_config(tmp_path: Path) -> None:
    (tmp_path / "certgate.yaml").write_text(
        f"state_dir: {tmp_path / 'elsewhere'}\nlisten: ['127.0.0.1:0']\n"
        "routes: [{host: localhost, upstream: whoami}]\n")
    proc = certgate("ca", "list", "-c", "certgate.yaml", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert str(tmp_path / "elsewhere") in proc.stderr
    assert "certgate.yaml" in proc.stderr


# -- distinguishable CA names -----------------------------------------------------------


def test_default_ca_names_tell_two_cas_apart(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for place in (first, second):
        place.mkdir()
        certgate("ca", "init", cwd=place)
    names = [_common_name(p / "certgate-data" / "ca" / "root.crt") for p in (first, second)]
    assert names[0] != names[1]
    short = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname().split(".")[0])
    for name in names:
        assert len(name) <= 64
        assert re.fullmatch(r"certgate CA (\S+ )?[0-9a-f]{4} Root R1", name), name
        if short:
            assert short[:8] in name
    issuing = sorted((first / "certgate-data" / "ca").glob("*.crt"))
    for path in issuing:
        assert len(_common_name(path)) <= 64


def test_ca_init_name_still_wins(tmp_path: Path) -> None:
    certgate("ca", "init", "--name", "Home CA", cwd=tmp_path)
    assert _common_name(tmp_path / "certgate-data" / "ca" / "root.crt") == "Home CA Root R1"


def test_env_hostname_does_not_leak_odd_bytes(tmp_path: Path) -> None:
    """The default name is built from the host name with a fixed alphabet only."""
    from certgate.ca.naming import default_ca_name

    name = default_ca_name("évil host/\u202e.local" + "x" * 200)
    assert len(name) <= 64 - len(" Issuing I99")
    assert re.fullmatch(r"certgate CA [A-Za-z0-9-]+ [0-9a-f]{4}", name), name
    assert re.fullmatch(r"certgate CA [0-9a-f]{4}", default_ca_name("..."))
    assert len({default_ca_name("nas") for _ in range(20)}) > 1  # a random tag
    assert os.sep not in name

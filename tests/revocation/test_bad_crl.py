"""Acceptance 2 of the revocation issue: a bad CRL never weakens revocation.

certgate reads an external CRL file (``client_auth.crls: [PATH]``) signed by
the CA's issuing key. Writing a corrupt CRL, then one signed by the wrong key,
is refused with a log line while the previous CRL stays in force: the revoked
client stays refused and the good one stays admitted. Each bad CRL is built
to flip both answers if it were wrongly accepted (it "revokes" the good
client and not the revoked one).

New valid CRLs arrive the ways production writes them, and bite within 2 s:
an atomic rename over the file, and a Kubernetes-style secret volume swap
(``crl.pem -> ..data/crl.pem``, ``..data -> ..TIMESTAMP/``, the ``..data``
link replaced by a rename).

At start, a missing, corrupt or wrongly signed CRL stops certgate with a
non-zero exit and the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import LocalCA, make_local_ca, outcome, refused_as, replace_file
from support.process import wait_until

FAILED = "revocation refresh failed"
PICKUP = 2.0  # the issue: CRL changes are picked up within 2 seconds
START_TIMEOUT = 30.0


def _config(local_ca: LocalCA, upstream_port: int, crl: Path) -> str:
    return f"""
state_dir: {local_ca.state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin], crls: ["{crl}"]}}
routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream_port}"}}
metrics: {{listen: "off"}}
"""


def _admitted(proxy, local_ca: LocalCA, name: str) -> bool:  # type: ignore[no-untyped-def]
    return outcome(proxy.port, local_ca.context(name)) == 200


def _revoked(proxy, local_ca: LocalCA, name: str) -> bool:  # type: ignore[no-untyped-def]
    return refused_as(proxy.port, local_ca.context(name), "revoked")


def _wait_for_failures(proxy, count: int) -> None:  # type: ignore[no-untyped-def]
    wait_until(lambda: proxy.log_text().count(FAILED) >= count, 5,
               f"{count} {FAILED!r} log line(s)")


@pytest.fixture
def crl_file(tmp_path: Path, local_ca: LocalCA) -> Path:
    """carol revoked; dave and erin good."""
    path = tmp_path / "crl" / "issuing.crl.pem"
    path.parent.mkdir()
    path.write_bytes(local_ca.crl([local_ca["carol"].serial], number=1))
    return path


def test_bad_crls_keep_the_previous_one_in_force(start_certgate, local_ca: LocalCA, upstream,
                                                crl_file: Path) -> None:
    proxy = start_certgate(_config(local_ca, upstream.port, crl_file))
    assert _revoked(proxy, local_ca, "carol")
    assert _admitted(proxy, local_ca, "dave")

    # (a) corrupt: a PEM armour around garbage, written in place.
    crl_file.write_bytes(b"-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n")
    _wait_for_failures(proxy, 1)
    assert str(crl_file) in proxy.log_text()
    assert _revoked(proxy, local_ca, "carol")
    assert _admitted(proxy, local_ca, "dave")

    # (b) the issuing CA's name, a stranger's key; it would revoke dave and
    # free carol if it were believed.
    stranger = ec.generate_private_key(ec.SECP256R1())
    replace_file(crl_file, local_ca.crl([local_ca["dave"].serial], key=stranger, number=2))
    _wait_for_failures(proxy, 2)
    assert "signature does not verify" in proxy.log_text()
    assert _revoked(proxy, local_ca, "carol")
    assert _admitted(proxy, local_ca, "dave")

    # (c) not a CRL at all (DER garbage), (d) an empty file, (e) no file.
    crl_file.write_bytes(os.urandom(300))
    _wait_for_failures(proxy, 3)
    replace_file(crl_file, b"")
    _wait_for_failures(proxy, 4)
    crl_file.unlink()
    _wait_for_failures(proxy, 5)
    assert _revoked(proxy, local_ca, "carol")
    assert _admitted(proxy, local_ca, "dave")

    # A good CRL again, in DER this time, revoking erin as well: picked up,
    # and the refusals add up.
    pem = local_ca.crl([local_ca["carol"].serial, local_ca["erin"].serial], number=3)
    der = x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER)
    replace_file(crl_file, der)
    wait_until(lambda: _revoked(proxy, local_ca, "erin"), 5, "erin to be refused")
    assert _revoked(proxy, local_ca, "carol")
    assert _admitted(proxy, local_ca, "dave")


def test_atomic_rename_is_picked_up_within_2s(start_certgate, local_ca: LocalCA, upstream,
                                              crl_file: Path) -> None:
    proxy = start_certgate(_config(local_ca, upstream.port, crl_file))
    assert _admitted(proxy, local_ca, "erin")
    replace_file(crl_file, local_ca.crl([local_ca["carol"].serial, local_ca["erin"].serial],
                                    number=2))
    wait_until(lambda: _revoked(proxy, local_ca, "erin"), PICKUP,
               "erin to be refused after the rename")
    assert _revoked(proxy, local_ca, "carol")
    assert _admitted(proxy, local_ca, "dave")
    assert FAILED not in proxy.log_text()


def _k8s_publish(volume: Path, data: bytes, generation: int) -> None:
    """What the kubelet does for a secret volume update (atomic_writer.go):
    a new timestamped directory, a new ``..data_tmp`` link to it renamed over
    ``..data``, then the old directory removed. The user-visible file is a
    symlink through ``..data`` and never changes itself."""
    stamp = volume / f"..2024_01_0{generation}_00_00_00.{generation:09d}"
    stamp.mkdir()
    (stamp / "crl.pem").write_bytes(data)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    tmp_link = volume / "..data_tmp"
    tmp_link.symlink_to(stamp.name)
    os.replace(tmp_link, volume / "..data")
    if not (volume / "crl.pem").is_symlink():
        (volume / "crl.pem").symlink_to("..data/crl.pem")
    if old is not None:
        for child in (volume / old).iterdir():
            child.unlink()
        (volume / old).rmdir()


def test_kubernetes_symlink_swap_is_picked_up_within_2s(start_certgate, local_ca: LocalCA,
                                                        upstream, tmp_path: Path) -> None:
    volume = tmp_path / "secret"
    volume.mkdir()
    _k8s_publish(volume, local_ca.crl([local_ca["carol"].serial], number=1), 1)
    proxy = start_certgate(_config(local_ca, upstream.port, volume / "crl.pem"))
    assert _revoked(proxy, local_ca, "carol")
    assert _admitted(proxy, local_ca, "erin")

    _k8s_publish(volume, local_ca.crl([local_ca["carol"].serial, local_ca["erin"].serial],
                                      number=2), 2)
    wait_until(lambda: _revoked(proxy, local_ca, "erin"), PICKUP,
               "erin to be refused after the ..data swap")
    assert _revoked(proxy, local_ca, "carol")
    assert _admitted(proxy, local_ca, "dave")

    # A bad CRL through the same swap is refused like any other.
    _k8s_publish(volume, b"-----BEGIN X509 CRL-----\nZ2FyYmFnZQ==\n-----END X509 CRL-----\n",
                 3)
    _wait_for_failures(proxy, 1)
    assert _revoked(proxy, local_ca, "erin")
    assert _admitted(proxy, local_ca, "dave")


# -- at start -----------------------------------------------------------------

@pytest.fixture(scope="module")
def start_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return make_local_ca(tmp_path_factory.mktemp("start-pki"), names=())


def _start(tmp_path: Path, local_ca: LocalCA, crl: Path) -> subprocess.CompletedProcess[str]:
    """``certgate run`` expected to give up at start; a timeout means it served."""
    config = tmp_path / "certgate.yaml"
    config.write_text(_config(local_ca, 9, crl))
    result = subprocess.run([sys.executable, "-m", "certgate", "run", "-c", str(config)],
                            capture_output=True, text=True, check=False, cwd=tmp_path,
                            timeout=START_TIMEOUT)
    assert "ready on" not in result.stderr, "certgate started on a bad CRL"
    return result


def _other_key_crl(local_ca: LocalCA) -> bytes:
    return local_ca.crl([], key=ec.generate_private_key(ec.SECP256R1()))


@pytest.mark.parametrize(("case", "data", "reason"), [
    ("missing", None, "file not found"),
    ("corrupt", b"-----BEGIN X509 CRL-----\nbm9wZQ==\n-----END X509 CRL-----\n",
     "not a PEM or DER CRL"),
    ("garbage", b"\x00" * 64, "not a PEM or DER CRL"),
    ("wrong-key", _other_key_crl, "signature does not verify"),
])
def test_bad_crl_at_start_stops_certgate(tmp_path: Path, start_ca: LocalCA, case: str,
                                         data: object, reason: str) -> None:
    crl = tmp_path / f"{case}.crl"
    if callable(data):
        data = data(start_ca)
    if isinstance(data, bytes):
        crl.write_bytes(data)
    result = _start(tmp_path, start_ca, crl)
    assert result.returncode != 0
    assert str(crl) in result.stderr, result.stderr
    assert reason in result.stderr, result.stderr


def test_crl_of_an_untrusted_issuer_at_start_stops_certgate(tmp_path: Path,
                                                            start_ca: LocalCA) -> None:
    stranger = make_local_ca(tmp_path / "stranger", names=(), ca_name="a stranger's CA")
    crl = tmp_path / "stranger.crl"
    crl.write_bytes(stranger.crl([]))
    result = _start(tmp_path, start_ca, crl)
    assert result.returncode != 0
    assert "is not a trusted CA" in result.stderr, result.stderr


def test_good_crl_at_start_serves(start_certgate, start_ca: LocalCA, upstream,
                                  tmp_path: Path) -> None:
    """Guard for the tests above: the same setup with a valid CRL starts."""
    crl = tmp_path / "good.crl"
    crl.write_bytes(start_ca.crl([]))
    proxy = start_certgate(_config(start_ca, upstream.port, crl))
    assert proxy.port

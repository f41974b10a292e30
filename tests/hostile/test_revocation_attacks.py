"""Issue #11, finding 6: whoever can write a CRL file cannot make revocation go back.

The attacker can write the file certgate reads its CRLs from, but cannot sign:
every CRL written here carries a valid signature of a trusted CA, certgate's
own (``LocalCA.crl``, the issuing CA's real key) or an independent one made
with ``cryptography`` (``support.foreign_ca``). Each attack would un-revoke
carol if it were believed:

* rollback, live: an older CRL (lower CRLNumber, older thisUpdate) written
  over the current one is refused with a logged reason;
* rollback across a restart: the highest CRLNumber / latest thisUpdate per
  source and issuer is kept in the state directory, so the same old CRL
  stops certgate at start (as a bad CRL does), also for a config that does
  not use the built-in CA (its default state directory);
* substitution: another trusted issuer's valid CRL written to the path
  leaves the first issuer's previous CRL in force, logged, and that CRL still
  turns stale at its nextUpdate;
* equal CRLNumber: a different CRL under the same number is refused unless
  its thisUpdate is newer (then it is the CA's newer word).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from revocation.conftest import LocalCA, make_local_ca, outcome, refused_as, replace_file

from support.clients import client_context
from support.foreign_ca import ForeignCA, make_foreign_ca
from support.process import CertgateProcess, wait_until

FAILED = "revocation refresh failed"
STATE_FILE = "revocation-state.json"
START_TIMEOUT = 30.0
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture
def local_ca(tmp_path: Path) -> LocalCA:
    return make_local_ca(tmp_path / "pki")


@pytest.fixture
def foreign(tmp_path: Path) -> ForeignCA:
    return make_foreign_ca(tmp_path / "foreign")


def _config(local_ca: LocalCA, upstream_port: int, crl: Path, extra_ca: str = "") -> str:
    return f"""
state_dir: {local_ca.state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin{extra_ca}], crls: ["{crl}"]}}
routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream_port}"}}
"""


def _revoked(proxy, local_ca: LocalCA, name: str) -> bool:  # type: ignore[no-untyped-def]
    return refused_as(proxy.port, local_ca.context(name), "revoked")


def _admitted(proxy, local_ca: LocalCA, name: str) -> bool:  # type: ignore[no-untyped-def]
    return outcome(proxy.port, local_ca.context(name)) == 200


def _after(proxy, needle: str, local_ca: LocalCA, name: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until the log says ``needle`` or ``name`` got through (the attack
    worked): either ends the wait, the assertions after it tell which."""
    wait_until(lambda: needle in proxy.log_text() or _admitted(proxy, local_ca, name), 8,
               f"{needle!r} in the log")


def test_rollback_to_an_older_crl_is_refused_live(start_certgate, local_ca: LocalCA, upstream,
                                                  tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    old = local_ca.crl([], number=1, last_update=NOW - dt.timedelta(hours=2))
    crl.write_bytes(local_ca.crl([local_ca["carol"].serial], number=2,
                                 last_update=NOW - dt.timedelta(hours=1)))
    proxy = start_certgate(_config(local_ca, upstream.port, crl))
    assert _revoked(proxy, local_ca, "carol")

    replace_file(crl, old)
    _after(proxy, FAILED, local_ca, "carol")
    assert _revoked(proxy, local_ca, "carol")
    assert _admitted(proxy, local_ca, "dave")
    refusal = next(line for line in proxy.log_text().splitlines() if FAILED in line)
    assert str(crl) in refusal, refusal
    assert "rollback" in refusal, refusal
    assert "number 1" in refusal, refusal

    # Same number, older thisUpdate: refused as well.
    replace_file(crl, local_ca.crl([], number=2, last_update=NOW - dt.timedelta(hours=3)))
    wait_until(lambda: proxy.log_text().count(FAILED) >= 2, 8, "the second refusal")
    assert _revoked(proxy, local_ca, "carol")

    # A genuinely newer CRL still gets through, and bites.
    replace_file(crl, local_ca.crl([local_ca["carol"].serial, local_ca["erin"].serial],
                                   number=3))
    wait_until(lambda: _revoked(proxy, local_ca, "erin"), 5, "erin to be refused")
    assert _revoked(proxy, local_ca, "carol")
    state = json.loads((local_ca.state / STATE_FILE).read_text())
    assert 3 in [entry["number"] for entry in state["crls"]]
    assert (local_ca.state / STATE_FILE).stat().st_mode & 0o077 == 0


def _start_fails(workdir: Path) -> tuple[int, str]:
    """``certgate run`` on ``workdir/certgate.yaml``, expected to give up at
    start: (exit code, stderr). Serving instead fails the test."""
    attempt = CertgateProcess(None, workdir)
    try:
        attempt.start(timeout=START_TIMEOUT)
    except AssertionError as exc:
        if attempt.proc is None or attempt.proc.returncode is None:
            raise
        return attempt.proc.returncode, str(exc)
    attempt.stop()
    pytest.fail("certgate started on a rolled-back CRL:\n" + attempt.log_text())


def test_rollback_across_a_restart_stops_certgate(start_certgate, upstream, tmp_path: Path,
                                                  foreign: ForeignCA) -> None:
    """A config that never names a state_dir and trusts only an external CA:
    the high-water mark lives in the default state directory next to it."""
    crl = tmp_path / "foreign.crl"
    carol = foreign.issue("carol")
    crl.write_bytes(foreign.crl([carol.serial], number=7))
    text = f"""
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [{{file: "{foreign.path}", crl: "{crl}"}}]}}
routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream.port}"}}
"""
    proxy = start_certgate(text)
    state_dir = tmp_path / "certgate-data"  # the loader's default: beside the config
    ctx = client_context(state_dir / "ca" / "root.crt", carol.cert, carol.key)
    assert refused_as(proxy.port, ctx, "revoked")
    wait_until(lambda: (state_dir / STATE_FILE).exists(), 5, "the high-water file")
    assert proxy.stop() == 0

    crl.write_bytes(foreign.crl([], number=6))  # validly signed, and older
    assert proxy.config_path == tmp_path / "certgate.yaml"
    code, stderr = _start_fails(tmp_path)
    assert code != 0
    assert str(crl) in stderr, stderr
    assert "rollback" in stderr, stderr

    # The CA's next CRL starts again.
    crl.write_bytes(foreign.crl([carol.serial], number=8))
    again = start_certgate(text)
    assert refused_as(again.port, ctx, "revoked")


def test_substituted_crl_of_another_trusted_issuer(start_certgate, local_ca: LocalCA, upstream,
                                                   tmp_path: Path, foreign: ForeignCA) -> None:
    crl = tmp_path / "crl.pem"
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)
    crl.write_bytes(local_ca.crl([local_ca["carol"].serial], number=4, next_update=soon))
    foreign_crl = tmp_path / "foreign.crl"
    foreign_crl.write_bytes(foreign.crl([]))
    proxy = start_certgate(_config(local_ca, upstream.port, crl,
                                   f', {{file: "{foreign.path}", crl: "{foreign_crl}"}}'))
    assert _revoked(proxy, local_ca, "carol")
    assert _admitted(proxy, local_ca, "dave")

    # The foreign CA's own valid CRL, written to the built-in issuer's path.
    replace_file(crl, foreign.crl([], number=9))
    _after(proxy, "no longer", local_ca, "carol")
    assert _revoked(proxy, local_ca, "carol")
    line = next(line for line in proxy.log_text().splitlines() if "no longer" in line)
    assert str(crl) in line, line
    assert local_ca.issuing_cert().subject.rfc4514_string() in line, line

    # The kept CRL still goes stale at its nextUpdate: the issuer's clients
    # are refused from then on (stale_crl: reject), as with any stale CRL.
    wait_until(lambda: refused_as(proxy.port, local_ca.context("dave"), "stale CRL"), 20,
               "dave to be refused once the kept CRL is past its nextUpdate")


def test_equal_crl_number(start_certgate, local_ca: LocalCA, upstream, tmp_path: Path) -> None:
    """Same number and thisUpdate but other contents: refused (two lists cannot
    both be the CA's word for one moment). Same number, newer thisUpdate: the
    CA re-signed (RFC 5280 5.2.3 asks for a new number, but only the CA can
    make it): accepted and logged."""
    crl = tmp_path / "crl.pem"
    at = NOW - dt.timedelta(minutes=30)
    crl.write_bytes(local_ca.crl([local_ca["carol"].serial], number=5, last_update=at))
    proxy = start_certgate(_config(local_ca, upstream.port, crl))
    assert _revoked(proxy, local_ca, "carol")

    replace_file(crl, local_ca.crl([], number=5, last_update=at))
    _after(proxy, FAILED, local_ca, "carol")
    assert _revoked(proxy, local_ca, "carol")
    assert "same CRL number" in proxy.log_text()

    replace_file(crl, local_ca.crl([local_ca["carol"].serial, local_ca["erin"].serial],
                                   number=5, last_update=at + dt.timedelta(minutes=1)))
    wait_until(lambda: _revoked(proxy, local_ca, "erin"), 5, "erin to be refused")
    assert _revoked(proxy, local_ca, "carol")
    assert "reused CRL number 5" in proxy.log_text()

"""The fuzz targets (request heads from clients, response heads from
upstreams): their seeds, their regressions, and a bounded run of each.

The invariant is stated in request_head.py's docstring. The bounded run lasts
``CERTGATE_FUZZ_SECONDS`` (default 10 s for a local run; ``.ci/run`` exports
60) and fails on any crash, printing the input that caused it: add that input
to ``REGRESSIONS`` below and fix the cause.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.request_head import check
from fuzz.upstream_response import check as check_response

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus" / "request_head"
UPSTREAM_CORPUS = Path(__file__).resolve().parent / "corpus" / "upstream_response"
SECONDS = int(os.environ.get("CERTGATE_FUZZ_SECONDS", "10"))

#: Inputs that once broke the invariant (or nearly did), each must now pass.
REGRESSIONS = {
    # property tests: ..%3B is "..;" to a decode-then-strip upstream
    "dot-encoded-params": b"\x00GET /public/..%3B/admin HTTP/1.1\r\nHost: app.test\r\n\r\n",
    # h11 moves Host first when it writes a request; nothing else may move
    "host-second": b"\x02GET /a HTTP/1.1\r\nstoH: open.test\xfb\xf5\r\nHost: open.test\r\n\r\n",
    "spoofed-identity-any-spelling": (
        b"\x06GET / HTTP/1.1\r\nHost: mixed.test\r\nx_CLIENT.cn: admin\r\n"
        b"X-Forwarded-Client-Cert: Hash=1\r\nConnection: X-Client-Verify\r\n\r\n"),
    # issue #11 finding 8: Connection naming a framing header crashed admission
    "8-connection-names-framing": (
        b"\x02GET / HTTP/1.1\r\nHost: open.test\r\nConnection: host\r\n\r\n"),
    "8-control-bytes": b"\x02GET / HTTP/1.1\r\nHost: open.test\r\nX-A: a\x01b\r\n\r\n",
    "8-http10-te": (b"\x02POST / HTTP/1.0\r\nHost: open.test\r\nTransfer-Encoding: chunked"
                    b"\r\n\r\n0\r\n\r\n"),
    "8-http-version": b"\x02GET / HTTP/1.2\r\nHost: open.test\r\n\r\n",
    # finding 1: an h2c upgrade on a public path
    "1-upgrade-token": (b"\x00GET /public/x HTTP/1.1\r\nHost: app.test\r\n"
                        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"),
}

@pytest.mark.parametrize("seed", sorted(p.name for p in CORPUS.iterdir()))
def test_seed_corpus_holds_the_invariant(seed: str) -> None:
    check((CORPUS / seed).read_bytes())


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regressions(name: str) -> None:
    check(REGRESSIONS[name])


#: Upstream responses that once broke the response reader's invariant.
UPSTREAM_REGRESSIONS = {
    # h11 forwards one Content-Length where the upstream repeated it
    "repeated-content-length": (b"\x00HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: t\r\n"
                                b"Content-Length: 0\r\nX-B: x\r\n\r\n"),
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_REGRESSIONS))
def test_upstream_regressions(name: str) -> None:
    check_response(UPSTREAM_REGRESSIONS[name])


@pytest.mark.parametrize("seed", sorted(p.name for p in UPSTREAM_CORPUS.iterdir()))
def test_upstream_seed_corpus_holds_the_invariant(seed: str) -> None:
    check_response((UPSTREAM_CORPUS / seed).read_bytes())


@pytest.mark.timeout(SECONDS + 180)
@pytest.mark.parametrize(("target", "corpus"), [("request_head", CORPUS),
                                                ("upstream_response", UPSTREAM_CORPUS)])
def test_fuzz_for_a_bounded_time(tmp_path: Path, target: str, corpus: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        if "CERTGATE_FUZZ_SECONDS" in os.environ:
            pytest.fail("CERTGATE_FUZZ_SECONDS is set but atheris is not installed")
        pytest.skip("atheris is not installed (pip install atheris; Linux x86_64 wheels)")
    found = tmp_path / "corpus"
    found.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", f"tests.fuzz.{target}", f"-max_total_time={SECONDS}",
         f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(found), str(corpus)],
        cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 150, check=False)
    output = done.stdout + done.stderr
    crashes = sorted(tmp_path.glob("crash-*"))
    found_inputs = [c.read_bytes() for c in crashes]
    assert not found_inputs, f"the fuzzer found {found_inputs!r}\n{output[-4000:]}"
    assert done.returncode == 0, output[-4000:]
    assert "Done " in output, output[-2000:]

"""Policy acceptance 4: a certificate from another CA, made here with the
``openssl`` command line, gets its roles from config role rules.

The CA and the leaves are built the way an admin with an old openssl CA (or
step-ca, or Vault) would: ``req -x509`` for the CA, ``req`` + ``x509 -req``
with an extension file for each leaf, a SPIFFE ID as URI SAN. The issuer
matcher is written exactly as ``openssl x509 -issuer -nameopt RFC2253``
prints it, as the example config tells users to.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.clients import Connection, client_context

VERSIONS = ["1.2", "1.3"]

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth:
  trusted_cas: [builtin, %(ca)s]
%(roles)s
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%(port)d"
    client_auth: require
    rules:
      - {path: /admin/*, allow: [role:ops]}
"""

ROLES = """\
  roles:
    - {match: "san:URI:spiffe://example.org/ns/ops/*", roles: [ops]}
    - match: ["o:Example, Inc.", "issuer:%s"]
      roles: [partner]
"""


@dataclass(frozen=True)
class External:
    ca: Path
    issuer_dn: str  # as openssl prints it with -nameopt RFC2253
    leaves: dict[str, tuple[Path, Path]]  # name -> (cert, key)


def _openssl(cwd: Path, *args: str) -> str:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> External:
    d = tmp_path_factory.mktemp("external-ca")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(d, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=External Test CA/O=Elsewhere",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    leaves: dict[str, tuple[Path, Path]] = {}
    for name, spiffe in (("deploy", "spiffe://example.org/ns/ops/sa/deploy"),
                         ("intruder", "spiffe://example.org/ns/dev/sa/intruder")):
        (d / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage=clientAuth\nsubjectAltName=URI:{spiffe}\n"
            "authorityKeyIdentifier=keyid\n")
        _openssl(d, "req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}/O=Example, Inc./OU=platform")
        _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt")
        leaves[name] = (d / f"{name}.crt", d / f"{name}.key")
    printed = _openssl(d, "x509", "-noout", "-issuer", "-nameopt", "RFC2253",
                       "-in", "deploy.crt").strip()
    assert printed.startswith("issuer=")
    return External(d / "ca.crt", printed.removeprefix("issuer="), leaves)


def _config(external: External, port: int, *, roles: bool) -> str:
    text = ROLES % external.issuer_dn if roles else ""
    return CONFIG % {"ca": external.ca, "roles": text, "port": port}


def _get(port: int, pki, external: External, who: str, version: str, path: str):  # type: ignore[no-untyped-def]
    cert, key = external.leaves[who]
    with Connection(port, client_context(pki.root, cert, key, version=version)) as conn:
        return conn.request("GET", path)


@pytest.mark.parametrize("version", VERSIONS)
def test_uri_san_rule_gives_the_role(start_certgate, upstream, pki, external, version):
    proxy = start_certgate(_config(external, upstream.port, roles=True))
    response = _get(proxy.port, pki, external, "deploy", version, "/admin/x")
    assert response.status == 200, response.body
    headers = dict(json.loads(response.body)["headers"])
    assert headers["x-client-roles"] == "ops,partner"
    assert headers["x-client-san"] == "URI:spiffe://example.org/ns/ops/sa/deploy"
    # Same CA, same O, but a SPIFFE ID outside ns/ops: partner only, no ops.
    refused = _get(proxy.port, pki, external, "intruder", version, "/admin/x")
    assert refused.status == 403
    assert b"rule /admin/*" in refused.body
    assert b"CN=intruder" in refused.body
    assert b"roles partner" in refused.body
    ok = _get(proxy.port, pki, external, "intruder", version, "/elsewhere")
    assert ok.status == 200
    assert dict(json.loads(ok.body)["headers"])["x-client-roles"] == "partner"


@pytest.mark.parametrize("version", VERSIONS)
def test_without_the_rule_there_is_no_role(start_certgate, upstream, pki, external, version):
    proxy = start_certgate(_config(external, upstream.port, roles=False))
    response = _get(proxy.port, pki, external, "deploy", version, "/admin/x")
    assert response.status == 403
    assert b"roles none" in response.body
    ok = _get(proxy.port, pki, external, "deploy", version, "/elsewhere")
    assert ok.status == 200
    assert dict(json.loads(ok.body)["headers"])["x-client-roles"] == ""


def test_explain_shows_the_rule_role(upstream, pki, external, tmp_path):
    config = tmp_path / "explain.yaml"
    config.write_text(_config(external, upstream.port, roles=True)
                      .replace("{state}", str(pki.state)))
    cert = str(external.leaves["deploy"][0])
    result = subprocess.run(
        [sys.executable, "-m", "certgate", "explain", "-c", str(config), "--cert", cert,
         "https://localhost/admin/x"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "roles:       ops, partner (built-in inventory: none" in result.stdout
    assert "allow by role:ops" in result.stdout

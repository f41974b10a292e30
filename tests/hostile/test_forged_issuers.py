"""Forged issuers: names copied from one CA into certificates another CA signs.

Findings 2 and 3 of the black-box attack, and the explain mismatch:

* another *trusted* CA (RSA-2048, P-256, P-384, Ed25519) mints an
  intermediate with the built-in issuing CA's subject DN and
  subjectKeyIdentifier, then a leaf with alice's serial: it must not get
  alice's inventory role, and explain must agree;
* ``issuer:DN`` in a role rule must not be satisfied by a leaf another
  trusted CA signed under a copy of that DN; ``issuer-key:`` pins the key;
* ``certgate explain`` must refuse what the handshake refuses: an unknown
  critical extension, an RSA-1024 key, a pathLenConstraint violation, a
  leaf naming a trusted issuer it was not signed by.

Every case is judged by a real certgate over real TLS 1.2 and 1.3, and what
the upstream received is checked against the verdict.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from certgate.tls.issuers import key_sha256

from support.clients import Connection, Response, client_context
from support.forge import ALGORITHMS, Issued, make_ca, make_leaf, name, write_client
from support.process import CertgateProcess
from support.upstream import Upstream

VERSIONS = ["1.2", "1.3"]
PARTNER_DN = name("Partner CA", (NameOID.ORGANIZATION_NAME, "Partner"))

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
metrics: {{listen: "off"}}
client_auth:
  trusted_cas: [builtin, {evil}, {partner}]
  crls: [builtin]
  roles:
    - match: ["issuer:{partner_dn}", "cn:ops-*"]
      roles: [partner]
    - match: ["issuer-key:{partner_key}", "cn:ops-*"]
      roles: [pinned]
routes:
  - host: localhost
    upstream: "http://127.0.0.1:{port}"
    client_auth: require
    rules:
      - {{path: /admin/*, allow: [role:ops]}}
      - {{path: /partner/*, allow: [role:partner]}}
      - {{path: /pinned/*, allow: [role:pinned]}}
"""


@dataclass
class World:
    dir: Path
    root: Path  # certgate's server trust root for the client
    proc: CertgateProcess
    config: Path
    upstream: Upstream
    clients: dict[str, tuple[Path, Path]]


def _issuing(pki) -> x509.Certificate:  # type: ignore[no-untyped-def]
    return x509.load_pem_x509_certificate(pki.ca.issuing_cert_path.read_bytes())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pki, upstream: Upstream  # type: ignore[no-untyped-def]
          ) -> Iterator[World]:
    d = tmp_path_factory.mktemp("forged")
    issuing = _issuing(pki)
    issuing_ski = issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    clients: dict[str, tuple[Path, Path]] = {}
    evil_roots: list[Issued] = []
    for algorithm in ALGORITHMS:
        root = make_ca(name(f"Evil Root {algorithm}"), algorithm=algorithm)
        evil_roots.append(root)
        # The built-in issuing CA's subject and SKI, under another trusted
        # root. The twin's own key is not ECDSA: OpenSSL (trusted-first)
        # would otherwise pick the real, trusted P-256 issuing CA as the
        # leaf's issuer by name and AKI and fail the signature, refusing the
        # handshake. With an RSA or Ed25519 key the handshake succeeds, which
        # is what the attack used.
        twin = make_ca(issuing.subject, issuer=root, ski=issuing_ski.digest,
                       algorithm="ed25519" if algorithm == "ed25519" else "rsa2048")
        leaf = make_leaf(twin, name("alice"), serial=pki["alice"].serial)
        clients[f"twin-{algorithm}"] = write_client(d, f"twin-{algorithm}", leaf, twin)
        # The partner CA's DN, under another trusted key.
        fake_partner = make_ca(PARTNER_DN, algorithm=algorithm, issuer=root)
        clients[f"fake-partner-{algorithm}"] = write_client(
            d, f"fake-partner-{algorithm}", make_leaf(fake_partner, name("ops-evil")),
            fake_partner)
    partner = make_ca(PARTNER_DN, algorithm="p256")
    clients["partner"] = write_client(d, "partner", make_leaf(partner, name("ops-1")))
    (d / "evil.pem").write_bytes(b"".join(r.pem for r in evil_roots))
    (d / "partner.pem").write_bytes(partner.pem)

    # What the handshake refuses and explain used to allow.
    p256 = evil_roots[1]
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    clients["critical-ext"] = write_client(
        d, "critical-ext", make_leaf(p256, name("crit"), extra=[(unknown, True)]))
    clients["rsa1024"] = write_client(d, "rsa1024", make_leaf(p256, name("weak"),
                                                              algorithm="rsa1024"))
    # pathLenConstraint 0 on the root, then one more CA below it.
    strict_root = make_ca(name("Strict Root"), algorithm="p256", path_length=0)
    middle = make_ca(name("Strict Middle"), issuer=strict_root)
    clients["pathlen"] = write_client(d, "pathlen", make_leaf(middle, name("deep")), middle)
    (d / "evil.pem").write_bytes((d / "evil.pem").read_bytes() + strict_root.pem)
    # Claims the partner CA as issuer (DN and AKI) but another key signed it.
    confused = make_leaf(Issued(partner.cert, p256.key), name("ops-2"))
    clients["confused"] = write_client(d, "confused", confused)

    config = CONFIG.format(
        state=pki.state, evil=d / "evil.pem", partner=d / "partner.pem",
        partner_dn=PARTNER_DN.rfc4514_string(), partner_key=key_sha256(partner.cert),
        port=upstream.port)
    proc = CertgateProcess(config, d).start()
    try:
        yield World(d, pki.root, proc, proc.config_path, upstream, clients)  # type: ignore[arg-type]
    finally:
        proc.stop()


def _get(world: World, client: str | tuple[Path, Path], path: str, version: str
         ) -> Response | None:
    """The response to GET ``path`` with ``client``'s certificate; None: refused
    in the handshake (or the connection dropped before any response)."""
    cert, key = world.clients[client] if isinstance(client, str) else client
    ctx = client_context(world.root, version=version)
    # The client side must be able to present what the server is to judge
    # (an RSA-1024 key is refused by the client's own default level 2).
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(str(cert), str(key))
    try:
        with Connection(world.proc.port, ctx) as conn:
            return conn.request("GET", path)
    except (ssl.SSLError, ConnectionError, OSError):
        return None


def _explain(world: World, client: str | tuple[Path, Path], path: str
             ) -> subprocess.CompletedProcess[str]:
    cert, _ = world.clients[client] if isinstance(client, str) else client
    return subprocess.run(
        [sys.executable, "-m", "certgate", "explain", "-c", str(world.config), "--cert",
         str(cert), f"https://localhost{path}"],
        capture_output=True, text=True, timeout=60, check=False)


def _roles_seen(response: Response) -> str | None:
    """X-Client-Roles as the upstream received it (the echo endpoint)."""
    seen = json.loads(response.body)
    values = [v for n, v in seen["headers"] if n.lower() == "x-client-roles"]
    return values[0] if values else None


@pytest.mark.parametrize("version", VERSIONS)
def test_real_alice_reaches_admin(world: World, pki, version: str) -> None:  # type: ignore[no-untyped-def]
    """Guard: the inventory role works, so the refusals below are not trivial."""
    response = _get(world, (pki["alice"].cert, pki["alice"].key), "/admin/x", version)
    assert response is not None
    assert response.status == 200
    assert _roles_seen(response) == "ops"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("version", VERSIONS)
def test_lookalike_issuing_ca_gets_no_builtin_roles(world: World, algorithm: str,
                                                     version: str) -> None:
    client = f"twin-{algorithm}"
    before = len(world.upstream.requests)
    denied = _get(world, client, "/admin/x", version)
    assert denied is not None, "the chain is valid up to a trusted root: it must handshake"
    assert denied.status == 403
    assert len(world.upstream.requests) == before, "the upstream saw a refused request"
    # Served where no role is needed, with no inventory role attached.
    served = _get(world, client, "/x", version)
    assert served is not None
    assert served.status == 200
    assert _roles_seen(served) in (None, "")
    explained = _explain(world, client, "/admin/x")
    assert explained.returncode == 1, explained.stdout + explained.stderr
    assert "roles:       none" in explained.stdout


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("version", VERSIONS)
def test_issuer_dn_rule_not_met_by_a_copied_dn(world: World, algorithm: str,
                                               version: str) -> None:
    genuine = _get(world, "partner", "/partner/x", version)
    assert genuine is not None
    assert genuine.status == 200
    assert _roles_seen(genuine) == "partner,pinned"
    client = f"fake-partner-{algorithm}"
    for path in ("/partner/x", "/pinned/x"):
        response = _get(world, client, path, version)
        assert response is not None
        assert response.status == 403, path
        assert _explain(world, client, path).returncode == 1


@pytest.mark.parametrize("case", ["critical-ext", "rsa1024", "pathlen", "confused"])
def test_explain_refuses_what_the_handshake_refuses(world: World, case: str) -> None:
    for version in VERSIONS:
        assert _get(world, case, "/x", version) is None, f"{case} handshake under TLS {version}"
    explained = _explain(world, case, "/x")
    assert explained.returncode == 1, explained.stdout + explained.stderr
    assert "the TLS handshake would fail" in explained.stdout
    assert "OpenSSL:" in explained.stdout


def test_issuer_dn_that_no_trusted_ca_carries_is_reported(tmp_path: Path) -> None:
    from certgate.config.loader import load_config_text
    from certgate.tls.issuers import TrustedIssuers, issuer_matcher_warnings

    partner = make_ca(PARTNER_DN)
    (tmp_path / "partner.pem").write_bytes(partner.pem)
    text = f"""
state_dir: {tmp_path / "state"}
listen: ["127.0.0.1:0"]
client_auth:
  trusted_cas: [{tmp_path / "partner.pem"}]
  roles:
    - {{match: ["issuer:{PARTNER_DN.rfc4514_string()}"], roles: [a]}}
    - {{match: ["issuer:CN=Nobody"], roles: [b]}}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:9"
    rules:
      - {{path: /x/*, deny: ["issuer:CN=Also Nobody"]}}
"""
    config = load_config_text(text, "c.yaml", base_dir=tmp_path)
    warnings = issuer_matcher_warnings(config, TrustedIssuers([partner.cert]))
    assert [w.split(":")[0] for w in warnings] == ["client_auth.roles[1].match",
                                                   "routes[0].rules[0].deny"]
    assert "issuer:CN=Nobody names no certificate in client_auth.trusted_cas" in warnings[0]
    # `certgate check` says the same (and still exits 0: it is a warning).
    path = tmp_path / "c.yaml"
    path.write_text(text)
    checked = subprocess.run([sys.executable, "-m", "certgate", "check", "-c", str(path)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    assert "issuer:CN=Nobody names no certificate" in checked.stdout
    assert "issuer:CN=Also Nobody names no certificate" in checked.stdout
    assert f"issuer:{PARTNER_DN.rfc4514_string()} names" not in checked.stdout

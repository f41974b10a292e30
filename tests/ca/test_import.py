"""``ca import``: an accidental CA becomes the built-in CA, or is refused
with one line and nothing written (issue #17, acceptance 3)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certgate.ca import CertificateAuthority
from certgate.ca.importing import plan_import, weak_points
from certgate.ca.keys import serial_hex

from .conftest import Result, openssl
from support.forge import make_ca, make_leaf, name
from support.openssl_ca import make_recipe_ca

NOW = dt.datetime.now(dt.UTC)


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _key_pem(key: object, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                             serialization.PrivateFormat.TraditionalOpenSSL, encryption)


def test_openssl_recipe_ca_is_imported(tmp_path: Path, state: Path,
                                       cli: Callable[..., Result]) -> None:
    recipe = make_recipe_ca(tmp_path / "old")
    result = cli("import", "--cert", recipe.cert, "--key", recipe.key)
    assert result.code == 0, result.err
    assert "imported CN=Home CA" in result.out
    # The recipe's CA has no pathLenConstraint: imported, with the reason.
    assert "no pathLenConstraint" in result.err

    keys = list((state / "ca" / "keys").iterdir())
    assert len(keys) == 1
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "ca").stat().st_mode) == 0o700
    stored = serialization.load_pem_private_key(keys[0].read_bytes(), None)
    original = serialization.load_pem_private_key(recipe.key.read_bytes(), None)
    assert stored.private_numbers() == original.private_numbers()  # type: ignore[union-attr]
    assert not list((state / "ca" / "staging").iterdir())

    bundle = x509.load_pem_x509_certificates((state / "ca" / "bundle.pem").read_bytes())
    assert bundle == [x509.load_pem_x509_certificate(recipe.cert.read_bytes())]
    # certgate signs the CRL with the imported key, and openssl accepts it.
    verified = openssl("crl", "-in", state / "ca" / "crl.pem", "-CAfile", recipe.cert, "-noout")
    assert "verify OK" in verified.stderr + verified.stdout

    # The import is the audit log's first entry, and names no secret.
    lines = (state / "ca" / "audit.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["operation"] == "import"
    assert first["seq"] == 1
    assert first["self_signed"] is True
    assert first["key_type"] == "rsa-2048"
    key_body = b"".join(recipe.key.read_bytes().splitlines()[1:-1]).decode()
    assert key_body[:40] not in (state / "ca" / "audit.jsonl").read_text()
    assert cli("audit", "verify").code == 0

    # It issues: a new leaf chains to the imported root.
    assert cli("issue", "newdev", "--out", tmp_path).code == 0
    openssl("verify", "-CAfile", recipe.cert, tmp_path / "newdev.crt")


@pytest.mark.parametrize("case", ["key-mismatch", "leaf-as-ca", "expired", "no-chain",
                                  "ed25519", "not-a-cert", "no-crl-sign"])
def test_refusals_write_nothing(tmp_path: Path, state: Path, cli: Callable[..., Result],
                                case: str) -> None:
    recipe = make_recipe_ca(tmp_path / "old", leaves=("phone",))
    cert, key = recipe.cert, recipe.key
    expect = ""
    if case == "key-mismatch":
        key = recipe.leaf("phone")[1]
        expect = "is not the key of CN=Home CA"
    elif case == "leaf-as-ca":
        cert, key = recipe.leaf("phone")
        expect = "not a CA certificate"
    elif case == "expired":
        old_key = ec.generate_private_key(ec.SECP256R1())
        subject = name("Old CA")
        expired = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(old_key.public_key()).serial_number(7)
                   .not_valid_before(NOW - dt.timedelta(days=400))
                   .not_valid_after(NOW - dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
                   .sign(old_key, hashes.SHA256()))
        cert = _write(tmp_path / "expired.crt", expired.public_bytes(serialization.Encoding.PEM))
        key = _write(tmp_path / "expired.key", _key_pem(old_key))
        expect = "expired on"
    elif case == "no-chain":
        root = make_ca(name("Root"))
        inter = make_ca(name("Issuing"), issuer=root)
        cert = _write(tmp_path / "inter.crt", inter.pem)
        key = _write(tmp_path / "inter.key", inter.key_pem)
        expect = "give the root with --chain"
    elif case == "ed25519":
        ca = make_ca(name("Edwards CA"), algorithm="ed25519")
        cert = _write(tmp_path / "ed.crt", ca.pem)
        key = _write(tmp_path / "ed.key", ca.key_pem)
        expect = "ECDSA and RSA CA keys only"
    elif case == "not-a-cert":
        cert = recipe.directory / "phone.csr"
        expect = "not a PEM or DER certificate"
    elif case == "no-crl-sign":
        ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = name("Signing-only CA")
        built = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                 .public_key(ca_key.public_key()).serial_number(9)
                 .not_valid_before(NOW - dt.timedelta(days=1))
                 .not_valid_after(NOW + dt.timedelta(days=100))
                 .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
                 .add_extension(x509.KeyUsage(False, False, False, False, False, True, False,
                                              False, False), True)
                 .sign(ca_key, hashes.SHA256()))
        cert = _write(tmp_path / "nocrl.crt", built.public_bytes(serialization.Encoding.PEM))
        key = _write(tmp_path / "nocrl.key", _key_pem(ca_key))
        expect = "lacks cRLSign"
    result = cli("import", "--cert", cert, "--key", key)
    assert result.code == 2, result
    message = result.err.strip().splitlines()
    assert len(message) == 1, result.err
    assert expect in message[0]
    assert not state.exists(), _tree(state)


def test_an_existing_ca_is_never_replaced(tmp_path: Path, state: Path,
                                          cli: Callable[..., Result]) -> None:
    CertificateAuthority.init(state, name="Mine")

    def files() -> dict[Path, bytes]:
        # SQLite's -wal/-shm side files appear for any reader; not state.
        return {p: p.read_bytes() for p in state.rglob("*")
                if p.is_file() and not p.name.endswith(("-wal", "-shm"))}

    before = files()
    recipe = make_recipe_ca(tmp_path / "old", leaves=())
    result = cli("import", "--cert", recipe.cert, "--key", recipe.key)
    assert result.code != 0
    assert "a CA already exists" in result.err
    assert files() == before


def test_intermediate_with_encrypted_key_and_offline_root(tmp_path: Path, state: Path,
                                                          cli: Callable[..., Result]) -> None:
    """The step-ca layout: root_ca.crt, intermediate_ca.crt and an encrypted
    intermediate key; the root key stays with its owner."""
    root = make_ca(name("Smallstep Root CA"), path_length=1)
    inter = make_ca(name("Smallstep Intermediate CA"), issuer=root, path_length=0)
    password = b"correct horse battery staple"
    cert = _write(tmp_path / "intermediate_ca.crt", inter.pem)
    key = _write(tmp_path / "intermediate_ca_key", _key_pem(inter.key, password))
    chain = _write(tmp_path / "root_ca.crt", root.pem)
    no_password = cli("import", "--cert", cert, "--key", key, "--chain", chain)
    assert no_password.code == 2
    assert "is encrypted" in no_password.err
    wrong = _write(tmp_path / "wrong", b"hunter2\n")
    refused = cli("import", "--cert", cert, "--key", key, "--chain", chain,
                  "--key-password-file", wrong)
    assert refused.code == 2
    assert "cannot decrypt" in refused.err
    assert "hunter2" not in refused.err + refused.out
    assert not state.exists()

    good = _write(tmp_path / "password", password + b"\n")
    result = cli("import", "--cert", cert, "--key", key, "--chain", chain,
                 "--key-password-file", good, "--name", "Home step-ca")
    assert result.code == 0, result.err
    assert password.decode() not in result.out + result.err
    keys = [p.name for p in (state / "ca" / "keys").iterdir()]
    assert keys == [f"intermediate-{serial_hex(inter.cert.serial_number)}.key"]
    assert (state / "ca" / "root.crt").read_bytes() == root.pem
    assert (state / "ca" / "issuing.crt").read_bytes() == inter.pem
    assert cli("issue", "dev", "--out", tmp_path).code == 0
    openssl("verify", "-CAfile", chain, "-untrusted", cert, tmp_path / "dev.crt")
    # Rotating needs the root key, which certgate never had.
    rotate = cli("rotate")
    assert rotate.code != 0
    assert "--root-key" in rotate.err
    root_key = _write(tmp_path / "root_ca_key", root.key_pem)
    assert cli("rotate", "--root-key", root_key).code == 0
    assert cli("issue", "dev2", "--out", tmp_path).code == 0
    openssl("verify", "-CAfile", chain, "-untrusted", state / "ca" / "issuing.crt",
            tmp_path / "dev2.crt")


def test_chain_must_verify_and_be_two_levels(tmp_path: Path) -> None:
    root = make_ca(name("Root"))
    other = make_ca(name("Root"))  # the same name, another key: a look-alike
    inter = make_ca(name("Issuing"), issuer=root)
    deeper = make_ca(name("Deeper"), issuer=inter)
    with pytest.raises(Exception, match="give the root with --chain"):
        plan_import([inter.cert], inter.key, [other.cert], NOW)
    plan = plan_import([inter.cert], inter.key, [root.cert], NOW)
    assert plan.root == root.cert
    assert not plan.self_signed
    with pytest.raises(Exception, match="not a self-signed root"):
        plan_import([deeper.cert], deeper.key, [inter.cert, root.cert], NOW)
    with pytest.raises(Exception, match="not in"):
        plan_import([inter.cert], inter.key, [root.cert, other.cert], NOW)
    # A fullchain --cert file (the CA, then its root) needs no --chain.
    assert plan_import([inter.cert, root.cert], inter.key, [], NOW).root == root.cert
    leaf = make_leaf(root, name("x"))
    with pytest.raises(Exception, match="self-signed root, but --chain holds"):
        plan_import([root.cert], root.key, [leaf.cert], NOW)


def test_weak_points_are_named_with_reasons(tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 1024)
    subject = name("Weak CA")
    weak = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=20 * 365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    found = " | ".join(weak_points(weak, issuing=True))
    assert "RSA key of 1024 bits" in found
    assert "valid for 20 years" in found
    assert "no pathLenConstraint" in found
    plan = plan_import([weak], key, [], NOW)
    assert len(plan.warnings) == 3

    # cryptography no longer signs with SHA-1; the openssl command line does.
    work = tmp_path
    openssl("req", "-x509", "-sha1", "-newkey", "rsa:2048", "-nodes", "-keyout",
            work / "s1.key", "-out", work / "s1.crt", "-subj", "/CN=Old Root", "-days", "30")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", work / "i.key", "-out", work / "i.csr", "-subj", "/CN=SHA-1 Issuing")
    (work / "ext").write_text("basicConstraints=critical,CA:TRUE,pathlen:0\n")
    openssl("x509", "-req", "-sha1", "-in", work / "i.csr", "-CA", work / "s1.crt", "-CAkey",
            work / "s1.key", "-set_serial", "5", "-out", work / "i.crt", "-days", "10",
            "-extfile", work / "ext")
    sha1_inter = x509.load_pem_x509_certificate((work / "i.crt").read_bytes())
    sha1_root = x509.load_pem_x509_certificate((work / "s1.crt").read_bytes())
    assert "self-signed with SHA1" in " ".join(weak_points(sha1_root, issuing=False))
    # Still this CA: its SHA-1 self-signature is checked, not refused.
    assert plan_import([sha1_root], serialization.load_pem_private_key(
        (work / "s1.key").read_bytes(), None), [], NOW).self_signed  # type: ignore[arg-type]
    found = " | ".join(weak_points(sha1_inter, issuing=True))
    assert "signed with SHA1" in found
    assert "pathLen" not in found

    strong = make_ca(name("Fine CA"), path_length=0)
    assert weak_points(strong.cert, issuing=True) == []


def test_an_imported_ca_near_its_end_does_not_reissue_server_certificates(
        tmp_path: Path, state: Path, cli: Callable[..., Result]) -> None:
    """A CA with under 30 days left caps every server certificate at its own
    end, so "30 days or less left, renew" was true at once again after each
    renewal: a new server certificate at every start and every hour (and a
    runtime rebuild). One that already runs to the CA's end is kept."""
    from certgate.config.schema import CertificateFiles
    from certgate.tls.contexts import read_server_certificate
    from certgate.watch import renewal_due

    old = make_ca(name("Short-lived CA"))  # 30 days from support.forge's NOW
    cert = _write(tmp_path / "ca.crt", old.cert.public_bytes(serialization.Encoding.PEM))
    key = _write(tmp_path / "ca.key", _key_pem(old.key))
    assert cli("import", "--cert", cert, "--key", key).code == 0
    ca = CertificateAuthority.open(state)
    first = ca.ensure_server_certificate(["localhost"])
    second = CertificateAuthority.open(state).ensure_server_certificate(["localhost"])
    assert first == second
    servers = [r for r in ca.certificates().records if r.kind == "server"]
    assert len(servers) == 1
    assert servers[0].not_after == old.cert.not_valid_after_utc  # capped at the CA's end
    assert ca.issuing_not_after() == old.cert.not_valid_after_utc
    served = dataclasses.replace(read_server_certificate(CertificateFiles(*first)),
                                 issuer_not_after=ca.issuing_not_after().timestamp())
    assert not renewal_due(served, time.time())
    # With a longer-lived issuer in the chain, the same age would be due.
    longer = dataclasses.replace(served, issuer_not_after=served.not_after + 86400)
    assert renewal_due(longer, time.time())

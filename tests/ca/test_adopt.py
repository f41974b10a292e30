"""``ca adopt``: leaves the imported CA issued enter the inventory, checked by
signature, never by name (issue #17, acceptance 4 and the directory form)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certgate.ca.keys import serial_hex

from .conftest import Result, openssl
from support.forge import Issued, make_leaf, name
from support.openssl_ca import RecipeCA, make_recipe_ca


@pytest.fixture
def recipe(tmp_path: Path, cli: Callable[..., Result]) -> RecipeCA:
    made = make_recipe_ca(tmp_path / "old")
    assert cli("import", "--cert", made.cert, "--key", made.key).code == 0
    return made


def _listing(cli: Callable[..., Result]) -> dict[str, dict[str, object]]:
    result = cli("list", "--json")
    assert result.code == 0, result.err
    return {str(row["name"]): row for row in json.loads(result.out)}


def _imported(recipe: RecipeCA) -> Issued:
    cert = x509.load_pem_x509_certificate(recipe.cert.read_bytes())
    key = serialization.load_pem_private_key(recipe.key.read_bytes(), None)
    return Issued(cert, key)


def test_adopt_records_roles_and_keeps_others_out(recipe: RecipeCA,
                                                   cli: Callable[..., Result]) -> None:
    phone, _key = recipe.leaf("phone")
    result = cli("adopt", phone, "--role", "family")
    assert result.code == 0, result.err
    rows = _listing(cli)
    assert set(rows) == {"phone"}  # the laptop was not adopted
    assert rows["phone"]["roles"] == ["family"]
    cert = x509.load_pem_x509_certificate(phone.read_bytes())
    assert rows["phone"]["serial"] == serial_hex(cert.serial_number)
    audit = [json.loads(line) for line in
             (recipe.directory.parent / "state" / "ca" / "audit.jsonl").read_text().splitlines()]
    assert [entry["operation"] for entry in audit] == ["import", "adopt"]
    assert audit[1]["fingerprint"]
    # Adopting it again says so and changes nothing.
    again = cli("adopt", phone)
    assert again.code == 2
    assert "already in the inventory as 'phone'" in again.err


def test_look_alike_leaf_cannot_be_adopted(tmp_path: Path, recipe: RecipeCA,
                                           cli: Callable[..., Result]) -> None:
    """Acceptance 4: the CA's subject and AKI, another key's signature."""
    real = _imported(recipe)
    forger = Issued(real.cert, rsa.generate_private_key(65537, 2048))
    twin = make_leaf(forger, name("phone"), eku=False)
    assert twin.cert.issuer == real.cert.subject
    aki = twin.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = real.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    path = tmp_path / "twin.crt"
    path.write_bytes(twin.pem)
    result = cli("adopt", path, "--role", "admin")
    assert result.code == 2
    assert "no CA certificate of this CA signed it" in result.err
    assert _listing(cli) == {}


def test_non_client_certificates_are_refused(tmp_path: Path, recipe: RecipeCA,
                                             cli: Callable[..., Result]) -> None:
    real = _imported(recipe)
    server = make_leaf(real, name("nas.home"), eku=False, extra=[
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)])
    (tmp_path / "server.crt").write_bytes(server.pem)
    result = cli("adopt", tmp_path / "server.crt")
    assert result.code == 2
    assert "not a client certificate" in result.err
    ca_itself = cli("adopt", recipe.cert)
    assert ca_itself.code == 2
    assert "not a client certificate" in ca_itself.err


def test_named_files_are_all_or_nothing(recipe: RecipeCA, cli: Callable[..., Result]) -> None:
    phone, _ = recipe.leaf("phone")
    result = cli("adopt", phone, recipe.cert)
    assert result.code == 2
    assert _listing(cli) == {}


def test_directory_form_adopts_what_qualifies(tmp_path: Path, recipe: RecipeCA,
                                              cli: Callable[..., Result]) -> None:
    real = _imported(recipe)
    server = make_leaf(real, name("nas.home"), eku=False, extra=[
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)])
    (recipe.directory / "nas.crt").write_bytes(server.pem)
    (recipe.directory / "notes.pem").write_text("not a certificate\n")
    result = cli("adopt", recipe.directory, "--role", "family")
    assert result.code == 0, result.err
    assert set(_listing(cli)) == {"phone", "laptop"}
    assert "skipped" in result.err
    assert "ca.crt: not a client certificate" in result.err
    assert "nas.crt: not a client certificate" in result.err
    assert "notes.pem: not a certificate" in result.err
    # Keys, CSRs and serial files are not looked at.
    assert ".key" not in result.err
    assert ".csr" not in result.err
    # Again: everything is already there; nothing adopted, exit 1.
    again = cli("adopt", recipe.directory)
    assert again.code == 1
    assert "already in the inventory" in again.err
    named = cli("adopt", recipe.directory, "--name", "x")
    assert named.code == 2
    assert "--name names one certificate" in named.err


def test_two_leaves_with_one_serial(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """The copied recipe's ``-set_serial 01`` for every leaf: the first is
    adopted, the second refused with the reason (a CRL cannot tell them apart)."""
    made = make_recipe_ca(tmp_path / "old", serial="01")
    assert cli("import", "--cert", made.cert, "--key", made.key).code == 0
    phone, _ = made.leaf("phone")
    laptop, _ = made.leaf("laptop")
    together = cli("adopt", phone, laptop)
    assert together.code == 2
    assert "same serial" in together.err
    assert _listing(cli) == {}
    assert cli("adopt", phone).code == 0
    second = cli("adopt", laptop)
    assert second.code == 2
    assert "for another certificate" in second.err
    assert set(_listing(cli)) == {"phone"}


def test_revoking_an_adopted_leaf_signs_a_crl_openssl_accepts(
        recipe: RecipeCA, cli: Callable[..., Result]) -> None:
    phone, _ = recipe.leaf("phone")
    assert cli("adopt", phone).code == 0
    assert cli("revoke", "phone").code == 0
    state = recipe.directory.parent / "state"
    crl = openssl("crl", "-in", state / "ca" / "crl.pem", "-CAfile", recipe.cert, "-noout",
                  "-text")
    assert "verify OK" in crl.stderr + crl.stdout
    serial = x509.load_pem_x509_certificate(phone.read_bytes()).serial_number
    assert f"{serial:X}" in crl.stdout.replace(":", "")
    verify = openssl("verify", "-crl_check", "-CAfile", recipe.cert, "-CRLfile",
                     state / "ca" / "crl.pem", phone, check=False)
    assert verify.returncode != 0
    assert "revoked" in verify.stdout + verify.stderr

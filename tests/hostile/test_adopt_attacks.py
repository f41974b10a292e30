"""Attacks on ``ca import`` and ``ca adopt`` (issue #17), with real certificates.

The accidental CA is made the openssl way (``support.openssl_ca``); what an
attacker would bring is forged with ``support.forge``. Every command runs as
a real ``python -m certgate ca`` process (so a hang is a timeout, not a stuck
test), and where the proxy decides, a real certgate answers over real TLS.

What is attacked:

* adoption of leaves that merely claim the CA (same subject and AKI, another
  key), a sub-CA's leaf, a CA:TRUE or serverAuth-only leaf, an expired one,
  serial twins (``-set_serial 01`` twice), a leaf the key-less root of an
  imported intermediate signed (``ca revoke`` could never publish it), a leaf
  whose CN is a name the inventory already uses;
* the directory scan: FIFOs, ``/dev/zero`` behind a symlink, huge files,
  file names with terminal escapes;
* ``ca import``: a key with the certificate's RSA modulus but another
  exponent, an encrypted key with no terminal, password files that are
  ``/dev/zero`` or a FIFO nobody writes, two imports racing for one state
  directory, a crash at every step;
* through the proxy: serial twins' roles and revocation, before and after
  ``ca rotate``, on new and resumed TLS sessions.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certgate.ca.store import Store

from support.clients import Connection, client_context
from support.forge import Issued, make_ca, make_leaf, name
from support.openssl_ca import RecipeCA, make_recipe_ca
from support.process import wait_until

NOW = dt.datetime.now(dt.UTC)
#: Every CLI call must be over well within this (a hang fails the test).
COMMAND_TIMEOUT = 30.0
#: Issue #17 acceptance 2: a revoked leaf is refused within 2 s.
REVOKE_DEADLINE = 2.0
ESC = "\x1b"


@dataclass
class Run:
    code: int
    out: str
    err: str


def ca(state: Path, *args: str | Path, timeout: float = COMMAND_TIMEOUT,
       env: dict[str, str] | None = None) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "certgate", "ca", *map(str, args), "--state", str(state)],
        capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL, cwd=state.parent, env={**os.environ, **(env or {})})
    return Run(proc.returncode, proc.stdout, proc.stderr)


def ok(state: Path, *args: str | Path) -> Run:
    result = ca(state, *args)
    assert result.code == 0, result
    return result


def records(state: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, serial hex, roles) of every inventory certificate."""
    store = Store(state / "ca" / "inventory.sqlite3", read_only=True)
    try:
        return [(r.name, f"{r.serial:x}", r.roles) for r in store.certificates()]
    finally:
        store.close()


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _as_issued(recipe: RecipeCA) -> Issued:
    key = serialization.load_pem_private_key(recipe.key.read_bytes(), None)
    return Issued(load(recipe.cert), key)


@pytest.fixture
def recipe(tmp_path: Path) -> RecipeCA:
    """The three-command openssl CA with two leaves that share serial 01."""
    return make_recipe_ca(tmp_path / "old", leaves=("phone", "laptop"), serial="01")


@pytest.fixture
def state(tmp_path: Path, recipe: RecipeCA) -> Path:
    state = tmp_path / "state"
    ok(state, "import", "--cert", recipe.cert, "--key", recipe.key)
    return state


def _lookalike(recipe: RecipeCA, tmp_path: Path) -> Path:
    """Acceptance 4: the CA's subject and SKI, another key; a leaf under it."""
    real = load(recipe.cert)
    ski = real.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    twin = make_ca(real.subject, algorithm="rsa2048", ski=ski)
    leaf = make_leaf(twin, name("phone"), serial=0x01)
    assert leaf.cert.issuer == real.subject
    path = tmp_path / "lookalike.crt"
    path.write_bytes(leaf.pem)
    return path


def _under_sub_ca(recipe: RecipeCA, tmp_path: Path) -> Path:
    """An intermediate the imported CA really signed, then a leaf under it."""
    sub = make_ca(name("Sub CA"), issuer=_as_issued(recipe), path_length=0)
    path = tmp_path / "sub-leaf.crt"
    path.write_bytes(make_leaf(sub, name("subleaf")).pem)
    return path


#: An extension OID nobody implements, marked critical by the "critical" case.
UNKNOWN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")


def _crafted(recipe: RecipeCA, tmp_path: Path, label: str, *, ca_flag: bool = False,
             eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
             days: tuple[int, int] = (-1, 30), critical_unknown: bool = False) -> Path:
    """A leaf the imported CA's key really signed, with one thing wrong."""
    issuer = _as_issued(recipe)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(name(label))
               .issuer_name(issuer.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW + dt.timedelta(days=days[0]))
               .not_valid_after(NOW + dt.timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), True)
               .add_extension(x509.ExtendedKeyUsage([eku]), False))
    if critical_unknown:
        builder = builder.add_extension(x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"),
                                        True)
    cert = builder.sign(issuer.key, hashes.SHA256())
    path = tmp_path / f"{label}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize("case", ["lookalike", "sub-ca", "ca-true", "server-only", "expired",
                                  "critical"])
def test_leaves_that_only_claim_the_ca_are_not_adopted(tmp_path: Path, recipe: RecipeCA,
                                                       state: Path, case: str) -> None:
    path, expect = {
        "lookalike": (lambda: _lookalike(recipe, tmp_path), "checked by signature"),
        "sub-ca": (lambda: _under_sub_ca(recipe, tmp_path), "checked by signature"),
        "ca-true": (lambda: _crafted(recipe, tmp_path, "catrue", ca_flag=True),
                    "not a client certificate"),
        "server-only": (lambda: _crafted(recipe, tmp_path, "server",
                                         eku=ExtendedKeyUsageOID.SERVER_AUTH),
                        "not a client certificate"),
        "expired": (lambda: _crafted(recipe, tmp_path, "old", days=(-30, -1)), "expired on"),
        # OpenSSL refuses it at every handshake (unhandled critical
        # extension): adopting it would only add a device that never works.
        "critical": (lambda: _crafted(recipe, tmp_path, "crit", critical_unknown=True),
                     "critical extension OpenSSL does not know (1.3.6.1.4.1.55555.1)"),
    }[case]
    result = ca(state, "adopt", path(), "--role", "admin")
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert expect in lines[0], result.err
    assert records(state) == []


def test_serial_twins_cannot_both_be_adopted(tmp_path: Path, recipe: RecipeCA,
                                             state: Path) -> None:
    phone, laptop = recipe.leaf("phone")[0], recipe.leaf("laptop")[0]
    assert load(phone).serial_number == load(laptop).serial_number == 1
    # In one command: all or nothing.
    both = ca(state, "adopt", phone, laptop, "--role", "admin")
    assert both.code == 2
    assert "same serial" in both.err
    assert records(state) == []
    ok(state, "adopt", phone, "--role", "admin")
    # Across commands.
    again = ca(state, "adopt", laptop)
    assert again.code == 2
    assert "already in the inventory as 'phone'" in again.err
    # The same certificate once as PEM and once as DER is one certificate.
    der = tmp_path / "phone.der"
    der.write_bytes(load(phone).public_bytes(serialization.Encoding.DER))
    same = ca(state, "adopt", der)
    assert same.code == 2
    assert "already in the inventory" in same.err
    assert records(state) == [("phone", "1", ("admin",))]


def test_leaf_of_a_keyless_root_is_not_adopted(tmp_path: Path) -> None:
    """An imported intermediate's root is a certificate only: certgate cannot
    sign that root's CRL. A leaf the root signed directly, once adopted, would
    be "revoked" by ``ca revoke`` and still admitted by the proxy."""
    root = make_ca(name("Home Root"), path_length=1)
    inter = make_ca(name("Home Issuing"), issuer=root, path_length=0)
    leaf = make_leaf(root, name("byroot"), serial=5)
    for label, data in (("inter.crt", inter.pem), ("inter.key", inter.key_pem),
                        ("root.crt", root.pem), ("byroot.crt", leaf.pem)):
        (tmp_path / label).write_bytes(data)
    state = tmp_path / "state"
    ok(state, "import", "--cert", tmp_path / "inter.crt", "--key", tmp_path / "inter.key",
       "--chain", tmp_path / "root.crt")
    result = ca(state, "adopt", tmp_path / "byroot.crt", "--role", "admin")
    assert result.code == 2, result
    assert "could not revoke" in result.err
    assert records(state) == []
    # A leaf of the intermediate (whose key certgate holds) is adopted, and
    # revoking it puts it on the CRL.
    good = make_leaf(inter, name("good"), serial=6)
    (tmp_path / "good.crt").write_bytes(good.pem)
    ok(state, "adopt", tmp_path / "good.crt")
    ok(state, "revoke", "good")
    crl = x509.load_pem_x509_crl((state / "ca" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(6) is not None


def test_a_name_in_use_is_not_joined_by_another_certificate(tmp_path: Path, recipe: RecipeCA,
                                                           state: Path) -> None:
    """``ca role add NAME`` and ``ca revoke NAME`` act on every valid
    certificate of a name. A stray leaf whose CN is a device's name (an old
    copy, someone else's) must not silently join that device and share every
    role it is given later; ``ca issue`` refuses a taken name the same way."""
    ok(state, "issue", "admin-laptop", "--out", tmp_path)
    stray = _crafted(recipe, tmp_path, "admin-laptop")
    result = ca(state, "adopt", stray)
    assert result.code == 2, result
    assert "admin-laptop" in result.err
    assert "--name" in result.err
    assert [r[0] for r in records(state)] == ["admin-laptop"]
    # Two leaves with one CN in one directory: the first is adopted, the
    # second skipped with the reason.
    scan = tmp_path / "scan"
    scan.mkdir()
    for label in ("tablet-a", "tablet-b"):
        crafted = _crafted(recipe, tmp_path, "tablet")
        crafted.rename(scan / f"{label}.crt")
    partly = ca(state, "adopt", scan)
    assert partly.code == 0, partly
    assert "tablet-b.crt: another certificate given here is adopted as 'tablet'" in partly.err
    assert sorted(r[0] for r in records(state)) == ["admin-laptop", "tablet"]
    # With --name it can be adopted as a device of its own.
    ok(state, "adopt", scan / "tablet-b.crt", "--name", "tablet-2")


def test_directory_scan_does_not_hang_grow_or_inject(tmp_path: Path, recipe: RecipeCA,
                                                     state: Path) -> None:
    scan = tmp_path / "scan"
    scan.mkdir()
    os.mkfifo(scan / "fifo.crt")
    os.symlink("/dev/zero", scan / "zero.crt")
    with open(scan / "huge.pem", "wb") as handle:  # sparse: 2 GiB, no disk
        handle.truncate(2 << 30)
    (scan / f"{ESC}]0;owned{ESC}\\{ESC}[2J.crt").write_bytes(b"not a certificate")
    phone = recipe.leaf("phone")[0]
    (scan / "phone.crt").write_bytes(phone.read_bytes())
    (scan / "phone.der").write_bytes(load(phone).public_bytes(serialization.Encoding.DER))
    (scan / "twin.crt").write_bytes(recipe.leaf("laptop")[0].read_bytes())  # phone's serial
    started = time.monotonic()
    result = ca(state, "adopt", scan, "--role", "family")
    assert time.monotonic() - started < COMMAND_TIMEOUT
    assert result.code == 0, result
    assert records(state) == [("phone", "1", ("family",))]
    assert "twin.crt: another certificate given here has the same serial" in result.err
    assert "huge.pem" in result.err
    # Nothing a file name carries reaches the terminal as a control character.
    assert ESC not in result.out + result.err
    assert "\\x1b" in result.err


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_named_special_files_are_refused_promptly(tmp_path: Path, recipe: RecipeCA,
                                                  state: Path, target: str) -> None:
    path = Path(target)
    if target == "fifo":
        path = tmp_path / "x.crt"
        os.mkfifo(path)  # nobody ever writes it
    for args in (("adopt", path), ("import", "--cert", path, "--key", recipe.key),
                 ("import", "--cert", recipe.cert, "--key", path)):
        result = ca(tmp_path / "other-state", *args, timeout=10) if args[0] == "import" \
            else ca(state, *args, timeout=10)
        assert result.code == 2, (args, result)
        assert len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "other-state").exists()


# -- ca import ---------------------------------------------------------------


def _rsa_with_exponent(key: rsa.RSAPrivateKey, e: int) -> rsa.RSAPrivateKey:
    """Another valid RSA key with the same modulus and a different exponent."""
    numbers = key.private_numbers()
    p, q = numbers.p, numbers.q
    phi = (p - 1) * (q - 1)
    d = pow(e, -1, phi)
    public = rsa.RSAPublicNumbers(e, p * q)
    return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                 public).private_key()


def _pem(key: object, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                             serialization.PrivateFormat.PKCS8, encryption)


def test_key_mismatch_variants_are_refused(tmp_path: Path, recipe: RecipeCA) -> None:
    original = serialization.load_pem_private_key(recipe.key.read_bytes(), None)
    assert isinstance(original, rsa.RSAPrivateKey)
    variants = {
        "same-modulus": _rsa_with_exponent(original, 0x10001 + 2)
        if _coprime(original, 0x10003) else _rsa_with_exponent(original, 17),
        "other-rsa": rsa.generate_private_key(65537, 2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
    }
    state = tmp_path / "state"
    for label, key in variants.items():
        path = tmp_path / f"{label}.key"
        path.write_bytes(_pem(key))
        result = ca(state, "import", "--cert", recipe.cert, "--key", path)
        assert result.code == 2, (label, result)
        assert "is not the key of" in result.err
        assert not state.exists()


def _coprime(key: rsa.RSAPrivateKey, e: int) -> bool:
    from math import gcd

    n = key.private_numbers()
    return gcd(e, (n.p - 1) * (n.q - 1)) == 1


def test_encrypted_key_and_hostile_password_files(tmp_path: Path, recipe: RecipeCA) -> None:
    password = b"s3cret-Pa55word-for-the-ca"
    original = serialization.load_pem_private_key(recipe.key.read_bytes(), None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(_pem(original, password))
    state = tmp_path / "state"
    # No terminal (stdin is /dev/null): one line, no prompt, no hang.
    result = ca(state, "import", "--cert", recipe.cert, "--key", encrypted, timeout=10)
    assert result.code == 2
    assert "is encrypted" in result.err
    fifo = tmp_path / "pw.fifo"
    os.mkfifo(fifo)
    for hostile in ("/dev/zero", fifo):
        result = ca(state, "import", "--cert", recipe.cert, "--key", encrypted,
                    "--key-password-file", hostile, timeout=10)
        assert result.code == 2, (hostile, result)
        assert len(result.err.strip().splitlines()) == 1, result.err
    assert not state.exists()
    good = tmp_path / "pw"
    good.write_bytes(password + b"\n")
    imported = ok(state, "import", "--cert", recipe.cert, "--key", encrypted,
                  "--key-password-file", good)
    key_body = b"".join(recipe.key.read_bytes().splitlines()[1:-1])
    everything = imported.out + imported.err
    for path in (state / "ca").rglob("*"):
        if path.is_file() and "keys" not in path.parts:
            everything += path.read_bytes().decode("latin-1")
    assert password.decode() not in everything
    assert key_body[:48].decode() not in everything
    [stored] = (state / "ca" / "keys").iterdir()
    assert stored.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" not in stored.read_bytes()  # custody as certgate's own keys


def test_racing_imports_leave_one_ca_and_no_orphan_key(tmp_path: Path) -> None:
    first = make_recipe_ca(tmp_path / "a", leaves=())
    second = make_recipe_ca(tmp_path / "b", leaves=())
    state = tmp_path / "state"
    results: dict[str, Run] = {}

    def run(label: str, r: RecipeCA) -> None:
        results[label] = ca(state, "import", "--cert", r.cert, "--key", r.key)

    threads = [threading.Thread(target=run, args=(label, r))
               for label, r in (("a", first), ("b", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(COMMAND_TIMEOUT * 2)
    assert sorted(r.code for r in results.values())[0] == 0
    winners = [label for label, r in results.items() if r.code == 0]
    assert len(winners) == 1, results
    loser = results["b" if winners == ["a"] else "a"]
    # Warnings about the recipe CA, then one line of refusal.
    assert "a CA already exists" in loser.err.strip().splitlines()[-1], loser
    keys = list((state / "ca" / "keys").iterdir())
    assert len(keys) == 1
    winner_ca = first if winners == ["a"] else second
    assert (state / "ca" / "root.crt").read_bytes() == winner_ca.cert.read_bytes()
    assert not list((state / "ca" / "staging").iterdir())


@pytest.mark.parametrize("point", ["import-after-stage", "import-after-commit",
                                   "audit-after-append"])
def test_a_crashed_import_recovers_to_one_ca(tmp_path: Path, recipe: RecipeCA,
                                             point: str) -> None:
    state = tmp_path / "state"
    crashed = ca(state, "import", "--cert", recipe.cert, "--key", recipe.key,
                 env={"CERTGATE_TEST_FAULT": point})
    assert crashed.code == 1, crashed
    again = ca(state, "import", "--cert", recipe.cert, "--key", recipe.key)
    if point == "import-after-stage":
        assert again.code == 0, again  # nothing was committed: import anew
    else:
        assert again.code != 0
        assert "a CA already exists" in again.err
    ok(state, "list")  # any session finishes what the crash left
    keys = list((state / "ca" / "keys").iterdir())
    assert len(keys) == 1
    assert keys[0].stat().st_mode & 0o777 == 0o600
    stored = serialization.load_pem_private_key(keys[0].read_bytes(), None)
    original = serialization.load_pem_private_key(recipe.key.read_bytes(), None)
    assert stored.private_numbers() == original.private_numbers()  # type: ignore[union-attr]
    assert not list((state / "ca" / "staging").iterdir())
    entries = [json.loads(line) for line in
               (state / "ca" / "audit.jsonl").read_text().splitlines()]
    assert next(e["operation"] for e in entries) == "import"
    assert [e["operation"] for e in entries].count("import") == 1
    ok(state, "audit", "verify")


# -- through the proxy ---------------------------------------------------------

VERSIONS = ["1.2", "1.3"]


@pytest.fixture
def proxy(tmp_path: Path, recipe: RecipeCA, state: Path,
          start_certgate):  # type: ignore[no-untyped-def]
    ok(state, "adopt", recipe.leaf("phone")[0], "--role", "admin")
    return start_certgate(f"""
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin], crls: [builtin]}}
routes:
  - host: localhost
    upstream: whoami
    rules: [{{path: /admin/*, allow: [role:admin]}}]
""")


def _context(recipe: RecipeCA, label: str, version: str) -> ssl.SSLContext:
    cert, key = recipe.leaf(label)
    return client_context(recipe.cert, cert, key, version=version)


def _get(port: int, ctx: ssl.SSLContext, target: str,
         session: ssl.SSLSession | None = None) -> tuple[int | str, list[str], bool]:
    """(status or "refused", roles, session reused) of one request on a new connection."""
    reused = False
    try:
        with Connection(port, ctx, timeout=5, session=session) as conn:
            reused = conn.sock.session_reused
            response = conn.request("GET", target)
    except (ssl.SSLError, OSError):
        return "refused", [], reused
    roles = json.loads(response.body).get("roles", []) if response.status == 200 else []
    return response.status, roles, reused


def _ticket(port: int, ctx: ssl.SSLContext) -> ssl.SSLSession:
    with Connection(port, ctx, timeout=5) as conn:
        assert conn.request("GET", "/").status == 200
        session = conn.sock.session
    assert session is not None
    return session


def _crl_of(state: Path, issuer: x509.Name) -> bytes:
    """The PEM block of crl.pem that ``issuer`` signed."""
    data = (state / "ca" / "crl.pem").read_bytes()
    marker = b"-----END X509 CRL-----"
    for block in data.split(marker)[:-1]:
        pem = block.strip() + b"\n" + marker + b"\n"
        if x509.load_pem_x509_crl(pem).issuer == issuer:
            return pem
    raise AssertionError(f"no CRL of {issuer.rfc4514_string()} in crl.pem")


@pytest.mark.parametrize("rotation", ["none", "rotate", "rotate-root"])
@pytest.mark.parametrize("version", VERSIONS)
def test_serial_twin_gets_no_roles_and_shares_revocation(
        tmp_path: Path, recipe: RecipeCA, state: Path, proxy,  # type: ignore[no-untyped-def]
        version: str, rotation: str) -> None:
    phone, laptop = (_context(recipe, label, version) for label in ("phone", "laptop"))
    if rotation != "none":
        ok(state, "rotate", *(["--root"] if rotation == "rotate-root" else []))
        # The proxy picks up the new bundle; the recipe's leaves keep working.
        wait_until(lambda: _get(proxy.port, phone, "/admin/x")[0] == 200, 5,
                   "the adopted phone to be admitted after the rotation")
    assert _get(proxy.port, phone, "/admin/x")[:2] == (200, ["admin"])
    # Signed by the same key with the same serial, never adopted: in, no roles.
    assert _get(proxy.port, laptop, "/")[:2] == (200, [])
    assert _get(proxy.port, laptop, "/admin/x")[0] == 403
    laptop_session = _ticket(proxy.port, laptop)
    phone_session = _ticket(proxy.port, phone)

    ok(state, "revoke", "phone", "--reason", "keyCompromise")
    started = time.monotonic()
    wait_until(lambda: _get(proxy.port, phone, "/")[0] == "refused", REVOKE_DEADLINE,
               "the revoked phone to be refused")
    assert time.monotonic() - started < REVOKE_DEADLINE
    # A CRL names a serial: the twin is refused with it (fail closed), on a
    # new connection and on a session it resumed from before the revocation.
    assert _get(proxy.port, laptop, "/")[0] == "refused"
    for ctx, session in ((laptop, laptop_session), (phone, phone_session)):
        status, _, _ = _get(proxy.port, ctx, "/", session=session)
        assert status == "refused"
    # The CRL the imported CA's key signed verifies with openssl against the
    # admin's own CA.crt (acceptance 2), also after a rotation.
    crl = tmp_path / "old-ca.crl"
    crl.write_bytes(_crl_of(state, load(recipe.cert).subject))
    checked = subprocess.run(["openssl", "crl", "-in", str(crl), "-CAfile", str(recipe.cert),
                              "-noout", "-text"], capture_output=True, text=True, timeout=30,
                             check=False)
    assert checked.returncode == 0, checked
    assert "verify OK" in checked.stderr + checked.stdout, checked
    assert "Serial Number: 01" in checked.stdout



def test_an_rsa1024_ca_is_warned_about_and_fails_closed(tmp_path: Path,
                                                        start_certgate) -> None:  # type: ignore[no-untyped-def]
    """What the import warning promises: OpenSSL (security level 2) refuses an
    RSA-1024 CA, so a certgate serving with it admits nobody, adopted or not,
    and says why in its log; nothing gets in on the weak key."""
    recipe = make_recipe_ca(tmp_path / "old", leaves=("phone",), key="rsa:1024")
    state = tmp_path / "state"
    imported = ok(state, "import", "--cert", recipe.cert, "--key", recipe.key)
    assert "RSA key of 1024 bits" in imported.err
    ok(state, "adopt", recipe.leaf("phone")[0], "--role", "admin")
    proxy = start_certgate(f"""
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin], crls: [builtin]}}
routes:
  - {{host: localhost, upstream: whoami}}
""")
    cert, key = recipe.leaf("phone")
    ctx = client_context(recipe.cert, cert, key)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # the client would accept the weak chain
    assert _get(proxy.port, ctx, "/")[0] == "refused"
    wait_until(lambda: "CA_KEY_TOO_SMALL" in "".join(proxy.stderr_lines), 5,
               "the log to say why")
    # Said once at start-up too, where someone looks, and by certgate check.
    assert "has an RSA key of 1024 bits: OpenSSL (security level 2) refuses" in \
        "".join(proxy.stderr_lines)
    config = tmp_path / "weak.yaml"
    config.write_text(f"""
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {{trusted_cas: [builtin], crls: [builtin]}}
routes:
  - {{host: localhost, upstream: whoami}}
""")
    checked = subprocess.run([sys.executable, "-m", "certgate", "check", "-c", str(config)],
                             capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                             check=False)
    assert "RSA key of 1024 bits" in checked.stdout, checked


def test_a_chain_loop_is_refused() -> None:
    """Two CA certificates that each sign the other: no root, refused."""
    from certgate.ca.importing import plan_import
    from certgate.errors import UsageError

    a_key, b_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    a_name, b_name = name("Loop A"), name("Loop B")

    def ca_cert(subject: x509.Name, key: object, issuer: x509.Name, signer: object
                ) -> x509.Certificate:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(key.public_key())  # type: ignore[attr-defined]
                .serial_number(x509.random_serial_number())
                .not_valid_before(NOW - dt.timedelta(days=1))
                .not_valid_after(NOW + dt.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                .sign(signer, hashes.SHA256()))  # type: ignore[arg-type]

    a = ca_cert(a_name, a_key, b_name, b_key)
    b = ca_cert(b_name, b_key, a_name, a_key)
    with pytest.raises(UsageError, match="not a self-signed root"):
        plan_import([a], a_key, [b], NOW)

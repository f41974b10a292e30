"""Creating the CA and rotating its CA certificates.

Two tiers by default: a 10-year root that signs only intermediates, and a
2-year issuing intermediate (pathLen 0) that signs leaves. Then the root key
can live offline (``--offline-root``), needed only to rotate the
intermediate. ``--single-tier`` lets the root sign leaves directly, for
clients that only present certificates issued by a root they were given
(the Home Assistant iOS app, home-assistant/iOS#4477); its root key must
then stay online.

Rotation never removes trust: old CA certificates stay in the bundle and
keep signing CRLs until they expire, so certificates already issued keep
working (the overlap); new certificates come from the new issuer at once.
A root rotation also writes a cross certificate (new root signed by the old
one) for clients that so far trust only the old root.

Both operations use the same crash discipline as issuance: keys are staged
under write-once names (ROLE-SERIAL.key), the authority rows are committed
in one transaction, then the files are renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from certgate.ca.journal import Output
from certgate.ca.keys import (
    KEY_TYPES,
    PrivateKey,
    generate_key,
    key_to_pem,
    load_key,
    same_public_key,
    serial_hex,
)
from certgate.ca.layout import CALayout
from certgate.ca.profiles import build_cross, build_intermediate, build_root, ca_subject
from certgate.ca.session import Session, fault_point, pem, session
from certgate.errors import CAError, UsageError


@dataclass(frozen=True, slots=True)
class RotationResult:
    root_serial: int | None
    intermediate_serial: int | None
    cross_cert: Path | None
    offline_files: tuple[Path, ...]


def record_authority(s: Session, cert: x509.Certificate, role: str, *, key_file: str | None,
                      issuer: bool) -> None:
    """Add a CA certificate (root, intermediate or cross) to the inventory."""
    s.store.add_authority(
        serial=cert.serial_number,
        role=role,
        cert_pem=pem(cert),
        key_file=key_file,
        not_after=cert.not_valid_after_utc,
        issuer=issuer,
        now=s.now,
    )


def _intermediate_key_name(cert: x509.Certificate) -> str:
    return f"intermediate-{serial_hex(cert.serial_number)}.key"


def _check_offline_dir(layout: CALayout, directory: Path) -> Path:
    target = directory.absolute()
    state = layout.state_dir.absolute()
    if target == state or state in target.parents:
        raise UsageError(f"--offline-root {directory} is inside the state directory {state}")
    # Created 0700 if missing; an existing directory (a USB stick) is left as is.
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    return target


def _root_outputs(
    layout: CALayout, key: PrivateKey, cert: x509.Certificate, offline: Path | None
) -> tuple[list[Output], str | None]:
    """Files for a new root key; returns (outputs, key_file or None if offline)."""
    serial = cert.serial_number
    if offline is None:
        path = layout.ca_key("root", serial)
        return [Output(path, key_to_pem(key), 0o600)], path.name
    return [
        Output(offline / f"root-{serial_hex(serial)}.key", key_to_pem(key), 0o600),
        Output(offline / f"root-{serial_hex(serial)}.crt", pem(cert)),
    ], None


def _check_crl_url(url: str | None) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        # RFC 5280 4.2.1.13: relying parties fetch CRLs over HTTP (or LDAP).
        raise UsageError(f"--crl-url {url!r} must be an http:// or https:// URL")


def init_ca(
    layout: CALayout,
    *,
    name: str,
    key_type: str,
    offline_root: Path | None,
    single_tier: bool,
    crl_url: str | None,
    next_update: timedelta | None = None,
) -> None:
    """Create root (and intermediate) in an empty state directory."""
    if not name.strip():
        raise UsageError("--name must not be empty")
    if single_tier and offline_root is not None:
        raise UsageError(
            "--single-tier and --offline-root exclude each other: a single-tier root "
            "signs every certificate, so its key must stay online"
        )
    _check_crl_url(crl_url)
    if key_type not in KEY_TYPES:
        raise UsageError(f"unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}")
    offline = _check_offline_dir(layout, offline_root) if offline_root is not None else None
    layout.create_dirs()
    with session(layout, create=True) as s:
        if s.store.has_ca():
            raise CAError(f"a CA already exists in {layout.state_dir}; refusing to overwrite it")
        root_key = generate_key(key_type)
        root = build_root(root_key, ca_subject(name, f"{name} Root R1"), s.now)
        outputs, root_key_file = _root_outputs(layout, root_key, root, offline)
        intermediate: x509.Certificate | None = None
        if not single_tier:
            inter_key = generate_key(key_type)
            intermediate = build_intermediate(
                inter_key, ca_subject(name, f"{name} Issuing I1"), root, root_key, s.now
            )
            path = layout.ca_key("intermediate", intermediate.serial_number)
            outputs.append(Output(path, key_to_pem(inter_key), 0o600))
        fault_point("init-after-key")

        def apply() -> None:
            settings = {
                "name": name,
                "key_type": key_type,
                "single_tier": str(int(single_tier)),
                "root_generation": "1",
                "intermediate_generation": "1",
                "derived_stale": "1",
            }
            if crl_url:
                settings["crl_url"] = crl_url
            if next_update is not None:
                settings["crl_next_update"] = str(int(next_update.total_seconds()))
            for key, value in settings.items():
                s.store.put(key, value)
            record_authority(s, root, "root", key_file=root_key_file, issuer=single_tier)
            if intermediate is not None:
                record_authority(s, intermediate, "intermediate",
                                  key_file=_intermediate_key_name(intermediate), issuer=True)
            s.audit(
                "init",
                name=name,
                serial=root.serial_number,
                not_after=root.not_valid_after_utc,
                key_type=key_type,
                single_tier=single_tier,
                offline_root=offline is not None,
                intermediate=None if intermediate is None else serial_hex(
                    intermediate.serial_number
                ),
            )

        s.commit("init", root.serial_number, outputs, apply)


def _current_root_key(s: Session, root_key_file: Path | None) -> PrivateKey:
    root = s.store.active("root")
    if root is None:
        raise CAError("the inventory has no active root")
    if root.key_file is not None and root_key_file is None:
        return s.key_for(root)
    if root_key_file is None:
        raise UsageError("the root key is offline: pass it with --root-key FILE")
    key = load_key(root_key_file)
    if not same_public_key(key.public_key(), s.cert_of(root).public_key()):
        current = serial_hex(root.serial)
        raise CAError(f"{root_key_file} is not the key of the current root ({current})")
    return key


def rotate(
    layout: CALayout,
    *,
    new_root: bool,
    root_key_file: Path | None,
    offline_root: Path | None,
) -> RotationResult:
    """Issue a new intermediate (and with ``new_root`` a new, cross-signed root)."""
    with session(layout) as s:
        single_tier = s.store.get("single_tier") == "1"
        # An imported single-tier CA (ca import of an openssl root) moves to
        # two tiers on its first rotation: a certgate-made intermediate under
        # the imported root, or under a new root it cross-signs (--root).
        leave_single_tier = single_tier and s.store.get("imported") is not None
        if leave_single_tier:
            single_tier = False
        if single_tier and not new_root:
            raise UsageError("a single-tier CA has no intermediate to rotate; use --root")
        old_root_auth = s.store.active("root")
        if old_root_auth is None:
            raise CAError("the inventory has no active root")
        old_root = s.cert_of(old_root_auth)
        signing_key = _current_root_key(s, root_key_file)
        name = s.store.get("name", "certgate CA") or "certgate CA"
        key_type = s.store.get("key_type", "ecdsa-p256") or "ecdsa-p256"
        outputs: list[Output] = []
        root_cert, root_key_name, cross = old_root, old_root_auth.key_file, None
        offline: Path | None = None
        if new_root:
            if single_tier and offline_root is not None:
                raise UsageError("a single-tier root signs every certificate; it cannot be offline")
            if old_root_auth.key_file is None and offline_root is None and not single_tier:
                raise UsageError(
                    "the current root is offline; give --offline-root DIR for the new root key"
                )
            offline = _check_offline_dir(layout, offline_root) if offline_root else None
            generation = int(s.store.get("root_generation", "1") or "1") + 1
            new_key = generate_key(key_type)
            root_cert = build_root(new_key, ca_subject(name, f"{name} Root R{generation}"), s.now)
            cross = build_cross(root_cert, old_root, signing_key, s.now)
            root_outputs, root_key_name = _root_outputs(layout, new_key, root_cert, offline)
            outputs += root_outputs
            cross_path = layout.ca_dir / f"cross-{serial_hex(cross.serial_number)}.crt"
            outputs.append(Output(cross_path, pem(cross)))
            signing_key = new_key
        intermediate: x509.Certificate | None = None
        if not single_tier:
            generation = int(s.store.get("intermediate_generation", "1") or "1") + 1
            inter_key = generate_key(key_type)
            subject = ca_subject(name, f"{name} Issuing I{generation}")
            intermediate = build_intermediate(inter_key, subject, root_cert, signing_key, s.now)
            path = layout.ca_key("intermediate", intermediate.serial_number)
            outputs.append(Output(path, key_to_pem(inter_key), 0o600))
        fault_point("rotate-after-key")

        def apply() -> None:
            if new_root:
                generation = int(s.store.get("root_generation", "1") or "1") + 1
                s.store.put("root_generation", str(generation))
                record_authority(s, root_cert, "root", key_file=root_key_name, issuer=single_tier)
            if cross is not None:
                record_authority(s, cross, "cross", key_file=None, issuer=False)
            if intermediate is not None:
                generation = int(s.store.get("intermediate_generation", "1") or "1") + 1
                s.store.put("intermediate_generation", str(generation))
                record_authority(s, intermediate, "intermediate",
                                  key_file=_intermediate_key_name(intermediate), issuer=True)
            if leave_single_tier:
                s.store.put("single_tier", "0")
                if not new_root:
                    s.store.keep_as_root(old_root_auth.serial)
            s.store.put("derived_stale", "1")
            s.audit(
                "rotate",
                serial=(intermediate or root_cert).serial_number,
                not_after=(intermediate or root_cert).not_valid_after_utc,
                new_root=None if not new_root else f"{serial_hex(root_cert.serial_number)}",
                cross=None if cross is None else f"{serial_hex(cross.serial_number)}",
            )

        marker = (intermediate or root_cert).serial_number
        s.commit("rotate", marker, outputs, apply)
        cross_file = None
        if cross is not None:
            cross_file = layout.ca_dir / f"cross-{serial_hex(cross.serial_number)}.crt"
        return RotationResult(
            root_serial=root_cert.serial_number if new_root else None,
            intermediate_serial=None if intermediate is None else intermediate.serial_number,
            cross_cert=cross_file,
            offline_files=tuple(o.path for o in outputs if offline and o.path.parent == offline),
        )

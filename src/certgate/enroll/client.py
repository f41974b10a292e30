"""``certgate enroll URL --pin PIN --out DIR [--ca FILE]``: a device enrolls itself.

The key is made here (ECDSA P-256) and never sent: the server gets a CSR
and answers the certificate chain.

Theory of operation: trusting the server
----------------------------------------
The PIN must only ever reach the certgate that made the link. The link
carries the SHA-256 of that certgate's root CA (``?fp=``), as
``step ca bootstrap --fingerprint`` does, so:

1. Unless ``--ca`` is given, the root is fetched from the public
   ``/enroll/ca.crt`` over a connection that verifies nothing yet, and
   accepted only if its SHA-256 equals ``fp``: a stranger's server cannot
   produce a certificate with that hash. Nothing secret is sent on that
   connection.
2. The PIN and the CSR go over a second connection that verifies the
   server's chain and name against that root (or against ``--ca``), with
   Python's default checks (hostname, expiry, TLS 1.2+).

A server whose certificate comes from elsewhere (a public CA) fails step 2
unless ``--ca`` names the CA that signed it; with ``--ca`` the root fetched
over the verified connection must still match ``fp`` when the link has one.

Files are written only after the chain checks out: NAME.chain.pem,
NAME.crt, ca.crt, then NAME.key (0600), each atomically; on failure the
ones already written are removed.
"""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import h11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certgate.errors import UsageError
from certgate.fsutil import atomic_write, make_missing_dirs

TIMEOUT = 30.0
MAX_RESPONSE = 256 * 1024


class EnrollError(UsageError):
    """Enrollment failed; the message says why (never the PIN)."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class Link:
    host: str
    port: int
    path: str  # /PREFIX/enroll/TOKEN
    fingerprint: str | None

    @property
    def base(self) -> str:
        return self.path.rsplit("/enroll/", 1)[0]


def parse_link(url: str) -> Link:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or "/enroll/" not in parts.path:
        raise EnrollError("expected an enrollment link: https://HOST[:PORT]/.../enroll/TOKEN")
    fps = parse_qs(parts.query).get("fp", [])
    fingerprint = fps[0].lower().replace(":", "") if fps else None
    if fingerprint is not None and (len(fingerprint) != 64
                                    or any(c not in "0123456789abcdef" for c in fingerprint)):
        raise EnrollError("the link's fp is not a SHA-256 fingerprint")
    return Link(parts.hostname, parts.port or 443, parts.path, fingerprint)


def _address(host: str) -> str:
    # RFC 6761 s.6.3: names under .localhost are loopback; glibc without
    # nss-myhostname does not resolve them, and the embedded default uses one.
    if host == "localhost" or host.endswith(".localhost"):
        return "127.0.0.1"
    return host


def _request(link: Link, ctx: ssl.SSLContext, method: str, path: str,
             body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
    """One HTTP/1.1 request over TLS; (status, body)."""
    raw = socket.create_connection((_address(link.host), link.port), timeout=TIMEOUT)
    try:
        sock = ctx.wrap_socket(raw, server_hostname=link.host)
    except ssl.SSLCertVerificationError as exc:
        raw.close()
        raise EnrollError(
            f"the server's certificate is not trusted: {exc.verify_message}; if it does not "
            "come from certgate's own CA, pass --ca with the CA that signed it") from None
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise EnrollError(f"TLS with {link.host}:{link.port} failed: {exc}") from None
    conn = h11.Connection(h11.CLIENT)
    host = link.host if link.port == 443 else f"{link.host}:{link.port}"
    headers = [("host", host), ("user-agent", "certgate-enroll"), ("connection", "close"),
               ("content-length", str(len(body)))]
    if content_type:
        headers.append(("content-type", content_type))
    with sock:
        sock.sendall(conn.send(h11.Request(method=method, target=path, headers=headers))
                     + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        status, out = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                out += event.data
                if len(out) > MAX_RESPONSE:
                    raise EnrollError("the server's answer is too large")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, bytes(out)


def _fetch_root(link: Link, ctx: ssl.SSLContext) -> x509.Certificate:
    status, body = _request(link, ctx, "GET", f"{link.base}/enroll/ca.crt")
    if status != 200:
        raise EnrollError(f"could not fetch the server's root CA (HTTP {status})")
    try:
        return x509.load_der_x509_certificate(body)
    except ValueError:
        raise EnrollError("the server's root CA is not a certificate") from None


def _check_fingerprint(root: x509.Certificate, link: Link) -> None:
    if link.fingerprint is not None and root.fingerprint(hashes.SHA256()).hex() != \
            link.fingerprint:
        raise EnrollError("the server's root CA does not match the fingerprint in the link: "
                          "this is not the certgate that made the link")


def enroll(url: str, pin: str, out: Path, ca_file: Path | None = None) -> list[Path]:
    """Enroll this device; returns the files written."""
    link = parse_link(url)
    if ca_file is None and link.fingerprint is None:
        raise EnrollError("the link carries no fp= fingerprint: pass --ca with the server's CA")
    if ca_file is None:
        blind = ssl.create_default_context()
        blind.check_hostname = False
        blind.verify_mode = ssl.CERT_NONE  # only to fetch the public root; checked by hash
        root = _fetch_root(link, blind)
        _check_fingerprint(root, link)
        verified = ssl.create_default_context(
            cadata=root.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    else:
        try:
            verified = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise EnrollError(f"--ca {ca_file}: {exc}") from None
        root = _fetch_root(link, verified)
        _check_fingerprint(root, link)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
           .sign(key, hashes.SHA256()))
    body = json.dumps({"pin": pin, "csr": csr.public_bytes(serialization.Encoding.PEM)
                       .decode("ascii")}).encode()
    status, answer = _request(link, verified, "POST", f"{link.path}/csr", body,
                              "application/json")
    if status != 200:
        reason = answer.decode("utf-8", "replace").strip().splitlines()
        raise EnrollError(f"the server refused (HTTP {status}): "
                          f"{reason[0][:200] if reason else 'no reason given'}")
    chain = _checked_chain(answer, key, root)
    return _write(out, chain, key, root)


def _checked_chain(answer: bytes, key: ec.EllipticCurvePrivateKey,
                   root: x509.Certificate) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(answer)
    except ValueError:
        raise EnrollError("the server's answer is not a certificate chain") from None
    mine = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    leaf_key = chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf_key != mine:
        raise EnrollError("the certificate the server sent is not for this device's key")
    try:
        for child, parent in zip(chain, [*chain[1:], root], strict=True):
            child.verify_directly_issued_by(parent)
    except (ValueError, TypeError) as exc:
        raise EnrollError(f"the certificate chain does not lead to the root CA: {exc}") \
            from None
    except Exception as exc:  # InvalidSignature
        raise EnrollError("the certificate chain does not lead to the root CA "
                          f"({type(exc).__name__})") from None
    return chain


def _write(out: Path, chain: list[x509.Certificate], key: ec.EllipticCurvePrivateKey,
           root: x509.Certificate) -> list[Path]:
    cns = chain[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(cns[0].value) if cns else "device"
    if not name or "/" in name or name.startswith("."):
        raise EnrollError("the certificate's name is not usable as a file name")
    try:
        make_missing_dirs(out)
    except OSError as exc:
        raise EnrollError(f"--out {out}: {exc.strerror or exc}") from None
    pem = serialization.Encoding.PEM
    files = [
        (out / f"{name}.chain.pem", b"".join(c.public_bytes(pem) for c in chain), 0o644),
        (out / f"{name}.crt", chain[0].public_bytes(pem), 0o644),
        (out / "ca.crt", root.public_bytes(pem), 0o644),
        (out / f"{name}.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()), 0o600),
    ]
    written: list[Path] = []
    try:
        for path, data, mode in files:
            atomic_write(path, data, mode=mode)
            written.append(path)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise EnrollError(f"cannot write {out}: {exc.strerror or exc}") from None
    return written

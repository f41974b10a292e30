"""OpenSSL's own chain verification, reached through the libssl CPython uses.

Theory of operation
-------------------
Python's :mod:`ssl` verifies a client chain inside the handshake and offers
no way to run that verification on a certificate outside one (no
``X509_verify_cert``), and Python 3.11 cannot hand back the chain a peer
sent. ``certgate explain`` must nevertheless reach the same verdict as the
listener for certificates that OpenSSL refuses and a Python approximation
would pass: an unknown critical extension, an RSA-1024 key under security
level 2, a pathLenConstraint violation, a look-alike issuer.

So this module calls the verifier itself, with the listener's settings:

* the library is the one the ``_ssl`` extension is linked against
  (``dlopen`` of ``_ssl``'s own file resolves symbols through its
  dependencies), never another libcrypto found on the path;
* the ``SSL_CTX`` is the one inside an :class:`ssl.SSLContext` that certgate
  built with the listener's own function. CPython's ``PySSLContext`` begins
  with ``PyObject_HEAD`` followed by the ``SSL_CTX *``; the pointer is used
  only after a self-test reads the context's verify mode, options and
  security level back through libssl and finds what Python reports;
* the steps are ``ssl_verify_cert_chain``'s (ssl/ssl_cert.c, OpenSSL 3.0):
  the context's certificate store, purpose ``ssl_client``, the context's
  verify parameters, and the context's security level as the auth level.

The same access installs a verify callback (:func:`set_leaf_check`) so that
a certificate certgate itself refuses (revoked by a CRL certgate reads) is
refused inside the handshake with the ``certificate_revoked`` alert, as
nginx does with ``ssl_crl``, instead of after it with an HTTP 403.

The same access sets the acceptable-CA names of a CertificateRequest
(:func:`set_client_ca_names`, ``SSL_CTX_set_client_CA_list``, which nginx
sets from ``ssl_client_certificate``): Python's :mod:`ssl` cannot, and
without the list browsers and phones offer every certificate they hold.

Anything unexpected (another interpreter, a debug build, a symbol missing, the
self-test failing) raises :class:`Unavailable` with the reason, and callers
say that they cannot reproduce OpenSSL's verdict rather than guess one.
"""

from __future__ import annotations

import ctypes
import inspect
import ssl
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["X509_V_ERR_CERT_REVOKED", "ChainVerdict", "LeafCheck", "Unavailable",
           "set_client_ca_names", "set_leaf_check", "set_read_ahead", "set_ticket_keys",
           "set_verify_depth",
           "verify_client_chain"]

_P = ctypes.c_void_p

#: x509_vfy.h: what a leaf check may answer besides 0 (pass). OpenSSL maps
#: X509_V_ERR_CERT_REVOKED to the certificate_revoked alert
#: (ssl/statem/statem_lib.c, ssl_x509err2alert), and an exception in the
#: check to X509_V_ERR_APPLICATION_VERIFICATION (handshake_failure).
X509_V_ERR_CERT_REVOKED = 23
X509_V_ERR_APPLICATION_VERIFICATION = 50

#: ``int verify_callback(int preverify_ok, X509_STORE_CTX *ctx)``
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, _P)

#: A check on the leaf's DER once OpenSSL has verified the whole chain:
#: 0 to pass, or an X509_V_ERR_* code to refuse the handshake with.
LeafCheck = Callable[[bytes], int]


class Unavailable(RuntimeError):
    """OpenSSL's verifier cannot be reached safely on this interpreter."""


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    ok: bool
    #: OpenSSL's X509_V_* code (0 when ok) and its text, e.g.
    #: "unsupported certificate purpose".
    code: int
    message: str
    #: The depth in the chain the error was found at (0: the leaf).
    depth: int


def _library() -> ctypes.CDLL:
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):
        raise Unavailable("needs a release build of CPython (the SSLContext layout is read)")
    import _ssl

    try:
        lib = ctypes.CDLL(_ssl.__file__)
    except OSError as exc:
        raise Unavailable(f"cannot load {_ssl.__file__}: {exc}") from None
    signatures: dict[str, tuple[list[type], type | None]] = {
        "SSL_CTX_get_cert_store": ([_P], _P),
        "SSL_CTX_get0_param": ([_P], _P),
        "SSL_CTX_get_security_level": ([_P], ctypes.c_int),
        "SSL_CTX_get_verify_mode": ([_P], ctypes.c_int),
        "SSL_CTX_get_options": ([_P], ctypes.c_uint64),
        "d2i_X509": ([_P, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long], _P),
        "X509_free": ([_P], None),
        "OPENSSL_sk_new_null": ([], _P),
        "OPENSSL_sk_push": ([_P, _P], ctypes.c_int),
        "OPENSSL_sk_free": ([_P], None),
        "OPENSSL_sk_pop_free": ([_P, _P], None),
        "X509_STORE_CTX_new": ([], _P),
        "X509_STORE_CTX_free": ([_P], None),
        "X509_STORE_CTX_init": ([_P, _P, _P, _P], ctypes.c_int),
        "X509_STORE_CTX_set_default": ([_P, ctypes.c_char_p], ctypes.c_int),
        "X509_STORE_CTX_get0_param": ([_P], _P),
        "X509_VERIFY_PARAM_set1": ([_P, _P], ctypes.c_int),
        "X509_VERIFY_PARAM_set_auth_level": ([_P, ctypes.c_int], None),
        "X509_verify_cert": ([_P], ctypes.c_int),
        "X509_STORE_CTX_get_error": ([_P], ctypes.c_int),
        "X509_STORE_CTX_get_error_depth": ([_P], ctypes.c_int),
        "X509_verify_cert_error_string": ([ctypes.c_long], ctypes.c_char_p),
        "d2i_X509_NAME": ([_P, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long], _P),
        "X509_NAME_free": ([_P], None),
        "OPENSSL_sk_num": ([_P], ctypes.c_int),
        "SSL_CTX_set_client_CA_list": ([_P, _P], None),
        "SSL_CTX_get_client_CA_list": ([_P], _P),
        "SSL_CTX_set_verify_depth": ([_P, ctypes.c_int], None),
        "SSL_CTX_get_verify_depth": ([_P], ctypes.c_int),
        "SSL_CTX_set_verify": ([_P, ctypes.c_int, _P], None),
        "SSL_CTX_get_verify_callback": ([_P], _P),
        "X509_STORE_CTX_get_current_cert": ([_P], _P),
        "X509_STORE_CTX_set_error": ([_P, ctypes.c_int], None),
        "i2d_X509": ([_P, ctypes.POINTER(ctypes.c_void_p)], ctypes.c_int),
        "SSL_CTX_ctrl": ([_P, ctypes.c_int, ctypes.c_long, _P], ctypes.c_long),
        "X509_STORE_CTX_get_ex_data": ([_P, ctypes.c_int], _P),
        "SSL_get_ex_data_X509_STORE_CTX_idx": ([], ctypes.c_int),
        "SSL_get_SSL_CTX": ([_P], _P),
    }
    for name, (args, result) in signatures.items():
        try:
            function = getattr(lib, name)
        except AttributeError:
            raise Unavailable(f"libssl has no {name} (OpenSSL {ssl.OPENSSL_VERSION})") from None
        function.argtypes = args
        function.restype = result
    return lib


_LIB: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        _LIB = _library()
    return _LIB


def _ssl_ctx(context: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` inside ``context``, after checking it is really that."""
    lib = _lib()
    if type(context) is not ssl.SSLContext:
        raise Unavailable("only a plain ssl.SSLContext can be inspected")
    # PyObject_HEAD is ob_refcnt + ob_type in a release build.
    offset = 2 * ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(id(context) + offset).value
    if not pointer:
        raise Unavailable("SSLContext holds no SSL_CTX")
    # The self-test: three values Python reports must read back the same.
    verify = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}[context.verify_mode]
    if lib.SSL_CTX_get_verify_mode(pointer) != verify or \
            lib.SSL_CTX_get_options(pointer) != int(context.options) or \
            lib.SSL_CTX_get_security_level(pointer) not in range(6):
        raise Unavailable("the SSLContext layout is not the one this module knows")
    return pointer


def verify_client_chain(context: ssl.SSLContext, chain_der: list[bytes]) -> ChainVerdict:
    """Run OpenSSL's client-chain verification of ``context`` on ``chain_der``.

    Args:
        context: a server context with client verification configured (the
            trust store and parameters the listener uses).
        chain_der: the leaf first, then whatever the client would send.

    Raises:
        Unavailable: the verifier cannot be reached safely here.
        ValueError: a certificate that OpenSSL cannot decode.
    """
    if not chain_der:
        raise ValueError("no certificate to verify")
    lib = _lib()
    ssl_ctx = _ssl_ctx(context)
    certs: list[int] = []
    stack = store_ctx = None
    try:
        for der in chain_der:
            buffer = ctypes.c_char_p(der)
            cert = lib.d2i_X509(None, ctypes.byref(buffer), len(der))
            if not cert:
                raise ValueError("OpenSSL cannot decode the certificate")
            certs.append(cert)
        stack = lib.OPENSSL_sk_new_null()
        store_ctx = lib.X509_STORE_CTX_new()
        if not stack or not store_ctx:
            raise MemoryError("OpenSSL allocation failed")
        for cert in certs:
            lib.OPENSSL_sk_push(stack, cert)
        store = lib.SSL_CTX_get_cert_store(ssl_ctx)
        if lib.X509_STORE_CTX_init(store_ctx, store, certs[0], stack) != 1:
            raise Unavailable("X509_STORE_CTX_init failed")
        lib.X509_STORE_CTX_set_default(store_ctx, b"ssl_client")
        param = lib.X509_STORE_CTX_get0_param(store_ctx)
        lib.X509_VERIFY_PARAM_set1(param, lib.SSL_CTX_get0_param(ssl_ctx))
        lib.X509_VERIFY_PARAM_set_auth_level(param, lib.SSL_CTX_get_security_level(ssl_ctx))
        ok = lib.X509_verify_cert(store_ctx) == 1
        code = 0 if ok else lib.X509_STORE_CTX_get_error(store_ctx)
        text = lib.X509_verify_cert_error_string(code) or b"unknown error"
        depth = 0 if ok else lib.X509_STORE_CTX_get_error_depth(store_ctx)
        return ChainVerdict(ok, code, text.decode("ascii", "replace"), depth)
    finally:
        if store_ctx:
            lib.X509_STORE_CTX_free(store_ctx)
        if stack:
            lib.OPENSSL_sk_free(stack)  # the certificates are freed below
        for cert in certs:
            lib.X509_free(cert)


def set_client_ca_names(context: ssl.SSLContext, subjects_der: list[bytes]) -> int:
    """Send ``subjects_der`` (DER X.509 Names) as the acceptable client CAs.

    Returns the number of names the context now holds, read back from
    libssl (the self-test: it must equal the number given).

    Raises:
        Unavailable: libssl cannot be reached safely, or the names did not
            stick; the caller carries on without the list.
    """
    lib = _lib()
    ssl_ctx = _ssl_ctx(context)
    stack = lib.OPENSSL_sk_new_null()
    if not stack:
        raise Unavailable("OpenSSL allocation failed")
    for der in subjects_der:
        buffer = ctypes.c_char_p(der)
        name = lib.d2i_X509_NAME(None, ctypes.byref(buffer), len(der))
        if not name or lib.OPENSSL_sk_push(stack, name) <= 0:
            if name:
                lib.X509_NAME_free(name)
            _free_names(lib, stack)
            raise Unavailable("OpenSSL cannot decode or keep a CA name")
    lib.SSL_CTX_set_client_CA_list(ssl_ctx, stack)  # the context owns the stack now
    held = lib.SSL_CTX_get_client_CA_list(ssl_ctx)
    count = lib.OPENSSL_sk_num(held) if held else 0
    if count != len(subjects_der):
        raise Unavailable(f"the context holds {count} CA names, not {len(subjects_der)}")
    return count


def _free_names(lib: ctypes.CDLL, stack: int) -> None:
    lib.OPENSSL_sk_pop_free(stack, ctypes.cast(lib.X509_NAME_free, _P))


def set_verify_depth(context: ssl.SSLContext, depth: int) -> None:
    """``SSL_CTX_set_verify_depth``: Python's :mod:`ssl` has no setter for it.

    Raises:
        Unavailable: libssl cannot be reached safely, or the depth did not stick.
    """
    lib = _lib()
    ssl_ctx = _ssl_ctx(context)
    lib.SSL_CTX_set_verify_depth(ssl_ctx, depth)
    if lib.SSL_CTX_get_verify_depth(ssl_ctx) != depth:
        raise Unavailable("the verify depth did not stick")


#: ssl.h: SSL_CTX_set_read_ahead / SSL_CTX_get_read_ahead are SSL_CTX_ctrl calls.
_SSL_CTRL_GET_READ_AHEAD = 40
_SSL_CTRL_SET_READ_AHEAD = 41


def set_read_ahead(context: ssl.SSLContext) -> None:
    """``SSL_CTX_set_read_ahead(ctx, 1)``: read what the socket holds at once.

    Without it OpenSSL reads a record's 5-byte header and then its body, two
    ``read`` calls a record: a client's TLS 1.3 Certificate, CertificateVerify
    and Finished cost six, and certgate's own transport (tls/transport.py)
    lets OpenSSL read the socket itself.

    Raises:
        Unavailable: libssl cannot be reached safely, or the setting did not stick.
    """
    lib = _lib()
    ssl_ctx = _ssl_ctx(context)
    lib.SSL_CTX_ctrl(ssl_ctx, _SSL_CTRL_SET_READ_AHEAD, 1, None)
    if lib.SSL_CTX_ctrl(ssl_ctx, _SSL_CTRL_GET_READ_AHEAD, 0, None) != 1:
        raise Unavailable("read-ahead did not stick")


def _leaf_der(lib: ctypes.CDLL, cert: int) -> bytes | None:
    size = lib.i2d_X509(cert, None)
    if size <= 0:
        return None
    buffer = ctypes.create_string_buffer(size)
    cursor = ctypes.c_void_p(ctypes.addressof(buffer))  # i2d advances it
    if lib.i2d_X509(cert, ctypes.byref(cursor)) != size:
        return None
    return buffer.raw


class _Registered:
    """One context's leaf check, held weakly when it is a bound method (the
    runtime owns the contexts: a strong reference here would keep every
    reloaded-away runtime alive)."""

    __slots__ = ("get",)

    def __init__(self, check: LeafCheck) -> None:
        self.get: Callable[[], LeafCheck | None]
        if inspect.ismethod(check):
            self.get = weakref.WeakMethod(check)
        else:
            self.get = lambda: check


#: SSL_CTX pointer -> its check, for the one trampoline below.
_checks: dict[int, _Registered] = {}
_trampoline: Any = None  # the CFUNCTYPE instance, once made


def _unregister(pointer: int, entry: _Registered) -> None:
    # Only this registration: a later context may reuse the freed pointer.
    if _checks.get(pointer) is entry:
        del _checks[pointer]


def _verify(preverify_ok: int, store_ctx: int) -> int:
    """The verify callback of every context with a leaf check."""
    if not preverify_ok:
        return 0  # OpenSSL refused: stays refused
    lib = _lib()
    try:
        if lib.X509_STORE_CTX_get_error_depth(store_ctx) != 0:
            return 1
        ssl_obj = lib.X509_STORE_CTX_get_ex_data(store_ctx,
                                                 lib.SSL_get_ex_data_X509_STORE_CTX_idx())
        entry = _checks.get(lib.SSL_get_SSL_CTX(ssl_obj) or 0) if ssl_obj else None
        check = entry.get() if entry is not None else None
        if check is None:
            # The context's owner is gone (its last handshakes finishing):
            # OpenSSL's verdict stands and the post-handshake checks decide.
            return 1
        der = _leaf_der(lib, lib.X509_STORE_CTX_get_current_cert(store_ctx))
        code = X509_V_ERR_APPLICATION_VERIFICATION if der is None else check(der)
    except Exception:  # fail closed: a broken check refuses, never admits
        code = X509_V_ERR_APPLICATION_VERIFICATION
    if code:
        lib.X509_STORE_CTX_set_error(store_ctx, code)
        return 0
    return 1


def _trampoline_pointer() -> int:
    """The C entry point of :func:`_verify`: made once per process, never freed.

    Never freed on purpose: under systemd's MemoryDenyWriteExecute, libffi
    builds closures from a shared trampoline mapping, and freeing one in a
    process that has forked since aborts it (SIGABRT, seen in the workers
    and at the parent's exit). One closure per process, kept alive past
    interpreter shutdown, is never freed.
    """
    global _trampoline
    if _trampoline is None:
        trampoline = _VERIFY_CALLBACK(_verify)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(trampoline))
        _trampoline = trampoline
    pointer = ctypes.cast(_trampoline, _P).value
    assert pointer is not None
    return pointer


def set_leaf_check(context: ssl.SSLContext, check: LeafCheck) -> None:
    """Call ``check`` on the client's leaf inside the handshake, after OpenSSL
    has verified the chain, and refuse the handshake with the code it answers.

    The callback only ever narrows OpenSSL's verdict: a certificate OpenSSL
    refused stays refused (``preverify_ok`` 0 is returned unchanged), and the
    check runs once, at depth 0, where OpenSSL signals that the whole chain
    passed (``internal_verify``; checks after it, such as name constraints,
    call the callback again with 0 and stay refused). Resumed sessions carry
    no certificate to verify: the post-handshake checks cover those.

    Every context shares one C callback (see :func:`_trampoline_pointer`),
    which finds the check by the handshake's SSL_CTX; a bound method is held
    weakly, and the entry goes with the context.

    Raises:
        Unavailable: libssl cannot be reached safely, the context already
            has a verify callback, or the callback did not stick.
    """
    lib = _lib()
    ssl_ctx = _ssl_ctx(context)
    if lib.SSL_CTX_get_verify_callback(ssl_ctx):
        raise Unavailable("the context already has a verify callback")
    pointer = _trampoline_pointer()
    entry = _Registered(check)
    _checks[ssl_ctx] = entry
    weakref.finalize(context, _unregister, ssl_ctx, entry)
    lib.SSL_CTX_set_verify(ssl_ctx, lib.SSL_CTX_get_verify_mode(ssl_ctx), pointer)
    if lib.SSL_CTX_get_verify_callback(ssl_ctx) != pointer:
        raise Unavailable("the verify callback did not stick")


# ssl.h: SSL_CTX_set_tlsext_ticket_keys / _get_ are macros over SSL_CTX_ctrl.
_SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59


def set_ticket_keys(context: ssl.SSLContext, keys: bytes) -> None:
    """``SSL_CTX_set_tlsext_ticket_keys``: the key name, HMAC and AES keys
    (80 bytes) that encrypt this context's session tickets.

    Raises:
        Unavailable: libssl cannot be reached safely, or the keys did not stick.
    """
    lib = _lib()
    ssl_ctx = _ssl_ctx(context)
    given = ctypes.create_string_buffer(keys, len(keys))
    if lib.SSL_CTX_ctrl(ssl_ctx, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len(keys), given) != 1:
        raise Unavailable(f"libssl refused {len(keys)} bytes of ticket keys")
    held = ctypes.create_string_buffer(len(keys))
    if lib.SSL_CTX_ctrl(ssl_ctx, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, len(keys), held) != 1 or \
            held.raw != keys:
        raise Unavailable("the ticket keys did not stick")

"""The embedded default configuration, used when no config file is found.

It is the smallest useful certgate: the built-in CA, one route for
``localhost`` to the ``whoami`` echo, and the enrollment service on
``enroll.localhost`` (its handshake does not insist on a certificate; see
certgate.enroll), on loopback only, so a first run shows a working mTLS
check, and ``certgate ca enroll NAME`` works, without exposing anything.

Three environment variables move these defaults, for the container image
(see Containerfile), where the config is mounted at a fixed path if at all,
the state lives on a volume and loopback is not reachable from the host:

``CERTGATE_CONFIG``
    The file ``run``, ``explain`` and ``health`` read when no ``-c`` is
    given, instead of ``./certgate.yaml``; if it does not exist, the
    embedded default runs. The ``ca`` verbs take their state directory from
    it when neither ``--state`` nor ``-c`` is given.
``CERTGATE_STATE_DIR``
    The embedded default's ``state_dir``, and the ``ca`` verbs' ``--state``
    when no config file applies (default ``./certgate-data``).
``CERTGATE_LISTEN``
    The embedded default's listen addresses, comma-separated (default
    ``127.0.0.1:8443``). A config file is never changed by it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from certgate.config.loader import load_config_text
from certgate.config.schema import Config
from certgate.errors import UsageError

DEFAULT_CONFIG_FILE = "certgate.yaml"

ENV_CONFIG = "CERTGATE_CONFIG"
ENV_STATE_DIR = "CERTGATE_STATE_DIR"
ENV_LISTEN = "CERTGATE_LISTEN"

EMBEDDED_STATE_DIR = "./certgate-data"
EMBEDDED_LISTEN = "127.0.0.1:8443"

EMBEDDED_DEFAULT = f"""\
state_dir: {EMBEDDED_STATE_DIR}
listen: ["{EMBEDDED_LISTEN}"]
client_auth:
  trusted_cas: [builtin]
  crls: [builtin]
routes:
  - host: localhost
    upstream: whoami
    client_auth: require
  # Enrollment links (certgate ca enroll NAME) on a name of its own, so that
  # localhost keeps refusing certificate-less clients in the handshake.
  - host: enroll.localhost
    upstream: enroll
"""


def config_file(env: Mapping[str, str] = os.environ) -> Path:
    """The config file to use when no ``-c`` is given (it may not exist)."""
    return Path(env.get(ENV_CONFIG) or DEFAULT_CONFIG_FILE)


def existing_config_file(env: Mapping[str, str] = os.environ) -> Path | None:
    """:func:`config_file` if it is a file; None if it does not exist.

    Raises UsageError for something else at that path: ``docker run -v
    ./certgate.yaml:...`` with a missing ./certgate.yaml mounts a directory
    there, and serving the embedded default instead would hide the mistake.
    """
    path = config_file(env)
    if path.is_file():
        return path
    if path.exists() or path.is_symlink():
        origin = f" (${ENV_CONFIG})" if env.get(ENV_CONFIG) else ""
        raise UsageError(f"{path}{origin} is not a file (a bind mount of a file that did not "
                         "exist on the host becomes a directory)")
    return None


def embedded_text(env: Mapping[str, str] = os.environ) -> str:
    """The embedded default, with ``$CERTGATE_STATE_DIR``/``$CERTGATE_LISTEN`` applied."""
    text = EMBEDDED_DEFAULT
    state = env.get(ENV_STATE_DIR)
    if state:
        # JSON strings are YAML strings: quoting cannot be escaped from.
        text = text.replace(f"state_dir: {EMBEDDED_STATE_DIR}",
                            f"state_dir: {json.dumps(state)}")
    listen = env.get(ENV_LISTEN)
    if listen:
        addresses = [part.strip() for part in listen.split(",") if part.strip()]
        text = text.replace(f'listen: ["{EMBEDDED_LISTEN}"]',
                            f"listen: {json.dumps(addresses)}")
    return text


def embedded_default(cwd: Path | None = None, env: Mapping[str, str] = os.environ) -> Config:
    base = cwd if cwd is not None else Path.cwd()
    moved = [name for name in (ENV_STATE_DIR, ENV_LISTEN) if env.get(name)]
    source = "<embedded default" + "".join(f", ${name}" for name in moved) + ">"
    return load_config_text(embedded_text(env), source, base_dir=base)


def default_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """The ``ca`` verbs' state directory when neither ``--state`` nor ``-c`` is given."""
    return Path(env.get(ENV_STATE_DIR) or EMBEDDED_STATE_DIR)


def command_name() -> str:
    """How to run this certgate again from the same shell: ``certgate`` when
    that is on PATH and is this one; else the path it was started by (the
    README's ``.venv/bin/certgate``, with the venv not activated); else
    ``PYTHON -m certgate``. The hints printed at start use it, so they work
    when pasted."""
    import shutil
    import sys

    def same(name: str, path: str) -> bool:
        found = shutil.which(name)
        return found is not None and os.path.realpath(found) == os.path.realpath(path)

    started_by = sys.argv[0] if sys.argv else ""
    if os.path.basename(started_by) == "certgate" and os.path.exists(started_by):
        return "certgate" if same("certgate", started_by) else started_by
    python = os.path.basename(sys.executable)
    return f"{python if same(python, sys.executable) else sys.executable} -m certgate"


def first_steps(config: Config) -> str:
    """What to do next, printed when certgate runs on its embedded default."""
    state = config.state_dir
    listen = config.listen[0]
    cmd = command_name()
    return (
        f"certgate: running on the embedded default (no {config_file()} here)\n"
        f"  listening on https://localhost:{listen.port}/ -> whoami (client certificate "
        f"required)\n"
        f"  enrollment links: https://enroll.localhost:{listen.port}/ "
        f"({cmd} ca enroll --state {state} NAME)\n"
        f"  next steps, in another shell here:\n"
        f"    {cmd} ca issue --state {state} me --out .\n"
        f"    curl --cacert {state}/ca/root.crt --cert me.chain.pem --key me.key "
        f"https://localhost:{listen.port}/\n"
        f"  then write your own {DEFAULT_CONFIG_FILE} "
        f"(see config/certgate.example.yaml), stop this one (Ctrl-C) and run: "
        f"{cmd} run -c {DEFAULT_CONFIG_FILE}\n"
    )

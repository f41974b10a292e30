"""The embedded default configuration, used when no config file is found.

It is the smallest useful certgate: the built-in CA, one route for
``localhost`` to the ``whoami`` echo, and the enrollment service on
``enroll.localhost`` (its handshake does not insist on a certificate; see
certgate.enroll), on loopback only, so a first run shows a working mTLS
check, and ``certgate ca enroll NAME`` works, without exposing anything.
"""

from __future__ import annotations

from pathlib import Path

from certgate.config.loader import load_config_text
from certgate.config.schema import Config

DEFAULT_CONFIG_FILE = "certgate.yaml"

EMBEDDED_DEFAULT = """\
state_dir: ./certgate-data
listen: ["127.0.0.1:8443"]
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


def embedded_default(cwd: Path | None = None) -> Config:
    base = cwd if cwd is not None else Path.cwd()
    return load_config_text(EMBEDDED_DEFAULT, "<embedded default>", base_dir=base)


def first_steps(config: Config) -> str:
    """What to do next, printed when certgate runs on its embedded default."""
    state = config.state_dir
    listen = config.listen[0]
    return (
        f"certgate: running on the embedded default (no {DEFAULT_CONFIG_FILE} here)\n"
        f"  listening on https://localhost:{listen.port}/ -> whoami (client certificate "
        f"required)\n"
        f"  enrollment links: https://enroll.localhost:{listen.port}/ "
        f"(certgate ca enroll --state {state} NAME)\n"
        f"  next steps:\n"
        f"    certgate ca issue --state {state} me --out .\n"
        f"    curl --cacert {state}/ca/root.crt --cert me.chain.pem --key me.key "
        f"https://localhost:{listen.port}/\n"
        f"  then write your own {DEFAULT_CONFIG_FILE} "
        f"(see config/certgate.example.yaml) and run: certgate run -c {DEFAULT_CONFIG_FILE}\n"
    )

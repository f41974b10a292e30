"""The small exception tree certgate maps at its boundaries.

Each error carries what it maps to: a CLI exit code, or an HTTP status for
request-level problems, so the boundary (``cli.py``, the client protocol)
translates it in one place instead of guessing.
"""

from __future__ import annotations


class CertgateError(Exception):
    """Base of every error certgate raises on purpose."""

    exit_code: int = 1


class ConfigError(CertgateError):
    """One or more problems in a configuration file.

    ``problems`` holds every problem found, each already formatted as
    ``FILE:LINE: key.path: what is wrong``, so a user fixes them all at once.
    """

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class CAError(CertgateError):
    """A certificate-authority operation was refused or failed."""

    exit_code = 1


class UsageError(CertgateError):
    """The command line asked for something that cannot be done."""

    exit_code = 2


class HTTPError(CertgateError):
    """A request that must be answered with ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str, *, close: bool = False, kind: str = "",
                 route: str = "") -> None:
        self.status = status
        self.reason = reason
        self.close = close
        #: A bounded label for metrics: why a request was denied (403/421) or
        #: how an upstream failed (502/504).
        self.kind = kind
        #: The route that refused, when one was chosen before the refusal.
        self.route = route
        super().__init__(f"{status} {reason}")

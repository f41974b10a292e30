"""The CA's web console: a built-in upstream (``upstream: console``).

See :mod:`certgate.console.service` for how requests are authorised and
:mod:`certgate.console.guard` for the checks on every state change.
"""

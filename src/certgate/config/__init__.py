"""Configuration: schema (frozen dataclasses), loader (strict YAML: yamlread, builder,
routes, diskchecks).

Import from the modules (``certgate.config.loader``, ``certgate.config.schema``):
this package imports nothing itself, because ``tls.contexts`` needs the schema
while the loader needs ``tls.contexts`` to check certificates on disk; an
eager import here made ``import certgate.tls.contexts`` on its own fail.
"""

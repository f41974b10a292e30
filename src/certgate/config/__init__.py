"""Configuration: schema (frozen dataclasses), loader (strict YAML: yamlread, builder,
routes, diskchecks)."""

from certgate.config.loader import load_config, load_config_text, state_dir_from_config
from certgate.config.schema import Config

__all__ = ["Config", "load_config", "load_config_text", "state_dir_from_config"]

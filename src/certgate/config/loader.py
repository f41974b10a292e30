"""YAML -> :class:`~certgate.config.schema.Config`, strictly.

The loader walks PyYAML's node tree rather than the plain data so that every
problem can name the line it comes from. It never stops at the first problem:
a user fixing a config wants the whole list, each as
``FILE:LINE: key.path: what is wrong``. Unknown keys are errors, because a
typo such as ``clent_auth: require`` would otherwise silently leave a route
open. The loader only raises (:class:`~certgate.errors.ConfigError`); deciding
to exit is ``cli.py``'s job.

This module is the entry point and only wires the parts together, each a
file of one job:

- :mod:`certgate.config.yamlread`: text -> nodes, and nodes -> typed values
  with placed problems (durations, sizes, "did you mean");
- :mod:`certgate.config.builder`: the top-level sections and the checks
  across them; :mod:`certgate.config.routes`: the ``routes:`` list;
- :mod:`certgate.config.diskchecks`: the files the config names.

Callers import from here (``load_config``, ``load_config_text``,
``state_dir_from_config``, ``parse_listen``), never from the parts.
"""

from __future__ import annotations

from pathlib import Path

from certgate.config.builder import ConfigBuilder, parse_listen
from certgate.config.schema import Config
from certgate.config.yamlread import Reader, compose
from certgate.errors import ConfigError


def load_config_text(text: str, source: str, base_dir: Path | None = None) -> Config:
    """Parse and validate config text; raises ConfigError listing every problem."""
    base = base_dir if base_dir is not None else Path(source).resolve().parent
    reader = Reader(source, base)
    root = compose(text, source)
    config = ConfigBuilder(reader).build(root)
    if reader.problems or config is None:
        raise ConfigError(reader.problems or [f"{source}:1: (file): not a valid config"])
    return config


def load_config(path: Path) -> Config:
    """Read and validate a config file: its structure, and that the files it
    names exist and load (:mod:`certgate.config.diskchecks`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}:1: (file): cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}:1: (file): not UTF-8 text"]) from exc
    return load_config_text(text, str(path))


def state_dir_from_config(path: Path) -> Path:
    """The state directory a config file names (for ``certgate ca -c FILE``)."""
    return load_config(path).state_dir


__all__ = ["load_config", "load_config_text", "parse_listen", "state_dir_from_config"]

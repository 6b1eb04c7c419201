"""Typed configuration: one OmegaConf structured config for the whole system.

`schema.py` holds the dataclasses (every knob with its default and type), `loader.py`
reads a YAML preset from `configs/` and applies `key=value` overrides, turning an
unknown key or a wrong type into a `ConfigError` that names the key.
"""

from config.loader import ConfigError, load_config, to_yaml
from config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "to_yaml"]

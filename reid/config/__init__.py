"""Experiment configuration: the default schema plus YAML loading with inheritance and overrides."""

from reid.config.defaults import CHOICES, DEFAULTS, NULLABLE_TYPES, get_defaults
from reid.config.loader import (
    ConfigError,
    config_from_dict,
    config_to_yaml,
    diff_from_defaults,
    load_config,
    parse_yaml,
    save_config,
)

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "NULLABLE_TYPES",
    "ConfigError",
    "config_from_dict",
    "config_to_yaml",
    "diff_from_defaults",
    "get_defaults",
    "load_config",
    "parse_yaml",
    "save_config",
]

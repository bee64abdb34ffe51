"""Configuration: one schema (``schema.py``) and its loading/validation (``loading.py``)."""

from cdra_ray.config.loading import ConfigError, load_config, save_resolved, to_yaml, validate
from cdra_ray.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "save_resolved", "to_yaml", "validate"]

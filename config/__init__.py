"""Configuration: TOML file (or the built-in default) → frozen, validated dataclasses."""

from config.loader import (
    CONFIG_ENV, ConfigError, build_config, default_config, load_config, missing_secrets, parse_duration,
)
from config.model import (
    DEFAULT_PARTNER, Config, DaemonConfig, InboxConfig, PartnerConfig, StoreConfig, WebhookConfig,
)

__all__ = [
    "CONFIG_ENV", "ConfigError", "build_config", "default_config", "load_config", "missing_secrets",
    "parse_duration",
    "DEFAULT_PARTNER", "Config", "DaemonConfig", "InboxConfig", "PartnerConfig", "StoreConfig",
    "WebhookConfig",
]

"""Configuration: TOML file (or the built-in default) → frozen, validated dataclasses.

``config`` is also the floor every other package stands on: besides the configuration model it
holds the canonical row contract (``config.canonical``) and the error tree (``config.errors``),
so ``adapters`` and ``storage`` share them without importing each other or ``inbox_daemon``.
They are not imported here, so ``import config`` stays free of pyarrow.
"""

from config.loader import (
    CONFIG_ENV,
    ConfigError,
    build_config,
    default_config,
    load_config,
    missing_secrets,
    parse_duration,
)
from config.model import (
    DEFAULT_PARTNER,
    Config,
    ConsoleConfig,
    DaemonConfig,
    InboxConfig,
    LocalInboxConfig,
    PartnerConfig,
    S3InboxConfig,
    SftpInboxConfig,
    StoreConfig,
    WebhookConfig,
)

__all__ = [
    "CONFIG_ENV", "ConfigError", "build_config", "default_config", "load_config", "missing_secrets",
    "parse_duration",
    "DEFAULT_PARTNER", "Config", "ConsoleConfig", "DaemonConfig", "InboxConfig", "LocalInboxConfig", "PartnerConfig",
    "S3InboxConfig", "SftpInboxConfig", "StoreConfig", "WebhookConfig",
]

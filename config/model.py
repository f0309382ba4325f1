"""Typed, frozen configuration: what a loaded and validated TOML file becomes.

Every value here has been checked once, at load time (see ``config.loader``); the rest of the
program trusts these objects and never re-validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

FeedMode = Literal["delta", "snapshot"]
OnSuccess = Literal["move", "delete", "keep"]
InboxKind = Literal["local", "sftp", "s3"]

DEFAULT_PARTNER = "default"
DEFAULT_PATTERNS = (
    "*.csv", "*.tsv", "*.txt", "*.json", "*.ndjson", "*.jsonl", "*.parquet",
    "*.csv.gz", "*.tsv.gz", "*.txt.gz", "*.json.gz", "*.ndjson.gz", "*.jsonl.gz", "*.parquet.gz",
    "*.xlsx",
)


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret_env: str | None = None


@dataclass(frozen=True)
class PartnerConfig:
    id: str
    currency: str = "USD"
    preset: str | None = None
    max_reject_ratio: float = 0.05
    max_deactivate_ratio: float = 0.2
    # canonical column name -> the partner's column name
    columns: Mapping[str, str] = field(default_factory=dict)
    encoding: str = "utf-8"             # text files without a BOM; a UTF-8/16/32 BOM always wins
    decimal_separator: str = "."
    delimiter: str | None = None        # CSV: None = sniffed from the header line
    sheet: str | None = None            # .xlsx: None = the first sheet
    locale: str = "en_US"               # presets with localized columns (name-en_US)
    channel: str = "ecommerce"          # presets with channel-scoped columns (description-en_US-ecommerce)
    webhook: WebhookConfig | None = None


@dataclass(frozen=True)
class InboxConfig:
    partner: str
    kind: InboxKind
    path: str
    mode: FeedMode = "delta"
    on_success: OnSuccess = "move"
    settle: float = 5.0                 # seconds a file must stay unchanged before it is read
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    format: str | None = None           # force a format instead of guessing from the name
    poll_interval: float = 60.0         # seconds, remote inboxes
    # sftp
    host: str | None = None
    port: int = 22
    username: str | None = None
    key_file: str | None = None
    password_env: str | None = None
    known_hosts: str | None = None
    # s3
    bucket: str | None = None
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    sqs_queue_url: str | None = None

    @property
    def id(self) -> str:
        """A stable, readable identity for logs, metrics and manifests."""
        if self.kind == "s3":
            return f"s3:{self.bucket}/{self.prefix}"
        if self.kind == "sftp":
            return f"sftp:{self.username}@{self.host}:{self.port}{self.path}"
        return f"local:{self.path}"


@dataclass(frozen=True)
class Limits:
    """What any input file may cost at most; beyond it the file is rejected with the reason."""
    max_columns: int = 2_000                    # columns in a header / fields of a record
    max_line_bytes: int = 4 << 20               # one line (one row) of a text file; 4 MiB at most
    max_uncompressed_bytes: int = 20 << 30      # a .gz file (or an .xlsx sheet) once inflated
    max_compression_ratio: float = 200.0        # inflated / compressed, checked past the first MiB


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = Path("var")
    workers: int = 2
    log_format: Literal["json", "console"] | None = None   # None: console on a TTY, else json
    log_level: str = "info"
    health: str = "127.0.0.1:9464"
    max_attempts: int = 5               # attempts of a job failing for transient reasons, then quarantined
    retry_base: float = 2.0             # seconds; backoff doubles per attempt, with full jitter
    retry_max: float = 300.0            # seconds; the backoff never exceeds this
    stop_timeout: float = 10.0          # seconds in-flight jobs may take to finish on SIGTERM
    limits: Limits = Limits()

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.state_dir / "results"

    @property
    def audit_dir(self) -> Path:
        return self.state_dir / "audit"


@dataclass(frozen=True)
class StoreConfig:
    url: str
    password_env: str | None = None     # PostgreSQL: the password's environment variable (else libpq's own)
    lease: float = 30.0                 # seconds a claim lives without a heartbeat (renewed every lease/3)


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    store: StoreConfig
    partners: Mapping[str, PartnerConfig]
    inboxes: tuple[InboxConfig, ...]
    source: Path | None = None           # the TOML file, or None for the built-in default

    def partner(self, partner_id: str) -> PartnerConfig:
        return self.partners[partner_id]

    def inboxes_of(self, partner_id: str) -> tuple[InboxConfig, ...]:
        return tuple(i for i in self.inboxes if i.partner == partner_id)

"""Typed, frozen configuration: what a loaded and validated TOML file becomes.

Every value here has been checked once, at load time (see ``config.loader``); the rest of the
program trusts these objects and never re-validates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

# The words a key accepts are written once, as these types; the loader checks against them.
FeedMode = Literal["delta", "snapshot"]
OnSuccess = Literal["move", "delete", "keep"]
InboxKind = Literal["local", "sftp", "s3"]
LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
# The formats an inbox may force (``format = "csv"``) are part of the file's contract, so they are
# named here, not taken from ``adapters.readers.FORMATS``: config must not import adapters, which
# build on it. That registry maps each of these names to its reader, no more and no fewer
# (tests/test_config.py holds them to it).
FileFormat = Literal["csv", "tsv", "json", "ndjson", "parquet", "xlsx", "xml"]
FORMAT_NAMES: tuple[str, ...] = get_args(FileFormat)

DEFAULT_PARTNER = "default"
DEFAULT_PATTERNS = (
    "*.csv", "*.tsv", "*.txt", "*.json", "*.ndjson", "*.jsonl", "*.parquet",
    "*.csv.gz", "*.tsv.gz", "*.txt.gz", "*.json.gz", "*.ndjson.gz", "*.jsonl.gz", "*.parquet.gz",
    "*.xlsx", "*.xml", "*.xml.gz",
)


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret_env: str | None = None
    # an endpoint resolving to a private, loopback or link-local address is refused unless allowed
    allow_private: bool = False


@dataclass(frozen=True)
class PartnerConfig:
    id: str
    currency: str = "USD"
    preset: str | None = None
    max_reject_ratio: float = 0.05
    max_deactivate_ratio: float = 0.2
    # a file is held for an admin's approval (status held, ``jobs approve``) when more than this
    # share of the products it updates, and at least price_shock_min_products of them, change
    # price by price_shock_factor or more, up or down (prices in cents instead of units: x100)
    max_price_shock_ratio: float = 0.1
    price_shock_factor: float = 5.0
    price_shock_min_products: int = 5
    write_changes: bool = False         # a <job>.changes.csv next to the manifest: what the job changed
    # a file bigger than this is rejected before it is copied (by the size its inbox lists),
    # or as soon as its copy passes it: it never fills the state disk
    max_file_bytes: int = 10 << 30
    # canonical column name -> the partner's column names to try, in order (one, or a list)
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    encoding: str = "utf-8"             # text files without a BOM; a UTF-8/16/32 BOM always wins
    decimal_separator: str = "."
    delimiter: str | None = None        # CSV: None = sniffed from the header line
    sheet: str | None = None            # .xlsx: None = the first sheet
    locale: str = "en_US"               # presets with localized columns (name-en_US)
    channel: str = "ecommerce"          # presets with channel-scoped columns (description-en_US-ecommerce)
    # the partner's files put an apostrophe before values a spreadsheet would turn into a number
    # or a formula ('0123, '-1): it is removed before judging. None: as the preset says
    apostrophe_guard: bool | None = None
    header_row: int | None = None       # CSV/.xlsx: the header's line, 1-based (title rows above it)
    # Whatever a preset file says, a partner may say too, in the same keys and tables; they are
    # laid over those of its preset (``preset``, or a preset file of its own), key by key.
    # ``adapters.presets`` makes the one preset a partner's files are read with.
    preset_file: str | None = None      # a preset file of the partner's own (the path resolved)
    record_path: tuple[str, ...] = ()   # JSON/XML: where the records are ("products", "catalog/product")
    expand: str | None = None           # JSON/XML: a nested list whose elements are rows ("variants")
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)   # [values.<canonical>]
    lists: Mapping[str, str] = field(default_factory=dict)                  # [lists]
    key_value: tuple[str, ...] = ()     # [attributes] key_value
    rows: Mapping[str, Any] = field(default_factory=dict)                   # [rows], a row model
    webhook: WebhookConfig | None = None


# Each kind of inbox has a type of its own with only its own keys, so the code of a kind sees
# exactly what it may use and a key of another kind is an error of the file. ``kind`` is fixed
# by the type (it is what tells the types apart) and set by it, never passed. Keyword-only:
# a kind's required keys (``host``, ``bucket``) come after the shared keys with defaults.

@dataclass(frozen=True, kw_only=True)
class InboxBase:
    """What every inbox has, whatever its kind; only its subclasses are made."""
    partner: str
    kind: InboxKind
    path: str
    mode: FeedMode = "delta"
    on_success: OnSuccess = "move"
    settle: float = 5.0                 # seconds a file must stay unchanged before it is read
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    format: FileFormat | None = None    # force a format instead of guessing from the name
    # True: a file is ready only once ``<name>.done`` or ``<name>.ok`` exists next to it (the
    # partner says "complete"); the marker is archived with it and is never input itself
    ready_marker: bool = False

    @property
    def id(self) -> str:
        """A stable, readable identity for logs, metrics and manifests: where the files are."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class LocalInboxConfig(InboxBase):
    kind: Literal["local"] = field(default="local", init=False)

    @property
    def id(self) -> str:
        return f"local:{self.path}"


@dataclass(frozen=True, kw_only=True)
class RemoteInboxConfig(InboxBase):
    """An inbox that is polled (``inbox_daemon.inboxes.polling``)."""
    poll_interval: float = 60.0         # seconds


@dataclass(frozen=True, kw_only=True)
class SftpInboxConfig(RemoteInboxConfig):
    kind: Literal["sftp"] = field(default="sftp", init=False)
    host: str
    port: int = 22
    username: str
    key_file: str | None = None         # this, or password_env
    password_env: str | None = None
    known_hosts: str

    @property
    def id(self) -> str:
        return f"sftp:{self.username}@{self.host}:{self.port}{self.path}"


@dataclass(frozen=True, kw_only=True)
class S3InboxConfig(RemoteInboxConfig):
    kind: Literal["s3"] = field(default="s3", init=False)
    bucket: str
    prefix: str = ""                    # "" or ending in "/"
    region: str | None = None
    endpoint_url: str | None = None
    sqs_queue_url: str | None = None

    @property
    def id(self) -> str:
        return f"s3:{self.bucket}/{self.prefix}"


# Code that handles any inbox annotates with this; checking ``kind`` narrows it to one type.
InboxConfig = LocalInboxConfig | SftpInboxConfig | S3InboxConfig
# kind -> its type; the one place a ``kind = "..."`` of the file is mapped to a type
INBOX_CONFIGS: Mapping[str, type[InboxConfig]] = {
    cls.kind: cls for cls in (LocalInboxConfig, SftpInboxConfig, S3InboxConfig)}


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
    # each worker's pipeline in a process of its own (``inbox_daemon.worker_process``): workers
    # then add up; false keeps them threads of the daemon, which share one core
    worker_processes: bool = True
    log_format: LogFormat | None = None     # None: console on a TTY, else json
    log_level: LogLevel = "info"
    health: str = "127.0.0.1:9464"
    max_attempts: int = 5               # attempts of a job failing for transient reasons, then quarantined
    retry_base: float = 2.0             # seconds; backoff doubles per attempt, with full jitter
    retry_max: float = 300.0            # seconds; the backoff never exceeds this
    stop_timeout: float = 10.0          # seconds in-flight jobs may take to finish on SIGTERM
    # the environment variable holding the audit trail's key: every record's hash is then an
    # HMAC-SHA256 with it (inbox_daemon.audit); None: plain sha256
    audit_key_env: str | None = None
    history_days: float = 90.0          # change sets (jobs diff, revert, catalog history) are kept this long
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


LOOPBACK_HOSTS = ("localhost", "::1")


@dataclass(frozen=True)
class ConsoleConfig:
    """The admin console (``inbox_daemon.console``), off unless ``address`` is set. On a loopback
    address admins need no login (unless ``require_login``); any other address requires
    credentials, and they come from the environment, never from this file."""
    address: str = ""
    # the variable holding the admins: "alice=<hash> bob=<hash>", each a password hash as
    # ``inbox-daemon console hash-password`` prints it
    admins_env: str | None = None
    token_env: str | None = None        # the variable holding a bearer token (scripts); its actor is "token"
    require_login: bool = False         # ask for a login on a loopback address too
    tls_cert: Path | None = None        # serve HTTPS (and mark the session cookie Secure)
    tls_key: Path | None = None

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def local(self) -> bool:
        """Served on a loopback address only: reachable from this host alone."""
        import ipaddress
        host = self.host
        if host in LOOPBACK_HOSTS:
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:          # a name: only "localhost" is taken for this host
            return False

    @property
    def login(self) -> bool:
        return self.require_login or not self.local


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    store: StoreConfig
    partners: Mapping[str, PartnerConfig]
    inboxes: tuple[InboxConfig, ...]
    source: Path | None = None           # the TOML file, or None for the built-in default
    console: ConsoleConfig = ConsoleConfig()

    def partner(self, partner_id: str) -> PartnerConfig:
        return self.partners[partner_id]

    def inboxes_of(self, partner_id: str) -> tuple[InboxConfig, ...]:
        return tuple(i for i in self.inboxes if i.partner == partner_id)

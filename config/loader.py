"""Load a TOML file into ``config.model`` objects, checking every key once.

Errors name the key path (``inboxes[2].host: required for kind "sftp"``) and are all reported
together, so one run of ``inbox-daemon config check`` shows everything that is wrong.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from config.model import (
    DEFAULT_PARTNER, Config, DaemonConfig, InboxConfig, Limits, PartnerConfig, StoreConfig, WebhookConfig,
)

CONFIG_ENV = "INBOX_DAEMON_CONFIG"
PARTNER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every ``key.path: reason``."""

    def __init__(self, problems: list[str], source: Path | None = None):
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


def parse_duration(value: Any) -> float:
    """``"2s"``, ``"500ms"``, ``"1m"``, ``"1h"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"5s\"")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = DURATION.match(str(value))
        if not m:
            raise ValueError(f"expected a duration such as \"5s\", \"500ms\" or \"1m\", got {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a finite, non-negative duration, got {value!r}")
    return seconds


class _Reader:
    """Collects problems while converting one table, so every error is reported at once."""

    def __init__(self, problems: list[str]):
        self.problems = problems

    def table(self, data: dict, path: str, allowed: set[str]) -> dict:
        if not isinstance(data, dict):
            self.problems.append(f"{path}: expected a table")
            return {}
        for key in data:
            if key not in allowed:
                self.problems.append(f"{path + '.' if path else ''}{key}: unknown key")
        return data

    def get(self, data: dict, key: str, path: str, kind: type | tuple, default: Any = None,
            *, check: Callable[[Any], Any] | None = None, required: bool = False) -> Any:
        full = f"{path}.{key}" if path else key
        if key not in data:
            if required:
                self.problems.append(f"{full}: required")
            return default
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.problems.append(f"{full}: expected {names}, got {type(value).__name__}")
            return default
        if check is not None:
            try:
                return check(value)
            except ValueError as exc:
                self.problems.append(f"{full}: {exc}")
                return default
        return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {value!r}")
        return value
    return check


def _ratio(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1; got {value}")
    return value


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be at least 1; got {value}")
    return value


def _host_port(value: str) -> str:
    if value and not re.match(r"^[^:\s]*:\d{1,5}$", value):
        raise ValueError(f"expected \"host:port\" or \"\"; got {value!r}")
    return value


def _encoding(value: str) -> str:
    import codecs
    try:
        return codecs.lookup(value).name
    except LookupError:
        raise ValueError(f"unknown encoding {value!r}") from None


def _currency(value: str) -> str:
    from adapters.canonical import ISO_4217
    code = value.strip().upper()
    if code not in ISO_4217:
        raise ValueError(f"not an ISO 4217 currency code: {value!r}")
    return code


def _store_url(value: str) -> str:
    if not (value.startswith("sqlite:///") or value.startswith(("postgresql://", "postgres://"))):
        raise ValueError("expected sqlite:///relative/path, sqlite:////absolute/path or postgresql://...")
    if value.startswith(("postgresql://", "postgres://")):
        from urllib.parse import urlsplit
        if urlsplit(value).password is not None:
            raise ValueError("a password must not be written in the file: use store.password_env, "
                             "PGPASSWORD or ~/.pgpass")
    return value


def _lease(value) -> float:
    seconds = parse_duration(value)
    if seconds < 1:
        raise ValueError(f"must be at least 1s; got {value!r}")
    return seconds


def _partner(r: _Reader, data: dict, path: str) -> PartnerConfig | None:
    allowed = {f.name for f in fields(PartnerConfig)}
    data = r.table(data, path, allowed)
    pid = r.get(data, "id", path, str, required=True)
    if pid is not None and not PARTNER_ID.match(pid):
        r.problems.append(f"{path}.id: use letters, digits, '_', '.', '-' (at most 64); got {pid!r}")
        pid = None
    kw: dict[str, Any] = {}
    kw["currency"] = r.get(data, "currency", path, str, "USD", check=_currency)
    kw["preset"] = r.get(data, "preset", path, str, None, check=_preset)
    kw["max_reject_ratio"] = r.get(data, "max_reject_ratio", path, float, 0.05, check=_ratio)
    kw["max_deactivate_ratio"] = r.get(data, "max_deactivate_ratio", path, float, 0.2, check=_ratio)
    kw["encoding"] = r.get(data, "encoding", path, str, "utf-8", check=_encoding)
    kw["decimal_separator"] = r.get(data, "decimal_separator", path, str, ".", check=_choice(".", ","))
    kw["delimiter"] = r.get(data, "delimiter", path, str, None, check=_choice(",", ";", "\t", "|"))
    kw["sheet"] = r.get(data, "sheet", path, str, None)
    kw["locale"] = r.get(data, "locale", path, str, "en_US", check=_token)
    kw["channel"] = r.get(data, "channel", path, str, "ecommerce", check=_token)
    columns = r.get(data, "columns", path, dict, {})
    from adapters.canonical import INPUT_FIELDS
    for canonical, column in columns.items():
        if canonical not in INPUT_FIELDS:
            r.problems.append(f"{path}.columns.{canonical}: not a canonical column "
                              f"(one of {', '.join(INPUT_FIELDS)})")
        elif not isinstance(column, str) or not column.strip():
            r.problems.append(f"{path}.columns.{canonical}: expected the partner's column name")
    kw["columns"] = {k: v.strip() for k, v in columns.items() if isinstance(v, str)}
    hook = r.get(data, "webhook", path, dict, None)
    if hook is not None:
        hp = f"{path}.webhook"
        hook = r.table(hook, hp, {"url", "secret_env"})
        url = r.get(hook, "url", hp, str, required=True)
        if url is not None and not url.startswith(("http://", "https://")):
            r.problems.append(f"{hp}.url: expected an http:// or https:// URL")
        kw["webhook"] = WebhookConfig(url=url or "", secret_env=r.get(hook, "secret_env", hp, str))
    return PartnerConfig(id=pid, **kw) if pid else None


def _token(value: str) -> str:
    if not re.match(r"^[A-Za-z0-9_]{1,32}$", value):
        raise ValueError(f"expected letters, digits and '_' (e.g. en_US); got {value!r}")
    return value


def _preset(value: str) -> str:
    from adapters.presets import PRESETS
    if value not in PRESETS:
        raise ValueError(f"unknown preset {value!r}; known: {', '.join(sorted(PRESETS))}")
    return value


def _inbox(r: _Reader, data: dict, path: str, partners: set[str]) -> InboxConfig | None:
    allowed = {f.name for f in fields(InboxConfig)}
    data = r.table(data, path, allowed)
    partner = r.get(data, "partner", path, str, required=True)
    if partner is not None and partner not in partners:
        r.problems.append(f"{path}.partner: no [[partners]] entry with id {partner!r}")
    kind = r.get(data, "kind", path, str, "local", check=_choice("local", "sftp", "s3"))
    kw: dict[str, Any] = {}
    for key in ("host", "username", "key_file", "password_env", "known_hosts", "bucket", "region",
                "endpoint_url", "sqs_queue_url"):
        kw[key] = r.get(data, key, path, str)
    kw["prefix"] = r.get(data, "prefix", path, str, "")
    kw["port"] = r.get(data, "port", path, int, 22)
    kw["mode"] = r.get(data, "mode", path, str, "delta", check=_choice("delta", "snapshot"))
    kw["on_success"] = r.get(data, "on_success", path, str, "move", check=_choice("move", "delete", "keep"))
    kw["settle"] = r.get(data, "settle", path, (str, int, float), 5.0, check=parse_duration)
    kw["poll_interval"] = r.get(data, "poll_interval", path, (str, int, float), 60.0, check=parse_duration)
    from adapters.readers import FORMATS
    kw["format"] = r.get(data, "format", path, str, None, check=_choice(*FORMATS))
    patterns = r.get(data, "patterns", path, list, None)
    if patterns is not None:
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            r.problems.append(f"{path}.patterns: expected a non-empty list of glob patterns")
        else:
            kw["patterns"] = tuple(patterns)
    inbox_path = r.get(data, "path", path, str, None)
    if kind == "local":
        inbox_path = inbox_path or (f"inbox/{partner}" if partner else None)
        # "inbox/acme" and "./inbox/acme/" are one folder: one id, so two bindings are caught
        inbox_path = os.path.normpath(inbox_path) if inbox_path else None
    elif kind == "sftp":
        for key in ("host", "username", "known_hosts"):
            if not kw[key]:
                r.problems.append(f"{path}.{key}: required for kind \"sftp\"")
        if not (kw["key_file"] or kw["password_env"]):
            r.problems.append(f"{path}.key_file: required for kind \"sftp\" (or password_env)")
        for key in ("key_file", "known_hosts"):
            if kw[key] and not Path(kw[key]).is_file():
                r.problems.append(f"{path}.{key}: file not found: {kw[key]}")
        inbox_path = inbox_path or "."
    elif kind == "s3":
        if not kw["bucket"]:
            r.problems.append(f"{path}.bucket: required for kind \"s3\"")
        if kw["prefix"] and not kw["prefix"].endswith("/"):
            kw["prefix"] += "/"
        inbox_path = inbox_path or kw["prefix"]
    if partner is None or kind is None or inbox_path is None:
        return None
    return InboxConfig(partner=partner, kind=kind, path=inbox_path, **kw)


def build_config(data: dict, source: Path | None = None) -> Config:
    """Turn parsed TOML into a ``Config``; raise ``ConfigError`` listing every problem."""
    problems: list[str] = []
    r = _Reader(problems)
    data = r.table(data, "", {"daemon", "store", "partners", "inboxes", "limits"})

    d = r.table(data.get("daemon", {}), "daemon", {f.name for f in fields(DaemonConfig)} - {"limits"})
    state_dir = Path(r.get(d, "state_dir", "daemon", str, "var"))
    daemon = DaemonConfig(
        state_dir=state_dir,
        workers=r.get(d, "workers", "daemon", int, 2, check=_positive),
        log_format=r.get(d, "log_format", "daemon", str, None, check=_choice("json", "console")),
        log_level=r.get(d, "log_level", "daemon", str, "info",
                        check=_choice("debug", "info", "warning", "error")),
        health=r.get(d, "health", "daemon", str, "127.0.0.1:9464", check=_host_port),
        max_attempts=r.get(d, "max_attempts", "daemon", int, 5, check=_positive),
        retry_base=r.get(d, "retry_base", "daemon", (str, int, float), 2.0, check=parse_duration),
        retry_max=r.get(d, "retry_max", "daemon", (str, int, float), 300.0, check=parse_duration),
        stop_timeout=r.get(d, "stop_timeout", "daemon", (str, int, float), 10.0, check=parse_duration),
        limits=_limits(r, data.get("limits", {})),
    )
    s = r.table(data.get("store", {}), "store", {f.name for f in fields(StoreConfig)})
    store = StoreConfig(url=r.get(s, "url", "store", str, f"sqlite:///{state_dir / 'catalog.db'}",
                                  check=_store_url),
                        password_env=r.get(s, "password_env", "store", str, None),
                        lease=r.get(s, "lease", "store", (str, int, float), 30.0, check=_lease))

    raw_partners = data.get("partners", [{"id": DEFAULT_PARTNER}])
    partners: dict[str, PartnerConfig] = {}
    if not isinstance(raw_partners, list):
        problems.append("partners: expected [[partners]] tables")
        raw_partners = []
    for i, raw in enumerate(raw_partners):
        p = _partner(r, raw, f"partners[{i}]")
        if p is None:
            continue
        if p.id in partners:
            problems.append(f"partners[{i}].id: duplicate partner id {p.id!r}")
        partners[p.id] = p

    raw_inboxes = data.get("inboxes")
    if raw_inboxes is None:   # every partner gets its local ./inbox/<id>
        raw_inboxes = [{"partner": pid, "kind": "local"} for pid in partners]
    if not isinstance(raw_inboxes, list):
        problems.append("inboxes: expected [[inboxes]] tables")
        raw_inboxes = []
    inboxes = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_inboxes):
        inbox = _inbox(r, raw, f"inboxes[{i}]", set(partners))
        if inbox is None:
            continue
        if inbox.id in seen:
            problems.append(f"inboxes[{i}]: same location as inboxes[{seen[inbox.id]}] ({inbox.id})")
        seen[inbox.id] = i
        inboxes.append(inbox)

    if problems:
        raise ConfigError(problems, source)
    return Config(daemon=daemon, store=store, partners=partners, inboxes=tuple(inboxes), source=source)


def _limits(r: _Reader, data: dict) -> Limits:
    data = r.table(data, "limits", {f.name for f in fields(Limits)})
    default = Limits()

    def ratio(value: float) -> float:
        if not value >= 1.0 or not math.isfinite(value):
            raise ValueError(f"must be a finite number of at least 1; got {value}")
        return value
    return Limits(
        max_columns=r.get(data, "max_columns", "limits", int, default.max_columns, check=_positive),
        max_line_bytes=r.get(data, "max_line_bytes", "limits", int, default.max_line_bytes, check=_positive),
        max_uncompressed_bytes=r.get(data, "max_uncompressed_bytes", "limits", int,
                                     default.max_uncompressed_bytes, check=_positive),
        max_compression_ratio=r.get(data, "max_compression_ratio", "limits", float,
                                    default.max_compression_ratio, check=ratio),
    )


def missing_secrets(config: Config) -> list[str]:
    """Secrets named by ``*_env`` keys but absent from this process's environment. Not an error
    of the file: an admin's shell rarely has the daemon's secrets; the daemon warns at start."""
    missing = []
    if config.store.password_env and config.store.password_env not in os.environ:
        missing.append(f"store.password_env: environment variable {config.store.password_env} is not set")
    for i, inbox in enumerate(config.inboxes):
        if inbox.password_env and inbox.password_env not in os.environ:
            missing.append(f"inboxes[{i}].password_env: environment variable {inbox.password_env} is not set")
    for i, partner in enumerate(config.partners.values()):
        hook = partner.webhook
        if hook and hook.secret_env and hook.secret_env not in os.environ:
            missing.append(f"partners[{i}].webhook.secret_env: environment variable {hook.secret_env} "
                           "is not set (webhooks would go out unsigned)")
    return missing


def default_config() -> Config:
    """The built-in default: state under ./var, partner ``default`` with inbox ./inbox/default."""
    return build_config({})


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Load ``path``, else ``$INBOX_DAEMON_CONFIG``, else the built-in default."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return default_config()
    source = Path(path)
    try:
        with source.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"file not found: {source}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"invalid TOML: {exc}"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: {exc.reason} at byte {exc.start}"], source) from None
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"], source) from None
    return build_config(data, source)

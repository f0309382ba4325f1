"""Load a TOML file into ``config.model`` objects, checking every key once.

Errors name the key path (``inboxes[2].host: required for kind "sftp"``) and are all reported
together, so one run of ``inbox-daemon config check`` shows everything that is wrong.

The keys of a table, and their defaults, are the fields of its dataclass in ``config.model``,
written there once. This module says how each key is read (its TOML type and its check) and
what a dataclass cannot: defaults that follow other keys, rules across keys.

Preset names are the one thing in the file this package cannot check alone: presets are data
files of ``adapters``, which builds on ``config`` and so may import it, never the reverse. Their
names are passed in (``presets=``) by ``inbox_daemon.settings.load``, the one function the
program loads its configuration with. Format names, by contrast, are a fixed part of the file's
contract, listed in ``config.model`` (``FileFormat``).
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, get_args

from config.model import (
    DEFAULT_PARTNER,
    FORMAT_NAMES,
    INBOX_CONFIGS,
    Config,
    ConsoleConfig,
    DaemonConfig,
    FeedMode,
    InboxConfig,
    Limits,
    LocalInboxConfig,
    LogFormat,
    LogLevel,
    OnSuccess,
    PartnerConfig,
    S3InboxConfig,
    SftpInboxConfig,
    StoreConfig,
    WebhookConfig,
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


# a key's check: returns the value (normalised) or raises ValueError saying what is wrong
Check = Callable[[Any], Any]
# key -> (the TOML type(s) it may have, its check)
Spec = Mapping[str, tuple[type | tuple[type, ...], Check | None]]


class _Reader:
    """Collects problems while converting one table, so every error is reported at once."""

    def __init__(self, problems: list[str]):
        self.problems = problems

    def table(self, data: dict, path: str, allowed: Collection[str]) -> dict:
        if not isinstance(data, dict):
            self.problems.append(f"{path}: expected a table")
            return {}
        for key in data:
            if key not in allowed:
                self.problems.append(f"{path + '.' if path else ''}{key}: unknown key")
        return data

    def get(self, data: dict, key: str, path: str, kind: type | tuple, default: Any = None,
            *, check: Check | None = None, required: bool = False) -> Any:
        full = f"{path}.{key}" if path else key
        if key not in data:
            if required:
                self.problems.append(f"{full}: required")
            return default
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = ("true or false" if kind is bool else kind.__name__ if isinstance(kind, type)
                     else " or ".join(k.__name__ for k in kind))
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


def _non_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"must be 0 or more; got {value}")
    return float(value)


def _above_one(value: float) -> float:
    if value <= 1:
        raise ValueError(f"must be more than 1 (a factor prices change by); got {value}")
    return float(value)


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be at least 1; got {value}")
    return value


def _host_port(value: str) -> str:
    if value and not re.match(r"^[^:\s]*:\d{1,5}$", value):
        raise ValueError(f"expected \"host:port\" or \"\"; got {value!r}")
    return value


def _env_name(value: str) -> str:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
        raise ValueError(f"expected the name of an environment variable; got {value!r}")
    return value


def _encoding(value: str) -> str:
    import codecs
    try:
        return codecs.lookup(value).name
    except LookupError:
        raise ValueError(f"unknown encoding {value!r}") from None


def _currency(value: str) -> str:
    from config.canonical import ISO_4217
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


def _no_credentials(value: str) -> str:
    """An endpoint or queue URL: credentials in it (``http://key:secret@host``) would be written
    in the file, and shown by ``config check``."""
    from urllib.parse import urlsplit
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials must not be written in the file: leave them out of the URL and give them "
                         "through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, an instance role)")
    return value


def _lease(value) -> float:
    seconds = parse_duration(value)
    if seconds < 1:
        raise ValueError(f"must be at least 1s; got {value!r}")
    return seconds


def _token(value: str) -> str:
    if not re.match(r"^[A-Za-z0-9_]{1,32}$", value):
        raise ValueError(f"expected letters, digits and '_' (e.g. en_US); got {value!r}")
    return value


def _partner_id(value: str) -> str:
    if not PARTNER_ID.match(value):
        raise ValueError(f"use letters, digits, '_', '.', '-' (at most 64); got {value!r}")
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _at_least_one(value: float) -> float:
    if not value >= 1.0 or not math.isfinite(value):
        raise ValueError(f"must be a finite number of at least 1; got {value}")
    return value


def _patterns(value: list) -> tuple[str, ...]:
    if not value or not all(isinstance(p, str) and p for p in value):
        raise ValueError("expected a non-empty list of glob patterns")
    return tuple(value)


def _prefix(value: str) -> str:
    """An S3 prefix is a folder: "drops" is "drops/", not also "drops-old/"."""
    return value if not value or value.endswith("/") else value + "/"


def _name(value: str) -> str:
    if not value.strip():
        raise ValueError("expected a name, got \"\"")
    return value.strip()


def _alternatives(value: str | list) -> tuple[str, ...]:
    """One name or a list of alternatives, as a tuple."""
    items = [value] if isinstance(value, str) else value
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ValueError("expected a name or a non-empty list of names")
    return tuple(v.strip() for v in items)


def _preset(presets: Collection[str] | None) -> Check | None:
    """The check of ``preset = "..."`` against the names the caller knows; none without them."""
    if presets is None:
        return None

    def check(value: str) -> str:
        if value not in presets:
            raise ValueError(f"unknown preset {value!r}; known: {', '.join(sorted(presets))}")
        return value
    return check


# -- how each key is read: its TOML type(s) and its check ---------------------------------------
# Which of them a table has, and their defaults, come from its dataclass.

_DURATION = (str, int, float)

_DAEMON_KEYS: Spec = {
    "state_dir": (str, Path),
    "workers": (int, _positive),
    "worker_processes": (bool, None),
    "log_format": (str, _choice(*get_args(LogFormat))),
    "log_level": (str, _choice(*get_args(LogLevel))),
    "health": (str, _host_port),
    "max_attempts": (int, _positive),
    "retry_base": (_DURATION, parse_duration),
    "retry_max": (_DURATION, parse_duration),
    "stop_timeout": (_DURATION, parse_duration),
    "audit_key_env": (str, None),
    "history_days": ((int, float), _non_negative),
}
_LIMITS_KEYS: Spec = {
    "max_columns": (int, _positive),
    "max_line_bytes": (int, _positive),
    "max_uncompressed_bytes": (int, _positive),
    "max_compression_ratio": (float, _at_least_one),
}
# url: its default follows daemon.state_dir, see _store
_STORE_KEYS: Spec = {"password_env": (str, None), "lease": (_DURATION, _lease)}
# preset: its check comes with the call (see _preset); columns and webhook: see _partner
_PARTNER_KEYS: Spec = {
    "id": (str, _partner_id),
    "currency": (str, _currency),
    "max_reject_ratio": (float, _ratio),
    "max_deactivate_ratio": (float, _ratio),
    "max_price_shock_ratio": (float, _ratio),
    "price_shock_factor": ((int, float), _above_one),
    "price_shock_min_products": (int, _positive),
    "write_changes": (bool, None),
    "max_file_bytes": (int, _positive),
    "encoding": (str, _encoding),
    "decimal_separator": (str, _choice(".", ",")),
    "delimiter": (str, _choice(",", ";", "\t", "|")),
    "sheet": (str, None),
    "locale": (str, _token),
    "channel": (str, _token),
    "apostrophe_guard": (bool, None),
    "header_row": (int, _positive),
    "record_path": ((str, list), _alternatives),
    "expand": (str, _name),
}
_CONSOLE_KEYS: Spec = {
    "address": (str, _host_port),
    "admins_env": (str, _env_name),
    "token_env": (str, _env_name),
    "require_login": (bool, None),
    "tls_cert": (str, Path),
    "tls_key": (str, Path),
}
_WEBHOOK_KEYS: Spec = {"url": (str, _http_url), "secret_env": (str, None), "allow_private": (bool, None)}
# every kind's keys but partner, kind and path, which are read first: they decide the rest
_INBOX_KEYS: Spec = {
    "mode": (str, _choice(*get_args(FeedMode))),
    "on_success": (str, _choice(*get_args(OnSuccess))),
    "settle": (_DURATION, parse_duration),
    "patterns": (list, _patterns),
    "format": (str, _choice(*FORMAT_NAMES)),
    "ready_marker": (bool, None),
    "poll_interval": (_DURATION, parse_duration),
    "host": (str, None),
    "port": (int, None),
    "username": (str, None),
    "key_file": (str, None),
    "password_env": (str, None),
    "known_hosts": (str, None),
    "bucket": (str, None),
    "prefix": (str, _prefix),
    "region": (str, None),
    "endpoint_url": (str, _no_credentials),
    "sqs_queue_url": (str, _no_credentials),
}
_ANY_INBOX_KEY = frozenset(f.name for cls in INBOX_CONFIGS.values() for f in fields(cls))
_REFUSED = object()         # what r.get answers for a value it refused (the problem is recorded)


def _default(f: Field) -> Any:
    """The field's default as its dataclass declares it; MISSING when the key is required."""
    return f.default if f.default_factory is MISSING else f.default_factory()


def _read(r: _Reader, data: dict, path: str, cls: type, spec: Spec, *, why: str = "") -> dict[str, Any]:
    """The fields of ``cls`` that ``spec`` names, read from ``data``. A key left out takes its
    field's default; a field without one is required (``required{why}``), and "" does not give
    it. A required key that is missing or refused is left out: ``_build`` then makes nothing."""
    kw: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in spec:
            continue
        default = _default(f)
        if f.name not in data or (default is MISSING and data[f.name] == ""):
            if default is MISSING:
                r.problems.append(f"{path}.{f.name}: required{why}")
            else:
                kw[f.name] = default
            continue
        kind, check = spec[f.name]
        value = r.get(data, f.name, path, kind, _REFUSED, check=check)
        if value is not _REFUSED:
            kw[f.name] = value
    return kw


def _build(cls: type, kw: dict[str, Any]) -> Any:
    """``cls(**kw)``, or None when a required field is missing or None: its problem is recorded,
    the file will be refused, and the object is not needed."""
    if any(f.init and _default(f) is MISSING and kw.get(f.name) is None for f in fields(cls)):
        return None
    return cls(**kw)


# -- one function per table ---------------------------------------------------------------------

def _daemon(r: _Reader, data: dict) -> DaemonConfig:
    """``[daemon]``, with ``[limits]``: a table of its own in the file, a field of the daemon's here."""
    daemon = r.table(data.get("daemon", {}), "daemon", {f.name for f in fields(DaemonConfig)} - {"limits"})
    limits = r.table(data.get("limits", {}), "limits", {f.name for f in fields(Limits)})
    return DaemonConfig(**_read(r, daemon, "daemon", DaemonConfig, _DAEMON_KEYS),
                        limits=Limits(**_read(r, limits, "limits", Limits, _LIMITS_KEYS)))


def _store(r: _Reader, data: dict, state_dir: Path) -> StoreConfig:
    """``[store]``; without a url, the SQLite catalog in the state folder."""
    data = r.table(data, "store", {f.name for f in fields(StoreConfig)})
    url = r.get(data, "url", "store", str, f"sqlite:///{state_dir / 'catalog.db'}", check=_store_url)
    return StoreConfig(url=url, **_read(r, data, "store", StoreConfig, _STORE_KEYS))


def _console(r: _Reader, data: Any, base: Path) -> ConsoleConfig:
    """``[console]``: off without an address; credentials (by the names of their environment
    variables) wherever it is reachable from another host or a login is asked for."""
    data = r.table(data, "console", {f.name for f in fields(ConsoleConfig)})
    kw = _read(r, data, "console", ConsoleConfig, _CONSOLE_KEYS)
    for key in ("tls_cert", "tls_key"):
        if kw.get(key) is not None:
            kw[key] = base / kw[key]
    console = ConsoleConfig(**kw)
    if console.address and console.login and not (console.admins_env or console.token_env):
        why = "a login is required" if console.local else f"{console.host or 'every address'} is not a loopback address"
        r.problems.append(f"console.address: {why}, so admins need credentials: set admins_env (password "
                          "hashes) or token_env, each naming an environment variable (never the secret itself)")
    if (console.tls_cert is None) != (console.tls_key is None):
        r.problems.append("console: tls_cert and tls_key go together")
    return console


def _partners(r: _Reader, raw: Any, presets: Collection[str] | None, base: Path) -> dict[str, PartnerConfig]:
    if not isinstance(raw, list):
        r.problems.append("partners: expected [[partners]] tables")
        return {}
    partners: dict[str, PartnerConfig] = {}
    for i, table in enumerate(raw):
        p = _partner(r, table, f"partners[{i}]", presets, base)
        if p is None:
            continue
        if p.id in partners:
            r.problems.append(f"partners[{i}].id: duplicate partner id {p.id!r}")
        partners[p.id] = p
    return partners


def _partner(r: _Reader, data: Any, path: str, presets: Collection[str] | None,
             base: Path) -> PartnerConfig | None:
    data = r.table(data, path, ({f.name for f in fields(PartnerConfig)} - {"key_value"}) | {"attributes"})
    kw = _read(r, data, path, PartnerConfig, {**_PARTNER_KEYS, "preset": (str, _preset(presets))})
    columns = r.get(data, "columns", path, dict)
    if columns is not None:
        kw["columns"] = _columns(r, columns, f"{path}.columns")
    preset_file = r.get(data, "preset_file", path, str)
    if preset_file is not None:
        if "preset" in data:
            r.problems.append(f"{path}.preset_file: a partner has a preset or a preset file, not both")
        # relative to the configuration file, so that the file and its presets travel together
        kw["preset_file"] = str((base / preset_file).resolve())
    kw.update(_preset_tables(r, data, path))
    hook = r.get(data, "webhook", path, dict)
    if hook is not None:
        hp = f"{path}.webhook"
        hook = r.table(hook, hp, {f.name for f in fields(WebhookConfig)})
        kw["webhook"] = _build(WebhookConfig, _read(r, hook, hp, WebhookConfig, _WEBHOOK_KEYS))
    return _build(PartnerConfig, kw)


def _columns(r: _Reader, columns: dict, path: str) -> dict[str, tuple[str, ...]]:
    """``columns = { canonical = "the partner's column" }``, or a list of columns to try in order
    (as a preset's ``[columns]`` has them). Two canonical columns may name the same column (a
    supplier whose products have no SKU keys them by name: ``sku = "Name"``, ``name = "Name"``)."""
    from config.canonical import INPUT_FIELDS
    out: dict[str, tuple[str, ...]] = {}
    for canonical, column in columns.items():
        if canonical not in INPUT_FIELDS:
            r.problems.append(f"{path}.{canonical}: not a canonical column (one of {', '.join(INPUT_FIELDS)})")
            continue
        try:
            out[canonical] = _alternatives(column)
        except ValueError:
            r.problems.append(f"{path}.{canonical}: expected the partner's column name, or a list of names")
    return out


def _preset_tables(r: _Reader, data: dict, path: str) -> dict[str, Any]:
    """A partner's own ``[values.<canonical>]``, ``[lists]``, ``[attributes] key_value`` and
    ``[rows]``: the shapes are checked here, what a row model means by ``adapters.presets``."""
    from config.canonical import INPUT_FIELDS
    kw: dict[str, Any] = {}
    values = r.get(data, "values", path, dict)
    if values is not None:
        kw["values"] = {}
        for canonical, words in values.items():
            where = f"{path}.values.{canonical}"
            if canonical not in INPUT_FIELDS:
                r.problems.append(f"{where}: not a canonical column (one of {', '.join(INPUT_FIELDS)})")
            elif not isinstance(words, dict) or not all(isinstance(v, (str, int, bool)) for v in words.values()):
                r.problems.append(f"{where}: expected a table of the partner's words and what they mean")
            else:
                kw["values"][canonical] = {str(k).lower(): str(v).lower() if isinstance(v, bool) else str(v)
                                           for k, v in words.items()}
    lists = r.get(data, "lists", path, dict)
    if lists is not None:
        for canonical, separator in lists.items():
            if canonical not in INPUT_FIELDS or not isinstance(separator, str) or not separator:
                r.problems.append(f"{path}.lists.{canonical}: expected a canonical column = its list separator")
        kw["lists"] = {k: v for k, v in lists.items() if isinstance(v, str) and v}
    attributes = r.get(data, "attributes", path, dict)
    if attributes is not None:
        attributes = r.table(attributes, f"{path}.attributes", {"key_value"})
        kv = r.get(attributes, "key_value", f"{path}.attributes", (str, list), check=_alternatives)
        if kv is not None:
            kw["key_value"] = kv
    rows = r.get(data, "rows", path, dict)
    if rows is not None:
        kw["rows"] = rows
    return kw


def _inboxes(r: _Reader, raw: Any, partners: Collection[str]) -> tuple[InboxConfig, ...]:
    """``[[inboxes]]``; without any, every partner gets its local ./inbox/<id>."""
    if raw is None:
        raw = [{"partner": pid} for pid in partners]
    if not isinstance(raw, list):
        r.problems.append("inboxes: expected [[inboxes]] tables")
        return ()
    inboxes: list[InboxConfig] = []
    read: list[tuple[int, InboxConfig]] = []      # (its index in the file, the inbox)
    seen: dict[str, int] = {}
    for i, table in enumerate(raw):
        inbox = _inbox(r, table, f"inboxes[{i}]", partners)
        if inbox is None:
            continue
        if inbox.id in seen:
            r.problems.append(f"inboxes[{i}]: same location as inboxes[{seen[inbox.id]}] ({inbox.id})")
        seen[inbox.id] = i
        inboxes.append(inbox)
        read.append((i, inbox))
    _overlaps(r, read)
    return tuple(inboxes)


# -- inboxes that overlap ------------------------------------------------------------------------
# Two inboxes whose folders are the same, or one inside the other (inside its processed/, failed/
# or results/ too: they are inside it), would take one partner's files as another's, or a file
# twice. Each inbox is reduced to where its folder is: a scope (what two folders must share to
# meet at all) and the folder's path in it, as a tuple of names; two folders of one scope overlap
# when one tuple starts with the other. What the file cannot tell (where an SFTP login folder is,
# whether an IP address and a host name are one server) is not guessed: such folders are not compared.

Place = tuple[tuple[str, ...], tuple[str, ...], str]     # scope, the folder's names in it, the folder as shown


def _names(path: str) -> tuple[str, ...]:
    """``"/a/b"`` -> ``("a", "b")``; ``"/"`` -> ``()``."""
    return tuple(name for name in path.split("/") if name)


def _local_place(inbox: LocalInboxConfig) -> Place:
    # The folder LocalInbox opens: Path(path).resolve(), relative to the working directory, every
    # symlink followed. A folder that does not exist yet (the inbox creates it) resolves as far as
    # it exists, and the rest is taken as written.
    real = os.path.realpath(inbox.path)
    return ("local",), _names(real), real


def _sftp_place(inbox: SftpInboxConfig, login: str) -> Place:
    server = ("sftp", inbox.host.lower(), str(inbox.port))
    path = posixpath.normpath(inbox.path)
    if path.startswith("/"):        # any user's: the same absolute folder whoever logs in
        path = "/" + path.lstrip("/")           # normpath keeps a leading "//"
        return server, _names(path), f"sftp://{inbox.host}:{inbox.port}{path}"
    # Relative to the login folder, which is the user's own: comparable with the same user's only.
    # ``login`` stands for it, deep enough that the ".." of a path never climbs above "/".
    shown = f"sftp://{inbox.username}@{inbox.host}:{inbox.port}/~" + ("" if path == "." else f"/{path}")
    return (*server, inbox.username), _names(posixpath.normpath(posixpath.join(login, path))), shown


def _s3_place(inbox: S3InboxConfig) -> Place:
    endpoint = (inbox.endpoint_url or "").rstrip("/").lower()
    # A prefix is a folder ("acme/"; "" the whole bucket), compared name by name: "a/" holds "a/b/",
    # not "ab/". Keys are taken as written: "a//b/" is another folder than "a/b/" in S3.
    prefix = _prefix(inbox.prefix)
    return ("s3", endpoint, inbox.bucket), tuple(prefix.split("/")[:-1]), f"s3://{inbox.bucket}/{prefix}"


def _overlaps(r: _Reader, inboxes: list[tuple[int, InboxConfig]]) -> None:
    """Every pair of inboxes whose folders are the same or one inside the other is a problem,
    reported under the later one's key, naming the earlier one."""
    climbs = max((inbox.path.count("..") for _, inbox in inboxes if isinstance(inbox, SftpInboxConfig)), default=0)
    login = "/" + "/".join(["\0"] * (climbs + 1))      # NUL: a name no real folder has
    place_of: dict[str, Callable[[Any], Place]] = {
        "local": _local_place, "sftp": lambda inbox: _sftp_place(inbox, login), "s3": _s3_place}
    places = [(i, inbox, place_of[inbox.kind](inbox)) for i, inbox in inboxes]
    for n, (j, inbox, (scope, names, shown)) in enumerate(places):
        for i, other, (other_scope, other_names, other_shown) in places[:n]:
            if scope != other_scope or inbox.id == other.id:    # one id: "same location", reported already
                continue
            depth = min(len(names), len(other_names))
            if names[:depth] != other_names[:depth]:
                continue
            if len(names) == len(other_names):
                how = f"both are {shown}"
            elif len(names) > len(other_names):
                how = f"{shown} is inside {other_shown}"
            else:
                how = f"{other_shown} is inside {shown}"
            key = "prefix" if isinstance(inbox, S3InboxConfig) else "path"
            r.problems.append(f"inboxes[{j}].{key}: overlaps inboxes[{i}] ({other.id}): "
                              f"inbox folders must not be the same or inside one another ({how})")


def _inbox(r: _Reader, data: Any, path: str, partners: Collection[str]) -> InboxConfig | None:
    """One ``[[inboxes]]`` table, read as the type of its ``kind`` (``local`` when not given)."""
    data = r.table(data, path, _ANY_INBOX_KEY)
    kind = r.get(data, "kind", path, str, check=_choice(*INBOX_CONFIGS)) if "kind" in data else "local"
    if kind is None:
        return None             # the keys it may have depend on its kind: nothing more to say
    cls = INBOX_CONFIGS[kind]
    own = {f.name for f in fields(cls)}
    for key in data:
        if key in _ANY_INBOX_KEY and key not in own:
            r.problems.append(f'{path}.{key}: unknown key for kind "{kind}"')
    partner = r.get(data, "partner", path, str, required=True)
    if partner is not None and partner not in partners:
        r.problems.append(f"{path}.partner: no [[partners]] entry with id {partner!r}")
    kw = _read(r, data, path, cls, _INBOX_KEYS, why=f' for kind "{kind}"')
    kw["partner"] = partner
    kw["path"] = _FINISH[kind](r, path, kw, r.get(data, "path", path, str))
    return _build(cls, kw)


# What each kind adds once its keys are read: its rules across keys, and its folder: ``path``
# if given, else the kind's default (None when none can be named: the problem is recorded).

def _finish_local(r: _Reader, path: str, kw: dict, given: str | None) -> str | None:
    folder = given or (f"inbox/{kw['partner']}" if kw["partner"] else None)
    # "inbox/acme" and "./inbox/acme/" are one folder: one id, so two bindings are caught
    return os.path.normpath(folder) if folder else None


def _finish_sftp(r: _Reader, path: str, kw: dict, given: str | None) -> str:
    if not (kw.get("key_file") or kw.get("password_env")):
        r.problems.append(f'{path}.key_file: required for kind "sftp" (or password_env)')
    for key in ("key_file", "known_hosts"):
        if kw.get(key) and not Path(kw[key]).is_file():
            r.problems.append(f"{path}.{key}: file not found: {kw[key]}")
    return given or "."             # the login folder


def _finish_s3(r: _Reader, path: str, kw: dict, given: str | None) -> str | None:
    return given or kw.get("prefix")


_FINISH: dict[str, Callable[[_Reader, str, dict, str | None], str | None]] = {
    "local": _finish_local, "sftp": _finish_sftp, "s3": _finish_s3}


def build_config(data: dict, source: Path | None = None, *,
                 presets: Collection[str] | None = None) -> Config:
    """Turn parsed TOML into a ``Config``; raise ``ConfigError`` listing every problem.
    ``presets``: the preset names a partner may use; None leaves ``preset`` unchecked (see the
    module docstring)."""
    problems: list[str] = []
    r = _Reader(problems)
    data = r.table(data, "", {"daemon", "store", "partners", "inboxes", "limits", "console"})
    daemon = _daemon(r, data)
    store = _store(r, data.get("store", {}), daemon.state_dir)
    base = source.parent if source is not None else Path.cwd()
    partners = _partners(r, data.get("partners", [{"id": DEFAULT_PARTNER}]), presets, base)
    inboxes = _inboxes(r, data.get("inboxes"), partners)
    console = _console(r, data.get("console", {}), base)
    if problems:
        raise ConfigError(problems, source)
    return Config(daemon=daemon, store=store, partners=partners, inboxes=inboxes, source=source, console=console)


def missing_secrets(config: Config) -> list[str]:
    """Secrets named by ``*_env`` keys but absent from this process's environment, and a console
    whose secrets would travel in clear text. Not errors of the file: an admin's shell rarely has
    the daemon's secrets; the daemon warns at start, ``config check`` on stderr."""
    missing = []
    if config.store.password_env and config.store.password_env not in os.environ:
        missing.append(f"store.password_env: environment variable {config.store.password_env} is not set")
    if config.daemon.audit_key_env and config.daemon.audit_key_env not in os.environ:
        missing.append(f"daemon.audit_key_env: environment variable {config.daemon.audit_key_env} is not set "
                       "(the audit trail cannot be written or verified)")
    for i, inbox in enumerate(config.inboxes):
        if isinstance(inbox, SftpInboxConfig) and inbox.password_env and inbox.password_env not in os.environ:
            missing.append(f"inboxes[{i}].password_env: environment variable {inbox.password_env} is not set")
    console = config.console
    if console.address and not console.local and console.tls_cert is None:
        missing.append(f"console.address {console.address} is served over plain HTTP: admins' passwords, the token "
                       "and session cookies cross the network in clear text (set tls_cert and tls_key, or serve "
                       "it on 127.0.0.1 behind a TLS proxy with require_login = true)")
    for i, partner in enumerate(config.partners.values()):
        hook = partner.webhook
        if hook and hook.secret_env and hook.secret_env not in os.environ:
            missing.append(f"partners[{i}].webhook.secret_env: environment variable {hook.secret_env} "
                           "is not set (webhooks would go out unsigned)")
    return missing


def default_config() -> Config:
    """The built-in default: state under ./var, partner ``default`` with inbox ./inbox/default."""
    return build_config({})


def load_config(path: str | os.PathLike | None = None, *, presets: Collection[str] | None = None) -> Config:
    """Load ``path``, else ``$INBOX_DAEMON_CONFIG``, else the built-in default. ``presets``: as
    for ``build_config``; the program loads through ``inbox_daemon.settings.load``."""
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
    return build_config(data, source, presets=presets)

"""Structured logging: structlog, JSON lines on stdout (console renderer on a TTY).

This is the one module that configures logging. Every line passes ``redact_secrets``: values of
keys that name secrets, and any value equal to a secret read from the environment, become
``"***"`` before anything is rendered.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

# keys whose values are secrets; ``*_env``/``*_file`` keys only say where a secret lives
_SECRET_KEY = re.compile(r"(pass(word|wd|phrase)?|secret|token|credential|api[_-]?key|secret_key|access_key"
                         r"|authorization|private_key)$", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I)
_known_secrets: set[str] = set()
_configured: dict[str, Any] = {}      # what ``configure`` was last given (``settings``)


def register_secret(value: str | None) -> None:
    """A secret read at run time (a webhook key, an SFTP password): never let it reach a log."""
    if value and len(value) >= 4:
        _known_secrets.add(value)


def mask_url(text: str) -> str:
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        value = mask_url(value)
        for secret in _known_secrets:
            if secret in value:
                value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if _SECRET_KEY.search(key):
            event_dict[key] = "***"
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure(*, fmt: str | None = None, level: str = "info", stream=None) -> None:
    """``fmt``: "json" or "console"; None picks console on a TTY, else JSON lines."""
    stream = stream or sys.stdout
    _configured.update(fmt=fmt, level=level, stdout=stream is sys.stdout)
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if fmt == "console"
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # one write of the whole line: the daemon and its worker processes share one stdout, and
        # ``print`` writes the newline apart (two syscalls when unbuffered: PYTHONUNBUFFERED),
        # so lines of two processes could be torn and interleaved
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception that ends a thread of a library (paramiko's prefetch thread, when the
    server drops the connection mid-download) is a log line like any other, not a traceback
    printed across the JSON lines. The code that waits on such a thread sees the failure too."""
    if args.exc_type is SystemExit:
        return
    get_logger(thread=args.thread.name if args.thread else None).error(
        "thread.ended_by_error", error=str(args.exc_value), error_type=args.exc_type.__name__,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def settings() -> dict[str, Any]:
    """How this process logs, for a worker process to log the same way (``adopt``)."""
    return {**_configured, "secrets": frozenset(_known_secrets)}


def adopt(settings: dict[str, Any]) -> None:
    """Log as the process that gave ``settings`` does: its format, level, stream, secrets."""
    _known_secrets.update(settings.get("secrets", ()))
    configure(fmt=settings.get("fmt"), level=settings.get("level", "info"),
              stream=sys.stdout if settings.get("stdout", True) else sys.stderr)


def get_logger(**bound: Any) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger().bind(**bound)

"""Inboxes: where partners drop files. One module per kind; ``inbox_class`` picks the class.

A kind's module is imported when an inbox of that kind is opened, not before: boto3 and
paramiko (with cryptography) take ~0.3 s to import, a third of a daemon's start, and a daemon
that watches local folders alone never needs them."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from config.model import InboxConfig
from inbox_daemon.inboxes.base import Inbox

INBOX_KINDS: dict[str, str] = {"local": "inbox_daemon.inboxes.local:LocalInbox",
                               "sftp": "inbox_daemon.inboxes.sftp:SftpInbox",
                               "s3": "inbox_daemon.inboxes.s3:S3Inbox"}


def inbox_class(kind: str) -> Callable[[InboxConfig], Inbox]:
    """The class of inbox ``kind`` (called with an inbox's configuration), its module imported
    now if it was not yet."""
    try:
        module, _, name = INBOX_KINDS[kind].partition(":")
    except KeyError:
        from config.errors import InboxMisconfigured
        raise InboxMisconfigured(f"inbox kind {kind!r} is not available in this build") from None
    return getattr(importlib.import_module(module), name)


def open_inbox(config: InboxConfig) -> Inbox:
    return inbox_class(config.kind)(config)

"""Inboxes: where partners drop files. One module per kind; ``INBOX_KINDS`` picks the class."""

from __future__ import annotations

from config.model import InboxConfig
from inbox_daemon.inboxes.base import Inbox
from inbox_daemon.inboxes.local import LocalInbox
from inbox_daemon.inboxes.s3 import S3Inbox
from inbox_daemon.inboxes.sftp import SftpInbox

INBOX_KINDS: dict[str, type] = {"local": LocalInbox, "sftp": SftpInbox, "s3": S3Inbox}


def open_inbox(config: InboxConfig) -> Inbox:
    try:
        kind = INBOX_KINDS[config.kind]
    except KeyError:
        from config.errors import InboxMisconfigured
        raise InboxMisconfigured(f"inbox kind {config.kind!r} is not available in this build") from None
    return kind(config)

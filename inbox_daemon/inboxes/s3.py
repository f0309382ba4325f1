"""An S3 inbox: the objects directly under ``prefix`` in ``bucket`` are a partner's drops.

Two ways to learn of new objects. Listing (the default) builds on ``PollingInbox``: list, settle,
hand over. Event mode (``sqs_queue_url``) long-polls an SQS queue that the bucket's ObjectCreated
notifications feed, so a busy prefix is never listed; a message is deleted only once the outcome
of its drop is durable (``archive``), and a heartbeat keeps it hidden from other receivers
meanwhile. A daemon that dies before that leaves the message to reappear: nothing is lost.

One queue may feed several inboxes (one bucket notification for many partners' prefixes, or
several buckets): a process receives each queue once, with one ``QueueConsumer`` that the inboxes
of that queue subscribe to with their bucket and prefix. It routes every record of a message to
the inbox whose prefix holds its key and deletes the message only once every record was taken by
its inbox (or ignored by it). A record under no subscribed prefix is left in the queue.

Objects are immutable: an upload becomes visible whole, and its ETag names the content, so
there is nothing to check after a download (``verify_unchanged`` does nothing). With
``ready_marker`` an object is ready once ``<name>.done`` or ``<name>.ok`` exists next to it: a
listing sees both, and in event mode the marker's own event announces the data file (an event
for a data file whose marker is not there yet is ignored; the marker's will come).

botocore errors never leave this module: ``s3_errors`` maps them to ``InboxMisconfigured``
(access, credentials, missing bucket or queue: retrying cannot help) or ``InboxUnavailable``
(throttling, 5xx, network). Throttling and 5xx are first retried by botocore's "standard" retry
mode, set on the clients; only what still fails after that reaches the daemon's retry policy.
AWS credentials come from boto3's default chain, never from our configuration.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore.config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from config.errors import InboxError, InboxMisconfigured, InboxUnavailable
from config.model import S3InboxConfig
from config.status import ARCHIVED_AS_SUCCESS
from inbox_daemon.backoff import backoff
from inbox_daemon.drop import Drop, delivery_time
from inbox_daemon.inboxes.base import (
    FAILED,
    PROCESSED,
    RESULTS,
    OnReady,
    check_listed_size,
    marked_name,
    marker_names,
    read_limited,
    safe_name,
    wanted,
)
from inbox_daemon.inboxes.polling import MAX_BACKOFF, Entry, PollingInbox
from inbox_daemon.logs import get_logger
from inbox_daemon.spool import spool_stream

RETRIES = {"mode": "standard", "max_attempts": 6}   # botocore retries throttling, 5xx, resets
CONNECT_TIMEOUT = 10            # seconds
READ_TIMEOUT = 60               # seconds without a byte; above SQS's longest long poll (20 s)
FULL_LISTING_EVERY = 10         # polls: one in ten lists the whole prefix, the others the new keys
COPY_OBJECT_LIMIT = 5 * 1024**3  # bytes: larger objects are copied in parts by the managed copy

LONG_POLL_MAX = 20              # seconds: SQS's limit for WaitTimeSeconds
VISIBILITY = 60                 # seconds a received message stays hidden from other receivers
HEARTBEAT = 20                  # seconds between visibility extensions of messages in flight
MAX_HOLD = 3600                 # seconds a message is kept hidden at most, then left to reappear
CLOSE_WAIT = 2.0                # seconds close() waits for a long poll in progress
ARCHIVED_MEMORY = 10_000        # uploads (key, ETag, LastModified) remembered as archived, for late notifications

# ClientError codes, by what they mean for us. HEAD requests have no error body: their code is
# the bare status ("403", "404").
_ACCESS = {"AccessDenied", "AccessDeniedException", "AllAccessDisabled", "AccountProblem", "403",
           "AuthorizationError", "KMS.AccessDeniedException"}
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
                "UnrecognizedClientException", "InvalidToken", "MissingAuthenticationToken"}
_MISSING = {"NoSuchBucket", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_GONE = {"NoSuchKey", "NotFound", "404"}
_CHANGED = {"PreconditionFailed", "412"}
# temporary credentials that expired are refreshed by the chain on the next call
_BUSY = {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "RequestThrottled",
         "RequestLimitExceeded", "TooManyRequestsException", "ServiceUnavailable", "InternalError",
         "ExpiredToken", "OperationAborted"}


class ObjectGone(InboxUnavailable):
    """The object was deleted (or moved) since it was listed or announced."""

    def __init__(self, message: str, *, uri: str):
        self.uri = uri
        super().__init__(message)


class ObjectChanged(InboxUnavailable):
    """The object was overwritten since it was read: the new content is a new drop."""

    def __init__(self, message: str, *, uri: str):
        self.uri = uri
        super().__init__(message)


@contextmanager
def s3_errors(what: str, *, action: str = "", target: str = "") -> Iterator[None]:
    """Map botocore errors raised inside to the inbox error tree, raised ``from`` the original.

    ``what`` says what we were doing ("list s3://bucket/prefix/"), ``action`` the IAM permission
    that takes, ``target`` the object or bucket URI the error is about.
    """
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        detail = error.get("Message") or code
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        needs = f": the credentials need {action}" if action else ""
        if (code in _GONE and exc.operation_name == "HeadBucket") or code in _MISSING:
            raise InboxMisconfigured(f"{what}: {'the queue' if 'Queue' in code else 'the bucket'} "
                                     f"does not exist ({code})") from exc
        if code in _GONE:
            raise ObjectGone(f"{what}: {target or 'the object'} is gone ({code})", uri=target) from exc
        if code in _CHANGED:
            raise ObjectChanged(f"{what}: {target or 'the object'} changed meanwhile ({code})",
                                uri=target) from exc
        if code in _ACCESS:
            raise InboxMisconfigured(f"{what}: access denied ({detail}){needs}") from exc
        if code in _CREDENTIALS:
            raise InboxMisconfigured(f"{what}: the AWS credentials were refused ({code}: {detail}); "
                                     "check the access key in the default credential chain") from exc
        if code in _BUSY or status >= 500 or not status:
            raise InboxUnavailable(f"{what}: {code or 'error'} ({detail})") from exc
        # any other 4xx: a wrong region, bucket name or parameter; the same request fails again
        raise InboxMisconfigured(f"{what}: {code} ({detail})") from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise InboxMisconfigured(f"{what}: no usable AWS credentials in the default chain "
                                 f"(environment, profile, instance role): {exc}") from exc
    except (NoRegionError, ParamValidationError) as exc:
        raise InboxMisconfigured(f"{what}: {exc}") from exc
    except BotoCoreError as exc:
        # EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ResponseStreamingError…
        raise InboxUnavailable(f"{what}: {exc.__class__.__name__}: {exc}") from exc


# -- S3 event notifications ----------------------------------------------------------------------

@dataclass(frozen=True)
class EventRecord:
    event: str          # "ObjectCreated:Put", …
    bucket: str
    key: str            # decoded


def event_records(body: str) -> list[EventRecord]:
    """The object records of an S3 event notification, bare or wrapped by SNS.

    Only ``s3:TestEvent`` (sent when a notification is configured) has none. Raises
    ``ValueError`` for a body that is no S3 notification at all.
    """
    doc = json.loads(body)
    if isinstance(doc, dict) and isinstance(doc.get("Message"), str) and doc.get("Type") == "Notification":
        doc = json.loads(doc["Message"])       # delivered through an SNS topic
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        raise ValueError("no Records")
    out = []
    for record in records:
        try:
            s3 = record["s3"]
            # keys in notifications are URL-encoded, with "+" for a space
            out.append(EventRecord(event=str(record.get("eventName", "")), bucket=s3["bucket"]["name"],
                                   key=urllib.parse.unquote_plus(s3["object"]["key"])))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed record: {exc!r}") from exc
    return out


@dataclass
class _Held:
    """A received message whose drops are not archived yet."""
    receipt: str
    since: float                                    # monotonic: when this hold began
    waiting: set[tuple[str, str]] = field(default_factory=set)     # (uri, version) of its drops
    keep: bool = False          # it also has records no inbox took: never deleted by us


def _sqs_endpoint(queue_url: str) -> tuple[str, str | None]:
    """botocore sends SQS calls to the client's endpoint, not the queue URL's host: take both
    endpoint and region from the URL, so the queue is reached wherever it lives."""
    parts = urllib.parse.urlsplit(queue_url)
    region = re.search(r"(?:^|\.)([a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d+)\.", parts.hostname or "")
    return f"{parts.scheme}://{parts.netloc}", region.group(1) if region else None


class S3Inbox(PollingInbox[S3InboxConfig]):
    atomic_uploads = True           # an S3 object is visible only once its upload completed
    version_is_content = True       # the ETag changes whenever the object's content does

    def __init__(self, config: S3InboxConfig, *, client=None, sqs=None):
        super().__init__(config)
        self.bucket = config.bucket
        self.prefix = config.prefix
        self._client = client
        self._sqs = sqs
        self._session: boto3.session.Session | None = None
        self._client_lock = threading.Lock()
        # listing watermark: entries of the last full listing plus the incremental ones since
        self._listing_lock = threading.Lock()
        self._known: dict[str, Entry] = {}
        self._listings = 0
        # event mode: the queue's consumer, shared with the other inboxes it feeds in this process
        self._archived: collections.OrderedDict[tuple[str, str, str | None], None] = collections.OrderedDict()
        self._consumer: QueueConsumer | None = None

    # -- clients --------------------------------------------------------------------------------
    @staticmethod
    def _client_config() -> botocore.config.Config:
        return botocore.config.Config(retries=RETRIES, connect_timeout=CONNECT_TIMEOUT,
                                      read_timeout=READ_TIMEOUT)

    def _new_client(self, service: str, **kw):
        """Called with ``_client_lock`` held: workers and the poll thread share the clients."""
        if self._session is None:              # credentials: boto3's default chain, resolved once
            self._session = boto3.session.Session()
        return self._session.client(service, config=self._client_config(), **kw)

    def s3(self):
        with self._client_lock:
            if self._client is None:
                self._client = self._new_client("s3", region_name=self.config.region,
                                                endpoint_url=self.config.endpoint_url)
            return self._client

    def sqs(self):
        """The SQS client of this inbox's queue; the queue's consumer uses the first subscriber's."""
        with self._client_lock:
            if self._sqs is None:
                endpoint, region = self.sqs_place()
                self._sqs = self._new_client("sqs", region_name=region, endpoint_url=endpoint)
            return self._sqs

    def sqs_place(self) -> tuple[str, str | None]:
        """(endpoint, region) the queue is reached at: the URL's, else the inbox's region."""
        # only event mode talks to SQS, and event mode is a configured queue
        assert self.config.sqs_queue_url is not None
        endpoint, region = _sqs_endpoint(self.config.sqs_queue_url)
        return endpoint, region or self.config.region

    @property
    def event_mode(self) -> bool:
        return bool(self.config.sqs_queue_url)

    # -- names ----------------------------------------------------------------------------------
    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _key(self, drop: Drop) -> str:
        # From the name, not ``drop.key``: a drop rebuilt from a ledger job carries only the name,
        # and every drop is a plain name directly under the prefix.
        return self.prefix + drop.name

    # -- listing --------------------------------------------------------------------------------
    def list_entries(self) -> list[Entry]:
        """The objects directly under the prefix (``Delimiter`` folds processed/, failed/ and
        results/ into common prefixes that are never read).

        A prefix whose files are kept (``on_success = "keep"``) grows without end, and listing it
        whole costs one request per 1,000 keys on every poll. So only one poll in
        ``FULL_LISTING_EVERY`` lists everything; the others ask only for keys after the greatest
        key known (``StartAfter``, the watermark) and merge them with what is known. New uploads
        whose names sort last (dates, sequence numbers: the usual case) are seen at once. The
        price: a key that sorts below the watermark (a new name that sorts early, or an object
        overwritten in place) and a key deleted by someone else are noticed by the next full
        listing, at most ``FULL_LISTING_EVERY`` polls later. Keys we archive or find gone are
        forgotten at once, which also lowers the watermark: a daily ``products.csv`` that was moved
        to processed/ is seen again the moment it is dropped again.
        """
        with self._listing_lock:
            # None: list everything (nothing known yet, or this poll's turn to list in full)
            watermark = max(self._known) if self._known and self._listings % FULL_LISTING_EVERY else None
            self._listings += 1
        full = watermark is None
        params = {"Bucket": self.bucket, "Prefix": self.prefix, "Delimiter": "/"}
        if watermark is not None:
            params["StartAfter"] = watermark
        listed: dict[str, Entry] = {}
        with s3_errors(f"list {self.uri(self.prefix)}", action="s3:ListBucket",
                       target=f"s3://{self.bucket}"):
            for page in self.s3().get_paginator("list_objects_v2").paginate(**params):
                for obj in page.get("Contents", ()):
                    key = obj["Key"]
                    listed[key] = Entry(key=key, name=key[len(self.prefix):], size=obj["Size"],
                                        version=obj["ETag"].strip('"'),
                                        # whole seconds, as a HEAD (an event's drop) gives it
                                        modified=float(int(obj["LastModified"].timestamp())))
        with self._listing_lock:
            if full:
                self._known = listed
            else:
                self._known.update(listed)
            return list(self._known.values())

    def _forget(self, key: str) -> None:
        with self._listing_lock:
            self._known.pop(key, None)

    # -- taking objects in and out --------------------------------------------------------------
    def fetch(self, drop: Drop, spool_dir: Path, *, max_bytes: int | None = None) -> tuple[Path, str, int]:
        """Stream the object into the spool while hashing it. Whatever its ETag is by now, the
        sha256 of what we read is what counts. Over ``max_bytes`` (its listed ``Size``, or what
        is read): not spooled, ``FileTooLarge``."""
        check_listed_size(drop.size, max_bytes, partner=self.config.partner)
        key = self._key(drop)
        try:
            with s3_errors(f"read {self.uri(key)}", action="s3:GetObject", target=self.uri(key)):
                body = self.s3().get_object(Bucket=self.bucket, Key=key)["Body"]
                try:
                    return spool_stream(read_limited(body, max_bytes, partner=self.config.partner), spool_dir)
                finally:
                    body.close()
        except ObjectGone:
            self._forget(key)
            raise

    def verify_unchanged(self, drop: Drop) -> None:
        """Nothing to verify: an object never changes; an upload under its key is a new object
        with an ETag of its own, a delivery of its own."""

    def archive(self, drop: Drop, status: str) -> None:
        """After the outcome is durable: processed/ (or delete/keep) on success, failed/ otherwise.
        In event mode, the drop's SQS message is deleted now, and only now."""
        key = self._key(drop)
        if self.event_mode:
            self._remember_archived(key, drop.version, drop.delivered)
        try:
            if status not in ARCHIVED_AS_SUCCESS:
                self._move(drop, key, FAILED)
            elif self.config.on_success == "move":
                self._move(drop, key, PROCESSED)
            elif self.config.on_success == "delete":
                self._delete(drop, key)
            else:
                return              # kept: a later upload of the same bytes has a LastModified of its own
            # out by our own hand: what is listed under its key from now on is a new upload, even
            # the same bytes put again before a listing saw the key empty
            self.gone(drop)
        except ObjectGone:
            self._forget(key)       # archived already (a restart between outcome and archive)
        except ObjectChanged:
            # overwritten since we read it: the new upload is a drop of its own, leave it be, and
            # list it anew (what is known of the key is the read upload's; its bytes, and so its
            # ETag, may be the same)
            self._forget(key)
            self.gone(drop)
            self.log.info("inbox.archive_skipped", key=key, version=drop.version,
                          reason="object changed since it was read")
        finally:
            # Even when the move failed: the outcome is durable, and a redelivered message would
            # only find a file the ledger knows (the daemon logs the failed archive).
            if self._consumer is not None:
                self._consumer.release(self.uri(key), drop.version)

    def _move(self, drop: Drop, key: str, folder: str) -> None:
        """Copy the version that was read into ``folder``, then delete it from the inbox, only if
        the inbox still holds that upload (``_check_unchanged``, ``_delete_read_version``): an
        upload that replaced it meanwhile, even of the same bytes, stays for its own job, whether
        or not the server honoured the copy's condition (moto and s3rver, for two, ignore
        ``CopySourceIfMatch``)."""
        s3, source = self.s3(), {"Bucket": self.bucket, "Key": key}
        self._check_unchanged(drop, key)
        target = f"{self.prefix}{folder}/{drop.name}"
        if self._exists(target):
            target = f"{target}.{drop.version}"     # an earlier file of that name is kept
        # markers first: one left behind would make the next upload of that name ready early
        self._move_markers(drop.name, target)
        what = f"archive {self.uri(key)} to {self.uri(target)}"
        # only the content we read: an upload that replaced it meanwhile stays in the inbox
        same = {"CopySourceIfMatch": drop.version} if drop.version else {}
        with s3_errors(what, action="s3:GetObject on the source, s3:PutObject on the target",
                       target=self.uri(key)):
            if drop.size > COPY_OBJECT_LIMIT:
                s3.copy(source, self.bucket, target, ExtraArgs=same)
            else:
                s3.copy_object(CopySource=source, Bucket=self.bucket, Key=target, **same)
        self._delete_read_version(drop, key)

    def _delete(self, drop: Drop, key: str) -> None:
        self._check_unchanged(drop, key)
        self._move_markers(drop.name, None)
        self._delete_read_version(drop, key)

    def _move_markers(self, name: str, target: str | None) -> None:
        """``ready_marker``: the markers of ``name`` next to ``target`` (the archived object's
        key), or deleted when ``target`` is None."""
        if not self.config.ready_marker:
            return
        for marker in marker_names(name):
            key = self.prefix + marker
            if target is not None:
                moved = target + marker[len(name):]
                try:
                    with s3_errors(f"archive {self.uri(key)} to {self.uri(moved)}", target=self.uri(key),
                                   action="s3:GetObject on the source, s3:PutObject on the target"):
                        self.s3().copy_object(CopySource={"Bucket": self.bucket, "Key": key}, Bucket=self.bucket,
                                              Key=moved)
                except ObjectGone:
                    continue
            with s3_errors(f"delete {self.uri(key)}", action="s3:DeleteObject", target=self.uri(key)):
                self.s3().delete_object(Bucket=self.bucket, Key=key)

    def _delete_read_version(self, drop: Drop, key: str) -> None:
        """Delete ``key`` only while it is the upload that was read: its ETag and LastModified are
        checked right before the delete, and the delete itself is conditional (``If-Match``) where
        the server honours it (AWS S3 does), so an upload landing in between is never deleted."""
        self._check_unchanged(drop, key)
        same = {"IfMatch": drop.version} if drop.version else {}
        with s3_errors(f"delete {self.uri(key)}", action="s3:DeleteObject", target=self.uri(key)):
            self.s3().delete_object(Bucket=self.bucket, Key=key, **same)
        self._forget(key)

    def _check_unchanged(self, drop: Drop, key: str) -> None:
        """``ObjectChanged`` unless ``key`` still holds the upload that was read: its ETag and
        its LastModified. The same bytes put again meanwhile are another upload (the ledger
        tells them apart by LastModified too), which stays for an answer of its own."""
        if not drop.version:
            return
        _, version, modified = self._head(key)
        if version != drop.version or (drop.delivered is not None and delivery_time(modified) != drop.delivered):
            raise ObjectChanged(f"{self.uri(key)} changed since it was read", uri=self.uri(key))

    def _head(self, key: str) -> tuple[int, str, float]:
        """(size, ETag, LastModified as Unix time) of a live object; ``ObjectGone`` if there is none."""
        # a HEAD of a missing key says 404 only to callers allowed s3:ListBucket, otherwise 403
        with s3_errors(f"look up {self.uri(key)}", action="s3:GetObject and s3:ListBucket",
                       target=self.uri(key)):
            head = self.s3().head_object(Bucket=self.bucket, Key=key)
        return head["ContentLength"], head["ETag"].strip('"'), float(int(head["LastModified"].timestamp()))

    def _exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectGone:
            return False
        return True

    def write_back(self, drop: Drop, name: str, data: bytes) -> None:
        key = f"{self.prefix}{RESULTS}/{name}"
        kind = "application/json" if name.endswith(".json") else "text/csv; charset=utf-8"
        with s3_errors(f"write {self.uri(key)}", action="s3:PutObject", target=self.uri(key)):
            self.s3().put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=kind)

    def withdraw(self, drop: Drop, name: str) -> None:
        key = f"{self.prefix}{RESULTS}/{name}"
        with s3_errors(f"remove {self.uri(key)}", action="s3:DeleteObject", target=self.uri(key)):
            self.s3().delete_object(Bucket=self.bucket, Key=key)      # none there: nothing to do

    def probe(self) -> dict:
        """Can we reach the bucket and list the prefix? For ``config check --probe``."""
        try:
            with s3_errors(f"open s3://{self.bucket}", action="s3:ListBucket", target=f"s3://{self.bucket}"):
                self.s3().head_bucket(Bucket=self.bucket)
            with s3_errors(f"list {self.uri(self.prefix)}", action="s3:ListBucket",
                           target=f"s3://{self.bucket}"):
                self.s3().list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/", MaxKeys=1)
        except InboxError as exc:
            return {"ok": False, "detail": str(exc)}
        return {"ok": True, "detail": f"{self.uri(self.prefix)} is readable"}

    # -- event mode -----------------------------------------------------------------------------
    def looks(self) -> tuple[str, str]:
        return ("watching", "SQS notifications") if self.event_mode else super().looks()

    def watch(self, on_ready: OnReady) -> None:
        if not self.event_mode:
            super().watch(on_ready)
            return
        self._consumer = subscribe(self, on_ready)

    def scan(self) -> list[Drop]:
        """Nothing to scan: the poll thread lists, or the queue announces."""
        return []

    def settling(self) -> int:
        if self.event_mode:     # 1 until a receive that began after this inbox subscribed finished
            return 0 if self._consumer is not None and self._consumer.received_for(self) else 1
        return super().settling()

    def alive(self) -> bool:
        if self.event_mode:
            return self._consumer is not None and self._consumer.serves(self) and self._consumer.alive()
        return super().alive()

    def failing(self) -> dict | None:
        if self.event_mode:
            return self._consumer.failing() if self._consumer is not None else None
        return super().failing()

    def close(self) -> None:
        super().close()
        # The queue's consumer stops with the last inbox it feeds. The consumer is kept: a drop in
        # flight may still be archived through this inbox, and that deletes its message.
        if self._consumer is not None:
            unsubscribe(self, self._consumer)

    def announced(self, record: EventRecord) -> Drop | None:
        """The drop a record under this inbox's prefix announces, or None (logged) when it is
        none (an event of processed/, failed/ or results/, an unwanted name, an object gone).
        Called by the queue's consumer; ``InboxError``: cannot tell now."""
        name, key = record.key[len(self.prefix):], record.key
        marker = self.config.ready_marker and marked_name(name) is not None
        ignored = None
        if not record.event.startswith("ObjectCreated:"):
            ignored = f"event {record.event}"
        elif record.bucket != self.bucket or not record.key.startswith(self.prefix) or safe_name(name) is None:
            ignored = "outside the inbox"          # processed/, failed/, results/ land here too
        elif marker and wanted(data := marked_name(name) or "", self.config):
            name, key = data, self.prefix + data    # a marker announces its data file
        elif not wanted(name, self.config):
            ignored = "not a wanted name"
        if ignored:
            self.log.debug("inbox.event_ignored", key=record.key, reason=ignored)
            return None
        try:
            size, version, modified = self._head(key)
        except ObjectGone:
            self.log.info("inbox.event_ignored", key=record.key, reason="object already gone")
            return None
        with self._lock:
            archived = (key, version, delivery_time(modified)) in self._archived
        if archived:
            self.log.info("inbox.event_ignored", key=record.key, reason="archived already")
            return None
        if size == 0:
            self.log.info("inbox.event_ignored", key=record.key, reason="empty object")
            return None
        if self.config.ready_marker and not marker and not any(
                self._exists(self.prefix + m) for m in marker_names(name)):
            self.log.info("inbox.event_ignored", key=record.key, reason="waiting for its marker")
            return None
        return Drop(inbox=self.id, partner=self.config.partner, key=key, name=name,
                    uri=self.uri(key), size=size, version=version, delivered=delivery_time(modified))

    def _remember_archived(self, key: str, version: str, delivered: str | None) -> None:
        """This upload of ``key`` (its ETag and LastModified) was answered: a notification of it
        that comes again is ignored. The same bytes put again are a new upload (a LastModified
        of their own, as the ledger tells a re-send from the very file), answered as a duplicate."""
        with self._lock:
            self._archived[(key, version, delivered)] = None
            while len(self._archived) > ARCHIVED_MEMORY:
                self._archived.popitem(last=False)


# -- one consumer per queue ----------------------------------------------------------------------

@dataclass
class _Subscriber:
    inbox: S3Inbox
    on_ready: OnReady
    joined: int                 # receives begun before it subscribed


class QueueConsumer:
    """Receives one SQS queue for every S3 inbox of this process that it feeds.

    S3 sends one notification configuration's events to one queue, whatever the prefix; several
    receivers of one queue would each take the others' messages (and delete them, for they are
    "outside the inbox"). So the inboxes of a queue subscribe here with their (bucket, prefix),
    and a message is handed record by record to the inbox whose prefix holds the key. It is
    deleted once every record in it was taken and its drops archived, or ignored by its inbox.
    Made by the first subscriber (``subscribe``), stopped by the last one's ``close()``.
    """

    def __init__(self, queue_url: str, place: tuple[str, str | None], sqs):
        self.queue_url = queue_url
        self.place = place                          # (endpoint, region) it is received at
        self._sqs = sqs
        self.log = get_logger(component="sqs", queue=queue_url)
        self._lock = threading.Lock()
        self._subscribers: dict[tuple[str, str], _Subscriber] = {}      # (bucket, prefix) ->
        self._held: dict[str, _Held] = {}           # SQS message id -> hold
        self._left: dict[str, tuple[str, float]] = {}   # message id -> (receipt, when): no inbox's
        self._offer_left = False                    # a subscriber joined: let the left ones return
        self._begun = self._finished = 0            # receives begun / the last one finished
        self._failures = 0
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._receiver: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None

    # -- subscribers ----------------------------------------------------------------------------
    def add(self, inbox: S3Inbox, on_ready: OnReady) -> None:
        with self._lock:
            route = (inbox.bucket, inbox.prefix)
            if route in self._subscribers:
                raise InboxMisconfigured(f"s3://{inbox.bucket}/{inbox.prefix} already receives "
                                         f"{self.queue_url} in this process")
            self._subscribers[route] = _Subscriber(inbox, on_ready, self._begun)
            self._offer_left = bool(self._left)

    def remove(self, inbox: S3Inbox) -> bool:
        """Unsubscribe ``inbox``; True when no inbox is left."""
        with self._lock:
            route = (inbox.bucket, inbox.prefix)
            if route in self._subscribers and self._subscribers[route].inbox is inbox:
                del self._subscribers[route]
            return not self._subscribers

    def serves(self, inbox: S3Inbox) -> bool:
        with self._lock:
            subscriber = self._subscribers.get((inbox.bucket, inbox.prefix))
            return subscriber is not None and subscriber.inbox is inbox

    def received_for(self, inbox: S3Inbox) -> bool:
        """Has a receive that began after ``inbox`` subscribed finished? (``run --once``)"""
        with self._lock:
            subscriber = self._subscribers.get((inbox.bucket, inbox.prefix))
            return subscriber is None or self._finished > subscriber.joined

    def _route(self, record: EventRecord) -> _Subscriber | None:
        """The subscriber whose prefix holds the record's key: its nearest folder first (inboxes
        never nest, ``config check`` refuses that, so there is at most one)."""
        key, end = record.key, len(record.key)
        with self._lock:
            while True:
                end = key.rfind("/", 0, end)
                subscriber = self._subscribers.get((record.bucket, key[:end + 1]))
                if subscriber is not None or end < 0:
                    return subscriber

    # -- threads --------------------------------------------------------------------------------
    def start(self) -> None:
        self._receiver = threading.Thread(target=self._receive_loop, daemon=True,
                                          name=f"sqs {self.queue_url}")
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                           name=f"heartbeat {self.queue_url}")
        self._receiver.start()
        self._heartbeat.start()

    def stop(self) -> None:
        self._stop.set()
        # A long poll in progress cannot be interrupted; rather than hold up the daemon's shutdown
        # for up to 20 s, leave the (daemon) thread to end with it. Whatever it receives after the
        # stop is not handed on and reappears in the queue after VISIBILITY.
        for thread, wait in ((self._heartbeat, 5.0), (self._receiver, CLOSE_WAIT)):
            if thread is not None:
                thread.join(timeout=wait)

    def alive(self) -> bool:
        return all(t is not None and t.is_alive() for t in (self._receiver, self._heartbeat))

    def failing(self) -> dict | None:
        """For /healthz of every inbox it feeds: its receives fail lately."""
        if not self._failures:
            return None
        return {"error": self._last_error, "polls": self._failures}

    def _wait_seconds(self) -> int:
        """The long poll: the shortest ``poll_interval`` of its inboxes, 1 to 20 s. A message
        ends it at once; its length only bounds how long a stop may wait for it."""
        with self._lock:
            interval = min((s.inbox.config.poll_interval for s in self._subscribers.values()), default=LONG_POLL_MAX)
        return max(1, min(LONG_POLL_MAX, int(interval)))

    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._begun += 1
                begun = self._begun
            try:
                self._return_left()
                with s3_errors(f"receive from {self.queue_url}", action="sqs:ReceiveMessage"):
                    messages = self._sqs.receive_message(
                        QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=self._wait_seconds(),
                        VisibilityTimeout=VISIBILITY,
                        MessageSystemAttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
                self._failures, self._last_error = 0, None
                for message in messages:
                    if self._stop.is_set():
                        break
                    self._handle(message)
            except Exception as exc:  # noqa: BLE001 — this thread is the inboxes': it must outlive any error
                self._failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                delay = backoff(self._failures, 1.0, MAX_BACKOFF)
                self.log.warning("inbox.receive_failed", error=str(exc), error_type=type(exc).__name__,
                                 failures=self._failures, retry_in_s=round(delay, 2),
                                 exc_info=not isinstance(exc, InboxError))
                self._stop.wait(delay)
            finally:
                with self._lock:
                    self._finished = begun

    # -- messages -------------------------------------------------------------------------------
    def _handle(self, message: dict) -> None:
        """Hand each record to the inbox it belongs to; delete at once what announces nothing."""
        message_id, receipt, body = message["MessageId"], message["ReceiptHandle"], message.get("Body", "")
        with self._lock:
            self._left.pop(message_id, None)        # received again: that receipt is outdated
        try:
            records = event_records(body)
        except ValueError as exc:
            # no S3 notification at all: no inbox of any daemon could ever take it
            self.log.warning("inbox.event_unreadable", message_id=message_id, error=str(exc), body=body[:200])
            self._delete_message(receipt)
            return
        if not records:
            self.log.info("inbox.event_ignored", message_id=message_id, reason="s3:TestEvent")
            self._delete_message(receipt)
            return
        sorted_out = self._sort(message_id, records)
        if sorted_out is None:
            return              # cannot tell now: the whole message comes back after VISIBILITY
        taken, unrouted = sorted_out
        if unrouted:
            # Records under no prefix an inbox of this process serves are left in the queue, not
            # deleted: the inbox they belong to may be closed for a moment (a SIGHUP reload closes
            # a changed inbox before it opens it again; at start-up the inboxes subscribe one by
            # one) or served by another daemon reading this queue. Deleting would lose that drop
            # for good (event mode never lists), while a message left here only comes back after
            # VISIBILITY, again and again, until the queue's redrive policy moves it to the
            # dead-letter queue, where an operator sees it. A new subscriber makes the ones left
            # recently visible at once. Our own archive and results writes are under a served
            # prefix: the inbox takes and ignores them, so they are deleted and never end up here.
            self.log.warning("inbox.event_unrouted", message_id=message_id,
                             objects=[f"s3://{r.bucket}/{r.key}" for r in unrouted],
                             receive_count=message.get("Attributes", {}).get("ApproximateReceiveCount"),
                             action=f"left in the queue: received again after {VISIBILITY} s, or "
                                    "moved to the dead-letter queue by the queue's redrive policy")
        if not taken:
            if unrouted:
                with self._lock:
                    self._left[message_id] = (receipt, time.monotonic())
            else:
                self._delete_message(receipt)
            return
        self._hold(message_id, receipt, taken, keep=bool(unrouted))
        for subscriber, drop in taken:
            subscriber.on_ready(drop)

    def _sort(self, message_id: str, records: list[EventRecord]
              ) -> tuple[list[tuple[_Subscriber, Drop]], list[EventRecord]] | None:
        """(the drops inboxes took, with their inbox; the records no inbox serves), or None when
        an inbox cannot tell now whether its record announces a drop."""
        taken: list[tuple[_Subscriber, Drop]] = []
        unrouted: list[EventRecord] = []
        for record in records:
            subscriber = self._route(record)
            if subscriber is None:
                unrouted.append(record)
                continue
            try:
                drop = subscriber.inbox.announced(record)
            except InboxError as exc:
                subscriber.inbox.log.warning("inbox.event_deferred", message_id=message_id, key=record.key,
                                             error=str(exc))
                return None
            if drop is not None:
                taken.append((subscriber, drop))
        return taken, unrouted

    def _hold(self, message_id: str, receipt: str, taken: list[tuple[_Subscriber, Drop]], *, keep: bool) -> None:
        """Remember the message until its drops are archived; held before they are handed on,
        since archive() may come at once from a worker."""
        with self._lock:
            held = self._held.get(message_id)
            if held is None:
                held = self._held[message_id] = _Held(receipt, time.monotonic())
            else:               # a redelivery: only the newest receipt handle is valid
                held.receipt, held.since = receipt, time.monotonic()
            held.waiting.update((drop.uri, drop.version) for _, drop in taken)
            held.keep = keep

    def release(self, uri: str, version: str) -> None:
        """The drop's outcome is durable: delete each message that waited on it alone."""
        done: list[str] = []
        kept: list[str] = []
        with self._lock:
            for message_id, held in list(self._held.items()):
                held.waiting.discard((uri, version))
                if not held.waiting:
                    del self._held[message_id]
                    (kept if held.keep else done).append(held.receipt)
        for receipt in done:
            try:
                self._delete_message(receipt)
            except InboxError as exc:
                # it reappears after VISIBILITY; the ledger knows the file, so that costs a look-up
                self.log.warning("inbox.message_not_deleted", uri=uri, error=str(exc))
        if kept:        # the rest of it is no inbox's: it comes back after VISIBILITY (see _handle)
            self.log.info("inbox.message_left", uri=uri, messages=len(kept))

    def _delete_message(self, receipt: str) -> None:
        with s3_errors(f"delete a message from {self.queue_url}", action="sqs:DeleteMessage"):
            self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)

    def _return_left(self) -> None:
        """A subscriber joined: the messages no inbox took lately may be its own (it was opened
        after they came). Make them visible at once rather than after VISIBILITY."""
        now = time.monotonic()
        with self._lock:
            self._left = {m: (r, t) for m, (r, t) in self._left.items() if now - t < VISIBILITY}
            if not self._offer_left:
                return
            self._offer_left = False
            left, self._left = list(self._left.items()), {}
        try:
            self._change_visibility([(m, r) for m, (r, _) in left], 0, "inbox.message_returned")
        except InboxError as exc:           # then they come back after VISIBILITY anyway
            self.log.warning("inbox.return_failed", messages=len(left), error=str(exc))

    def _change_visibility(self, messages: list[tuple[str, str]], seconds: int, event: str) -> None:
        for start in range(0, len(messages), 10):          # SQS batches hold 10 entries at most
            batch = messages[start:start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": receipt, "VisibilityTimeout": seconds}
                       for i, (_, receipt) in enumerate(batch)]
            with s3_errors(f"change visibility in {self.queue_url}", action="sqs:ChangeMessageVisibility"):
                answer = self._sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
            for failed in answer.get("Failed", []):
                # deleted meanwhile, or received again with a newer handle: nothing to change
                message_id = batch[int(failed["Id"])][0]
                self.log.info(f"{event}_refused", message_id=message_id, code=failed.get("Code"))

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                self._extend_visibility()
            except InboxError as exc:
                self.log.warning("inbox.heartbeat_failed", error=str(exc))

    def _extend_visibility(self) -> None:
        """Keep the messages of drops in flight hidden, up to ``MAX_HOLD``: a drop the daemon
        never archives (it skipped a file the ledger knew) must not be held for ever."""
        now = time.monotonic()
        with self._lock:
            expired = [m for m, h in self._held.items() if now - h.since > MAX_HOLD]
            for message_id in expired:
                del self._held[message_id]
            held = [(m, h.receipt) for m, h in self._held.items()]
        for message_id in expired:
            self.log.warning("inbox.message_released", message_id=message_id, held_s=MAX_HOLD)
        self._change_visibility(held, VISIBILITY, "inbox.heartbeat")


# Receives in this process, by queue URL: the URL names the queue, and the endpoint is the URL's.
_consumers: dict[str, QueueConsumer] = {}
_consumers_lock = threading.Lock()


def subscribe(inbox: S3Inbox, on_ready: OnReady) -> QueueConsumer:
    """Route the records of ``inbox``'s prefix to ``on_ready``; the first inbox of a queue
    starts its consumer."""
    queue_url = inbox.config.sqs_queue_url
    assert queue_url is not None
    with _consumers_lock:
        consumer = _consumers.get(queue_url)
        fresh = consumer is None
        if consumer is None:
            consumer = QueueConsumer(queue_url, inbox.sqs_place(), inbox.sqs())
        elif consumer.place != inbox.sqs_place():
            # one queue, one receiver: a second one would take (and delete) this inbox's messages
            raise InboxMisconfigured(
                f"{inbox.id}: {queue_url} is received at {consumer.place[0]} in region "
                f"{consumer.place[1]} for the other inboxes it feeds, not in {inbox.sqs_place()[1]}: "
                "give the inboxes of one queue the same region")
        consumer.add(inbox, on_ready)
        if fresh:
            _consumers[queue_url] = consumer
            consumer.start()
    inbox.log.info("inbox.queue_subscribed", queue=queue_url, shared=not fresh)
    return consumer


def unsubscribe(inbox: S3Inbox, consumer: QueueConsumer) -> None:
    """Stop routing to ``inbox``; the last inbox of a queue stops its consumer."""
    with _consumers_lock:
        last = consumer.remove(inbox) and _consumers.get(consumer.queue_url) is consumer
        if last:
            del _consumers[consumer.queue_url]
    if last:
        consumer.stop()         # outside the lock: it may wait for a long poll (CLOSE_WAIT)

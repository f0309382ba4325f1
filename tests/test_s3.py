"""S3 inboxes against moto's threaded server over real HTTP (and ``mock_aws`` for small units).

Faults are injected by a real HTTP proxy in front of moto that answers chosen requests the way
S3 does under load (503 SlowDown, 500) or without permission (403): botocore sees real responses.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import queue
import signal
import threading
import time
import tomllib
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
import structlog.testing
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from moto import mock_aws
from moto.server import ThreadedMotoServer

from config import build_config
from config.errors import InboxMisconfigured, InboxUnavailable, Terminal, Transient
from config.model import S3InboxConfig
from inbox_daemon.inboxes import inbox_class
from inbox_daemon.inboxes import s3 as s3_module
from inbox_daemon.inboxes.s3 import FULL_LISTING_EVERY, ObjectGone, S3Inbox, _sqs_endpoint, event_records, s3_errors
from tests.conftest import ledger, products
from tests.daemon_harness import DaemonProcess, config, manifests, wait_for, wait_manifests

BUCKET = "drops"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_EC2_METADATA_DISABLED": "true"}
CSV = b"sku,name,price\nA1,Anvil,9.99\nA2,Rope,1.50\n"


# -- servers -------------------------------------------------------------------------------------

@pytest.fixture
def aws_env(monkeypatch):
    """Fake credentials for this process and for the daemon subprocess (never the real chain)."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return dict(AWS_ENV)


@pytest.fixture(scope="module")
def moto_server():
    """One server for the module (stopping one takes half a second); state is reset per test."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto(moto_server, aws_env):
    # moto keeps its state in this process, across servers: every test starts from nothing
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).close()
    return moto_server


@pytest.fixture
def s3(moto):
    client = boto3.client("s3", endpoint_url=moto)
    client.create_bucket(Bucket=BUCKET)
    yield client
    client.close()


@pytest.fixture
def mocked_s3(aws_env):
    """In-process moto, for units that need many objects quickly (no HTTP round trips)."""
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def sqs(moto):
    client = boto3.client("sqs", endpoint_url=moto)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def no_leaked_queue_consumers():
    """An inbox closed is unsubscribed: no test leaves a queue's consumer to the next one."""
    yield
    assert s3_module._consumers == {}


class FaultProxy:
    """A real HTTP proxy in front of moto that answers chosen S3 operations with an error.

    ``faults`` maps an operation ("GetObject", "ListObjectsV2", …) to the statuses its next
    requests get, in order; everything else is forwarded. ``seen`` records (operation, status).
    """

    ERRORS = {500: "InternalError", 503: "SlowDown", 403: "AccessDenied"}

    def __init__(self, upstream: str, faults: dict[str, list[int]]):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.faults = {op: list(statuses) for op, statuses in faults.items()}
        self.seen: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fault proxy")
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def take_fault(self, operation: str) -> int | None:
        with self._lock:
            pending = self.faults.get(operation)
            return pending.pop(0) if pending else None

    def record(self, operation: str, status: int) -> None:
        with self._lock:
            self.seen.append((operation, status))

    def statuses(self, operation: str) -> list[int]:
        with self._lock:
            return [status for op, status in self.seen if op == operation]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _operation(method: str, target: str) -> str:
    """The S3 operation of a path-style request (enough of them for these tests)."""
    path, _, query = target.partition("?")
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    has_key = path.strip("/").count("/") >= 1
    if method == "GET" and not has_key:
        return "ListObjectsV2" if params.get("list-type") == ["2"] else "ListObjects"
    return {"GET": "GetObject", "HEAD": "HeadObject" if has_key else "HeadBucket", "PUT": "PutObject",
            "DELETE": "DeleteObject"}.get(method, method)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass                        # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _upstream(self, body: bytes | None) -> tuple[int, bytes, list[tuple[str, str]]]:
        """This request, sent on to moto as it came: (status, body, headers) of its answer."""
        proxy: FaultProxy = self.server.proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            return response.status, response.read(), response.getheaders()
        finally:
            upstream.close()

    def _forward(self) -> None:
        proxy: FaultProxy = self.server.proxy
        body = self._body()
        operation = _operation(self.command, self.path)
        status = proxy.take_fault(operation)
        if status is not None:
            error = proxy.ERRORS[status]
            payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{error}</Code>'
                       f'<Message>injected by the test proxy</Message><RequestId>FAULT</RequestId></Error>').encode()
            proxy.record(operation, status)
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        status, data, answer_headers = self._upstream(body)
        proxy.record(operation, status)
        self.send_response(status)
        for name, value in answer_headers:
            if name.lower() in ("transfer-encoding", "connection", "server", "date"):
                continue
            if name.lower() == "content-length" and self.command != "HEAD":
                continue                    # a HEAD answer states the object's length, not its own
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fault_proxy(moto):
    proxies = []

    def start(**faults: list[int]) -> FaultProxy:
        proxy = FaultProxy(moto, faults)
        proxies.append(proxy)
        return proxy
    yield start
    for proxy in proxies:
        proxy.close()


# -- helpers -------------------------------------------------------------------------------------

def _s3_config(endpoint: str | None, **extra) -> str:
    settings = {"partner": "acme", "kind": "s3", "bucket": BUCKET, "prefix": "acme/", "endpoint_url": endpoint,
                "poll_interval": "200ms", "settle": "200ms", **extra}
    inbox = "[[inboxes]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items() if v is not None)
    return config(partners='[[partners]]\nid = "acme"\n', inboxes=inbox)


def _inbox(endpoint: str | None, client=None, *, sqs_client=None, **extra) -> S3Inbox:
    cfg = build_config(tomllib.loads(_s3_config(endpoint, **extra)))
    return S3Inbox(cfg.inboxes[0], client=client, sqs=sqs_client)


def _keys(s3, prefix: str = "acme/") -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {obj["Key"] for page in pages for obj in page.get("Contents", ())}


def _read(s3, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def _put_many(s3, keys: list[str]) -> None:
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"sku,name\nX,x\n")


def _listing_requests(s3) -> list[dict]:
    """Every ListObjectsV2 request the client sends from now on (its query string)."""
    sent: list[dict] = []
    s3.meta.events.register("before-call.s3.ListObjectsV2",
                            lambda params, **_: sent.append(dict(params["query_string"])))
    return sent


def _notification(key: str, *, event: str = "ObjectCreated:Put", bucket: str = BUCKET) -> str:
    """An S3 event notification as S3 sends it to SQS (keys URL-encoded, spaces as "+")."""
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventName": event,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": urllib.parse.quote_plus(key, safe="/"), "size": 1, "sequencer": "0A1B"}}}]})


def _queue_counts(sqs, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


# -- the daemon, end to end ----------------------------------------------------------------------

def test_s3_is_a_registered_inbox_kind():
    assert inbox_class("s3") is S3Inbox


def test_dropped_object_is_applied_moved_to_processed_and_answered_in_results(tmp_path, s3, moto, aws_env):
    d = DaemonProcess(tmp_path, _s3_config(moto), env=aws_env)
    try:
        etag = s3.put_object(Bucket=BUCKET, Key="acme/catalog.csv", Body=CSV)["ETag"].strip('"')

        [manifest] = wait_manifests(tmp_path, 1, partner="acme")

        assert manifest["status"] == "succeeded" and manifest["rows"]["inserted"] == 2
        assert manifest["inbox"] == f"s3:{BUCKET}/acme/"
        delivered = manifest["source"].pop("delivered_at")      # the object's LastModified, whole seconds
        assert delivered.endswith(".000000Z")
        assert manifest["source"] == {"uri": f"s3://{BUCKET}/acme/catalog.csv", "name": "catalog.csv",
                                      "size": len(CSV), "version": etag}
        assert set(products(tmp_path, "acme")) == {"a1", "a2"}
        wait_for(lambda: "acme/processed/catalog.csv" in _keys(s3) and "acme/catalog.csv" not in _keys(s3),
                 what="the source moved to acme/processed/")
        written = wait_for(lambda: _read(s3, f"acme/results/{manifest['job_id']}.result.json"),
                           what="the manifest written back to acme/results/")
        assert json.loads(written)["status"] == "succeeded"
        assert d.stop() == 0
    finally:
        d.close()


def test_throttling_and_5xx_are_retried_and_the_file_applied_once(tmp_path, s3, fault_proxy, aws_env):
    proxy = fault_proxy(GetObject=[503, 503], ListObjectsV2=[500])
    d = DaemonProcess(tmp_path, _s3_config(proxy.url), env=aws_env)
    try:
        s3.put_object(Bucket=BUCKET, Key="acme/catalog.csv", Body=CSV)

        [manifest] = wait_manifests(tmp_path, 1, partner="acme")
        wait_for(lambda: "acme/processed/catalog.csv" in _keys(s3), what="the source archived")

        assert manifest["status"] == "succeeded" and manifest["attempt"] == 1 and manifest["rows"]["inserted"] == 2
        assert proxy.statuses("GetObject") == [503, 503, 200]       # botocore retried, then read once
        assert proxy.statuses("ListObjectsV2")[:2] == [500, 200]
        assert d.stop() == 0
        assert len(manifests(tmp_path, "acme")) == 1 and len(ledger(tmp_path)) == 1
        assert set(products(tmp_path, "acme")) == {"a1", "a2"}
    finally:
        d.close()


def test_event_mode_applies_only_live_objects_and_empties_the_queue(tmp_path, s3, sqs, moto, aws_env):
    queue_url = sqs.create_queue(QueueName="acme-drops")["QueueUrl"]
    s3.put_object(Bucket=BUCKET, Key="acme/gone.csv", Body=b"sku,name\nG,gone\n")
    s3.delete_object(Bucket=BUCKET, Key="acme/gone.csv")
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(
        {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2024-01-01T00:00:00Z", "Bucket": BUCKET}))
    sqs.send_message(QueueUrl=queue_url, MessageBody=_notification("acme/gone.csv"))
    d = DaemonProcess(tmp_path, _s3_config(moto, sqs_queue_url=queue_url), env=aws_env)
    try:
        d.wait_event("inbox.event_ignored", reason="s3:TestEvent")
        d.wait_event("inbox.event_ignored", key="acme/gone.csv", reason="object already gone")
        s3.put_object(Bucket=BUCKET, Key="acme/new arrivals.csv", Body=CSV)
        sqs.send_message(QueueUrl=queue_url, MessageBody=_notification("acme/new arrivals.csv"))

        [manifest] = wait_manifests(tmp_path, 1, partner="acme")

        assert manifest["status"] == "succeeded" and manifest["source"]["name"] == "new arrivals.csv"
        assert set(products(tmp_path, "acme")) == {"a1", "a2"}
        wait_for(lambda: _queue_counts(sqs, queue_url) == (0, 0), what="every message deleted")
        assert "acme/processed/new arrivals.csv" in _keys(s3)
        assert d.stop() == 0
        assert len(manifests(tmp_path, "acme")) == 1
    finally:
        d.close()


def test_event_mode_answers_the_same_bytes_put_again_as_a_duplicate_and_takes_them_out(
        tmp_path, s3, sqs, moto, aws_env):
    """A nightly file whose bytes did not change since yesterday's has the same ETag, but it is a
    new upload (a LastModified of its own): it gets its answer, a duplicate of the first, and
    leaves the inbox. Only a notification of the very upload answered already is ignored."""
    queue_url = sqs.create_queue(QueueName="acme-drops")["QueueUrl"]
    _notify_queue(s3, sqs, queue_url)
    d = DaemonProcess(tmp_path, _s3_config(moto, sqs_queue_url=queue_url), env=aws_env)
    try:
        s3.put_object(Bucket=BUCKET, Key="acme/daily.csv", Body=CSV)
        [first] = wait_manifests(tmp_path, 1, partner="acme", status="succeeded")
        wait_for(lambda: "acme/daily.csv" not in _keys(s3), what="the first upload archived")
        time.sleep(1.1)                 # S3 dates an object to the second
        s3.put_object(Bucket=BUCKET, Key="acme/daily.csv", Body=CSV)

        [second] = wait_manifests(tmp_path, 1, partner="acme", status="duplicate")

        assert second["duplicate_of"] == first["job_id"] and second["source"]["name"] == "daily.csv"
        wait_for(lambda: "acme/daily.csv" not in _keys(s3), what="the second upload archived")
        wait_for(lambda: _queue_counts(sqs, queue_url) == (0, 0), what="every message deleted")
        assert d.stop() == 0
        assert len(manifests(tmp_path, "acme")) == 2
    finally:
        d.close()


def test_the_same_bytes_put_again_right_after_their_archive_are_offered_as_a_new_upload(s3, moto):
    """Archived by our own hand, then put again before any listing saw the key empty: a new
    upload, offered once it settles (and answered as a duplicate), not the version handed over
    already, which would wait ``REOFFER_S`` (five minutes) to be offered again."""
    s3.put_object(Bucket=BUCKET, Key="acme/daily.csv", Body=CSV)
    inbox = _inbox(moto, s3)
    [entry] = wait_for(lambda: inbox.ready_entries(), timeout=10, what="the upload ready")
    inbox.archive(inbox.drop_for(entry), "succeeded")
    assert "acme/daily.csv" not in _keys(s3)
    s3.put_object(Bucket=BUCKET, Key="acme/daily.csv", Body=CSV)      # the same bytes: the same ETag

    [again] = wait_for(lambda: inbox.ready_entries(), timeout=10, what="the new upload offered")

    assert (again.name, again.version) == ("daily.csv", entry.version)


def test_an_answer_written_back_is_withdrawn_and_withdrawing_none_is_no_error(s3, moto):
    """A requeued job that went through takes its rejection's diagnostics out of ``results/``."""
    inbox = _inbox(moto, s3)
    s3.put_object(Bucket=BUCKET, Key="acme/daily.csv", Body=CSV)
    [entry] = wait_for(lambda: inbox.ready_entries(), timeout=10, what="the upload ready")
    drop = inbox.drop_for(entry)
    inbox.write_back(drop, "j1.diagnostics.csv", b"row,sku\n")
    assert "acme/results/j1.diagnostics.csv" in _keys(s3, "acme/results/")

    inbox.withdraw(drop, "j1.diagnostics.csv")
    inbox.withdraw(drop, "j1.diagnostics.csv")

    assert "acme/results/j1.diagnostics.csv" not in _keys(s3, "acme/results/")


def test_the_same_bytes_put_again_while_the_first_upload_was_applied_stay_for_their_own_answer(s3, moto):
    """A partner's script that uploads again before it sees the answer: the archive takes only
    the upload that was read, and the second one (same bytes, same ETag, a later LastModified)
    stays in the inbox and is offered as an upload of its own."""
    s3.put_object(Bucket=BUCKET, Key="acme/daily.csv", Body=CSV)
    inbox = _inbox(moto, s3)
    [entry] = wait_for(lambda: inbox.ready_entries(), timeout=10, what="the upload ready")
    drop = inbox.drop_for(entry)
    time.sleep(1.1)                     # S3 dates an object to the second
    s3.put_object(Bucket=BUCKET, Key="acme/daily.csv", Body=CSV)      # while the first is applied

    inbox.archive(drop, "succeeded")

    assert _keys(s3) == {"acme/daily.csv"}                            # nothing archived
    [again] = wait_for(lambda: inbox.ready_entries(), timeout=10, what="the second upload offered")
    assert again.version == entry.version and again.modified > entry.modified       # listed anew


# -- listing -------------------------------------------------------------------------------------

def test_prefix_with_more_than_1000_keys_is_listed_completely(mocked_s3):
    s3 = mocked_s3
    _put_many(s3, [f"acme/k{i:04}.csv" for i in range(1005)])
    inbox = _inbox(None, s3)
    requests = _listing_requests(s3)

    entries = inbox.list_entries()

    assert len(entries) == 1005 and len({e.key for e in entries}) == 1005
    assert len(requests) == 2                    # two pages of at most 1,000 keys


def test_only_objects_directly_under_the_prefix_are_listed(s3, moto):
    for key in ("acme/feed.csv", "acme/processed/old.csv", "acme/failed/bad.csv", "acme/results/r.json",
                "acme/sub/deeper.csv", "other/feed.csv"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")

    entries = _inbox(moto, s3).list_entries()

    assert [(e.key, e.name) for e in entries] == [("acme/feed.csv", "feed.csv")]


def test_incremental_poll_finds_a_new_key_without_a_full_listing(mocked_s3):
    s3 = mocked_s3
    _put_many(s3, [f"acme/k{i:04}.csv" for i in range(1005)])
    inbox = _inbox(None, s3)
    inbox.list_entries()
    requests = _listing_requests(s3)
    s3.put_object(Bucket=BUCKET, Key="acme/k9999.csv", Body=b"sku,name\nN,new\n")

    entries = inbox.list_entries()

    assert len(entries) == 1006 and "acme/k9999.csv" in {e.key for e in entries}
    assert [r.get("start-after") for r in requests] == ["acme/k1004.csv"]    # one page, past the watermark


def test_key_sorting_below_the_watermark_waits_for_the_next_full_listing(s3, moto):
    for key in ("acme/b.csv", "acme/c.csv"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    inbox = _inbox(moto, s3)
    inbox.list_entries()                                          # full: the watermark is acme/c.csv
    s3.put_object(Bucket=BUCKET, Key="acme/a.csv", Body=b"x")

    incremental = [{e.name for e in inbox.list_entries()} for _ in range(FULL_LISTING_EVERY - 1)]
    full = {e.name for e in inbox.list_entries()}

    assert all(names == {"b.csv", "c.csv"} for names in incremental)
    assert full == {"a.csv", "b.csv", "c.csv"}


# -- fetch and archive ---------------------------------------------------------------------------

def _listed_drop(inbox: S3Inbox, name: str):
    [entry] = [e for e in inbox.list_entries() if e.name == name]
    return inbox.drop_for(entry)


def test_fetch_streams_the_object_into_the_spool_with_its_sha256(s3, moto, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="acme/catalog.csv", Body=CSV)
    inbox = _inbox(moto, s3)

    path, sha256, size = inbox.fetch(_listed_drop(inbox, "catalog.csv"), tmp_path / "spool")

    assert path.read_bytes() == CSV and sha256 == hashlib.sha256(CSV).hexdigest() and size == len(CSV)


def test_fetch_of_a_deleted_object_is_transient_and_says_it_is_gone(s3, moto, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="acme/catalog.csv", Body=CSV)
    inbox = _inbox(moto, s3)
    drop = _listed_drop(inbox, "catalog.csv")
    s3.delete_object(Bucket=BUCKET, Key="acme/catalog.csv")

    with pytest.raises(InboxUnavailable, match="is gone") as info:
        inbox.fetch(drop, tmp_path / "spool")
    assert isinstance(info.value, Transient) and isinstance(info.value.__cause__, ClientError)


def test_rejected_file_moves_to_failed(s3, moto):
    s3.put_object(Bucket=BUCKET, Key="acme/bad.csv", Body=b"garbage")
    inbox = _inbox(moto, s3)

    inbox.archive(_listed_drop(inbox, "bad.csv"), "rejected")

    assert _keys(s3) == {"acme/failed/bad.csv"}


def test_second_file_of_the_same_name_keeps_the_first_in_processed(s3, moto):
    inbox = _inbox(moto, s3)
    for body in (b"sku,name\nA,first\n", b"sku,name\nA,second\n"):
        s3.put_object(Bucket=BUCKET, Key="acme/daily.csv", Body=body)
        drop = _listed_drop(inbox, "daily.csv")
        inbox.archive(drop, "succeeded")

    assert _keys(s3) == {"acme/processed/daily.csv", f"acme/processed/daily.csv.{drop.version}"}


def test_on_success_delete_removes_the_object(s3, moto):
    s3.put_object(Bucket=BUCKET, Key="acme/catalog.csv", Body=CSV)
    inbox = _inbox(moto, s3, on_success="delete")

    inbox.archive(_listed_drop(inbox, "catalog.csv"), "succeeded")

    assert _keys(s3) == set()


def test_on_success_delete_leaves_an_object_overwritten_since_it_was_read(s3, moto):
    s3.put_object(Bucket=BUCKET, Key="acme/catalog.csv", Body=CSV)
    inbox = _inbox(moto, s3, on_success="delete")
    drop = _listed_drop(inbox, "catalog.csv")
    s3.put_object(Bucket=BUCKET, Key="acme/catalog.csv", Body=CSV + b"A3,Newer,2\n")

    inbox.archive(drop, "succeeded")

    assert _read(s3, "acme/catalog.csv").endswith(b"A3,Newer,2\n")


def test_move_leaves_an_object_overwritten_since_it_was_read(s3, moto):
    """moto, like s3rver, ignores the copy's CopySourceIfMatch: the archive must not rely on it.
    The newer upload stays in the inbox for its own job, whole."""
    s3.put_object(Bucket=BUCKET, Key="acme/stock.csv", Body=CSV)
    inbox = _inbox(moto, s3)
    drop = _listed_drop(inbox, "stock.csv")
    s3.put_object(Bucket=BUCKET, Key="acme/stock.csv", Body=CSV + b"A3,Newer,2\n")

    inbox.archive(drop, "succeeded")

    assert _read(s3, "acme/stock.csv").endswith(b"A3,Newer,2\n")


# -- event mode ----------------------------------------------------------------------------------

def test_message_is_deleted_only_when_its_drop_is_archived(s3, sqs, moto):
    queue_url = sqs.create_queue(QueueName="acme-drops")["QueueUrl"]
    s3.put_object(Bucket=BUCKET, Key="acme/catalog.csv", Body=CSV)
    sqs.send_message(QueueUrl=queue_url, MessageBody=_notification("acme/catalog.csv"))
    inbox = _inbox(moto, s3, sqs_queue_url=queue_url, poll_interval="1s", sqs_client=sqs)
    ready: queue.Queue = queue.Queue()
    inbox.watch(ready.put)
    try:
        drop = ready.get(timeout=10)
        assert (drop.key, drop.name) == ("acme/catalog.csv", "catalog.csv")
        assert _queue_counts(sqs, queue_url) == (0, 1)              # in flight: hidden, not deleted

        inbox.archive(drop, "succeeded")

        assert _queue_counts(sqs, queue_url) == (0, 0)
        assert inbox.settling() == 0 and inbox.scan() == []
    finally:
        inbox.close()


def test_heartbeat_keeps_the_message_of_a_drop_in_flight_hidden(s3, sqs, moto, monkeypatch):
    monkeypatch.setattr(s3_module, "VISIBILITY", 1)        # seconds: lapses fast without a heartbeat
    monkeypatch.setattr(s3_module, "HEARTBEAT", 0.2)
    queue_url = sqs.create_queue(QueueName="acme-drops")["QueueUrl"]
    s3.put_object(Bucket=BUCKET, Key="acme/catalog.csv", Body=CSV)
    sqs.send_message(QueueUrl=queue_url, MessageBody=_notification("acme/catalog.csv"))
    extensions: list[dict] = []
    sqs.meta.events.register("after-call.sqs.ChangeMessageVisibilityBatch",
                             lambda parsed, **_: extensions.append(parsed))
    inbox = _inbox(moto, s3, sqs_queue_url=queue_url, poll_interval="1s", sqs_client=sqs)
    ready: queue.Queue = queue.Queue()
    inbox.watch(ready.put)
    try:
        drop = ready.get(timeout=10)
        # well past the 1 s visibility of the receive, kept hidden by extensions alone
        wait_for(lambda: len(extensions) >= 8, what="eight heartbeats")

        assert all(not e.get("Failed") for e in extensions)
        assert _queue_counts(sqs, queue_url) == (0, 1) and ready.empty()
        inbox.archive(drop, "succeeded")
        assert _queue_counts(sqs, queue_url) == (0, 0)
    finally:
        inbox.close()


@pytest.mark.parametrize("queue_url, endpoint, region", [
    ("https://sqs.eu-west-1.amazonaws.com/123456789012/drops", "https://sqs.eu-west-1.amazonaws.com", "eu-west-1"),
    ("https://vpce-0a1b.sqs.us-east-2.vpce.amazonaws.com/123456789012/drops",
     "https://vpce-0a1b.sqs.us-east-2.vpce.amazonaws.com", "us-east-2"),
    ("http://127.0.0.1:4566/000000000000/drops", "http://127.0.0.1:4566", None),
])
def test_sqs_calls_go_to_the_queue_urls_endpoint_and_region(queue_url, endpoint, region):
    assert _sqs_endpoint(queue_url) == (endpoint, region)


def test_event_records_decode_keys_and_accept_sns_wrapping():
    bare = _notification("acme/spring sale+más.csv")
    wrapped = json.dumps({"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:drops", "Message": bare})

    for body in (bare, wrapped):
        [record] = event_records(body)
        assert (record.event, record.bucket, record.key) == ("ObjectCreated:Put", BUCKET, "acme/spring sale+más.csv")
    assert event_records(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []
    with pytest.raises(ValueError):
        event_records("not json")


# -- errors --------------------------------------------------------------------------------------

def test_probe_of_a_missing_bucket_is_not_ok_and_names_the_bucket(aws_env):
    with mock_aws():
        inbox = S3Inbox(S3InboxConfig(partner="acme", path="acme/", bucket="no-such-bucket",
                                      prefix="acme/"))          # its own default client, from the chain
        outcome = inbox.probe()
    assert not outcome["ok"]
    assert "no-such-bucket" in outcome["detail"] and "does not exist" in outcome["detail"]


def test_probe_of_a_reachable_bucket_is_ok(s3, moto):
    assert _inbox(moto, s3).probe()["ok"]


def test_access_denied_is_terminal_and_names_the_prefix_and_the_permission(s3, fault_proxy):
    proxy = fault_proxy(ListObjectsV2=[403])
    client = boto3.client("s3", endpoint_url=proxy.url)
    try:
        with pytest.raises(InboxMisconfigured) as info:
            _inbox(proxy.url, client).list_entries()
    finally:
        client.close()
    assert isinstance(info.value, Terminal) and isinstance(info.value.__cause__, ClientError)
    assert f"s3://{BUCKET}/acme/" in str(info.value) and "s3:ListBucket" in str(info.value)
    assert proxy.statuses("ListObjectsV2") == [403]                # not retried


def _client_error(code: str, status: int, operation: str = "GetObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       operation)


@pytest.mark.parametrize("error, expected", [
    (_client_error("SlowDown", 503), InboxUnavailable),
    (_client_error("Throttling", 400), InboxUnavailable),
    (_client_error("RequestTimeout", 400), InboxUnavailable),
    (_client_error("InternalError", 500), InboxUnavailable),
    (_client_error("SomethingNew", 502), InboxUnavailable),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), InboxUnavailable),
    (ConnectionClosedError(endpoint_url="http://127.0.0.1:9"), InboxUnavailable),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), InboxUnavailable),
    (_client_error("NoSuchKey", 404), ObjectGone),
    (_client_error("404", 404, "HeadObject"), ObjectGone),
    (_client_error("AccessDenied", 403), InboxMisconfigured),
    (_client_error("403", 403, "HeadObject"), InboxMisconfigured),
    (_client_error("AllAccessDisabled", 403), InboxMisconfigured),
    (_client_error("InvalidAccessKeyId", 403), InboxMisconfigured),
    (_client_error("SignatureDoesNotMatch", 403), InboxMisconfigured),
    (_client_error("NoSuchBucket", 404, "ListObjectsV2"), InboxMisconfigured),
    (_client_error("404", 404, "HeadBucket"), InboxMisconfigured),
])
def test_botocore_errors_map_to_transient_or_terminal_inbox_errors(error, expected):
    with pytest.raises(expected) as info:
        with s3_errors("read s3://drops/acme/x.csv", action="s3:GetObject"):
            raise error
    assert type(info.value) is expected and info.value.__cause__ is error
    assert isinstance(info.value, Transient if issubclass(expected, InboxUnavailable) else Terminal)


# -- one queue feeding several inboxes -----------------------------------------------------------

PARTNERS = ("acme", "globex")


def _shared_queue_config(endpoint: str | None, queue_url: str, partners=PARTNERS, **extra) -> str:
    """An inbox per partner on one bucket, one prefix each (``acme/``, ``globex/``), all fed by
    one queue; every partner of ``PARTNERS`` is configured, inbox or not."""
    inboxes = ""
    for partner in partners:
        settings = {"partner": partner, "kind": "s3", "bucket": BUCKET, "prefix": f"{partner}/",
                    "endpoint_url": endpoint, "sqs_queue_url": queue_url, "poll_interval": "1s",
                    "settle": "200ms", **extra}
        inboxes += "[[inboxes]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()
                                             if v is not None) + "\n"
    return config(partners="".join(f'[[partners]]\nid = "{p}"\n' for p in PARTNERS), inboxes=inboxes)


def _notify_queue(s3, sqs, queue_url: str) -> None:
    """The bucket's ObjectCreated notifications go to the queue (moto sends them as S3 does)."""
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})


def test_one_queue_feeding_two_inboxes_loses_no_upload(tmp_path, s3, sqs, moto, aws_env):
    queue_url = sqs.create_queue(QueueName="drops-events")["QueueUrl"]
    _notify_queue(s3, sqs, queue_url)
    d = DaemonProcess(tmp_path, _shared_queue_config(moto, queue_url), env=aws_env)
    try:
        uploads = {p: set() for p in PARTNERS}
        for i in range(20):                                  # interleaved: acme, globex, acme, …
            partner = PARTNERS[i % 2]
            s3.put_object(Bucket=BUCKET, Key=f"{partner}/feed-{i:02}.csv", Body=f"sku,name\nP{i},item {i}\n".encode())
            uploads[partner].add(f"feed-{i:02}.csv")

        def applied() -> dict[str, list[str]]:
            return {p: [m["source"]["name"] for m in manifests(tmp_path, p)] for p in PARTNERS}
        try:
            wait_for(lambda: sum(map(len, applied().values())) >= 20, timeout=30, what="20 uploads applied")
        except AssertionError:
            pass                                             # the counts below say what is missing
        done = applied()
        lost = {p: sorted(uploads[p] - set(done[p])) for p in PARTNERS}
        print(f"applied {sum(map(len, done.values()))} of 20, lost {sum(map(len, lost.values()))}: {lost}")

        assert lost == {"acme": [], "globex": []}
        for partner in PARTNERS:                             # each exactly once, to the right partner
            assert sorted(done[partner]) == sorted(uploads[partner])
            assert set(products(tmp_path, partner)) == {f"p{i}" for i in range(20) if PARTNERS[i % 2] == partner}
        assert len(ledger(tmp_path)) == 20
        # the notifications of our own archive and results writes are deleted too: nothing is left over
        wait_for(lambda: _queue_counts(sqs, queue_url) == (0, 0), what="every message deleted")
        assert d.stop() == 0
        assert sum(len(manifests(tmp_path, p)) for p in PARTNERS) == 20
    finally:
        d.close()


def _shared_queue_inboxes(endpoint: str, queue_url: str, sqs_client, partners=PARTNERS, **extra) -> list[S3Inbox]:
    cfg = build_config(tomllib.loads(_shared_queue_config(endpoint, queue_url, partners, **extra)))
    return [S3Inbox(inbox_cfg, sqs=sqs_client) for inbox_cfg in cfg.inboxes]


def _notification_of(*keys: str) -> str:
    """One notification with a record per key (S3 sends one; the format allows several)."""
    records = [json.loads(_notification(key))["Records"][0] for key in keys]
    return json.dumps({"Records": records})


def _deletions(sqs) -> list[dict]:
    """Every DeleteMessage request the client sends from now on."""
    sent: list[dict] = []
    sqs.meta.events.register("before-call.sqs.DeleteMessage", lambda params, **_: sent.append(params))
    return sent


def test_message_for_two_inboxes_is_deleted_only_after_both_took_their_record(s3, sqs, moto):
    queue_url = sqs.create_queue(QueueName="drops-events")["QueueUrl"]
    for partner in PARTNERS:
        s3.put_object(Bucket=BUCKET, Key=f"{partner}/catalog.csv", Body=CSV)
    sqs.send_message(QueueUrl=queue_url, MessageBody=_notification_of("acme/catalog.csv", "globex/catalog.csv"))
    deleted = _deletions(sqs)
    acme, globex = inboxes = _shared_queue_inboxes(moto, queue_url, sqs)
    ready = {inbox.id: queue.Queue() for inbox in inboxes}
    for inbox in inboxes:
        inbox.watch(ready[inbox.id].put)
    try:
        acme_drop, globex_drop = ready[acme.id].get(timeout=10), ready[globex.id].get(timeout=10)
        assert (acme_drop.partner, acme_drop.key) == ("acme", "acme/catalog.csv")
        assert (globex_drop.partner, globex_drop.key) == ("globex", "globex/catalog.csv")
        assert _queue_counts(sqs, queue_url) == (0, 1)              # in flight: hidden, not deleted

        acme.archive(acme_drop, "succeeded")
        assert deleted == [] and _queue_counts(sqs, queue_url) == (0, 1)    # globex's record is not done

        globex.archive(globex_drop, "succeeded")
        assert len(deleted) == 1 and _queue_counts(sqs, queue_url) == (0, 0)
        assert all(q.empty() for q in ready.values())              # each record went to one inbox, once
    finally:
        for inbox in inboxes:
            inbox.close()


def test_message_for_a_prefix_no_inbox_serves_is_left_in_the_queue_and_logged(s3, sqs, moto, monkeypatch):
    monkeypatch.setattr(s3_module, "VISIBILITY", 1)         # seconds: it comes back soon
    queue_url = sqs.create_queue(QueueName="drops-events")["QueueUrl"]
    s3.put_object(Bucket=BUCKET, Key="initech/catalog.csv", Body=CSV)
    sqs.send_message(QueueUrl=queue_url, MessageBody=_notification("initech/catalog.csv"))
    deleted = _deletions(sqs)
    with structlog.testing.capture_logs() as logs:
        inboxes = _shared_queue_inboxes(moto, queue_url, sqs)
        ready: queue.Queue = queue.Queue()
        for inbox in inboxes:
            inbox.watch(ready.put)
        def unrouted() -> list[dict]:
            return [e for e in logs if e["event"] == "inbox.event_unrouted"]
        try:
            wait_for(lambda: len(unrouted()) >= 2, what="the message received twice")
        finally:
            for inbox in inboxes:
                inbox.close()

    first, second = unrouted()[:2]
    assert first["objects"] == [f"s3://{BUCKET}/initech/catalog.csv"] and first["log_level"] == "warning"
    assert "left in the queue" in first["action"]
    assert (first["receive_count"], second["receive_count"]) == ("1", "2")   # it came back: not deleted
    assert deleted == [] and ready.empty()
    assert sum(_queue_counts(sqs, queue_url)) == 1                        # still there for its owner or the DLQ


def test_inbox_opened_after_its_message_came_receives_it_without_waiting_for_visibility(s3, sqs, moto):
    """A SIGHUP reload closes a changed inbox and opens it again, and the inboxes of a queue
    subscribe one by one at start-up: what came in between reaches the inbox at once."""
    queue_url = sqs.create_queue(QueueName="drops-events")["QueueUrl"]
    s3.put_object(Bucket=BUCKET, Key="globex/catalog.csv", Body=CSV)
    sqs.send_message(QueueUrl=queue_url, MessageBody=_notification("globex/catalog.csv"))
    acme, globex = _shared_queue_inboxes(moto, queue_url, sqs)
    with structlog.testing.capture_logs() as logs:
        acme.watch(lambda drop: pytest.fail(f"acme was handed {drop}"))
        try:
            wait_for(lambda: any(e["event"] == "inbox.event_unrouted" for e in logs), what="globex's message left")
            ready: queue.Queue = queue.Queue()
            started = time.monotonic()
            globex.watch(ready.put)
            try:
                drop = ready.get(timeout=10)
                assert time.monotonic() - started < s3_module.VISIBILITY / 2
                assert (drop.partner, drop.key) == ("globex", "globex/catalog.csv")
                globex.archive(drop, "succeeded")
                assert _queue_counts(sqs, queue_url) == (0, 0)
            finally:
                globex.close()
            assert acme.alive() and not globex.alive()            # the queue is still received for acme
        finally:
            acme.close()
    assert not acme.alive()


def test_inboxes_of_one_queue_share_one_receiver_stopped_by_the_last_close(s3, sqs, moto):
    queue_url = sqs.create_queue(QueueName="drops-events")["QueueUrl"]
    receives: list[dict] = []
    sqs.meta.events.register("before-call.sqs.ReceiveMessage", lambda params, **_: receives.append(params))
    acme, globex = _shared_queue_inboxes(moto, queue_url, sqs)
    acme.watch(lambda drop: None)
    globex.watch(lambda drop: None)
    try:
        wait_for(lambda: acme.settling() == 0 and globex.settling() == 0, what="a receive for both")
        receivers = [t for t in threading.enumerate() if t.name == f"sqs {queue_url}"]
        assert len(receivers) == 1 and acme._consumer is globex._consumer
        acme.close()
        assert globex.alive() and receivers[0].is_alive()
    finally:
        acme.close()
        globex.close()
    assert s3_module._consumers == {}


def test_sighup_reload_adding_and_removing_inboxes_of_one_queue_keeps_receiving(tmp_path, s3, sqs, moto, aws_env):
    queue_url = sqs.create_queue(QueueName="drops-events")["QueueUrl"]
    _notify_queue(s3, sqs, queue_url)
    d = DaemonProcess(tmp_path, _shared_queue_config(moto, queue_url, ("acme",)), env=aws_env)
    try:
        s3.put_object(Bucket=BUCKET, Key="acme/one.csv", Body=b"sku,name\nA1,one\n")
        wait_manifests(tmp_path, 1, partner="acme")

        d.config_path.write_text(_shared_queue_config(moto, queue_url))          # globex joins the queue
        d.signal(signal.SIGHUP)
        d.wait_event("config.reloaded", inboxes=[f"s3:{BUCKET}/acme/", f"s3:{BUCKET}/globex/"])
        s3.put_object(Bucket=BUCKET, Key="globex/two.csv", Body=b"sku,name\nG2,two\n")
        s3.put_object(Bucket=BUCKET, Key="acme/three.csv", Body=b"sku,name\nA3,three\n")
        wait_manifests(tmp_path, 1, partner="globex")
        wait_manifests(tmp_path, 2, partner="acme")
        # (acme's archive and results notifications too: once acme is gone, they would be no inbox's)
        wait_for(lambda: _queue_counts(sqs, queue_url) == (0, 0), what="every message deleted")

        # acme leaves and globex changes: both are closed (the queue's receiver stops), globex reopened
        d.config_path.write_text(_shared_queue_config(moto, queue_url, ("globex",), settle="300ms"))
        d.signal(signal.SIGHUP)
        d.wait_event("config.reloaded", inboxes=[f"s3:{BUCKET}/globex/"])
        s3.put_object(Bucket=BUCKET, Key="globex/four.csv", Body=b"sku,name\nG4,four\n")
        wait_manifests(tmp_path, 2, partner="globex")

        assert set(products(tmp_path, "acme")) == {"a1", "a3"} and set(products(tmp_path, "globex")) == {"g2", "g4"}
        wait_for(lambda: _queue_counts(sqs, queue_url) == (0, 0), what="every message deleted")
        assert d.stop() == 0
        assert len(ledger(tmp_path)) == 4
    finally:
        d.close()

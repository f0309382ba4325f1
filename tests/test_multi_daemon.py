"""Several daemons sharing one PostgreSQL store and the same remote inboxes: three real daemon
processes, moto's S3 server over HTTP and an asyncssh SFTP server, files of mixed size; one
daemon is SIGKILLed while it applies a large file. Afterwards every file was applied exactly
once, no file or manifest is missing, every daemon's audit chain verifies, and the work was
shared."""

from __future__ import annotations

import json
import random
import socket
import urllib.request

import asyncssh
import boto3
import psycopg
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import pg_products, run_cli
from tests.daemon_harness import DaemonProcess, wait_for
from tests.sftp_server import SftpTestServer

BUCKET = "drops"
S3_FILES, SFTP_FILES, LARGE_ROWS = 300, 30, 150_000
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def s3(monkeypatch):
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).close()
    client = boto3.client("s3", endpoint_url=url)
    client.create_bucket(Bucket=BUCKET)
    yield client, url
    client.close()
    server.stop()


@pytest.fixture
def sftp(tmp_path):
    host_key, client_key = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
    server = SftpTestServer(tmp_path / "sftp-root", host_key=host_key, client_key=client_key).start()
    key_file = tmp_path / "client_key"
    key_file.write_bytes(client_key.export_private_key("openssh"))
    key_file.chmod(0o600)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line())
    yield server, key_file, known_hosts
    server.close()


def _config(pg_url: str, s3_url: str, sftp) -> str:
    server, key_file, known_hosts = sftp
    return f"""
[daemon]
state_dir = "var"
workers = 2
health = "127.0.0.1:0"
retry_base = "50ms"
stop_timeout = "2s"

[store]
url = {json.dumps(pg_url)}
lease = "2s"

[[partners]]
id = "acme"
[[partners]]
id = "globex"

[[inboxes]]
partner = "acme"
kind = "s3"
bucket = "{BUCKET}"
prefix = "acme/"
endpoint_url = "{s3_url}"
poll_interval = "300ms"
settle = "100ms"

[[inboxes]]
partner = "globex"
kind = "sftp"
host = "127.0.0.1"
port = {server.port}
username = "globex"
key_file = "{key_file}"
known_hosts = "{known_hosts}"
path = "/outbound"
poll_interval = "300ms"
settle = "300ms"
"""


def _files(prefix: str, count: int, large: set[int]) -> dict[str, bytes]:
    """File name → CSV; every SKU unique across files, so the catalog is their union."""
    rnd = random.Random(7)
    out = {}
    for i in range(count):
        n = LARGE_ROWS if i in large else rnd.randrange(1, 60)
        rows = "".join(f"{prefix}{i}-{j},Item {i}/{j},{j % 97}.{j % 100:02d}\n" for j in range(n))
        out[f"{'big' if i in large else 'feed'}-{i:03d}.csv"] = ("sku,name,price\n" + rows).encode()
    return out


def _ledger(pg_url: str) -> list[tuple]:
    with psycopg.connect(pg_url) as conn:
        return conn.execute("SELECT id, partner_id, source_name, status, sha256, duplicate_of FROM jobs").fetchall()


def test_three_daemons_share_the_work_and_a_killed_one_loses_nothing(tmp_path, pg_url, s3, sftp):
    client, s3_url = s3
    server = sftp[0]
    acme = _files("A", S3_FILES, large={5, 150, 290})
    globex = _files("G", SFTP_FILES, large=set())
    roots = [tmp_path / f"host-{i}" for i in range(3)]
    for root in roots:
        root.mkdir()
    outbound = server.root / "globex" / "outbound"
    outbound.mkdir(parents=True, exist_ok=True)
    for name, body in globex.items():
        (outbound / name).write_bytes(body)
    for name, body in acme.items():
        client.put_object(Bucket=BUCKET, Key=f"acme/{name}", Body=body)
    # daemon 0 starts first and lists the large files first ("big-" < "feed-"); the others join
    # while it applies one, and it is killed in the middle of that job
    daemons = [DaemonProcess(roots[0], _config(pg_url, s3_url, sftp), env=AWS_ENV)]
    try:
        victim = daemons[0]
        holder = f"{socket.gethostname()}:{victim.proc.pid}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            wait_for(lambda: _running(conn, holder, "big-%"), timeout=60, interval=0.005,
                     what="daemon 0 applying a large file")
            for root in roots[1:]:
                daemons.append(DaemonProcess(root, _config(pg_url, s3_url, sftp), env=AWS_ENV))
            wait_for(lambda: _running(conn, holder, "%"), timeout=60, interval=0.005,
                     what="daemon 0 applying a file")
            victim.kill()

        def done():
            applied = [r for r in _ledger(pg_url) if r[3] == "succeeded" and r[5] is None]
            return len(applied) == S3_FILES + SFTP_FILES
        wait_for(done, timeout=240, interval=0.5, what="every file applied")
        wait_for(lambda: not _remaining(client, server), timeout=60, interval=0.5, what="every source archived")
    finally:
        codes = [d.stop() for d in daemons[1:]]
        for d in daemons:
            d.close()

    assert codes == [0, 0]
    ledger = _ledger(pg_url)
    applied = [r for r in ledger if r[5] is None]
    # exactly one applied job per file, whoever ran it; nothing failed or left running
    assert sorted((r[1], r[2]) for r in applied) == sorted(
        [("acme", n) for n in acme] + [("globex", n) for n in globex])
    assert {r[3] for r in applied} == {"succeeded"}
    assert [r for r in ledger if r[5] is not None] == []          # no file was taken in twice
    # the catalog is the union of the files, each row written by its own file's job
    catalog = pg_products(pg_url, "acme")
    assert len(catalog) == sum(body.count(b"\n") - 1 for body in acme.values())
    job_of = {r[2]: r[0] for r in applied if r[1] == "acme"}
    last = LARGE_ROWS - 1
    assert catalog[f"a150-{last}"]["source_job_id"] == job_of["big-150.csv"]
    assert catalog[f"a150-{last}"]["price_cents"] == (last % 97) * 100 + last % 100
    # the job daemon 0 was killed in was taken over: run again, as a later attempt, by another
    with psycopg.connect(pg_url) as conn:
        taken_over = conn.execute("SELECT count(*) FROM jobs WHERE attempt > 1 AND claimed_by <> %s",
                                  (holder,)).fetchone()[0]
    assert taken_over >= 1
    assert len(pg_products(pg_url, "globex")) == sum(body.count(b"\n") - 1 for body in globex.values())
    # every job's manifest was written back where the partner looks
    answered = {o["Key"].rsplit("/", 1)[-1].split(".")[0] for page in client.get_paginator("list_objects_v2")
                .paginate(Bucket=BUCKET, Prefix="acme/results/") for o in page.get("Contents", ())}
    assert set(job_of.values()) <= answered
    assert len(list((server.root / "globex" / "outbound" / "results").glob("*.result.json"))) == SFTP_FILES
    # every daemon's audit chain holds, the killed one's included
    for root in roots:
        assert run_cli("audit", "verify", "--config", root / "daemon.toml", cwd=root).returncode == 0
    # the work was shared: each surviving daemon applied some of it
    per_daemon = [len(list((root / "var" / "results").glob("*/*.result.json"))) for root in roots]
    assert all(n > 0 for n in per_daemon[1:]), per_daemon
    print(f"manifests per daemon: {per_daemon}")


def _running(conn, holder: str, name_like: str) -> bool:
    """``holder`` (a daemon: host:pid) has a running job of a file named like ``name_like``."""
    return conn.execute("SELECT count(*) FROM jobs WHERE status = 'running' AND claimed_by = %s"
                        " AND source_name LIKE %s", (holder, name_like)).fetchone()[0] > 0


def _remaining(client, server) -> list[str]:
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="acme/")
            for o in page.get("Contents", ()) if o["Key"].count("/") == 1]
    local = [p.name for p in (server.root / "globex" / "outbound").glob("*.csv")]
    return keys + local

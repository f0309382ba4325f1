"""File throughput of one daemon against three sharing one PostgreSQL store and one S3 prefix.

Starts moto's S3 server on loopback, uploads ``--files`` small catalog CSVs (10–60 rows each)
under one prefix, then starts N ``inbox-daemon run`` processes (each with its own state
directory, all on one fresh PostgreSQL schema) and measures the wall time from their start
until every file has a succeeded job in the shared ledger. Prints files/s for each N and how
the files were shared. On a machine with few cores, daemons compete for the same CPUs: the
figure says what sharing costs or gains here, not on a cluster.

    python bench/multi_daemon.py [--files 1000] [--daemons 1 3] [--url postgresql://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import psycopg
from floor_postgres import scratch_schema  # bench/ is the script's folder, first on sys.path
from moto.server import ThreadedMotoServer

AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_EC2_METADATA_DISABLED": "true"}


def _config(url: str, endpoint: str) -> str:
    return f"""[daemon]
state_dir = "var"
workers = 2
health = ""
[store]
url = {json.dumps(url)}
lease = "10s"
[[partners]]
id = "acme"
[[inboxes]]
partner = "acme"
kind = "s3"
bucket = "drops"
prefix = "acme/"
endpoint_url = "{endpoint}"
poll_interval = "250ms"
settle = "0s"
"""


@contextmanager
def _stopped(procs: list[subprocess.Popen]) -> Iterator[None]:
    """The daemons started inside are stopped on the way out (before their schema is dropped)."""
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def run(n_daemons: int, files: int, base_url: str, endpoint: str, root: Path) -> dict:
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="drops")
    rnd = random.Random(3)
    for i in range(files):
        rows = "".join(f"F{i}-{j},Item {j},{j}.99\n" for j in range(rnd.randrange(10, 60)))
        s3.put_object(Bucket="drops", Key=f"acme/feed-{i:05d}.csv", Body=f"sku,name,price\n{rows}".encode())
    exe = str(Path(sys.executable).with_name("inbox-daemon"))
    procs = []
    t0 = time.perf_counter()
    with scratch_schema(base_url) as url, _stopped(procs):
        for d in range(n_daemons):
            home = root / f"n{n_daemons}-d{d}"
            home.mkdir(parents=True)
            (home / "daemon.toml").write_text(_config(url, endpoint))
            procs.append(subprocess.Popen([exe, "run", "--config", "daemon.toml"], cwd=home,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          env={**os.environ, **AWS_ENV}))
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                done = conn.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'"
                                    " AND duplicate_of IS NULL").fetchone()[0] if conn.execute(
                    "SELECT to_regclass('jobs')").fetchone()[0] else 0
                if done >= files:
                    break
                time.sleep(0.1)
            elapsed = time.perf_counter() - t0
            shares = conn.execute("SELECT count(*) FROM jobs GROUP BY claimed_by ORDER BY 1 DESC").fetchall()
    s3.close()
    return {"daemons": n_daemons, "files": files, "seconds": round(elapsed, 2),
            "files_per_s": round(files / elapsed, 1), "jobs_per_daemon": [r[0] for r in shares]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--daemons", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--url", default=os.environ.get("INBOX_DAEMON_TEST_PG", "postgresql://127.0.0.1:5432/test"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.update(AWS_ENV)
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)      # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    root = Path(tempfile.mkdtemp(prefix="inbox-bench-multi-"))
    results = []
    try:
        for n in args.daemons:
            result = run(n, args.files, args.url, f"http://{host}:{port}", root)
            results.append(result)
            print(f"{n} daemon(s): {args.files} files in {result['seconds']} s = {result['files_per_s']} files/s; "
                  f"jobs per daemon {result['jobs_per_daemon']}")
    finally:
        server.stop()
        shutil.rmtree(root)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

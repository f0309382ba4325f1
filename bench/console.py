"""The admin console's pages on a big installation: 100,000 jobs and 1,000,000 products.

For each store (SQLite; PostgreSQL when reachable) it builds the installation once (the catalog
through ``inbox-daemon ingest``, the jobs of 30 days of a busy partner set written straight into
the ledger, with a manifest, an attempt and an audit record each, and a job with 20,000
diagnostics lines), starts ``inbox-daemon run`` with the console, and asks every page ``--requests``
times over one keep-alive connection, after two warm-up requests. Prints p50, p95 and max per page.

    .venv/bin/python bench/console.py [--jobs 100000] [--products 1000000] [--only sqlite postgres]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from catalog import cached  # noqa: E402

from inbox_daemon.audit import GENESIS, record_hash  # noqa: E402
from inbox_daemon.jsontext import json_text  # noqa: E402
from storage.base import ledger_time  # noqa: E402

EXE = str(Path(sys.executable).with_name("inbox-daemon"))
PARTNERS = ("acme", "globex", "initech", "umbrella", "hooli")
STATUSES = (["succeeded"] * 80 + ["partial"] * 10 + ["duplicate"] * 5 + ["rejected"] * 3 + ["quarantined"]
            + ["quarantined"])
DIAGNOSTIC_LINES = 20_000


def config(store_url: str | None) -> str:
    store = f"[store]\nurl = {json.dumps(store_url)}\n" if store_url else ""
    partners = "".join(f'[[partners]]\nid = "{p}"\n' for p in PARTNERS)
    inboxes = "".join(f'[[inboxes]]\npartner = "{p}"\nkind = "local"\npath = "inbox/{p}"\n' for p in PARTNERS)
    return (f'[daemon]\nstate_dir = "var"\nhealth = ""\n{store}[console]\naddress = "127.0.0.1:0"\n'
            f"{partners}{inboxes}")


def build(work: Path, store_url: str | None, args) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "daemon.toml").write_text(config(store_url))
    for p in PARTNERS:
        (work / "inbox" / p).mkdir(parents=True, exist_ok=True)
    feed = cached(Path(args.cache), args.products)
    t0 = time.perf_counter()
    done = subprocess.run([EXE, "ingest", str(feed), "--partner", "acme", "--mode", "snapshot", "--config",
                           "daemon.toml"], cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"ingest failed: {done.stderr[-2000:]}")
    print(f"  catalog: {args.products:,} rows ingested in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    jobs, attempts = _jobs(args.jobs)
    _write_ledger(work, store_url, jobs, attempts)
    _write_audit(work / "var" / "audit", jobs)
    _write_diagnostics(work / "var" / "results" / jobs[-1]["partner_id"], jobs[-1]["id"])
    print(f"  ledger: {len(jobs):,} jobs, audit records and a {DIAGNOSTIC_LINES:,}-line diagnostics file in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)


def _jobs(count: int) -> tuple[list[dict], list[tuple]]:
    """``count`` jobs over the last 30 days, newest last; the last one partial with diagnostics."""
    rnd = random.Random(5)
    start = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / count
    jobs, attempts = [], []
    for n in range(count):
        at = start + step * n
        created, finished = ledger_time(at), ledger_time(at + timedelta(seconds=2))
        partner = rnd.choice(PARTNERS)
        status = "partial" if n == count - 1 else rnd.choice(STATUSES)
        job_id = f"{at:%Y%m%dT%H%M%S}Z-{n:08x}"
        read = rnd.randrange(10, 5000)
        rejected = rnd.randrange(1, 50) if status in ("partial", "rejected") else 0
        name = f"catalog-{n:06d}.csv"
        manifest = {"job_id": job_id, "partner": partner, "inbox": f"local:inbox/{partner}",
                    "source": {"uri": f"file:///srv/inbox/{partner}/{name}", "name": name, "size": read * 120},
                    "sha256": hashlib.sha256(str(n).encode()).hexdigest(), "format": "csv", "mode": "delta",
                    "status": status, "attempt": 1,
                    "rows": {"read": read, "valid": read - rejected, "rejected": rejected, "warnings": 0,
                             "inserted": 0, "updated": read - rejected, "unchanged": 0, "deactivated": 0},
                    "errors": {"invalid_price": rejected} if rejected else {},
                    "started_at": created, "finished_at": finished, "duration_ms": 2000, "version": "0.1.0",
                    "message": f"{read - rejected} rows applied"}
        jobs.append({"id": job_id, "partner_id": partner, "inbox": f"local:inbox/{partner}",
                     "sha256": manifest["sha256"], "source_uri": manifest["source"]["uri"], "source_name": name,
                     "size": read * 120, "source_version": str(n), "format": "csv", "mode": "delta",
                     "status": status, "attempt": 1, "result": json.dumps(manifest), "created_at": created,
                     "started_at": created, "finished_at": finished, "reported_at": finished,
                     "delivered_at": created, "rows_read": read, "rows_rejected": rejected})
        attempts.append((job_id, 1, created, finished, status, None))
    return jobs, attempts


def _write_ledger(work: Path, store_url: str | None, jobs: list[dict], attempts: list[tuple]) -> None:
    columns = list(jobs[0])
    rows = [tuple(j[c] for c in columns) for j in jobs]
    if store_url is None:
        import sqlite3
        con = sqlite3.connect(work / "var" / "catalog.db")
        with con:
            con.executemany(f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)
            con.executemany("INSERT INTO job_attempts VALUES (?, ?, ?, ?, ?, ?)", attempts)
            con.execute("DELETE FROM audit_heads")      # the trail is written anew (_write_audit)
        con.execute("ANALYZE")
        con.close()
        return
    import psycopg
    with psycopg.connect(store_url) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY jobs ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            with cur.copy("COPY job_attempts (job_id, attempt, started_at, finished_at, status, error)"
                          " FROM STDIN") as copy:
                for row in attempts:
                    copy.write_row(row)
        conn.execute("DELETE FROM audit_heads")         # the trail is written anew (_write_audit)
        conn.commit()
    with psycopg.connect(store_url, autocommit=True) as conn:
        # what autovacuum does after a bulk insert: the visibility map lets index-only scans skip the heap
        conn.execute("VACUUM ANALYZE")


def _write_audit(folder: Path, jobs: list[dict]) -> None:
    """One ``job.reported`` record per job, chained, in day files as the daemon writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    prev, seq = GENESIS, 0
    for path in folder.glob("audit-*.jsonl"):       # the catalog's ingest: the trail starts anew
        path.unlink()
    by_day: dict[str, list[str]] = {}
    for job in jobs:
        seq += 1
        record = {"seq": seq, "ts": job["finished_at"], "event": "job.reported", "partner": job["partner_id"],
                  "job_id": job["id"], "sha256": job["sha256"],
                  "source": {"uri": job["source_uri"], "name": job["source_name"], "size": job["size"]},
                  "actor": "daemon", "details": {"status": job["status"]}, "prev": prev}
        record["hash"] = prev = record_hash(record)
        by_day.setdefault(job["finished_at"][:10], []).append(json_text(record, separators=(",", ":")))
    for day, lines in by_day.items():
        (folder / f"audit-{day}.jsonl").write_text("\n".join(lines) + "\n")


def _write_diagnostics(folder: Path, job_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    codes = ("invalid_price", "missing_name", "invalid_gtin", "negative_stock")
    lines = ["row,sku,severity,column,code,message,value"]
    for n in range(DIAGNOSTIC_LINES):
        code = codes[n % len(codes)]
        lines.append(f"{n + 2},SKU-{n:07d},error,{code.split('_')[1]},{code},a reason for {code},value {n}")
    (folder / f"{job_id}.diagnostics.csv").write_text("\n".join(lines) + "\n")


def pages(store_url: str | None, work: Path) -> dict[str, str]:
    """The pages measured: every kind, with the filters and pages an admin uses most."""
    jobs = _ledger_jobs(work, store_url)
    catalog, middle = jobs[0], jobs[len(jobs) // 2]          # the newest: the catalog's own ingest
    diagnosed = next((work / "var" / "results").glob("*/*.diagnostics.csv")).name.split(".")[0]
    return {
        "overview": "/",
        "jobs": "/jobs",
        "jobs, page 1,000": "/jobs?" + urlencode({"after": f"{middle[1]},{middle[0]}"}),
        "jobs by partner": "/jobs?partner=globex",
        "jobs by status (rare)": "/jobs?status=quarantined",
        "jobs by inbox and day": "/jobs?" + urlencode({"inbox": "local:inbox/acme", "since": middle[1][:10]}),
        "job (20k diagnostics)": f"/jobs/{diagnosed}",
        "job, diagnostics by code": f"/jobs/{diagnosed}?code=invalid_gtin&offset=300",
        "job (the catalog's insert)": f"/jobs/{catalog[0]}",
        "job (a typical one)": f"/jobs/{middle[0]}",
        "partners": "/partners",
        "partner (chart, contract)": "/partners/acme",
        "catalog: SKU prefix": "/catalog?partner=acme&q=sku-00123",
        "catalog: name word": "/catalog?partner=acme&q=oak",
        "catalog: no match": "/catalog?partner=acme&q=zzzz-none",
        "catalog: no match, on": "/catalog?partner=acme&q=zzzz-none&after=sku-0500000",
        "product + history": "/catalog/product?partner=acme&sku=" + quote("SKU-0004242"),
        "audit": "/audit",
    }


def _ledger_jobs(work: Path, store_url: str | None) -> list[tuple]:
    sql = "SELECT id, created_at FROM jobs ORDER BY created_at DESC, id DESC"
    if store_url is None:
        import sqlite3
        con = sqlite3.connect(work / "var" / "catalog.db")
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    import psycopg
    with psycopg.connect(store_url) as conn:
        return conn.execute(sql).fetchall()


def measure(base: str, paths: dict[str, str], requests: int) -> dict[str, list[float]]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    timings: dict[str, list[float]] = {}
    for label, path in paths.items():
        times = []
        for n in range(requests + 2):
            t0 = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - t0
            if response.status != 200:
                sys.exit(f"{label}: {path} answered {response.status}: {body[:500]!r}")
            if n >= 2:
                times.append(elapsed)
        timings[label] = times
    conn.close()
    return timings


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def run_store(name: str, store_url: str | None, args) -> dict:
    work = Path(args.cache) / f"console-{name}-{args.jobs}-{args.products}"
    if store_url is not None:
        import psycopg
        schema = f"console_bench_{args.jobs}_{args.products}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
        store_url = f"{args.pg}?options={quote(f'-csearch_path={schema}')}"
    if work.exists():
        subprocess.run(["rm", "-rf", str(work)], check=True)
    print(f"{name}: building {args.jobs:,} jobs and {args.products:,} products in {work}", flush=True)
    build(work, store_url, args)
    log = open(work / "daemon.log", "w")
    daemon = subprocess.Popen([EXE, "run", "--config", "daemon.toml"], cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = _wait_console(work / "daemon.log", daemon)
        _wait_verified(base)
        timings = measure(base, pages(store_url, work), args.requests)
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()
    print(f"\n{name}: {args.jobs:,} jobs, {args.products:,} products, {args.requests} requests per page")
    print(f"  {'page':<28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for label, times in timings.items():
        print(f"  {label:<28} {statistics.median(times) * 1000:8.1f} {p95(times) * 1000:8.1f} "
              f"{max(times) * 1000:8.1f}")
    worst = max(timings, key=lambda k: p95(timings[k]))
    print(f"  slowest p95: {worst} {p95(timings[worst]) * 1000:.1f} ms", flush=True)
    return {label: {"p50_ms": round(statistics.median(t) * 1000, 1), "p95_ms": round(p95(t) * 1000, 1),
                    "max_ms": round(max(t) * 1000, 1)} for label, t in timings.items()}


def _wait_verified(base: str) -> None:
    """The console verifies the whole audit chain when it starts, on a thread of its own: a few
    seconds of CPU for 100,000 records. Pages are measured once that is done."""
    parts = urlsplit(base)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        conn.request("GET", "/audit")
        page = conn.getresponse().read().decode()
        conn.close()
        if "Verifying since" not in page:
            return
        time.sleep(0.5)
    sys.exit("the audit verification did not end")


def _wait_console(log: Path, daemon: subprocess.Popen) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            sys.exit(f"the daemon exited:\n{log.read_text()[-3000:]}")
        for line in log.read_text().splitlines():
            if '"console.serving"' in line:
                return json.loads(line)["url"].rstrip("/")
        time.sleep(0.1)
    sys.exit("the console did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--products", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--only", nargs="*", choices=("sqlite", "postgres"), default=("sqlite", "postgres"))
    ap.add_argument("--pg", default=os.environ.get("INBOX_DAEMON_TEST_PG", "postgresql://127.0.0.1:5432/test"))
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "inbox-daemon-bench"))
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args()
    results = {}
    for name in args.only:
        results[name] = run_store(name, None if name == "sqlite" else args.pg, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

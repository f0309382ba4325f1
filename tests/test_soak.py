"""Bad input soak: a running ``inbox-daemon run`` fed everything at once, and hostile files.

1. Every file of the third-party corpus (``../shared/corpus``; skipped with the reason when it
   is absent) is dropped, under a unique name, into ONE running daemon's local inbox (temp name,
   then rename). Files whose names match none of the inbox's ``patterns`` must be ignored; every
   other one must end with a manifest (succeeded, partial, rejected, or duplicate when the same
   content came before under another name) within a bounded time; the daemon never dies and never
   logs ``worker.unexpected_error``; no job is left failed or running.
2. Generated hostile input, dropped into a running daemon: a 100 MB single line, a million
   columns, deeply nested JSON (array and NDJSON), NUL bytes, invalid UTF-8 in a cell and in the
   header, a gzip bomb, a zero-byte file. Each ends with the outcome the README promises, and a
   good file dropped after them is applied.
3. An S3 object that vanishes between the listing and the download: a clear outcome (nothing
   applied, nothing reported as if it had been read, the daemon stops asking for it) and the
   next object is applied.

Each test prints a tally: files with a clean outcome / files tried.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
import urllib.parse
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import boto3
import pytest

from config.model import DEFAULT_PATTERNS
from tests.conftest import ledger, products
from tests.daemon_harness import DaemonProcess, config, manifests, wait_for
from tests.test_s3 import (  # noqa: F401 — fixtures, used by name
    BUCKET,
    CSV,
    FaultProxy,
    _operation,
    _ProxyHandler,
    _s3_config,
    aws_env,
    moto,
    moto_server,
    s3,
)

CLEAN = {"succeeded", "partial", "rejected", "duplicate"}
_TALLY: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def tally(request):
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for name, line in _TALLY.items():
            print(f"\n{name}: {line}")


def _drop(inbox: Path, name: str, data: bytes) -> None:
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    tmp.rename(inbox / name)


def _events(d: DaemonProcess, name: str) -> list[dict]:
    return [e for e in d.events() if e.get("event") == name]


def _eventually(condition, timeout: float) -> bool:
    try:
        return bool(wait_for(condition, timeout))
    except AssertionError:
        return False


def _eligible(name: str) -> bool:
    """The inbox's ``patterns`` (the default ones), matched as the README says: case-insensitive."""
    return any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in DEFAULT_PATTERNS)


# == 1. the corpus, all at once ===================================================================

CORPUS_BOUND = 240.0        # seconds for the whole corpus (~1,300 eligible files) to be answered


@pytest.mark.timeout(CORPUS_BOUND + 60)
def test_every_corpus_file_dropped_into_one_daemon_ends_with_a_manifest(tmp_path, corpus):
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    named = {f"{i:04d}-{p.name}": p for i, p in enumerate(files)}
    eligible = {n for n in named if _eligible(n)}
    digests = {n: hashlib.sha256(named[n].read_bytes()).hexdigest() for n in eligible}
    d = DaemonProcess(tmp_path, config())
    inbox = tmp_path / "inbox" / "default"
    try:
        started = time.monotonic()
        for name, path in named.items():
            _drop(inbox, name, path.read_bytes())

        def answered():
            if d.proc.poll() is not None:
                raise AssertionError(f"the daemon died ({d.proc.returncode}):\n{d.log_path.read_text()[-3000:]}")
            names = {m["source"]["name"] for m in manifests(tmp_path)}
            return names >= eligible
        try:
            wait_for(answered, CORPUS_BOUND, interval=1.0, what="a manifest for every eligible corpus file")
        except AssertionError:
            pass                                   # reported below, file by file
        elapsed = time.monotonic() - started
        found = manifests(tmp_path)
        by_name: dict[str, list[dict]] = defaultdict(list)
        for m in found:
            by_name[m["source"]["name"]].append(m)

        outcome = {n: (by_name[n][0]["status"] if len(by_name[n]) == 1 else
                       f"{len(by_name[n])} manifests" if by_name[n] else "no manifest (hang?)") for n in eligible}
        clean = sorted(n for n, o in outcome.items() if o in CLEAN)
        statuses = Counter(outcome.values())
        _TALLY["corpus soak"] = (f"files with a clean outcome: {len(clean)} / {len(eligible)} eligible "
                                 f"({len(named) - len(eligible)} other files ignored), {dict(statuses)}, "
                                 f"{elapsed:.0f} s")
        problems = [f"{n} ({named[n].relative_to(corpus)}): {o}" for n, o in sorted(outcome.items()) if o not in CLEAN]

        # identical content under another name is a duplicate of the first one taken in
        by_digest: dict[str, list[str]] = defaultdict(list)
        for n in eligible:
            by_digest[digests[n]].append(n)
        for digest, names in by_digest.items():
            got = sorted(outcome[n] == "duplicate" for n in names)
            if len(names) > 1 and all(outcome[n] in CLEAN for n in names) and got != [False] + [True] * (len(names) - 1):
                problems.append(f"same content {digest[:12]} as {names}: {[outcome[n] for n in names]}, "
                                f"expected one original and {len(names) - 1} duplicate(s)")
        stray = sorted({m["source"]["name"] for m in found} - eligible)
        if stray:
            problems.append(f"manifests for files outside the patterns: {stray[:10]}")
        left = [n for n in named if n not in eligible and not (inbox / n).exists()]
        if left:
            problems.append(f"ignored files moved or deleted: {left[:10]}")
        unfinished = [row for row in ledger(tmp_path, "source_name, status") if row[1] not in CLEAN]
        if unfinished:
            problems.append(f"jobs not finished cleanly: {unfinished[:20]}")
        crashes = _events(d, "worker.unexpected_error")
        if crashes:
            problems.append(f"worker.unexpected_error: {[(e.get('file'), e.get('exception', '')[-200:]) for e in crashes[:5]]}")
        if d.proc.poll() is not None:
            problems.append(f"the daemon exited with {d.proc.returncode}")
        slow = sorted((m["duration_ms"], m["source"]["name"]) for m in found)[-3:]
        assert not problems, (f"{len(problems)} problem(s) (slowest jobs {slow}):\n - "
                              + "\n - ".join(problems[:60]))
        assert d.stop() == 0
    finally:
        d.close()


def test_same_content_dropped_twice_at_once_is_applied_once_and_the_copy_answered_promptly(tmp_path):
    """What the corpus's identical files become when they arrive together: the same 300,000 rows
    under two names in the same instant. One is applied, the other answered ``duplicate`` — within
    seconds of the first, not whenever a safety-net rescan (every 60 s) happens to see it again."""
    body = "\n".join(f"D{i},name {i}" for i in range(300_000))
    data = ("sku,name\n" + body + "\n").encode()
    d = DaemonProcess(tmp_path, config())
    inbox = tmp_path / "inbox" / "default"
    try:
        for name in ("first.csv", "second.csv"):
            (tmp_path / name).write_bytes(data)
        for name in ("first.csv", "second.csv"):
            (tmp_path / name).rename(inbox / name)
        applied = wait_for(lambda: [m for m in manifests(tmp_path) if m["status"] == "succeeded"], 60,
                           what="one of them applied")
        done = time.monotonic()
        copy = _eventually(lambda: len(manifests(tmp_path)) >= 2, 10)
        late = time.monotonic() - done
        statuses = sorted(m["status"] for m in manifests(tmp_path))
        _TALLY["same content twice at once"] = (f"files with a clean outcome: {statuses.count('succeeded') + copy} / 2 "
                                                f"tried (copy answered {late:.1f} s after the original)")
        assert copy, (f"the second copy had no outcome 10 s after the first was applied "
                      f"(busy claims: {len(_events(d, 'job.busy'))}); manifests: {statuses}")
        assert statuses == ["duplicate", "succeeded"]
        [dup] = [m for m in manifests(tmp_path) if m["status"] == "duplicate"]
        assert dup["duplicate_of"] == applied[0]["job_id"] and len(products(tmp_path)) == 300_000
        assert not _events(d, "worker.unexpected_error")
        assert d.stop() == 0
    finally:
        d.close()


def test_same_content_arriving_while_the_original_is_not_yet_reported_gets_its_own_duplicate_answer(tmp_path):
    """The window of the test above, held open: the original's rows are committed but its
    manifest cannot be written yet (``var/results/default`` is a regular file for a while), and
    the same content arrives under another name. Once manifests can be written, each file has its
    own answer: the original ``succeeded``, the copy ``duplicate`` of it."""
    d = DaemonProcess(tmp_path, config(daemon='max_attempts = 1000\nretry_max = "500ms"\n'))
    inbox = tmp_path / "inbox" / "default"
    results = tmp_path / "var" / "results" / "default"
    data = b"sku,name\nW1,window\n"
    try:
        results.parent.mkdir(parents=True, exist_ok=True)
        if results.is_dir():
            results.rmdir()
        results.write_text("not a folder\n")
        _drop(inbox, "original.csv", data)
        d.wait_event("job.applied", file="original.csv")             # committed, not reported
        _drop(inbox, "copy.csv", data)
        wait_for(lambda: [e for e in d.events() if e.get("file") == "copy.csv"
                          and e.get("event") in ("job.duplicate", "job.report_resumed", "job.busy")],
                 what="the copy claimed while the original is unreported")
        results.unlink()
        answered = _eventually(lambda: len(manifests(tmp_path)) >= 2, 10)
        found = {m["source"]["name"]: m for m in manifests(tmp_path)}
        _TALLY["same content while unreported"] = (f"files with a clean outcome: "
                                                   f"{sum(1 for m in found.values() if m['status'] in CLEAN)} / 2 tried "
                                                   f"(answers: {sorted((n, m['status']) for n, m in found.items())})")
        assert answered and set(found) == {"original.csv", "copy.csv"}, (
            f"answers {sorted((n, m['status'], m['job_id']) for n, m in found.items())}; the copy's events: "
            f"{[e['event'] for e in d.events() if e.get('file') == 'copy.csv']}; "
            f"ledger {ledger(tmp_path, 'source_name, status')}; processed/ {sorted(p.name for p in (inbox / 'processed').iterdir())}")
        assert found["original.csv"]["status"] == "succeeded"
        assert found["copy.csv"]["status"] == "duplicate"
        assert found["copy.csv"]["duplicate_of"] == found["original.csv"]["job_id"]
        assert not _events(d, "worker.unexpected_error")
        assert d.stop() == 0
    finally:
        d.close()
        if results.is_file():
            results.unlink()


# == 2. generated hostile files ===================================================================

def _gzip_bomb(inflated: int) -> bytes:
    """A single-member gzip stream inflating to ``inflated`` bytes of short, valid CSV lines
    (~1,000:1): only the compression limit can stop it, not a line or row limit."""
    pack = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"0,0\n" * (1 << 18)
    parts = [pack.compress(b"sku,name\n")]
    parts += [pack.compress(block) for _ in range(inflated >> 20)]
    parts.append(pack.flush())
    return b"".join(parts)


def _good_rows(prefix: str, count: int) -> bytes:
    return "".join(f"{prefix}{i},name {i}\n" for i in range(count)).encode()


# name -> (content, the outcome it must end with: status and an error code it must report)
def _hostile() -> dict[str, tuple[bytes, str, str | None]]:
    return {
        "one-100mb-line.csv": (b"sku,name\nL1," + b"x" * (100 << 20) + b"\n", "rejected", "limit_exceeded"),
        "a-million-columns.csv": (b",".join(b"c%d" % i for i in range(1_000_000)) + b"\n"
                                  + b"," * 999_999 + b"\n", "rejected", "limit_exceeded"),
        "a-million-fields.ndjson": (b'{"sku":"M1","name":"m",' + b",".join(b'"f%d":0' % i for i in range(1_000_000))
                                    + b"}\n", "rejected", "limit_exceeded"),
        "deeply-nested.json": (b"[" * 500_000 + b"]" * 500_000, "rejected", "unreadable"),
        "deeply-nested.ndjson": (b'{"sku":"N1","name":"n","x":' + b'{"a":' * 200_000 + b"1" + b"}" * 200_000
                                 + b"}\n", "rejected", None),
        "nul-bytes.csv": (b"sku,name\n" + _good_rows("Z", 100) + b"ZNUL,bad\x00name\n", "partial", "invalid_encoding"),
        "invalid-utf8-cell.csv": (b"sku,name\n" + _good_rows("U", 100) + b"UBAD,caf\xc3\x28\xff\n",
                                  "partial", "invalid_encoding"),
        "invalid-utf8-header.csv": (b"sku,n\xffame\n" + _good_rows("H", 10), "rejected", None),
        "gzip-bomb.csv.gz": (_gzip_bomb(512 << 20), "rejected", "limit_exceeded"),
        # renamed in: the uploader said it is complete, so it is read at once (README, "Ready"),
        # and an empty file has no header: rejected, answered, moved to failed/
        "zero-bytes.csv": (b"", "rejected", None),
    }


@pytest.mark.timeout(240)
def test_hostile_files_each_end_with_a_clear_outcome_and_the_daemon_goes_on(tmp_path):
    hostile = _hostile()
    d = DaemonProcess(tmp_path, config())
    inbox = tmp_path / "inbox" / "default"
    try:
        for name, (data, _, _) in hostile.items():
            _drop(inbox, name, data)
        _drop(inbox, "after-them.csv", b"sku,name\nOK1,fine\nOK2,fine too\n")
        expected = set(hostile) | {"after-them.csv"}

        def answered():
            if d.proc.poll() is not None:
                raise AssertionError(f"the daemon died ({d.proc.returncode}):\n{d.log_path.read_text()[-3000:]}")
            return {m["source"]["name"] for m in manifests(tmp_path)} >= expected
        try:
            wait_for(answered, 150, interval=0.5, what="a manifest for every hostile file")
        except AssertionError:
            pass                                   # reported below, file by file
        by_name = defaultdict(list)
        for m in manifests(tmp_path):
            by_name[m["source"]["name"]].append(m)

        problems, clean = [], 0
        for name, (_, status, code) in {**hostile, "after-them.csv": (b"", "succeeded", None)}.items():
            found = by_name.get(name, [])
            if len(found) != 1:
                problems.append(f"{name}: {len(found)} manifests {[m['status'] for m in found]}")
                continue
            m = found[0]
            ok = m["status"] == status and (code is None or code in m["errors"])
            if status == "rejected":
                ok = ok and bool(m.get("message")) and m["rows"]["inserted"] == 0
                ok = ok and _eventually(lambda n=name: (inbox / "failed" / n).exists(), 10)
            if status == "partial":
                ok = ok and m["rows"]["rejected"] == 1 and m["rows"]["inserted"] == 100
            if ok:
                clean += 1
            else:
                problems.append(f"{name}: {m['status']} {m['errors']} {m.get('message', '')[:200]!r}, "
                                f"expected {status} {code or ''}")
        _TALLY["hostile files"] = f"files with a clean outcome: {clean} / {len(hostile) + 1} tried"
        rows = set(products(tmp_path))
        if not {"ok1", "ok2"} <= rows:
            problems.append("the file after the hostile ones was not applied")
        # the good rows of the two partial files and the file after them; nothing of a rejected file
        expected = {"ok1", "ok2"} | {f"{p}{i}" for p in "zu" for i in range(100)}
        if rows - expected:
            problems.append(f"rows of a rejected file reached the catalog: {sorted(rows - expected)[:10]}")
        if missing := expected - rows - {"ok1", "ok2"}:
            problems.append(f"good rows of a partial file missing from the catalog: {sorted(missing)[:10]}")
        crashes = _events(d, "worker.unexpected_error")
        if crashes:
            problems.append(f"worker.unexpected_error: {[(e.get('file'), e.get('exception', '')[-300:]) for e in crashes]}")
        if d.proc.poll() is not None:
            problems.append(f"the daemon exited with {d.proc.returncode}")
        assert not problems, "\n - " + "\n - ".join(problems)
        assert d.stop() == 0
    finally:
        d.close()


# == 3. S3: an object that vanishes between listing and download =================================

class _VanishingHandler(_ProxyHandler):
    """Before forwarding a GetObject of a key in ``proxy.vanish``, delete that object upstream:
    the daemon listed it, and it is gone by the time it asks for it."""

    def _forward(self) -> None:
        proxy: VanishingProxy = self.server.proxy
        if _operation(self.command, self.path) == "GetObject":
            key = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path.split("/", 2)[2])
            with proxy._lock:
                proxy.gets[key] += 1
                doomed = key in proxy.vanish
            if doomed:
                proxy.direct.delete_object(Bucket=BUCKET, Key=key)
        return super()._forward()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


class VanishingProxy(FaultProxy):
    def __init__(self, upstream: str, vanish: set[str]):
        self.vanish = set(vanish)
        self.gets: Counter = Counter()
        self.direct = boto3.client("s3", endpoint_url=upstream)
        super().__init__(upstream, {})
        self._server.RequestHandlerClass = _VanishingHandler

    def close(self) -> None:
        super().close()
        self.direct.close()


def test_s3_object_vanishing_between_listing_and_download_has_a_clear_outcome(tmp_path, s3, moto, aws_env):
    proxy = VanishingProxy(moto, {"acme/vanishing.csv"})
    d = DaemonProcess(tmp_path, _s3_config(proxy.url), env=aws_env)
    try:
        s3.put_object(Bucket=BUCKET, Key="acme/vanishing.csv", Body=b"sku,name\nV1,gone\n")
        gone = d.wait_event("file.transient_error", file="vanishing.csv")
        s3.put_object(Bucket=BUCKET, Key="acme/next.csv", Body=CSV)
        [manifest] = wait_for(lambda: [m for m in manifests(tmp_path, "acme") if m["source"]["name"] == "next.csv"],
                              30, what="the next object applied")
        # the daemon stops asking for it: no new GetObject of the vanished key across two
        # seconds of polling (10 polls), and never more than max_attempts (5) in all
        counts = []
        wait_for(lambda: counts.append(proxy.gets["acme/vanishing.csv"]) or
                 (len(counts) > 20 and counts[-1] == counts[-21]), 30, interval=0.1,
                 what="the daemon to stop asking for the vanished object")
        asked = proxy.gets["acme/vanishing.csv"]
        outcome = {m["source"]["name"]: m["status"] for m in manifests(tmp_path, "acme")}
        clean = sum([
            "is gone" in gone["error"] and "acme/vanishing.csv" in gone["error"] and asked <= 5
            and "vanishing.csv" not in outcome and "v1" not in products(tmp_path, "acme"),
            manifest["status"] == "succeeded",
        ])
        _TALLY["s3 vanishing object"] = (f"files with a clean outcome: {clean} / 2 tried "
                                         f"(GetObject of the vanished key: {asked})")
        assert "is gone" in gone["error"] and "acme/vanishing.csv" in gone["error"], gone
        assert asked <= 5, f"asked for the vanished object {asked} times"
        assert "vanishing.csv" not in outcome and "v1" not in products(tmp_path, "acme")
        assert [name for name, _ in ledger(tmp_path, "source_name, status")] == ["next.csv"]
        assert manifest["status"] == "succeeded" and set(products(tmp_path, "acme")) == {"a1", "a2"}
        assert not _events(d, "worker.unexpected_error")
        assert d.proc.poll() is None
        assert d.stop() == 0
    finally:
        d.close()
        proxy.close()

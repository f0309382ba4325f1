"""The partner's delivery order and re-sent earlier content, on both stores (the contract of
``CatalogStore``), then with the real daemon: an older delivery never overwrites what a newer one
set, whatever order the files are committed in; content equal to the partner's latest applied
file is a duplicate, equal to an older one is applied again (``reapplies``)."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from config.status import JobStatus
from storage.base import Outcome, Source
from tests.conftest import ledger, pg_products, products, run_cli
from tests.daemon_harness import config, manifests, wait_for, wait_manifests
from tests.test_store import catalog, make_store, rows, store, store_url  # noqa: F401 — fixtures

MON, TUE, WED = "2026-12-07T08:00:00.000000Z", "2026-12-08T08:00:00.000000Z", "2026-12-09T08:00:00.000000Z"


def claim(store, sha: str, delivered_at: str, *, name: str = "prices.csv", size: int = 10, mode: str = "delta"):
    source = Source(uri=f"file:///in/{name}", name=name, size=size, version=delivered_at, delivered_at=delivered_at)
    return store.claim(partner_id="p", sha256=sha, inbox="local:in", source=source, fmt="csv", mode=mode,
                       spool_path=None, answered_if_same_file=True)


def apply(store, job, *batches, mode="delta", ratio=1.0):
    with store.load(job) as load:
        for batch in batches:
            load.stage(batch)
        counts = load.merge(mode=mode, max_deactivate_ratio=ratio)
        load.commit(Outcome(status=JobStatus.SUCCEEDED, result={"job_id": job.id}))
    store.mark_reported(job.id)
    return counts


# -- the store ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [10, 10**9], ids=["small-file", "large-file"])
def test_an_older_delivery_committed_last_leaves_what_a_newer_one_set(store, catalog, size):
    newer = claim(store, "b" * 64, TUE, size=size).job
    apply(store, newer, rows(("A", "a", 200), ("B", "b", 200)))
    older = claim(store, "a" * 64, MON, size=size).job
    counts = apply(store, older, rows(("A", "a", 100), ("C", "c", 100)))
    got = catalog()
    assert (got["a"]["price_cents"], got["b"]["price_cents"], got["c"]["price_cents"]) == (200, 200, 100)
    assert (counts.stale, counts.inserted, counts.updated, counts.unchanged) == (1, 1, 0, 0)
    # a later delivery still changes what the older one set, and what the newer one set
    latest = claim(store, "c" * 64, WED, size=size).job
    counts = apply(store, latest, rows(("A", "a", 300), ("C", "c", 300)))
    got = catalog()
    assert (got["a"]["price_cents"], got["c"]["price_cents"], counts.updated, counts.stale) == (300, 300, 2, 0)


def test_an_older_snapshot_does_not_deactivate_what_a_newer_delivery_added(store, catalog):
    apply(store, claim(store, "a" * 64, MON).job, rows(("A", "a", 1), ("B", "b", 1)))
    apply(store, claim(store, "b" * 64, WED).job, rows(("NEW", "new", 1)))
    snapshot = claim(store, "c" * 64, TUE, mode="snapshot").job
    counts = apply(store, snapshot, rows(("A", "a", 2)), mode="snapshot")
    got = catalog()
    assert bool(got["new"]["active"]) is True            # a later delivery added it: left alone
    assert bool(got["b"]["active"]) is False             # absent from the snapshot, set earlier
    assert (counts.deactivated, got["a"]["price_cents"]) == (1, 2)


def test_equal_delivery_times_are_ordered_by_file_name(store, catalog):
    """Coarse clocks (SFTP mtimes in whole seconds): files of one second go by name."""
    apply(store, claim(store, "b" * 64, MON, name="prices-2.csv").job, rows(("A", "a", 2)))
    counts = apply(store, claim(store, "a" * 64, MON, name="prices-1.csv").job, rows(("A", "a", 1)))
    assert (catalog()["a"]["price_cents"], counts.stale) == (2, 1)


def test_earlier_content_sent_again_is_reapplied_and_the_latest_again_is_a_duplicate(store, catalog):
    monday = claim(store, "a" * 64, MON)
    apply(store, monday.job, rows(("A", "a", 1000)))
    apply(store, claim(store, "b" * 64, TUE).job, rows(("A", "a", 1200)))
    again = claim(store, "a" * 64, WED, name="prices-wed.csv")
    assert (again.kind, again.job.reapplies, again.job.delivered_at) == ("reapply", monday.job.id, WED)
    counts = apply(store, again.job, rows(("A", "a", 1000)))
    assert (catalog()["a"]["price_cents"], counts.updated) == (1000, 1)
    # now Monday's content is the latest applied: the same again is a duplicate of the reapply
    repeat = claim(store, "a" * 64, "2026-12-10T08:00:00.000000Z", name="prices-thu.csv")
    assert (repeat.kind, repeat.job.duplicate_of) == ("duplicate", again.job.id)


def test_a_reapply_of_content_being_applied_elsewhere_is_busy(make_store):
    one, two = make_store(holder="host-a:1"), make_store(holder="host-b:2")
    apply(one, claim(one, "a" * 64, MON).job, rows(("A", "a", 1)))
    apply(one, claim(one, "b" * 64, TUE).job, rows(("A", "a", 2)))
    first = claim(one, "a" * 64, WED, name="x.csv")
    second = claim(two, "a" * 64, WED, name="y.csv")
    assert (first.kind, second.kind, second.job.id) == ("reapply", "busy", first.job.id)


# -- the real daemon ------------------------------------------------------------------------------
INBOX = '[[inboxes]]\npartner = "default"\nkind = "local"\npath = "inbox/default"\nsettle = "300ms"\nmode = "{mode}"\n'


def _deliver(root: Path, name: str, text: str) -> None:
    """As partners are told to: written elsewhere, then renamed into the inbox (ready at once)."""
    staging = root / "outbox"
    staging.mkdir(exist_ok=True)
    (staging / name).write_text(text)
    os.replace(staging / name, root / "inbox" / "default" / name)


def _price(root: Path, sku: str = "p-1") -> int | None:
    return products(root).get(sku, {}).get("price_cents")


@pytest.mark.parametrize("mode", ["delta", "snapshot"])
def test_monday_prices_sent_again_on_wednesday_are_applied_again(tmp_path, daemons, mode):
    d = daemons(tmp_path, config(inboxes=INBOX.format(mode=mode)))
    monday = "sku,name,price\nP-1,Pen,10.00\nP-2,Pad,3.00\n"
    for day, (text, cents) in enumerate([(monday, 1000), ("sku,name,price\nP-1,Pen,12.00\nP-2,Pad,3.00\n", 1200),
                                         (monday, 1000)]):
        _deliver(tmp_path, "prices.csv", text)
        wait_manifests(tmp_path, day + 1)
        wait_for(lambda c=cents: _price(tmp_path) == c, what=f"day {day}: P-1 at {cents}")
    first, _, third = sorted(manifests(tmp_path), key=lambda m: m["finished_at"])
    assert third["status"] == "succeeded" and third["reapplies"] == first["job_id"]
    assert "applied again" in third["message"] and third["rows"]["updated"] == 1
    assert [s for _, s in ledger(tmp_path, "source_name, status")] == ["succeeded"] * 3
    # and Wednesday's file once more: now the latest applied content, a duplicate
    _deliver(tmp_path, "prices.csv", monday)
    fourth = wait_manifests(tmp_path, 1, status="duplicate")[0]
    assert fourth["duplicate_of"] == third["job_id"] and _price(tmp_path) == 1000
    assert d.stop() == 0


BIG_ROWS = 150_000


@pytest.mark.parametrize("trial", range(3))
def test_a_large_delta_dropped_before_a_small_one_never_overwrites_it(tmp_path, daemons, trial):
    """Two workers: the small later file B commits while the large earlier A is still read; A
    then leaves B's rows alone (rows.stale) and applies the rest."""
    d = daemons(tmp_path, config(inboxes=INBOX.format(mode="delta")))
    big = "sku,name,price\n" + "".join(f"S-{i},Item {i},1.00\n" for i in range(BIG_ROWS))
    _deliver(tmp_path, "a-full.csv", big)
    time.sleep(0.02)
    _deliver(tmp_path, "b-fix.csv", "sku,name,price\n" + "".join(f"S-{i},Item {i},2.00\n" for i in range(0, 100, 5)))
    done = wait_manifests(tmp_path, 2, timeout=60)
    by_name = {m["source"]["name"]: m for m in done}
    a, b = by_name["a-full.csv"], by_name["b-fix.csv"]
    catalog = products(tmp_path)
    fixed = {f"s-{i}" for i in range(0, 100, 5)}
    stale = [k for k in fixed if catalog[k]["price_cents"] != 200]
    print(f"\nordering trial {trial}: B committed {'before' if b['finished_at'] < a['finished_at'] else 'after'} A;"
          f" stale rows in the catalog {len(stale)}/{len(fixed)}")
    assert stale == []
    assert len(catalog) == BIG_ROWS and catalog["s-1"]["price_cents"] == 100
    assert a["source"]["delivered_at"] < b["source"]["delivered_at"]
    if b["finished_at"] < a["finished_at"]:
        assert a["rows"]["stale"] == len(fixed)
    assert d.stop() == 0


def test_an_earlier_file_whose_daemon_hung_before_its_commit_is_applied_after_a_later_one(tmp_path, daemons,
                                                                                          pg_url):
    """PostgreSQL, two daemons. A's daemon hangs right before A's commit (frozen inside the
    transaction, holding A and its rows' locks); B arrives and the second daemon applies it (the
    server ends the hung transaction once idle for ``lease``); A's claim runs out, the second
    daemon runs A from its spooled copy and commits it last: B's rows stand, A's others apply."""
    # the second daemon must take B while A's claim still holds: its start-up has to fit in the
    # lease, and on a loaded machine a start-up took longer than 2 s (it then ran A first, as
    # the earlier delivery, and the order this test is about never came up)
    cfg = (config(inboxes=INBOX.format(mode="delta")).replace("workers = 2", "workers = 1")
           + f'\n[store]\nurl = "{pg_url}"\nlease = "5s"\n')
    hung = daemons(tmp_path, cfg, env={"INBOX_DAEMON_FREEZE_AT": "before_commit"})
    _deliver(tmp_path, "a.csv", "sku,name,price\nK-1,Key,1.00\nK-2,Kit,1.00\n")
    wait_for(lambda: _state(hung.proc.pid) == "T", what="the first daemon frozen at before_commit")
    _deliver(tmp_path, "b.csv", "sku,name,price\nK-1,Key,2.00\n")
    second = daemons(tmp_path, cfg)
    done = {m["source"]["name"]: m for m in wait_manifests(tmp_path, 2, status="succeeded", timeout=60)}
    assert done["b.csv"]["finished_at"] < done["a.csv"]["finished_at"]       # the order this test is about
    got = pg_products(pg_url, "default")
    assert (got["k-1"]["price_cents"], got["k-2"]["price_cents"]) == (200, 100)
    assert done["a.csv"]["rows"]["stale"] == 1
    hung.proc.kill()
    assert second.stop() == 0


def _state(pid: int) -> str:
    """The process state letter in /proc/<pid>/stat ("T": stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_a_manifest_says_when_its_file_was_delivered(tmp_path, daemons):
    d = daemons(tmp_path, config(inboxes=INBOX.format(mode="delta")))
    _deliver(tmp_path, "one.csv", "sku,name\nX-1,x\n")
    [m] = wait_manifests(tmp_path, 1)
    archived = tmp_path / "inbox" / "default" / "processed" / "one.csv"
    wait_for(archived.exists, what="one.csv archived (after its manifest)")
    ctime = os.stat(archived).st_ctime
    delivered = m["source"]["delivered_at"]
    assert delivered.endswith("Z") and len(delivered) == len(MON)
    # the rename into the inbox set it; the archive's rename came later
    assert datetime.fromisoformat(delivered).timestamp() <= ctime
    assert d.stop() == 0


def test_an_earlier_file_requeued_after_a_later_one_keeps_its_place_in_the_order(tmp_path, daemons):
    """A is rejected (its SKU column is not mapped yet); B is applied; the operator maps the
    column, reloads and requeues A: A runs last, from its spooled copy, as the delivery it was."""
    partner = '[[partners]]\nid = "default"\n'
    d = daemons(tmp_path, config(inboxes=INBOX.format(mode="delta"), partners=partner))
    _deliver(tmp_path, "a.csv", "Artikel,name,price\nK-1,Key,1.00\nK-2,Kit,1.00\n")
    [a] = wait_manifests(tmp_path, 1, status="rejected")
    _deliver(tmp_path, "b.csv", "sku,name,price\nK-1,Key,2.00\n")
    wait_manifests(tmp_path, 1, status="succeeded")
    d.config_path.write_text(config(inboxes=INBOX.format(mode="delta"),
                                    partners=partner + '[partners.columns]\nsku = "Artikel"\n'))
    d.signal(signal.SIGHUP)
    d.wait_event("config.reloaded")
    run_cli("jobs", "requeue", a["job_id"], "--config", str(d.config_path), cwd=tmp_path).check_returncode()
    again = wait_for(lambda: [m for m in manifests(tmp_path) if m["job_id"] == a["job_id"]
                              and m["status"] == "succeeded"], what="A applied after its requeue")[0]
    got = products(tmp_path)
    assert (got["k-1"]["price_cents"], got["k-2"]["price_cents"]) == (200, 100)
    assert again["rows"]["stale"] == 1 and again["source"]["delivered_at"] == a["source"]["delivered_at"]
    assert d.stop() == 0

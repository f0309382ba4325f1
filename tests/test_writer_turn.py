"""The SQLite store's writer turn (``storage.sqlite.WriterTurn``): an ``flock`` beside the catalog
that every connection takes before ``BEGIN IMMEDIATE`` and gives back when the transaction ends,
so that a waiting writer goes next as soon as the lock is free instead of sleeping on in SQLite's
busy handler. These tests hold the turn from another process, as a second daemon or worker
process would, and look at what the store under test does meanwhile."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time

import pytest

from config.errors import LeaseLost
from config.model import StoreConfig
from storage import open_store
from storage import sqlite as sqlite_store
from storage.base import Outcome, Source

SOURCE = Source(uri="file:///in/feed.csv", name="feed.csv", size=10, version="1")

# takes the turn of the catalog named by argv[1], says so, and keeps it until stdin closes
_HOLD = ("import fcntl, os, sys; fd = os.open(sys.argv[1] + '.writer', os.O_RDWR | os.O_CREAT);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()")
# exit 0 when the turn of the catalog named by argv[1] is free right now, 1 when someone holds it
_FREE = ("import fcntl, os, sys; fd = os.open(sys.argv[1] + '.writer', os.O_RDWR | os.O_CREAT)\n"
         "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(1)")


@pytest.fixture
def catalog_path(tmp_path):
    return tmp_path / "catalog.db"


@pytest.fixture
def store(catalog_path):
    opened = open_store(StoreConfig(url=f"sqlite:///{catalog_path}"), holder="host-a:1")
    yield opened
    opened.close()


@pytest.fixture
def holder(catalog_path):
    """Another process holding the turn; ``.release()`` gives it back."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(catalog_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"

    class Holder:
        @staticmethod
        def release() -> None:
            if proc.poll() is None:
                proc.communicate("", timeout=10)
    yield Holder
    Holder.release()


def claim(store, sha="a" * 64):
    return store.claim(partner_id="p", sha256=sha, inbox="local:in", source=SOURCE, fmt="csv", mode="delta",
                       spool_path=None)


def turn_is_free(catalog_path) -> bool:
    return subprocess.run([sys.executable, "-c", _FREE, str(catalog_path)]).returncode == 0


def test_a_write_waits_while_another_process_has_the_turn_and_goes_on_once_it_is_given_back(store, holder):
    """SQLite's own lock is free all along: only the turn keeps the claim waiting."""
    done: list[str] = []
    writer = threading.Thread(target=lambda: done.append(claim(store).kind))
    writer.start()
    writer.join(1.0)
    assert writer.is_alive() and not done, "the claim did not wait for the turn another process holds"
    holder.release()
    writer.join(10)
    assert done == ["new"]


def test_a_turn_held_by_a_process_that_never_gives_it_back_is_waited_for_only_the_busy_timeout(
        catalog_path, holder, monkeypatch):
    """A stopped holder (SIGSTOP, a debugger) must not stop every other writer for good: after the
    busy timeout the write goes ahead under SQLite's lock alone, free here."""
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 500)
    store = open_store(StoreConfig(url=f"sqlite:///{catalog_path}"), holder="host-a:1")
    try:
        started = time.monotonic()
        assert claim(store).kind == "new"
        assert time.monotonic() - started >= 0.5       # it did wait for the turn first
    finally:
        store.close()


def test_the_turn_is_given_back_after_a_commit_a_rollback_and_an_abandoned_load(store, catalog_path):
    job = claim(store).job
    assert turn_is_free(catalog_path)                   # the claim committed
    stale = dataclasses.replace(job, attempt=job.attempt + 1)
    with pytest.raises(LeaseLost):                       # rolled back: not this job's attempt
        store.finish(stale, Outcome(status="failed", result={"job_id": job.id}))
    assert turn_is_free(catalog_path)
    with store.load(job) as load:                        # merged, then left without its commit
        load.merge(mode="delta", max_deactivate_ratio=0.2)
        assert not turn_is_free(catalog_path)            # the merge holds it ...
    assert turn_is_free(catalog_path)                    # ... and the abandoned load gave it back
    assert claim(store, sha="b" * 64).kind == "new"      # and the store goes on writing

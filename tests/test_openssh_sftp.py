"""Deliveries the way partners make them: the real OpenSSH ``sftp`` client into OpenSSH ``sshd``.

``sftp put`` writes straight into the final name, ``put -p`` keeps the local file's mtime (new
content under a name and mtime answered before), and a client can stall mid-file for longer than
``settle``, then go on. Every version delivered must be applied once, completely, in delivery
order: never the truncated copy of a stalled upload.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.conftest import ledger, products, write_csv
from tests.daemon_harness import config, wait_for, wait_manifests
from tests.openssh import OpenSshServer, sftp_clients, sshd  # noqa: F401 — fixtures

SETTLE_S = 1.0
POLL_S = 0.2
MTIME = 1_700_000_000           # every re-send carries this modification time, as put -p keeps it
RESENDS = 5
STALL_ROWS = 150_000
STALL_LIMIT_KBIT = 20_000       # ~2.5 MB/s: the upload takes ~2 s, long enough to stall it mid-file
SFTP_WRITE_BYTES = 32_768       # OpenSSH sftp's default request size (-B): the file grows by this much
ROW_BYTES = 32
APPLIED = ("succeeded", "partial")


def _config(server: OpenSshServer) -> str:
    inbox = ('[[inboxes]]\npartner = "default"\nkind = "sftp"\nhost = "127.0.0.1"\n'
             f'port = {server.port}\nusername = "{server.user}"\nkey_file = "{server.client_key}"\n'
             f'known_hosts = "{server.known_hosts}"\npath = "{server.folder}"\n'
             f'settle = "{int(SETTLE_S * 1000)}ms"\npoll_interval = "{int(POLL_S * 1000)}ms"\n')
    return config(inboxes=inbox)


def _archived(server: OpenSshServer, name: str) -> list:
    return sorted((server.folder / "processed").glob(f"{name}*"))


def _applied_rows(root) -> list[tuple[str, int]]:
    """(status, rows read) of every job that changed the catalog, from the ledger."""
    return [(status, json.loads(result)["rows"]["read"])
            for status, result in ledger(root, "status, result") if status in APPLIED and result]


def test_a_file_put_with_openssh_sftp_is_applied_once_archived_and_answered(tmp_path, sshd, daemons):
    d = daemons(tmp_path, _config(sshd))
    local = write_csv(tmp_path / "catalog.csv", ["sku", "name", "price"], [["G1", "Gadget", "4.50"], ["G2", "Gizmo", "1"]])

    sshd.sftp(f'put "{local}" catalog.csv')

    [manifest] = wait_manifests(tmp_path, 1)
    assert manifest["status"] == "succeeded" and manifest["rows"]["inserted"] == 2
    assert manifest["source"]["uri"] == f"sftp://{sshd.user}@127.0.0.1:{sshd.port}{sshd.folder}/catalog.csv"
    assert set(products(tmp_path)) == {"g1", "g2"}
    wait_for(lambda: _archived(sshd, "catalog.csv"), what="catalog.csv moved to processed/ on the server")
    assert [p.name for p in _archived(sshd, "catalog.csv")] == ["catalog.csv"]
    assert not (sshd.folder / "catalog.csv").exists()
    answer = f"results/{manifest['job_id']}.result.json"
    wait_for(lambda: (sshd.folder / answer).exists(), what="the answer written back into results/")
    sshd.sftp(f'get "{answer}" "{tmp_path / "answer.json"}"')           # as the partner fetches it
    assert json.loads((tmp_path / "answer.json").read_text())["job_id"] == manifest["job_id"]
    assert ledger(tmp_path, "source_name, status") == [("catalog.csv", "succeeded")]
    assert d.stop() == 0


def test_resends_put_with_preserved_times_under_one_name_and_mtime_are_each_applied(tmp_path, sshd, daemons):
    """``put -p`` of new content under the name and mtime of the last delivery, and of the same
    size: only the content tells the versions apart. Each is sent once the one before it was
    archived, as a partner re-sending a stock file would."""
    d = daemons(tmp_path, _config(sshd))
    local = tmp_path / "stock.csv"
    applied, missed = 0, None
    for send in range(RESENDS):
        local.write_text(f"sku,name,price,stock\nS-1,Sock,{send + 1}.00,{100 + send}\n")
        os.utime(local, (MTIME, MTIME))
        sshd.sftp(f'put -p "{local}" stock.csv')
        try:
            wait_manifests(tmp_path, send + 1, status="succeeded", timeout=15)
            wait_for(lambda n=send + 1: len(_archived(sshd, "stock.csv")) == n, timeout=15,
                     what=f"re-send {send} archived")
        except AssertionError as exc:
            missed = f"re-send {send}: {exc}\n{d.log_path.read_text()[-4000:]}"
            break
        applied += products(tmp_path)["s-1"]["stock"] == 100 + send
    print(f"\nre-sends by sftp put -p with an unchanged mtime: applied {applied} / {RESENDS}")
    assert applied == RESENDS, missed
    assert {os.stat(p).st_mtime for p in _archived(sshd, "stock.csv")} == {MTIME}   # put -p kept it
    assert ledger(tmp_path, "status") == [("succeeded",)] * RESENDS
    assert products(tmp_path)["s-1"]["stock"] == 100 + RESENDS - 1 and products(tmp_path)["s-1"]["price_cents"] == RESENDS * 100
    assert d.stop() == 0


def test_a_put_p_of_the_same_size_and_mtime_while_the_last_version_is_applied_is_applied_too(tmp_path, sshd, daemons):
    """The re-send lands while the version before it is being applied: nothing a listing sees
    tells it apart (SFTP shows no inode or change time). It is never archived as the version
    that was applied: found by its content at the archive, it stays, and is applied after."""
    d = daemons(tmp_path, _config(sshd))
    rows = 150_000
    first, second = tmp_path / "v1.csv", tmp_path / "v2.csv"
    for path, price in ((first, "1.00"), (second, "3.00")):
        write_csv(path, ["sku", "name", "price"], [[f"P-{i:06d}", f"item {i}", price] for i in range(rows)])
        os.utime(path, (MTIME, MTIME))
    assert first.stat().st_size == second.stat().st_size

    sshd.sftp(f'put -p "{first}" big.csv')
    d.wait_event("job.started", timeout=30)
    sshd.sftp(f'put -p "{second}" big.csv')

    wait_for(lambda: {p["price_cents"] for p in products(tmp_path).values()} == {300}, timeout=90,
             what="the second version applied")
    wait_for(lambda: not (sshd.folder / "big.csv").exists(), timeout=30, what="the second version archived")
    applied = [s for s, _ in _applied_rows(tmp_path)]
    assert applied and all(s == "succeeded" for s in applied)
    assert d.stop() == 0


def test_new_content_put_with_the_last_versions_name_and_mtime_right_after_its_archive_is_handed_over(tmp_path, sshd):
    """The race behind a re-send missed for minutes: the daemon archives a file and the partner
    puts new content of the same size under its name and mtime before any listing saw the name
    empty. What the inbox archived itself is gone, so the new upload is a new delivery."""
    import tomllib

    from config import build_config
    from inbox_daemon.inboxes.sftp import SftpInbox

    inbox = SftpInbox(build_config(tomllib.loads(_config(sshd))).inboxes[0])
    local = tmp_path / "stock.csv"

    def put(stock: int) -> None:
        local.write_text(f"sku,name,price,stock\nS-1,Sock,1.00,{stock}\n")
        os.utime(local, (MTIME, MTIME))
        sshd.sftp(f'put -p "{local}" stock.csv')

    def ready() -> list:
        return wait_for(inbox.ready_entries, timeout=10, interval=0.05, what="stock.csv ready")

    try:
        put(100)
        [first] = ready()
        drop = inbox.drop_for(first)
        inbox.archive(drop, "succeeded")                      # no listing from here on
        put(101)                                              # same name, size and mtime
        [second] = ready()
        assert (second.key, second.version) == (first.key, first.version)
        spooled, _, _ = inbox.fetch(inbox.drop_for(second), tmp_path)
        assert spooled.read_text().endswith(",101\n")
        assert [p.name for p in _archived(sshd, "stock.csv")] == ["stock.csv"]
    finally:
        inbox.close()


def _aligned_catalog(path, rows: int):
    """A CSV whose header and rows are all ``ROW_BYTES`` long, so that every prefix the client
    writes (``SFTP_WRITE_BYTES`` at a time, in order) ends at a line end: a truncated copy is a
    valid, smaller catalog. Only the daemon's completeness checks can keep it out."""
    header = '"sku",name,price,stock,category\n'
    lines = [f"K{i:06d},Item {i:06d},{i % 9}.{i % 100:02d},{10 + i % 90},c{i % 100:02d}\n" for i in range(rows)]
    assert {len(header), *map(len, lines)} == {ROW_BYTES} and SFTP_WRITE_BYTES % ROW_BYTES == 0
    path.write_text(header + "".join(lines))
    return path


def _ragged_catalog(path, rows: int):
    """Rows of varying length: a truncated copy almost always ends in the middle of a row."""
    return write_csv(path, ["sku", "name", "price", "stock"],
                     [[f"K{i}", f"Item {i}", f"{1 + i % 9000 / 100:.2f}", i % 50] for i in range(rows)])


def _stall_upload(tmp_path, sshd: OpenSshServer, daemons, sftp_clients, local, label: str) -> tuple[list, list, str]:
    """Upload ``local`` with the real client, stop the client a quarter of the way for longer than
    settle plus a poll, and until the daemon began on the stalled copy (a copy in its spool, or a
    job in the ledger); then let it go on and finish. Returns the applied jobs (status, rows read)
    that read fewer rows than the file, those that read all of them, and what happened."""
    d = daemons(tmp_path, _config(sshd))
    total = local.stat().st_size
    remote = sshd.folder / local.name
    spool = tmp_path / "var" / "spool"

    def remote_size() -> int:
        try:
            return remote.stat().st_size
        except FileNotFoundError:
            return 0

    def taken_in() -> bool:
        return any(p.is_file() for p in spool.rglob("*")) or bool(ledger(tmp_path, "id"))

    client = sftp_clients.start(f'put "{local}" {local.name}', limit_kbit=STALL_LIMIT_KBIT)
    wait_for(lambda: remote_size() >= total // 4, timeout=30, interval=0.005, what="a quarter of the upload")
    os.kill(client.proc.pid, signal.SIGSTOP)
    stalled_at, stalled_size = time.monotonic(), remote_size()
    assert stalled_size < total, "the upload finished before it could be stalled: lower STALL_LIMIT_KBIT"
    taken = False
    while time.monotonic() - stalled_at < SETTLE_S + POLL_S + 15:
        taken = taken_in()
        if taken and time.monotonic() - stalled_at >= SETTLE_S + POLL_S:
            break
        time.sleep(0.01)
    stall_s = time.monotonic() - stalled_at
    os.kill(client.proc.pid, signal.SIGCONT)
    assert client.proc.wait(60) == 0, client.log()

    try:
        wait_for(lambda: any(read == STALL_ROWS for _, read in _applied_rows(tmp_path)), timeout=20,
                 what="the complete file applied")
    except AssertionError:
        pass                          # reported by the caller, with what happened instead
    applied = _applied_rows(tmp_path)
    server = {str(p.relative_to(sshd.folder)): p.stat().st_size for p in sshd.folder.rglob("*") if p.is_file()}
    events = [{k: e.get(k) for k in ("event", "status", "read", "reason", "error") if e.get(k) is not None}
              for e in d.events() if e.get("file") == local.name]
    truncated = [(status, read) for status, read in applied if read < STALL_ROWS]
    complete = [(status, read) for status, read in applied if read == STALL_ROWS]
    summary = (f"stalled upload ({label}): stalled at {stalled_size}/{total} bytes for {stall_s:.1f} s, "
               f"daemon took the stalled copy in: {taken}; truncated applies {len(truncated)}, complete applies "
               f"{len(complete)}; applied jobs (status, rows read of {STALL_ROWS}): {applied}; on the server: {server}")
    print(f"\n{summary}")
    assert d.stop() == 0
    return truncated, complete, f"{summary}\ndaemon events for {local.name}: {events}"


@pytest.mark.parametrize("run", [1, 2, 3])
def test_an_upload_stalled_past_settle_is_never_applied_truncated_and_is_applied_once_complete(
        tmp_path, sshd, daemons, sftp_clients, run):
    """The partner's client stops mid-file (SIGSTOP: a hung process, a stalled link) for longer
    than ``settle`` plus a poll: the daemon sees a file that stopped changing and takes it in;
    the client then goes on as soon as the daemon has begun on the stalled copy. The copy ends at
    a line end (``_aligned_catalog``): it must not be applied, and the complete file must be."""
    local = _aligned_catalog(tmp_path / "catalog.csv", STALL_ROWS)

    truncated, complete, summary = _stall_upload(tmp_path, sshd, daemons, sftp_clients, local, f"line end, run {run}")

    assert (truncated, len(complete)) == ([], 1), summary
    assert len(products(tmp_path)) == STALL_ROWS


def test_an_upload_stalled_mid_row_is_applied_once_complete(tmp_path, sshd, daemons, sftp_clients):
    """As above, with rows of varying length: the stalled copy ends inside a row. Reading it may
    fail, but the file the partner finishes uploading must still be applied, once."""
    local = _ragged_catalog(tmp_path / "catalog.csv", STALL_ROWS)

    truncated, complete, summary = _stall_upload(tmp_path, sshd, daemons, sftp_clients, local, "mid-row")

    assert (truncated, len(complete)) == ([], 1), summary
    assert len(products(tmp_path)) == STALL_ROWS

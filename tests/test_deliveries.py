"""A delivery is what arrived: the file is read and hashed before anything is decided.

Tools that keep a file's modification time (``cp -p``, ``rsync -t``, ``scp -p``, unzip) deliver
new content under a name and mtime the daemon has answered before; the daemon must apply it,
not replay the old answer. Proved with the real ``cp -p`` into a running daemon.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ledger, products
from tests.daemon_harness import config, wait_for, wait_manifests

MTIME = 1_700_000_000          # every copy carries this modification time, as cp -p keeps it
RESENDS = 5


def _inbox(on_success: str) -> str:
    return ('[[inboxes]]\npartner = "default"\nkind = "local"\npath = "inbox/default"\n'
            f'settle = "300ms"\non_success = "{on_success}"\n')


def _cp_p(source, target, text: str) -> None:
    source.write_text(text)
    os.utime(source, (MTIME, MTIME))
    subprocess.run(["cp", "-p", str(source), str(target)], check=True)


@pytest.mark.parametrize("on_success", ["move", "keep"])
def test_new_content_under_an_answered_name_and_mtime_is_applied(tmp_path, daemons, on_success):
    d = daemons(tmp_path, config(inboxes=_inbox(on_success)))
    inbox = tmp_path / "inbox" / "default"
    source = tmp_path / "stock.csv"
    applied = 0
    for send in range(RESENDS):
        _cp_p(source, inbox / "stock.csv", f"sku,name,price,stock\nS-1,Sock,{send + 1}.00,{send}\n")
        found = wait_manifests(tmp_path, send + 1, status="succeeded")
        copies = 1 if on_success == "keep" else send + 1          # kept in place, or each archived
        delivered = wait_for(lambda c=copies: (found := [inbox / "stock.csv"] if on_success == "keep" else
                                               list((inbox / "processed").glob("stock.csv*"))) and
                             len(found) == c and found, what=f"{copies} copies of stock.csv")
        assert {os.stat(p).st_mtime for p in delivered} == {MTIME}      # every copy kept the one mtime
        row = wait_for(lambda s=send: products(tmp_path).get("s-1", {}).get("stock") == s and products(tmp_path),
                       what=f"send {send} in the catalog")
        applied += row["s-1"]["price_cents"] == (send + 1) * 100
        assert len(found) == send + 1
    print(f"\nre-sends with an unchanged mtime ({on_success}): applied {applied} / {RESENDS}")
    assert applied == RESENDS
    assert d.stop() == 0


def test_the_same_content_copied_again_with_its_mtime_is_a_duplicate_not_applied_again(tmp_path, daemons):
    """Same name, same mtime, same content, copied again: a delivery of its own (the copy has a
    new inode change time), whose content is the partner's latest applied one. It is read,
    recognised by its sha256, answered as a duplicate of the job that applied it, and archived:
    one apply."""
    d = daemons(tmp_path, config(inboxes=_inbox("move")))
    inbox = tmp_path / "inbox" / "default"
    source = tmp_path / "stock.csv"
    _cp_p(source, inbox / "stock.csv", "sku,name,price\nS-1,Sock,1.00\n")
    [first] = wait_manifests(tmp_path, 1)
    wait_for(lambda: (inbox / "processed" / "stock.csv").exists(), what="first copy archived")
    subprocess.run(["cp", "-p", str(source), str(inbox / "stock.csv")], check=True)

    wait_for(lambda: not (inbox / "stock.csv").exists(), what="the copy answered and archived")

    assert first["status"] == "succeeded"
    assert ledger(tmp_path, "source_name, status") == [("stock.csv", "succeeded"), ("stock.csv", "duplicate")]
    [duplicate] = wait_manifests(tmp_path, 1, status="duplicate")
    assert duplicate["duplicate_of"] == first["job_id"]
    assert len(list((inbox / "processed").glob("stock.csv*"))) == 2
    assert d.stop() == 0

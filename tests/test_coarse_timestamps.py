"""A local inbox on a filesystem with 1-second timestamps: quick re-sends repeat name, size and mtime.

ext2 with 128-byte inodes keeps whole seconds only, so every write within one second leaves the
same mtime (and inode change time). Re-sends of ``stock.csv`` in quick succession, each once the
one before it was archived, differ in content alone: each must be applied, once, in order.

The filesystem is a 20 MB image in the test's temporary folder, attached to a loop device and
mounted; it needs root and a loop device, and is skipped with the reason where either is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ledger, products
from tests.daemon_harness import config, wait_for, wait_manifests

IMAGE_BYTES = 20 * 1024 * 1024
RESENDS = 20
MTIME = 1_700_000_000           # cp -p keeps this modification time on every copy


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def _unavailable(reason: str) -> None:
    """Skip with the reason; in CI (``INBOX_DAEMON_REQUIRE_LOOP=1``, root on a machine with loop
    devices) a filesystem that cannot be mounted is a failure, not a silent skip."""
    if os.environ.get("INBOX_DAEMON_REQUIRE_LOOP") == "1":
        pytest.fail(f"a loop-mounted filesystem is required here: {reason}")
    pytest.skip(reason)


@pytest.fixture
def coarse_fs(tmp_path) -> Iterator[Path]:
    """A mounted ext2 filesystem with 1-second timestamps; unmounted and detached afterwards,
    whatever the test did."""
    if os.geteuid() != 0:
        _unavailable(f"not root (uid {os.geteuid()}): attaching a loop device and mounting need root")
    if not Path("/dev/loop-control").exists():
        _unavailable("no loop device: /dev/loop-control is missing (loop module not loaded or not exposed here)")
    for tool in ("mkfs.ext2", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} not found (e2fsprogs, mount)")
    image, mountpoint = tmp_path / "coarse.img", tmp_path / "coarse"
    with open(image, "wb") as fh:
        fh.truncate(IMAGE_BYTES)
    made = _run("mkfs.ext2", "-q", "-F", "-I", "128", str(image))      # 128-byte inodes: whole seconds only
    assert made.returncode == 0, f"mkfs.ext2 failed: {made.stderr}"
    attached = _run("losetup", "--find", "--show", str(image))
    if attached.returncode != 0:
        _unavailable(f"no loop device could be attached: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        mountpoint.mkdir()
        mounted = _run("mount", "-t", "ext2", device, str(mountpoint))
        if mounted.returncode != 0:
            _unavailable(f"mount refused: {mounted.stderr.strip()}")
        try:
            yield mountpoint
        finally:
            unmounted = _run("umount", str(mountpoint))
            if unmounted.returncode != 0:                    # still busy: detach it from the tree at least
                _run("umount", "--lazy", str(mountpoint))
    finally:
        _run("losetup", "--detach", device)


def _written(source: Path, target: Path, text: str) -> int:
    """Write ``text`` straight into ``target`` (no temp name, ``source`` unused); its mtime in ns."""
    with open(target, "w") as fh:
        fh.write(text)
        fh.flush()
        return os.fstat(fh.fileno()).st_mtime_ns


def _copied_with_p(source: Path, target: Path, text: str) -> int:
    """``text`` written to ``source`` with the one fixed mtime, then ``cp -p`` into ``target``."""
    source.write_text(text)
    os.utime(source, (MTIME, MTIME))
    subprocess.run(["cp", "-p", str(source), str(target)], check=True)
    return MTIME * 10**9


@pytest.mark.parametrize("send_with", [_written, _copied_with_p], ids=["written", "cp-p"])
def test_quick_resends_on_a_filesystem_with_1_second_timestamps_are_each_applied_once(
        tmp_path, coarse_fs, daemons, send_with):
    probe = coarse_fs / "probe"
    probe.write_text("x")
    assert os.stat(probe).st_mtime_ns % 10**9 == 0 and os.stat(probe).st_ctime_ns % 10**9 == 0, \
        "this filesystem keeps sub-second timestamps: the scenario would not be tested"
    probe.unlink()
    inbox = coarse_fs / "inbox"
    d = daemons(tmp_path, config(inboxes=f'[[inboxes]]\npartner = "default"\nkind = "local"\npath = "{inbox}"\n'
                                         'settle = "300ms"\n'))
    applied, mtimes, missed = 0, [], None
    for send in range(RESENDS):
        # same name, same size: only the stock value differs
        mtimes.append(send_with(tmp_path / "stock.csv", inbox / "stock.csv", f"sku,name,price,stock\nS-1,Sock,1.00,{100 + send}\n"))
        try:
            wait_for(lambda n=send + 1: len(list((inbox / "processed").glob("stock.csv*"))) == n, timeout=15,
                     what=f"re-send {send} archived")
        except AssertionError as exc:
            missed = f"re-send {send}: {exc}\n{d.log_path.read_text()[-6000:]}"
            break
        applied += products(tmp_path)["s-1"]["stock"] == 100 + send
    repeats = sum(a == b for a, b in zip(mtimes, mtimes[1:]))
    print(f"\ncoarse timestamps ({send_with.__name__}): applied {applied} / {RESENDS}; "
          f"{repeats} sends kept the mtime of the send before")
    assert applied == RESENDS, missed
    assert repeats > 0, "no two sends shared an mtime: the scenario was not exercised"
    found = wait_manifests(tmp_path, RESENDS)
    assert [m["status"] for m in found] == ["succeeded"] * RESENDS
    assert len({m["sha256"] for m in found}) == RESENDS
    assert ledger(tmp_path, "status") == [("succeeded",)] * RESENDS          # no duplicate, no retry
    assert products(tmp_path)["s-1"]["stock"] == 100 + RESENDS - 1
    assert d.stop() == 0

"""Security promises, each proved against real components: the daemon as a subprocess
(``tests.daemon_harness.DaemonProcess``), moto's S3 server over HTTP behind the recording proxy of
``tests.test_s3``, the asyncssh SFTP server of ``tests.sftp_server``, the installed console script.

1. Partner isolation: a file in partner A's inbox only ever writes A's rows. ``partner_id`` /
   ``partner`` columns in the file are never obeyed (kept as attributes or ignored); B's rows are
   untouched even when A's file names B's SKUs, A's snapshot never deactivates B's rows, the same
   bytes from B are B's own job (not a duplicate of A's), and A cannot make the daemon carry A's
   file into B's inbox through a symlinked ``processed/`` folder.
2. Path safety: nothing outside an inbox is read, moved or written: keys with ``../`` or absolute
   paths, symlinks (at start-up and renamed in), symlinked folders and subfolders, symlinked
   ``processed/``/``failed/``/``results/``; a hard link is the partner's regular file, and its other
   name outside is never moved, deleted or changed. Names with newlines or control characters
   appear in logs, manifests and audit records only escaped (one JSON line stays one line, the
   manifest's ``source.name`` round-trips); a name that is not UTF-8 gets an answer, not a crash.
   SFTP: names a (hostile) server lists that are not plain names are never opened, stat'ed or
   renamed (``test_sftp.test_names_that_would_leave_the_folder_are_refused`` covers ``fetch``).
3. Secrets: canaries configured via ``*_env`` (SFTP ``password_env``, webhook ``secret_env``, the
   store's ``password_env`` for a PostgreSQL URL) never appear in logs at debug level, manifests,
   diagnostics, audit files, the catalog, or ``config check`` output: every file under the root is
   searched for the canary bytes.
4. SFTP host keys: unknown and changed keys are refused (``test_sftp.test_unknown_host_key_is_refused``,
   ``test_changed_host_key_is_refused``); here: the daemon never sends the password to, downloads
   from, archives on or writes results to a refused server, and never adds the key.
5. S3 least privilege: the IAM policy printed in README.md grants exactly the actions a full cycle
   uses (list, get, archive to processed/, results/, a rejected file to failed/, on_success
   delete, the probe), and every request, every key written, falls under its Resource patterns.
6. The systemd unit: ``systemd-analyze security --offline=true`` rates it below 2.0.
7. Result manifests, diagnostics, audit files, spool copies and the SQLite catalog have no world
   access, also when started with the permissive umask 022 (daemon and ``ingest``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets as secrets_module
import shutil
import signal
import sqlite3
import stat
import subprocess
import threading
import time
import unicodedata
import urllib.parse
import urllib.request
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncssh
import boto3
import pytest

from tests.conftest import REPO, products, run_cli, write_csv
from tests.daemon_harness import EXE, DaemonProcess, config, manifests, wait_for, wait_manifests
from tests.sftp_server import SftpTestServer

# the recording fault proxy in front of moto, and its fixtures (moto's server, fake credentials)
from tests.test_s3 import FaultProxy, _ProxyHandler, aws_env, moto, moto_server  # noqa: F401

TWO_PARTNERS = '[[partners]]\nid = "acme"\n[[partners]]\nid = "globex"\n'


# -- helpers -------------------------------------------------------------------------------------

def _drop(folder: Path, name: str, data: str | bytes) -> Path:
    """Write under a temp name, then rename into place (the way careful uploaders do)."""
    tmp = folder / f".{secrets_module.token_hex(4)}.part"
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    target = folder / name
    tmp.rename(target)
    return target


def _local_inbox(partner: str, **extra) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return (f'[[inboxes]]\npartner = "{partner}"\nkind = "local"\npath = "inbox/{partner}"\n'
            f'settle = "300ms"\n{lines}')


def _fingerprint(path: Path) -> tuple:
    """What must not change about a file outside the inbox: where it is, its inode, its bytes."""
    st = os.lstat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size, path.read_bytes())


def _files_under(root: Path) -> list[Path]:
    out = []
    for folder, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            p = Path(folder) / name
            if stat.S_ISREG(os.lstat(p).st_mode):
                out.append(p)
    return out


def _jobs(root: Path) -> list[dict]:
    con = sqlite3.connect(root / "var" / "catalog.db")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM jobs ORDER BY created_at")]
    finally:
        con.close()


def _jobs_done(d: DaemonProcess, partner: str) -> float:
    """Jobs of ``partner`` the daemon finished *including* archiving (counted after the archive)."""
    text = urllib.request.urlopen(f"http://{d.health}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("inbox_jobs_total{") and f'partner="{partner}"' in line)


def _audit_records(root: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((root / "var" / "audit").glob("audit-*.jsonl"))
            for line in p.read_text(encoding="utf-8").split("\n") if line]


# == 1. partner isolation ==========================================================================

def test_isolation_a_file_in_a_partners_inbox_writes_only_that_partners_rows_whatever_it_says(tmp_path, daemons):
    cfg = config(partners=TWO_PARTNERS,
                 inboxes=_local_inbox("acme", mode="snapshot") + _local_inbox("globex"))
    d = daemons(tmp_path, cfg)
    acme, globex = tmp_path / "inbox" / "acme", tmp_path / "inbox" / "globex"
    _drop(globex, "seed.csv", "sku,name,price\nB-1,Globex one,1.00\nB-2,Globex two,2.00\nB-3,Globex three,3.00\n")
    wait_manifests(tmp_path, 1, partner="globex", status="succeeded")
    globex_before = products(tmp_path, "globex")
    assert set(globex_before) == {"b-1", "b-2", "b-3"}

    # A's file claims to be B's, names B's SKUs, and is a snapshot (would deactivate what it omits)
    hostile_csv = ("sku,name,price,partner_id,partner\n"
                   "B-1,Hijacked,0.01,globex,globex\nb-2,Hijacked too,0.01,globex,globex\n")
    _drop(acme, "takeover.csv", hostile_csv)
    [first] = wait_manifests(tmp_path, 1, partner="acme")
    hostile_ndjson = "".join(json.dumps(r) + "\n" for r in [
        {"sku": "B-1", "name": "Nested", "price": "0.02", "partner_id": "globex", "partner": {"id": "globex"}},
        {"sku": "B-2", "name": "Nested", "price": "0.02", "partner_id": "globex", "partner": "globex"},
        {"sku": "B-3", "name": "Nested", "price": "0.02", "partner_id": "globex", "partner": "globex"}])
    _drop(acme, "takeover.ndjson", hostile_ndjson)
    found = wait_manifests(tmp_path, 2, partner="acme")

    assert {m["status"] for m in found} == {"succeeded"}, found
    assert {m["partner"] for m in found} == {"acme"} and {m["inbox"] for m in found} == {"local:inbox/acme"}
    assert products(tmp_path, "globex") == globex_before          # every column, updated_at included
    rows = products(tmp_path, "acme")
    assert set(rows) == {"b-1", "b-2", "b-3"}
    assert {r["partner_id"] for r in rows.values()} == {"acme"}
    for row in rows.values():                                      # kept as an attribute, or ignored
        attributes = json.loads(row["attributes"] or "{}")
        assert {k: v for k, v in attributes.items() if k.startswith("partner")} in (
            {}, {"partner_id": "globex", "partner": "globex"}, {"partner_id": "globex", "partner.id": "globex"})
    acme_jobs = {m["job_id"] for m in found}
    assert all(r["partner"] == "acme" for r in _audit_records(tmp_path) if r["job_id"] in acme_jobs)
    assert {j["partner_id"] for j in _jobs(tmp_path) if j["id"] in acme_jobs} == {"acme"}
    # A's answers go to A's results/ only
    assert not any((globex / "results").glob(f"{first['job_id']}*"))

    # the very same bytes from B are B's own job, applied to B, not a duplicate of A's
    _drop(globex, "same-bytes.csv", hostile_csv)
    [mine] = [m for m in wait_manifests(tmp_path, 2, partner="globex") if m["source"]["name"] == "same-bytes.csv"]
    assert mine["status"] == "succeeded" and "duplicate_of" not in mine
    assert products(tmp_path, "globex")["b-1"]["name"] == "Hijacked"
    assert d.stop() == 0


def test_isolation_a_symlinked_processed_folder_cannot_carry_a_file_into_another_partners_inbox(tmp_path, daemons):
    """Partner A (who can write its own inbox folder) replaces ``processed/`` by a symlink to B's
    inbox. Archiving A's file must not move it into B's inbox, where it would be applied as B's."""
    d = daemons(tmp_path, config(partners=TWO_PARTNERS, inboxes=_local_inbox("acme") + _local_inbox("globex")))
    acme, globex = tmp_path / "inbox" / "acme", tmp_path / "inbox" / "globex"
    (acme / "processed").rmdir()
    (acme / "processed").symlink_to(globex, target_is_directory=True)
    _drop(acme, "catalog.csv", "sku,name,price\nB-1,Planted by acme,0.01\n")
    [m] = wait_manifests(tmp_path, 1, partner="acme")
    assert m["status"] == "succeeded"
    wait_for(lambda: _jobs_done(d, "acme") >= 1, what="acme's job finished, archive included")
    carried = [p for p in (globex / "catalog.csv", globex / "processed" / "catalog.csv") if p.exists()]
    if carried:                     # show what becomes of it: B's watcher takes it as B's file
        try:
            wait_for(lambda: "b-1" in products(tmp_path, "globex"), timeout=10, what="globex applying it")
        except AssertionError:
            pass
    assert d.stop() == 0

    planted = [x["job_id"] for x in manifests(tmp_path, "globex") if x["source"]["name"] == "catalog.csv"]
    assert not carried and not planted and "b-1" not in products(tmp_path, "globex"), (
        f"acme's file was moved to {[str(p.relative_to(tmp_path)) for p in carried]}; applied to globex by "
        f"job(s) {planted}: {products(tmp_path, 'globex')}")


# == 2. path safety ================================================================================

def _local_inbox_object(root: Path):
    import tomllib

    from config import build_config
    from inbox_daemon.inboxes.local import LocalInbox
    cfg = build_config(tomllib.loads(f'[[inboxes]]\npartner = "default"\nkind = "local"\n'
                                     f'path = "{root / "inbox" / "default"}"\n'))
    return LocalInbox(cfg.inboxes[0])


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_path_safety_local_inbox_refuses_keys_with_dotdot_or_absolute_paths(tmp_path, how):
    """A local file name cannot hold ``/``, so such a key can only come from elsewhere (a ledger
    job's name, a shared store): ``fetch`` and ``archive`` must refuse it, as SftpInbox does."""
    from config.errors import InboxError
    from inbox_daemon.drop import Drop
    inbox = _local_inbox_object(tmp_path)
    outside = tmp_path / "outside.csv"
    outside.write_text("sku,name\nOUTSIDE,secret\n")
    before = _fingerprint(outside)
    key = "../../outside.csv" if how == "dotdot" else str(outside)
    evil = Drop(inbox=inbox.id, partner="default", key=key, name="outside.csv", uri="x",
                size=outside.stat().st_size, version=str(outside.stat().st_mtime_ns))
    spool = tmp_path / "spool"
    problems = []

    try:
        inbox.fetch(evil, spool)
        problems.append(f"fetch read {outside} ({[p.read_bytes() for p in _files_under(spool)]})")
    except InboxError:
        pass
    for status in ("succeeded", "rejected"):
        try:
            inbox.archive(evil, status)                 # refusing loudly is fine too
        except InboxError:
            pass
    if not outside.exists():
        moved = [str(p.relative_to(tmp_path)) for p in _files_under(tmp_path / "inbox")]
        problems.append(f"archive moved {outside} to {moved}")

    assert not problems, problems
    assert _fingerprint(outside) == before and _files_under(spool) == []


def test_path_safety_symlinks_symlinked_folders_and_subfolders_are_never_read_or_moved(tmp_path, daemons):
    """Beyond ``test_daemon.test_symlinks_are_not_followed`` (a link created while running):
    links found at start-up, a link renamed into place, a symlinked folder and a real subfolder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.csv"
    secret.write_text("sku,name\nOUTSIDE-1,leaked\n")
    (outside / "nested.csv").write_text("sku,name\nOUTSIDE-2,leaked\n")
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "sibling.csv").write_text("sku,name\nOUTSIDE-3,leaked\n")   # next to the inbox
    inbox = tmp_path / "inbox" / "default"
    inbox.mkdir()
    (inbox / "at-start.csv").symlink_to(secret)
    (inbox / "relative.csv").symlink_to(Path("..") / ".." / "outside" / "secret.csv")
    (inbox / "folder").symlink_to(outside, target_is_directory=True)
    (inbox / "sub").mkdir()
    (inbox / "sub" / "inner.csv").write_text("sku,name\nOUTSIDE-4,in a subfolder\n")
    before = {p: _fingerprint(p) for p in (secret, outside / "nested.csv", tmp_path / "inbox" / "sibling.csv",
                                           inbox / "sub" / "inner.csv")}
    d = daemons(tmp_path, config())
    tmp_link = inbox / ".link.part"
    tmp_link.symlink_to(secret)
    tmp_link.rename(inbox / "renamed-in.csv")                     # IN_MOVED_TO of a symlink
    _drop(inbox, "sentinel.csv", "sku,name\nOK-1,fine\n")
    wait_manifests(tmp_path, 1)
    wait_for(lambda: (inbox / "processed" / "sentinel.csv").exists(), what="sentinel archived")
    assert d.stop() == 0

    assert [m["source"]["name"] for m in manifests(tmp_path)] == ["sentinel.csv"]
    assert set(products(tmp_path)) == {"ok-1"}
    assert {p: _fingerprint(p) for p in before} == before
    for name in ("at-start.csv", "relative.csv", "renamed-in.csv", "folder"):
        assert (inbox / name).is_symlink(), f"{name} was moved"
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["sentinel.csv"]
    assert not any((inbox / "failed").iterdir())
    leaked = {hashlib.sha256(p.read_bytes()).hexdigest() for p in before}
    assert not any(p.name in leaked for p in _files_under(tmp_path / "var" / "spool"))


def test_path_safety_symlinked_processed_failed_and_results_folders_never_lead_outside(tmp_path, daemons):
    outside = tmp_path / "outside"
    inbox = tmp_path / "inbox" / "default"
    inbox.mkdir(parents=True)
    for folder in ("processed", "failed", "results"):
        (outside / folder).mkdir(parents=True)
        (inbox / folder).symlink_to(outside / folder, target_is_directory=True)
    d = daemons(tmp_path, config())
    good = "sku,name\nG-1,good\n"
    bad = "no,required,columns\n1,2,3\n"
    _drop(inbox, "good.csv", good)
    _drop(inbox, "bad.csv", bad)
    found = wait_manifests(tmp_path, 2)
    assert {m["status"] for m in found} == {"succeeded", "rejected"}
    wait_for(lambda: _jobs_done(d, "default") >= 2, what="both jobs finished, archive included")
    assert d.stop() == 0

    assert _files_under(outside) == [], "the daemon wrote outside the inbox through a symlinked folder"
    # and the partner's files are not lost: still somewhere inside the inbox
    inside = [p.read_bytes() for p in _files_under(inbox)]
    assert good.encode() in inside and bad.encode() in inside


def test_path_safety_a_hard_link_is_the_partners_file_and_its_other_name_is_never_moved_or_deleted(tmp_path, daemons):
    """A hard link is a regular file (README: regular files are input), so it is applied as the
    partner's content. Archiving renames or unlinks only the inbox's name: the other name outside,
    its inode and bytes stay as they were, for ``move`` and for ``delete``."""
    outside = tmp_path / "outside"
    outside.mkdir()
    moved_src, deleted_src = outside / "a.csv", outside / "b.csv"
    moved_src.write_text("sku,name\nHL-A,hard linked\n")
    deleted_src.write_text("sku,name\nHL-B,hard linked\n")
    before = {p: _fingerprint(p) for p in (moved_src, deleted_src)}
    d = daemons(tmp_path, config(partners=TWO_PARTNERS,
                                 inboxes=_local_inbox("acme") + _local_inbox("globex", on_success="delete")))
    acme, globex = tmp_path / "inbox" / "acme", tmp_path / "inbox" / "globex"
    os.link(moved_src, acme / "linked.csv")
    os.link(deleted_src, globex / "linked.csv")
    [a] = wait_manifests(tmp_path, 1, partner="acme")
    [b] = wait_manifests(tmp_path, 1, partner="globex")
    wait_for(lambda: (acme / "processed" / "linked.csv").exists(), what="acme's link archived")
    wait_for(lambda: not (globex / "linked.csv").exists(), what="globex's link deleted")
    assert d.stop() == 0

    assert a["status"] == b["status"] == "succeeded"
    assert {p: _fingerprint(p) for p in before} == before            # same place, inode, mtime, bytes
    assert os.stat(moved_src).st_nlink == 2 and os.path.samefile(moved_src, acme / "processed" / "linked.csv")
    assert os.stat(deleted_src).st_nlink == 1


_CONTROL_NAMES = ["new\nline.csv", "carriage\rreturn.csv", "esc\x1b[2Jclear.csv", "tab\tbell\x07.csv",
                  "c1\x85nel\x9bcsi.csv", "separators\u2028\u2029.csv", "del\x7f.csv"]


def _raw_controls(text: str) -> set[str]:
    """Characters that must never appear unescaped: controls (C0 but the line's own newline, DEL,
    C1) and the Unicode line/paragraph separators that line splitters honour."""
    return {c for c in text if c != "\n" and (unicodedata.category(c) == "Cc" or c in "\u2028\u2029")}


def test_path_safety_names_with_newlines_and_control_characters_appear_only_escaped(tmp_path, daemons):
    d = daemons(tmp_path, config(daemon='log_level = "debug"\n'))
    inbox = tmp_path / "inbox" / "default"
    for i, name in enumerate(_CONTROL_NAMES):
        _drop(inbox, name, f"sku,name\nN-{i},name {i}\n")
    found = wait_manifests(tmp_path, len(_CONTROL_NAMES))
    wait_for(lambda: all((inbox / "processed" / n).exists() for n in _CONTROL_NAMES), what="all archived")
    assert d.stop() == 0

    assert sorted(m["source"]["name"] for m in found) == sorted(_CONTROL_NAMES)   # round-trips exactly
    assert {m["status"] for m in found} == {"succeeded"}
    problems = {}
    log_text = d.log_path.read_text(encoding="utf-8")
    audit_files = sorted((tmp_path / "var" / "audit").glob("audit-*.jsonl"))
    line_files = [d.log_path, *audit_files]
    for path in line_files:                                        # JSON lines: one record, one line
        text = path.read_text(encoding="utf-8")
        for line in text.split("\n")[:-1]:
            json.loads(line)
        if len(text.splitlines()) != text.count("\n"):
            problems.setdefault(str(path.relative_to(tmp_path)), []).append(
                "a record spans several lines for str.splitlines()")
    manifest_files = [*(tmp_path / "var" / "results" / "default").glob("*.result.json"),
                      *(inbox / "results").glob("*.result.json")]
    for path in [*line_files, *manifest_files]:
        raw = _raw_controls(path.read_text(encoding="utf-8"))
        if raw:
            problems.setdefault(str(path.relative_to(tmp_path)), []).append(
                f"raw control characters {sorted(map(hex, map(ord, raw)))}")
    assert not [e for e in d.events() if e["event"] == "raw"]
    assert "job.reported" in log_text
    # the operator's view: `audit tail` prints one JSON record per line
    tail = run_cli("audit", "tail", "-n", str(len(_CONTROL_NAMES)), "--config", d.config_path, cwd=tmp_path)
    assert tail.returncode == 0, tail.stderr
    printed = tail.stdout.split("\n")[:-1]
    if len(printed) != len(_CONTROL_NAMES):
        problems["audit tail"] = [f"{len(_CONTROL_NAMES)} records printed as {len(printed)} lines"]
    verify = run_cli("audit", "verify", "--config", d.config_path, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout
    assert not problems, problems


def test_path_safety_a_name_that_is_not_utf8_gets_an_answer_not_a_worker_crash(tmp_path, daemons):
    d = daemons(tmp_path, config())
    inbox = tmp_path / "inbox" / "default"
    raw_name = os.fsencode(inbox) + b"/caf\xe9-\xff.csv"            # Latin-1 bytes: no UTF-8
    tmp = inbox / ".nonutf8.part"
    tmp.write_text("sku,name\nU-1,x\n")
    os.rename(os.fsencode(tmp), raw_name)

    def about_it() -> list[dict]:
        """Warnings and errors that name the file (its name escaped: "caf\\udce9-\\udcff.csv")."""
        return [e for e in d.events() if e.get("level") in ("warning", "error")
                and "caf" in str(e.get("name") or e.get("file") or "")]

    # answered (a manifest), refused (a warning naming it), or crashed (an error): whichever comes
    wait_for(lambda: manifests(tmp_path) or about_it(), what="the file answered or refused")
    assert d.stop() == 0

    crashes = [e for e in d.events() if e.get("event") in ("worker.unexpected_error", "raw") or "exception" in e]
    assert not crashes, f"{crashes[0].get('event')}: {str(crashes[0].get('exception', crashes[0]))[-300:]}"
    refused = [e for e in about_it() if e["level"] == "warning" and e.get("reason")]
    assert manifests(tmp_path) or refused, f"neither a manifest nor a refusal with a reason: {about_it()}"


# -- SFTP: names a hostile server lists ------------------------------------------------------------

_EVIL_LISTED = [b"..", b"../../etc/passwd.csv", b"/etc/shadow.csv", b"sub/inner.csv", b"nul\x00byte.csv",
                b"./dot-slash.csv", b"trailing-slash.csv/"]


class _HostileListingServer(SftpTestServer):
    """The test SFTP server, but its listing of ``/outbound`` adds names that are no plain file
    names (as regular files), and it records every path the client asks it about."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.requested: list[bytes] = []

    def start(self) -> _HostileListingServer:
        server = self

        class Hostile(asyncssh.SFTPServer):
            def __init__(self, chan):
                home = server.root / chan.get_extra_info("username")
                home.mkdir(parents=True, exist_ok=True)
                super().__init__(chan, chroot=str(home).encode())

            def map_path(self, path: bytes) -> bytes:
                server.requested.append(path)
                return super().map_path(path)

            async def scandir(self, path: bytes):
                # the real entries (without "." and "..", whose lstat would be recorded as ours)
                with os.scandir(self.map_path(path)) as entries:
                    for entry in entries:
                        yield asyncssh.SFTPName(os.fsencode(entry.name), attrs=asyncssh.SFTPAttrs.from_local(
                            entry.stat(follow_symlinks=False)))
                if path.rstrip(b"/") == b"/outbound":
                    for name in _EVIL_LISTED:
                        yield asyncssh.SFTPName(name, attrs=asyncssh.SFTPAttrs(
                            permissions=stat.S_IFREG | 0o644, size=40, uid=0, gid=0,
                            atime=int(time.time()) - 3600, mtime=int(time.time()) - 3600))

        authorized = asyncssh.import_authorized_keys(self.client_key.export_public_key().decode())

        async def listen():
            return await asyncssh.listen(
                "127.0.0.1", self.port, server_host_keys=[self.host_key], authorized_client_keys=authorized,
                sftp_factory=Hostile, allow_scp=False, reuse_address=True, acceptor=self._conns.append)
        self._acceptor = self._run(listen())
        self.port = self._acceptor.sockets[0].getsockname()[1]
        return self


@pytest.fixture(scope="module")
def ssh_keys():
    return {"host": asyncssh.generate_private_key("ssh-ed25519"),
            "other_host": asyncssh.generate_private_key("ssh-ed25519"),
            "client": asyncssh.generate_private_key("ssh-ed25519")}


def _sftp_inbox(port: int, known_hosts: Path, *, key_file: Path | None = None, password_env: str | None = None) -> str:
    auth = f'key_file = "{key_file}"\n' if key_file else f'password_env = "{password_env}"\n'
    return ('[[inboxes]]\npartner = "globex"\nkind = "sftp"\nhost = "127.0.0.1"\n'
            f'port = {port}\nusername = "globex"\n{auth}known_hosts = "{known_hosts}"\npath = "/outbound"\n'
            'poll_interval = "200ms"\nsettle = "200ms"\n')


def test_path_safety_sftp_names_a_server_lists_that_are_not_plain_are_never_opened_or_renamed(tmp_path, ssh_keys, daemons):
    server = _HostileListingServer(tmp_path / "sftp-root", host_key=ssh_keys["host"],
                                   client_key=ssh_keys["client"]).start()
    try:
        key_file = tmp_path / "client_key"
        key_file.write_bytes(ssh_keys["client"].export_private_key("openssh"))
        key_file.chmod(0o600)
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(server.known_hosts_line())
        outbound = server.root / "globex" / "outbound"
        outbound.mkdir(parents=True)
        write_csv(outbound / "good.csv", ["sku", "name"], [["G-1", "good"]])
        d = daemons(tmp_path, config(partners='[[partners]]\nid = "globex"\n',
                                     inboxes=_sftp_inbox(server.port, known_hosts, key_file=key_file)))
        [m] = wait_manifests(tmp_path, 1, partner="globex")
        wait_for(lambda: (outbound / "processed" / "good.csv").exists(), what="good.csv archived")
        listings = lambda: sum(p == b"/outbound" for p in list(server.requested))  # noqa: E731
        seen = listings()
        wait_for(lambda: listings() >= seen + 3, what="three more listings after the archive")
        assert d.stop() == 0
    finally:
        server.close()

    assert m["status"] == "succeeded" and [x["source"]["name"] for x in manifests(tmp_path, "globex")] == ["good.csv"]
    assert not [e for e in d.events() if e.get("event") in ("file.unusable", "worker.unexpected_error")]
    outside = [p for p in server.requested if b"\x00" in p or b"/.." in p or not (
        p.rstrip(b"/") == b"/outbound" or p.startswith(b"/outbound/"))]
    assert not outside, f"the client asked the server about paths outside its folder: {sorted(set(outside))}"
    # names with "/" are refused, not normalised into another name ("./x" or "x/" taken as "x")
    renamed = sorted({p for p in server.requested for name in _EVIL_LISTED
                      if name.strip(b"./") and p == b"/outbound/" + name.strip(b"./")})
    assert not renamed, f"listed names with '/' were taken as plain names: asked about {renamed}"


# == 3. secrets ====================================================================================

class _WebhookReceiver:
    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook receiver")
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook"

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def test_secrets_from_env_never_reach_logs_manifests_diagnostics_audit_or_config_check(tmp_path, ssh_keys, daemons):
    canary = {"GLOBEX_SFTP_PASSWORD": f"canary-sftp-{secrets_module.token_hex(8)}",
              "GLOBEX_HOOK_SECRET": f"canary-hook-{secrets_module.token_hex(8)}",
              "CATALOG_DB_PASSWORD": f"canary-pg-{secrets_module.token_hex(8)}"}
    server = SftpTestServer(tmp_path / "sftp-root", host_key=ssh_keys["host"], client_key=ssh_keys["client"],
                            passwords={"globex": canary["GLOBEX_SFTP_PASSWORD"]}).start()
    hook = _WebhookReceiver()
    try:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(server.known_hosts_line())
        outbound = server.root / "globex" / "outbound"
        outbound.mkdir(parents=True)
        partners = (f'[[partners]]\nid = "globex"\nwebhook = {{ url = "{hook.url}", '
                    'secret_env = "GLOBEX_HOOK_SECRET", allow_private = true }\n')
        cfg = config(partners=partners, daemon='log_level = "debug"\n',
                     inboxes=_sftp_inbox(server.port, known_hosts, password_env="GLOBEX_SFTP_PASSWORD"))
        env = {k: canary[k] for k in ("GLOBEX_SFTP_PASSWORD", "GLOBEX_HOOK_SECRET")}
        d = daemons(tmp_path, cfg, env=env)
        write_csv(outbound / "good.csv", ["sku", "name", "price"], [["S-1", "ok", "1.00"]])
        write_csv(outbound / "bad.csv", ["sku", "name", "price"], [["S-2", "ok", "1.00"], ["S-3", "", "x"]])
        found = wait_manifests(tmp_path, 2, partner="globex")
        wait_for(lambda: len(hook.received) >= 2, what="both webhooks delivered")
        d.signal(signal.SIGHUP)
        d.wait_event("config.reloaded")
        assert d.stop() == 0
        assert {m["status"] for m in found} == {"succeeded", "rejected"}
        assert any(m["diagnostics"] for m in found)

        # the secret was really used: the signature verifies with it
        for headers, body in hook.received:
            expected = "sha256=" + hmac.new(canary["GLOBEX_HOOK_SECRET"].encode(), body, "sha256").hexdigest()
            assert hmac.compare_digest(headers["X-Inbox-Signature"], expected)
        outputs = {f"webhook body {i}": body for i, (_, body) in enumerate(hook.received)}

        # config check (and --probe, which logs in with the password) with every secret in the environment
        full_env = dict(canary)
        for args in (("config", "check", "--config", d.config_path),
                     ("config", "check", "--probe", "-v", "--config", d.config_path)):
            done = run_cli(*args, cwd=tmp_path, env=full_env)
            assert done.returncode == 0, done.stderr
            outputs[" ".join(map(str, args[:3]))] = (done.stdout + done.stderr).encode()
        pg = tmp_path / "pg.toml"
        pg.write_text('[store]\nurl = "postgresql://inbox@127.0.0.1:5432/catalog"\n'
                      'password_env = "CATALOG_DB_PASSWORD"\n')
        for args in (("config", "check", "--config", pg), ("config", "check", "--probe", "-v", "--config", pg)):
            done = run_cli(*args, cwd=tmp_path, env=full_env)
            assert done.returncode == 0, done.stderr
            assert "CATALOG_DB_PASSWORD" in done.stdout                      # named, not revealed
            outputs["pg " + " ".join(map(str, args[:3]))] = (done.stdout + done.stderr).encode()
    finally:
        hook.close()
        server.close()

    files = _files_under(tmp_path)
    assert any(p.suffix == ".log" for p in files) and any(p.name.endswith(".diagnostics.csv") for p in files)
    assert any(p.name.startswith("audit-") for p in files) and any(p.name == "catalog.db" for p in files)
    leaks = [(str(p.relative_to(tmp_path)), name) for p in files for name, value in canary.items()
             if value.encode() in p.read_bytes()]
    leaks += [(where, name) for where, data in outputs.items() for name, value in canary.items()
              if value.encode() in data]
    assert not leaks, f"canary secrets found: {leaks}"


# == 4. SFTP host keys =============================================================================

class _RecordingPasswords(dict):
    """The test server's password table; records every password check (one per attempt)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.checked: list[str] = []

    def get(self, key, default=None):
        self.checked.append(key)
        return super().get(key, default)


@pytest.mark.parametrize("known", ["unknown", "changed"])
def test_host_keys_a_refused_server_gets_no_password_no_download_no_archive_no_results(tmp_path, ssh_keys, daemons, known):
    passwords = _RecordingPasswords({"globex": "hunter2-but-longer"})
    server = SftpTestServer(tmp_path / "sftp-root", host_key=ssh_keys["host"], client_key=ssh_keys["client"],
                            passwords=passwords).start()
    try:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("" if known == "unknown" else server.known_hosts_line(ssh_keys["other_host"]))
        known_before = known_hosts.read_bytes()
        outbound = server.root / "globex" / "outbound"
        outbound.mkdir(parents=True)
        write_csv(outbound / "catalog.csv", ["sku", "name"], [["X-1", "x"]])
        before = _fingerprint(outbound / "catalog.csv")
        server.reading.clear()
        d = daemons(tmp_path, config(partners='[[partners]]\nid = "globex"\n',
                                     inboxes=_sftp_inbox(server.port, known_hosts, password_env="GLOBEX_PW")),
                    env={"GLOBEX_PW": "hunter2-but-longer"})
        event = d.wait_event("inbox.poll_failed", failures=2)         # refused, and again on retry
        assert d.stop() == 0
    finally:
        server.close()

    assert ("unknown" if known == "unknown" else "CHANGED") in event["error"]
    assert passwords.checked == [], "the password was offered to a server whose host key was refused"
    assert not server.reading.is_set(), "a file was read from the refused server"
    assert _fingerprint(outbound / "catalog.csv") == before
    assert sorted(p.name for p in outbound.iterdir()) == ["catalog.csv"]   # no processed/, failed/, results/
    assert known_hosts.read_bytes() == known_before                       # nothing added or replaced
    assert manifests(tmp_path, "globex") == [] and _jobs(tmp_path) == []
    assert _files_under(tmp_path / "var" / "spool") == []


# == 5. S3 least privilege =========================================================================

def _readme_policy() -> dict:
    text = (REPO / "README.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S) if '"Statement"' in b]
    assert len(blocks) == 1, "README.md should print exactly one IAM policy"
    return blocks[0]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _allowed(policy: dict, action: str, resource: str, prefix: str | None) -> bool:
    for st in policy["Statement"]:
        if st.get("Effect") != "Allow" or action not in _as_list(st["Action"]):
            continue
        if not any(fnmatchcase(resource, pattern) for pattern in _as_list(st["Resource"])):
            continue
        conditions = st.get("Condition", {})
        assert set(conditions) <= {"StringLikeIfExists"}, f"condition not understood by this test: {conditions}"
        wanted = conditions.get("StringLikeIfExists", {}).get("s3:prefix")
        if wanted is None or prefix is None or any(fnmatchcase(prefix, p) for p in _as_list(wanted)):
            return True
    return False


class _RecordingProxy(FaultProxy):
    """``FaultProxy`` that also records each request: (method, path with query, headers)."""

    def __init__(self, upstream: str):
        super().__init__(upstream, {})
        self.requests: list[tuple[str, str, dict]] = []
        self._server.RequestHandlerClass = _RecordingHandler


class _RecordingHandler(_ProxyHandler):
    def _forward(self) -> None:
        proxy = self.server.proxy
        with proxy._lock:
            proxy.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        super()._forward()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def _iam(method: str, target: str, headers: dict) -> list[tuple[str, str, str, str | None]]:
    """(operation, IAM action, resource ARN, s3:prefix) for one path-style S3 request."""
    path, _, query = target.partition("?")
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    bucket, _, key = urllib.parse.unquote(path).lstrip("/").partition("/")
    bucket_arn, object_arn = f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/{key}"
    if not key:
        if method == "GET" and params.get("list-type") == ["2"]:
            return [("ListObjectsV2", "s3:ListBucket", bucket_arn, params.get("prefix", [""])[0])]
        if method == "HEAD":
            return [("HeadBucket", "s3:ListBucket", bucket_arn, None)]
    elif not set(params) - {"x-id"}:
        if method in ("GET", "HEAD"):
            return [("GetObject" if method == "GET" else "HeadObject", "s3:GetObject", object_arn, None)]
        if method == "DELETE":
            return [("DeleteObject", "s3:DeleteObject", object_arn, None)]
        if method == "PUT" and "x-amz-copy-source" in headers:
            source = urllib.parse.unquote(headers["x-amz-copy-source"].split("?")[0]).lstrip("/")
            return [("CopyObject", "s3:PutObject", object_arn, None),
                    ("CopyObject (source)", "s3:GetObject", f"arn:aws:s3:::{source}", None)]
        if method == "PUT":
            return [("PutObject", "s3:PutObject", object_arn, None)]
    raise AssertionError(f"an S3 request this test does not know the IAM action of: {method} {target}")


def test_s3_readme_policy_grants_exactly_the_actions_and_resources_a_full_cycle_uses(tmp_path, moto, aws_env):
    policy = _readme_policy()
    [list_statement] = [s for s in policy["Statement"] if "s3:ListBucket" in _as_list(s["Action"])]
    bucket = list_statement["Resource"].split(":::")[1]
    prefix = _as_list(list_statement["Condition"]["StringLikeIfExists"]["s3:prefix"])[0]
    assert prefix.endswith("/")
    client = boto3.client("s3", endpoint_url=moto)
    client.create_bucket(Bucket=bucket)
    for key in ("other-partner/feed.csv", f"{prefix}sub/deeper.csv"):           # never to be touched
        client.put_object(Bucket=bucket, Key=key, Body=b"sku,name\nNO,no\n")
    proxy = _RecordingProxy(moto)
    try:
        def run_once(root: Path, **inbox) -> None:
            settings = {"partner": "acme", "kind": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": proxy.url,
                        "poll_interval": "200ms", "settle": "200ms", **inbox}
            text = "[[inboxes]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
            d = DaemonProcess(root, config(partners='[[partners]]\nid = "acme"\n', inboxes=text), once=True, env=aws_env)
            try:
                assert d.wait(60) == 0, d.log_path.read_text()
            finally:
                d.close()

        # move: a good file to processed/, a rejected one to failed/, answers (and diagnostics) to results/
        client.put_object(Bucket=bucket, Key=f"{prefix}good.csv", Body=b"sku,name,price\nA1,Anvil,9.99\n")
        client.put_object(Bucket=bucket, Key=f"{prefix}bad.csv", Body=b"no,name,column\n1,2,3\n")
        run_once(tmp_path)
        # on_success = "delete", in a second run on the same prefix
        client.put_object(Bucket=bucket, Key=f"{prefix}again.csv", Body=b"sku,name,price\nA2,Rope,1.50\n")
        run_once(tmp_path, on_success="delete")
        # the probe: HEAD of the bucket, a one-key listing
        probe_cfg = tmp_path / "probe.toml"
        probe_cfg.write_text(config(partners='[[partners]]\nid = "acme"\n', inboxes=(
            f'[[inboxes]]\npartner = "acme"\nkind = "s3"\nbucket = "{bucket}"\nprefix = "{prefix}"\n'
            f'endpoint_url = "{proxy.url}"\n')))
        probe = run_cli("config", "check", "--probe", "--config", probe_cfg, cwd=tmp_path, env=aws_env)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        requests = list(proxy.requests)
        keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", ())}
    finally:
        proxy.close()
        client.close()

    found = manifests(tmp_path, "acme")
    assert sorted(m["status"] for m in found) == ["rejected", "succeeded", "succeeded"]
    assert {f"{prefix}processed/good.csv", f"{prefix}failed/bad.csv"} <= keys
    assert not {f"{prefix}good.csv", f"{prefix}bad.csv", f"{prefix}again.csv"} & keys
    assert {f"{prefix}results/{m['job_id']}.result.json" for m in found} <= keys

    used = [(op, action, resource, pfx) for method, target, headers in requests
            for op, action, resource, pfx in _iam(method, target, headers)]
    operations = {op for op, *_ in used}
    assert {"ListObjectsV2", "GetObject", "HeadObject", "CopyObject", "PutObject", "DeleteObject",
            "HeadBucket"} <= operations, operations
    denied = sorted({(op, resource, pfx) for op, action, resource, pfx in used
                     if not _allowed(policy, action, resource, pfx)})
    assert not denied, f"requests the README policy does not allow: {denied}"
    policy_actions = {a for st in policy["Statement"] for a in _as_list(st["Action"])}
    assert {action for _, action, _, _ in used} == policy_actions
    written = {resource for op, action, resource, _ in used if action == "s3:PutObject"}
    assert written and all(any(r.startswith(f"arn:aws:s3:::{bucket}/{prefix}{folder}/")
                               for folder in ("processed", "failed", "results")) for r in written), written
    assert not any("other-partner/" in r or "/sub/" in r for _, _, r, _ in used)


# == 6. the systemd unit ===========================================================================

def test_systemd_unit_security_exposure_stays_below_2():
    analyze = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze"
                                                  if os.path.exists("/usr/bin/systemd-analyze") else None)
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: cannot rate the unit's exposure")
    done = subprocess.run([analyze, "security", "--offline=true", str(REPO / "systemd" / "inbox-daemon.service")],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert match, f"no overall exposure in the output (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    assert float(match.group(1)) < 2.0, done.stdout[-2000:]


# == 7. file permissions ===========================================================================

def _world_accessible(var: Path) -> list[str]:
    out = []
    for folder, dirs, files in os.walk(var):
        for name in [*dirs, *files]:
            p = Path(folder) / name
            mode = os.lstat(p).st_mode
            if mode & 0o007:
                out.append(f"{p.relative_to(var)} {stat.filemode(mode)}")
    return out


def _assert_kinds_present(var: Path) -> None:
    names = [p.relative_to(var).as_posix() for p in _files_under(var)]
    for kind in (r"^results/.+\.result\.json$", r"^results/.+\.diagnostics\.csv$", r"^audit/audit-.+\.jsonl$",
                 r"^spool/.+/[0-9a-f]{64}$", r"^catalog\.db$"):
        assert any(re.search(kind, n) for n in names), f"no file like {kind} under var/: {names}"


def test_permissions_daemon_files_have_no_world_access_even_with_umask_022(tmp_path, daemons):
    inbox = tmp_path / "inbox" / "default"
    previous = os.umask(0o022)
    try:
        d = daemons(tmp_path, config())
    finally:
        os.umask(previous)
    _drop(inbox, "good.csv", "sku,name\nP-1,ok\n")
    _drop(inbox, "rejected.csv", "sku,name,price\nP-2,ok,1\nP-3,,x\n")          # diagnostics, spool kept
    wait_manifests(tmp_path, 2)
    var = tmp_path / "var"
    _assert_kinds_present(var)
    running = _world_accessible(var)                                            # -wal/-shm while open
    assert d.stop() == 0
    assert not running and not _world_accessible(var), running or _world_accessible(var)


def test_permissions_ingest_files_have_no_world_access_even_with_umask_022(tmp_path):
    rows = "".join(f"I-{i},item {i},1.00\n" for i in range(40))
    (tmp_path / "partial.csv").write_text("sku,name,price\n" + rows + "I-X,,oops\n")
    (tmp_path / "rejected.csv").write_text("sku,name,price\nR-1,,x\n")
    codes = []
    for name in ("partial.csv", "rejected.csv"):
        done = subprocess.run(["sh", "-c", 'umask 022; exec "$0" "$@"', EXE, "ingest", name, "--json"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={k: v for k, v in os.environ.items() if k != "INBOX_DAEMON_CONFIG"})
        codes.append(done.returncode)
    assert codes == [0, 4], codes
    var = tmp_path / "var"
    _assert_kinds_present(var)
    assert not _world_accessible(var), _world_accessible(var)

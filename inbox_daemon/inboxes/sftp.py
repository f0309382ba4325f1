"""An SFTP inbox (paramiko): poll a remote folder, download while hashing, archive by rename.

Host keys are checked against the configured ``known_hosts`` only, with paramiko's
``RejectPolicy``: an unknown host is refused, a changed key is refused, nothing is ever added
(the convenience default of many clients, and an open door to a man in the middle). One
connection per inbox, kept alive with SSH keepalives and reopened on the next call after any
failure; calls are serialised on it. Every path is the configured folder joined with a plain
file name (``safe_name``), so nothing the server lists can lead outside that folder.

Complete files only: a listing sees a client that paused longer than ``settle`` as done, so the
file is stat'ed before and after the download and compared with the listed size and mtime
(``fetch``), and again right before the commit (``verify_unchanged``); a file that changed is read
again once it is ready. A client that goes on writing after its file was archived (the rename
moves the very file it writes to) is caught by watching what was archived (``ArchiveWatch``): a
stat per poll of each file archived in the last hour (at most 1,000).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import posixpath
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import paramiko.hostkeys

from config.errors import InboxMisconfigured, InboxUnavailable, SourceChanged, SourceGone
from config.model import SftpInboxConfig
from config.status import ARCHIVED_AS_SUCCESS
from inbox_daemon.drop import Drop
from inbox_daemon.inboxes.archived import Archived, ArchiveWatch
from inbox_daemon.inboxes.base import (
    FAILED,
    MARKER_SUFFIXES,
    PROCESSED,
    RESULTS,
    archive_candidates,
    archive_name,
    check_listed_size,
    marker_names,
    read_checked,
    safe_name,
)
from inbox_daemon.inboxes.polling import Entry, PollingInbox
from inbox_daemon.logs import register_secret
from inbox_daemon.spool import spool_stream

KEEPALIVE_S = 30
TIMEOUT_S = 20          # seconds the server may take to answer one request
STUCK_S = 120           # an operation (a download is many requests) waiting longer shows on /healthz
MAX_ARCHIVE_LOOKUPS = 100   # names of failed/ tried for a requeued job's file (archive_candidates)


def _fingerprint(key: paramiko.PKey | None) -> str:
    """``SHA256:<base64>``, as ``ssh-keygen -l`` shows a key (a prefix of the key's base64 is the
    same for every key of a type)."""
    if key is None:
        return "none"
    import base64
    import hashlib
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class SftpInbox(PollingInbox[SftpInboxConfig]):
    def __init__(self, config: SftpInboxConfig, *, ssh_client_factory=paramiko.SSHClient):
        super().__init__(config)
        self._factory = ssh_client_factory
        self._ssh: paramiko.SSHClient | None = None
        self._transport_lock = threading.RLock()      # held to (re)connect or disconnect, never for I/O
        self._generation = 0                           # bumped at every connection
        self._local = threading.local()                # each thread's SFTP channel on the connection
        self._running: dict[int, tuple[str, float]] = {}   # thread -> (operation, since): /healthz
        self.root = config.path.rstrip("/") or "/"
        self._archives = ArchiveWatch(settle=config.settle, log=self.log, clock=self._clock)
        # (key, version) -> (sha256, when) of each file read, for ``archive``
        self._read: dict[tuple[str, str], tuple[str, float]] = {}

    # -- connection -----------------------------------------------------------------------------
    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """paramiko and socket errors → our inbox errors, at this boundary only."""
        cfg = self.config
        host = f"{cfg.host}:{cfg.port}"
        me = threading.get_ident()
        self._running[me] = (what, self._clock())
        try:
            yield
        except paramiko.BadHostKeyException as exc:
            self.disconnect()
            raise InboxMisconfigured(
                f"host key of {host} CHANGED: the server presents {exc.key.get_name()} "
                f"{_fingerprint(exc.key)}, {cfg.known_hosts} has another ({_fingerprint(exc.expected_key)}). "
                f"Refusing to connect; if the change is legitimate, replace the entry "
                f"(ssh-keyscan -p {cfg.port} {cfg.host})") from exc
        except paramiko.hostkeys.InvalidHostKey as exc:
            self.disconnect()
            raise InboxMisconfigured(f"{cfg.known_hosts} has an unreadable entry: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise InboxMisconfigured(f"{what} on {host}: a file name in {self.root!r} is not UTF-8 "
                                     f"({exc.object[max(0, exc.start - 20):exc.end + 20]!r})") from exc
        except paramiko.AuthenticationException as exc:
            self.disconnect()
            raise InboxMisconfigured(f"authentication as {cfg.username!r} on {host} failed: {exc}") from exc
        except paramiko.SSHException as exc:
            self.disconnect()
            if "not found in known_hosts" in str(exc):
                raise InboxMisconfigured(
                    f"host key of {host} is unknown: it is not in {cfg.known_hosts}. Verify the key "
                    f"out of band, then add it (ssh-keyscan -p {cfg.port} {cfg.host} >> {cfg.known_hosts})"
                ) from exc
            raise InboxUnavailable(f"{what} on {host}: SSH error: {exc}") from exc
        except PermissionError as exc:
            raise InboxMisconfigured(f"{what} on {host}: permission denied ({exc})") from exc
        except FileNotFoundError as exc:
            if what == "list":
                raise InboxMisconfigured(f"folder {self.root!r} does not exist on {host}") from exc
            raise InboxUnavailable(f"{what} on {host}: no such file ({exc})") from exc
        except (TimeoutError, OSError, EOFError, paramiko.SFTPError) as exc:
            self.disconnect()
            raise InboxUnavailable(f"{what} on {host}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            self._running.pop(me, None)

    def _client(self) -> paramiko.SFTPClient:
        """This thread's SFTP channel on the inbox's one SSH connection (made when there is none):
        the poll and each worker talk to the server at once, so a slow download never keeps the
        next listing waiting, and no lock is held while the server answers."""
        local = self._local
        sftp = getattr(local, "sftp", None)
        if sftp is not None and local.generation == self._generation and not sftp.get_channel().closed:
            return sftp
        with self._transport_lock:
            transport = self._ssh.get_transport() if self._ssh is not None else None
            if transport is None or not transport.is_active():
                self._connect()
            assert self._ssh is not None
            sftp = self._ssh.open_sftp()
            sftp.get_channel().settimeout(TIMEOUT_S)
            local.sftp, local.generation = sftp, self._generation
        return sftp

    def _connect(self) -> None:
        self.disconnect()
        cfg = self.config
        ssh = self._factory()
        ssh.load_host_keys(cfg.known_hosts)          # ONLY these keys; never the user's, never added
        ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
        password = os.environ.get(cfg.password_env) if cfg.password_env else None
        if cfg.password_env and password is None:
            raise InboxMisconfigured(f"environment variable {cfg.password_env} (password_env) is not set")
        register_secret(password)
        try:
            ssh.connect(cfg.host, port=cfg.port, username=cfg.username, key_filename=cfg.key_file,
                        password=password, look_for_keys=False, allow_agent=False, timeout=TIMEOUT_S,
                        banner_timeout=TIMEOUT_S, auth_timeout=TIMEOUT_S)
            ssh.get_transport().set_keepalive(KEEPALIVE_S)
        except BaseException:
            ssh.close()
            raise
        self._ssh = ssh
        self._generation += 1
        self.log.info("sftp.connected", host=cfg.host, port=cfg.port, username=cfg.username)

    def disconnect(self) -> None:
        """Close the connection: every thread's channel with it (a thread waiting on the server
        gets an error at once, which is how a stop ends a download stuck on a slow server)."""
        with self._transport_lock:
            ssh, self._ssh = self._ssh, None
            self._generation += 1
        if ssh is not None:
            try:
                ssh.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass       # already broken: that is why we are closing it

    def close(self) -> None:
        self.disconnect()          # first: a poll or download waiting on the server ends now
        super().close()

    def failing(self) -> dict | None:
        """For /healthz: failing polls, archived files that grew, and an operation the server has
        kept waiting far past any one answer (``stuck``)."""
        now = self._clock()
        stuck = [(now - since, what) for what, since in list(self._running.values()) if now - since > STUCK_S]
        found = [f for f in (super().failing(), self._archives.failing()) if f]
        if stuck:
            seconds, what = max(stuck)
            found.append({"stuck": what, "error": f"{what} on {self.config.host} has been waiting for the server "
                                                  f"for {seconds:.0f} s"})
        if not found:
            return None
        return {**{k: v for f in found for k, v in f.items()}, "error": "; ".join(f["error"] for f in found)}

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # -- PollingInbox ---------------------------------------------------------------------------
    def uri(self, key: str) -> str:
        cfg = self.config
        return f"sftp://{cfg.username}@{cfg.host}:{cfg.port}{self._path(key)}"

    def list_entries(self) -> Iterable[Entry]:
        with self._errors("list"):
            attrs = self._client().listdir_attr(self.root)
        for a in attrs:
            name = safe_name(a.filename)
            if name is None or a.st_mode is None or not stat.S_ISREG(a.st_mode):
                continue     # folders (processed/, failed/, results/), links, odd names
            yield Entry(key=name, name=name, size=a.st_size or 0, version=_version(a),
                        modified=float(a.st_mtime or 0))

    def ready_entries(self) -> list[Entry]:
        ready = super().ready_entries()
        self._watch_archived()
        return ready

    def fetch(self, drop: Drop, spool_dir: Path, *, max_bytes: int | None = None) -> tuple[Path, str, int]:
        """Download the file judged ready, and keep it only if it still is that version (size
        and mtime) once it was read to its end: else ``SourceChanged``, and the spool keeps
        nothing of it. (No stat before the read: the listing just gave size and mtime, and a
        file that changed since is caught at the end, one round trip fewer per file.) Over
        ``max_bytes`` (as listed, or as read): not spooled, ``FileTooLarge``."""
        name = self._checked(drop.key)
        check_listed_size(drop.size, max_bytes, partner=self.config.partner)
        with self._errors("download"):
            sftp = self._client()
            try:
                remote = sftp.open(self._path(name), "rb")
            except FileNotFoundError as exc:     # deleted, or taken in by another look at it
                raise SourceGone(f"{drop.key} disappeared before it could be read") from exc
            with remote:
                remote.prefetch(drop.size or None)
                read_at = time.time()
                spooled = spool_stream(read_checked(remote, lambda read: self._read_whole(drop, read),
                                                    max_bytes=max_bytes, partner=self.config.partner), spool_dir)
                if len(self._read) >= MAX_REMEMBERED_READS:      # files read never archived (abandoned)
                    self._read.pop(next(iter(self._read)))
                self._read[(drop.key, drop.version)] = (spooled[1], read_at)
                return spooled

    def _read_whole(self, drop: Drop, read: int) -> None:
        if read != drop.size:
            raise SourceChanged(f"{drop.key} changed while it was read ({drop.size} bytes listed, {read} "
                                "read); it is read again once it is ready")
        self.verify_unchanged(drop)

    def verify_unchanged(self, drop: Drop) -> None:
        """``SourceChanged`` if the file at ``drop.key`` has another size or mtime than the one
        read (a client went on writing). A file gone is fine: what was read was whole."""
        name = self._checked(drop.key)
        with self._errors("look at"):
            try:
                st = self._client().stat(self._path(name))
            except FileNotFoundError:
                return
        if _version(st) != drop.version:
            raise SourceChanged(f"{drop.key} changed after it was listed (mtime-size {drop.version} then, "
                                f"{_version(st)} now); it is read again once it is ready")

    def archive(self, drop: Drop, status: str) -> None:
        name = self._checked(drop.key)
        with self._errors("archive"):
            sftp = self._client()
            source = self._path(name)
            try:
                st = sftp.stat(source)
            except FileNotFoundError:
                # archived already (a restart between outcome and archive); or a requeued job
                # that went through this time, whose file the answer before put in failed/
                if status in ARCHIVED_AS_SUCCESS:
                    self._out_of_failed(sftp, drop)
                return
            read = self._read.pop((drop.key, drop.version), None)
            if _version(st) != drop.version:
                return                    # a newer upload under the same name: it gets its own job
            # a client that sets the mtime back (``put -p``) may have put a file of the same size
            # and mtime over it since it was read: what is there is checked by its content
            expected = read[0] if read is not None and _preserved(st, read[1], self.config) else None
            self._archives.taken_in(name)
            if status in ARCHIVED_AS_SUCCESS:
                if self.config.on_success == "keep":
                    self.kept(drop)
                    return
                if self.config.on_success == "delete":
                    if expected is not None and not self._holds(sftp, source, expected, drop):
                        self.gone(drop)           # what is there now: offered as a new delivery
                        return
                    self._move_markers(sftp, name, None)
                    sftp.remove(source)
                    self.gone(drop)
                    return
                folder = PROCESSED
            else:
                folder = FAILED
            self._mkdir(sftp, folder)
            target = archive_name(name, drop.version, self._taken_in(sftp, folder), room=self._marker_room())
            archived = self._path(folder, target)
            # markers first: one left behind would make the next upload of that name ready early
            self._move_markers(sftp, name, archived)
            sftp.posix_rename(source, archived)
            if expected is not None and not self._holds(sftp, archived, expected, drop):
                # back where it was put, a delivery of its own; a plain rename, which replaces
                # nothing: a third upload under that name meanwhile keeps it in the archive, said
                try:
                    sftp.rename(archived, source)
                    self._move_markers_from(sftp, archived, source)
                except OSError as exc:
                    self.log.error("file.rewritten_left_in_archive", file=drop.key, archived=f"{folder}/{target}",
                                   error=str(exc), reason="another upload took its name: move it back by hand")
                self.gone(drop)
                return
            self.gone(drop)
            self._archives.remember(name, f"{folder}/{target}", (st.st_size or 0, st.st_mtime or 0))

    def _holds(self, sftp: paramiko.SFTPClient, path: str, sha256: str, drop: Drop) -> bool:
        """Does ``path`` hold the content that was read (its sha256)? Read again in full: SFTP
        tells no inode, no change time and no checksum that could say so for less."""
        digest = hashlib.sha256()
        with sftp.open(path, "rb") as fh:
            fh.prefetch(drop.size or None)
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() == sha256:
            return True
        self.log.warning("file.rewritten_before_archive", file=drop.key,
                         reason="a file of the same size and mtime was put over the one applied since it was read: "
                                "it stays in the inbox, a delivery of its own")
        return False

    def _out_of_failed(self, sftp: paramiko.SFTPClient, drop: Drop) -> None:
        """As ``LocalInbox._out_of_failed``: the file of a requeued job that went through moves
        from failed/ to processed/ (or is deleted); found by the names ``archive_name`` gives it
        and its version (mtime and size, which a rename keeps)."""
        if self.config.on_success == "keep":
            return
        room = self._marker_room()
        for name in itertools.islice(archive_candidates(drop.key, drop.version, room=room), MAX_ARCHIVE_LOOKUPS):
            try:
                st = sftp.stat(self._path(FAILED, name))
            except FileNotFoundError:
                continue
            if _version(st) == drop.version:
                break
        else:
            return
        found = self._path(FAILED, name)
        if self.config.on_success == "delete":
            self._move_markers_from(sftp, found, None)
            sftp.remove(found)
        else:
            self._mkdir(sftp, PROCESSED)
            target = self._path(PROCESSED, archive_name(drop.key, drop.version, self._taken_in(sftp, PROCESSED),
                                                        room=room))
            self._move_markers_from(sftp, found, target)
            sftp.posix_rename(found, target)
        self.log.info("file.moved_out_of_failed", file=drop.key, was=f"{FAILED}/{name}", to=self.config.on_success)

    def _taken_in(self, sftp: paramiko.SFTPClient, folder: str):
        """``archive_name``'s question: is a name taken in ``folder`` on the server?"""
        def taken(candidate: str) -> bool:
            try:
                sftp.stat(self._path(folder, candidate))
            except FileNotFoundError:
                return False
            return True
        return taken

    def _marker_room(self) -> int:
        """Bytes an archived name must leave for its markers' suffixes."""
        return max(map(len, MARKER_SUFFIXES)) if self.config.ready_marker else 0

    def _move_markers_from(self, sftp: paramiko.SFTPClient, archived: str, target: str | None) -> None:
        """The markers archived next to ``archived`` moved next to ``target`` (deleted: None)."""
        if not self.config.ready_marker:
            return
        for suffix in MARKER_SUFFIXES:
            try:
                if target is None:
                    sftp.remove(archived + suffix)
                else:
                    sftp.posix_rename(archived + suffix, target + suffix)
            except FileNotFoundError:
                continue

    def _move_markers(self, sftp: paramiko.SFTPClient, name: str, target: str | None) -> None:
        """``ready_marker``: the markers of ``name`` next to ``target`` (the archived file's
        path), or deleted when ``target`` is None."""
        if not self.config.ready_marker:
            return
        for marker in marker_names(name):
            try:
                if target is None:
                    sftp.remove(self._path(marker))
                else:
                    sftp.posix_rename(self._path(marker), target + marker[len(name):])
            except FileNotFoundError:
                continue

    # -- archived files that grew ---------------------------------------------------------------
    def _watch_archived(self) -> None:
        """A stat of every file archived lately (``ArchiveWatch``); one that grew and is quiet
        again goes back into the folder, to be read whole as a new delivery."""
        watched = self._archives.watched()
        if not watched:
            return
        with self._errors("look at archived files"):
            sftp = self._client()
            for archived in watched:
                try:
                    st = sftp.stat(self._path(archived.path))
                except FileNotFoundError:
                    self._archives.seen(archived.path, None)
                    continue
                self._archives.seen(archived.path, (st.st_size or 0, st.st_mtime or 0))
            for archived in self._archives.due():
                self._return(sftp, archived)

    def _return(self, sftp: paramiko.SFTPClient, archived: Archived) -> None:
        """Move a grown file back under its own name; the name taken (a new upload) means wait.
        A plain SFTP rename never replaces an existing file; markers go first, as at archive."""
        target = self._path(archived.name)
        try:
            sftp.stat(target)
            return
        except FileNotFoundError:
            pass
        if self.config.ready_marker:
            for marker in marker_names(archived.name):
                try:
                    sftp.posix_rename(self._path(archived.path + marker[len(archived.name):]), self._path(marker))
                except FileNotFoundError:
                    continue
        try:
            sftp.rename(self._path(archived.path), target)
        except FileNotFoundError:
            return
        except OSError as exc:                  # the name was taken meanwhile: next poll
            self.log.info("file.return_deferred", archived=archived.path, error=str(exc))
            return
        self._archives.returned(archived)

    def _poll_soon(self) -> bool:
        return super()._poll_soon() or bool(self._archives.growing())

    def write_back(self, drop: Drop, name: str, data: bytes) -> None:
        name = self._checked(name)
        with self._errors("write back"):
            sftp = self._client()
            self._mkdir(sftp, RESULTS)
            tmp = self._path(RESULTS, f".{name}.part")
            with sftp.open(tmp, "wb") as fh:
                fh.write(data)
            sftp.posix_rename(tmp, self._path(RESULTS, name))    # the partner never sees half a file

    def withdraw(self, drop: Drop, name: str) -> None:
        name = self._checked(name)
        with self._errors("withdraw"):
            try:
                self._client().remove(self._path(RESULTS, name))
            except FileNotFoundError:
                pass

    def probe(self) -> dict:
        try:
            with self._errors("list"):
                count = len(self._client().listdir(self.root))
        except Exception as exc:  # noqa: BLE001 — a probe reports every failure, whatever its type
            return {"ok": False, "detail": str(exc)}
        return {"ok": True, "detail": f"connected, host key verified, {count} entries in {self.root}"}

    def _mkdir(self, sftp: paramiko.SFTPClient, folder: str) -> None:
        try:
            sftp.stat(self._path(folder))
        except FileNotFoundError:
            try:
                sftp.mkdir(self._path(folder))
            except OSError:
                # another daemon made it between our stat and our mkdir (SFTP has no "exist ok")
                sftp.stat(self._path(folder))

    @staticmethod
    def _checked(key: str) -> str:
        name = safe_name(key)
        if name is None:
            raise InboxMisconfigured(f"refusing a path that leaves the inbox folder: {key!r}")
        return name


MAX_REMEMBERED_READS = 10_000       # files read and not yet archived whose sha256 is kept for ``archive``


def _preserved(attrs: paramiko.SFTPAttributes, read_at: float, config: SftpInboxConfig) -> bool:
    """Was the file's mtime set back by its client (``put -p``, ``rsync -t``)? An upload leaves
    the time of its last write, which a listing sees within ``poll_interval`` and which is
    ``settle`` old before the file is read; an mtime older than that (and a minute of clock skew)
    was not left by the upload."""
    return (attrs.st_mtime or 0) < read_at - config.poll_interval - config.settle - 60


def _version(attrs: paramiko.SFTPAttributes) -> str:
    """What names a version of a remote file: mtime and size (SFTP has no inode or ctime)."""
    return f"{attrs.st_mtime}-{attrs.st_size}"

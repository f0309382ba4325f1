"""The real OpenSSH server and client for tests: ``sshd`` on loopback, driven by ``sftp -b``.

Partners upload with OpenSSH's ``sftp`` to OpenSSH's ``sshd``, which write straight into the
final name, keep times with ``put -p`` and may stall mid-file. ``OpenSshServer`` runs
``/usr/sbin/sshd -D -e`` with keys, config and logs in a temporary folder: key authentication
only, every session forced into ``internal-sftp`` starting in ``folder`` (the inbox). The daemon
logs in as the same user with ``key_file`` and verifies the host key against ``known_hosts``.

Where ``sshd`` (Debian's ``openssh-server``) is absent, tests using the ``sshd`` fixture are
skipped with that reason, unless ``INBOX_DAEMON_REQUIRE_SSHD=1`` (set by ``.ci/run``) makes
that a failure.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")         # sshd refuses to start without it (Debian creates it at boot)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
START_ATTEMPTS = 3                      # the free port we picked may be taken before sshd binds it


def missing() -> str | None:
    """Why the OpenSSH tests cannot run here, or None."""
    if not SSHD.is_file():
        return f"OpenSSH server not installed: {SSHD} is missing (apt-get install openssh-server)"
    for tool in ("sftp", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"OpenSSH client not installed: {tool} is not on PATH (apt-get install openssh-client)"
    return None


def require_openssh() -> None:
    reason = missing()
    if reason and os.environ.get("INBOX_DAEMON_REQUIRE_SSHD") == "1":
        pytest.fail(f"{reason}; INBOX_DAEMON_REQUIRE_SSHD=1 is set, so this is a failure, not a skip")
    if reason:
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True)
    return path


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue                    # exited while we looked
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])      # the name may hold spaces and ")"
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class OpenSshServer:
    """``sshd`` on 127.0.0.1 with its own host key, one authorised client key, and every session
    forced into ``internal-sftp`` starting in ``folder``. The login user is whoever runs the
    suite (root in CI; as another user sshd can only log that user in)."""

    def __init__(self, root: Path):
        self.root = root
        self.folder = root / "outbound"           # where a partner's sftp session starts
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.port = 0
        self.log_path = root / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def known_hosts(self) -> Path:
        """Trusts this server's host key under ``[127.0.0.1]:port``: for the daemon and the client."""
        return self.root / "known_hosts"

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> OpenSshServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.folder.mkdir(exist_ok=True)
        host_key = _keygen(self.root / "host_key")
        _keygen(self.client_key)
        shutil.copyfile(self.client_key.with_suffix(".pub"), self.root / "authorized_keys")
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        for _ in range(START_ATTEMPTS):
            self.port = _free_port()
            self._write_config(host_key)
            if self._launch():
                break
        else:
            raise RuntimeError(f"sshd did not start in {START_ATTEMPTS} attempts:\n{self.log()}")
        key_type, key_b64 = host_key.with_suffix(".pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {key_type} {key_b64}\n")
        return self

    def _write_config(self, host_key: Path) -> None:
        (self.root / "sshd_config").write_text(
            "ListenAddress 127.0.0.1\n"
            f"Port {self.port}\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}\n"
            f"PidFile {self.root / 'sshd.pid'}\n"
            f"AllowUsers {self.user}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "UsePAM no\n"
            "StrictModes no\n"                   # the keys live in a temporary folder
            "AllowTcpForwarding no\n"
            "X11Forwarding no\n"
            "Subsystem sftp internal-sftp\n"
            # every session is SFTP and starts in the inbox, like a partner's account; no chroot:
            # it needs every folder above it root-owned and not writable by others, which /tmp is not
            f"ForceCommand internal-sftp -d {self.folder}\n"
            "LogLevel VERBOSE\n")

    def _launch(self) -> bool:
        """Start sshd and wait until its port greets like an SSH server; False if it exited
        (the port was taken meanwhile)."""
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                return False
            with suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                if probe.recv(64).startswith(b"SSH-2.0-"):
                    return True
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not answer on 127.0.0.1:{self.port} within {START_TIMEOUT_S} s:\n{self.log()}")

    def stop(self) -> None:
        """Stop every session, then the listener. Sessions run in sessions of their own (setsid)
        and would outlive the listener: they are found by pid. The innermost processes (the
        ``internal-sftp`` of each connection) are stopped first, so each connection closes the
        way it does when its client leaves and every process is reaped by its parent; whatever
        is still there after ``STOP_TIMEOUT_S`` is killed."""
        if self.proc is None:
            return
        tree = _children()
        sessions = _descendants(self.proc.pid, tree)
        innermost = [pid for pid in sessions if pid not in tree]
        self._signal(innermost, signal.SIGTERM, timeout=1.0, reaped=True)
        self._signal(sessions, signal.SIGTERM)
        self._signal(sessions, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
        self.proc = None

    @staticmethod
    def _signal(pids: list[int], sig: int, *, timeout: float = STOP_TIMEOUT_S, reaped: bool = False) -> None:
        """Send ``sig`` to those of ``pids`` still running and wait, at most ``timeout`` seconds,
        until none runs (``reaped``: until their parents have reaped them too)."""
        for pid in filter(_alive, pids):
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        running = (lambda pid: Path(f"/proc/{pid}").exists()) if reaped else _alive
        deadline = time.monotonic() + timeout
        while any(map(running, pids)) and time.monotonic() < deadline:
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    # -- the real client ------------------------------------------------------------------------
    def sftp_command(self, *, batch: str = "-", limit_kbit: int | None = None) -> list[str]:
        """``sftp`` in batch mode (commands from ``batch``, ``-``: stdin), this server's host key
        required, no user or system ssh configuration; ``limit_kbit``: bandwidth limit (``-l``)."""
        return ["sftp", "-b", batch, "-F", "/dev/null", "-i", str(self.client_key), "-P", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                *(["-l", str(limit_kbit)] if limit_kbit else []), f"{self.user}@127.0.0.1"]

    def sftp(self, *commands: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``commands`` with the real ``sftp`` client; fails the test if it fails."""
        done = subprocess.run(self.sftp_command(), input="".join(f"{c}\n" for c in commands), text=True,
                              capture_output=True, timeout=timeout)
        assert done.returncode == 0, f"sftp {commands} exited {done.returncode}:\n{done.stderr}\n{self.log()[-3000:]}"
        return done


@dataclass
class BackgroundSftp:
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


class SftpClients:
    """``sftp`` clients started in the background, each in a process group of its own (sftp and
    the ssh it runs), all stopped at teardown, also one left stopped by SIGSTOP."""

    def __init__(self, server: OpenSshServer):
        self.server = server
        self.started: list[BackgroundSftp] = []

    def start(self, *commands: str, limit_kbit: int | None = None) -> BackgroundSftp:
        n = len(self.started)
        batch = self.server.root / f"sftp-{n}.batch"
        batch.write_text("".join(f"{c}\n" for c in commands))
        log_path = self.server.root / f"sftp-{n}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(self.server.sftp_command(batch=str(batch), limit_kbit=limit_kbit),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        client = BackgroundSftp(proc, log_path)
        self.started.append(client)
        return client

    def close(self) -> None:
        for client in self.started:
            if client.proc.poll() is not None:
                continue
            with suppress(ProcessLookupError):
                os.killpg(client.proc.pid, signal.SIGCONT)
                client.proc.terminate()         # sftp stops its ssh and waits for it
            try:
                client.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(client.proc.pid, signal.SIGKILL)
                client.proc.wait(STOP_TIMEOUT_S)


@pytest.fixture
def sshd(tmp_path) -> Iterator[OpenSshServer]:
    """A running OpenSSH sshd on loopback (skipped, or failed under INBOX_DAEMON_REQUIRE_SSHD=1,
    where it is not installed); stopped with every session it forked when the test ends."""
    require_openssh()
    server = OpenSshServer(tmp_path / "openssh")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def sftp_clients(sshd) -> Iterator[SftpClients]:
    clients = SftpClients(sshd)
    try:
        yield clients
    finally:
        clients.close()

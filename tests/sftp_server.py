"""A real SFTP server for tests: asyncssh on loopback, key auth, one chroot per user.

It runs its own asyncio loop on a thread. ``slow`` makes each read take a while (so a test can
act in the middle of a download); ``kill()`` drops every connection and stops listening, the way
a crashed server would look to a client; ``start()`` again listens on the same port.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import asyncssh


class SftpTestServer:
    def __init__(self, root: Path, *, host_key: asyncssh.SSHKey, client_key: asyncssh.SSHKey,
                 passwords: dict[str, str] | None = None):
        self.root = root
        self.passwords = passwords or {}
        self.host_key = host_key
        self.client_key = client_key
        self.port = 0
        self.slow = 0.0
        self.slow_match: str | None = None       # only files whose path holds this are slow
        self.open_files: list = []              # what clients opened: a client gone mid-read leaves them
        self.reading = threading.Event()          # set at the first read of a file
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sftp-server", daemon=True)
        self._thread.start()
        self._acceptor = None
        self._conns: list = []

    def _run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> SftpTestServer:
        server = self
        read_lock = asyncio.Lock()

        class ChrootServer(asyncssh.SFTPServer):
            def __init__(self, chan):
                home = server.root / chan.get_extra_info("username")
                home.mkdir(parents=True, exist_ok=True)
                super().__init__(chan, chroot=str(home).encode())

            def open(self, path, pflags, attrs):
                file_obj = super().open(path, pflags, attrs)
                server.open_files.append(file_obj)
                return file_obj

            async def read(self, file_obj, offset, size):
                server.reading.set()
                if server.slow and (server.slow_match is None or server.slow_match in str(file_obj.name)):
                    async with read_lock:                 # prefetching clients read in parallel
                        await asyncio.sleep(server.slow)
                return super().read(file_obj, offset, size)

        authorized = asyncssh.import_authorized_keys(self.client_key.export_public_key().decode())

        class Auth(asyncssh.SSHServer):
            def password_auth_supported(self):
                return bool(server.passwords)

            def validate_password(self, username, password):
                return server.passwords.get(username) == password

        async def listen():
            return await asyncssh.listen(
                "127.0.0.1", self.port, server_host_keys=[self.host_key], authorized_client_keys=authorized,
                server_factory=Auth, sftp_factory=ChrootServer, allow_scp=False, reuse_address=True,
                acceptor=self._conns.append)
        self._acceptor = self._run(listen())
        self.port = self._acceptor.sockets[0].getsockname()[1]
        return self

    def kill(self) -> None:
        async def down():
            self._acceptor.close()
            for conn in self._conns:
                conn.abort()
            self._conns.clear()
            await self._acceptor.wait_closed()
            # connections refused mid-handshake (host key tests) close on the loop's next turns
            await asyncio.sleep(0.1)
            for file_obj in self.open_files:
                file_obj.close()
            self.open_files.clear()
        self._run(down())

    def close(self) -> None:
        try:
            self.kill()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def known_hosts_line(self, key: asyncssh.SSHKey | None = None) -> str:
        key = key or self.host_key
        return f"[127.0.0.1]:{self.port} {key.export_public_key().decode().strip()}\n"

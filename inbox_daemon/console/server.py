"""The console's HTTP server: cheroot (CherryPy's WSGI server, kept on its own) on a thread pool.

cheroot because it is a production WSGI server in pure Python that also speaks TLS itself
(``tls_cert``/``tls_key``), bounds its threads and connections, and stops cleanly from another
thread, so the daemon can serve the console without a second process. Each of its threads opens
its own store connection on first use (SQLite and psycopg connections are not shared across
threads); all of them are closed when the server stops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from config import Config
from inbox_daemon.audit import Head, open_audit
from inbox_daemon.console.access import credentials
from inbox_daemon.console.app import Backend, create_app
from inbox_daemon.console.trail import TrailView
from inbox_daemon.metrics import AddressUnavailable
from storage import open_store

THREADS = 8                 # requests served at once (each with its own store connection)
TIMEOUT = 10                # seconds a connection may stay silent


class ConsoleServer:
    """Raises ``ConfigError`` when the console needs credentials the environment does not give,
    and ``AddressUnavailable`` when its address cannot be listened on: before the daemon starts."""

    def __init__(self, config: Callable[[], Config], daemon_state: Callable[[], dict]):
        console = config().console
        creds = credentials(console)
        self._local = threading.local()
        self._stores: dict[threading.Thread, Any] = {}     # each console thread's connection
        self._lock = threading.Lock()
        self._config = config
        audit = open_audit(config().daemon)
        self.trail = TrailView(audit, self._audit_head)
        backend = Backend(config=config, daemon_state=daemon_state, store=self._store, drop_store=self._drop_store,
                          trail=self.trail, credentials=creds)
        host, port = console.address.rsplit(":", 1)
        self._server = wsgi.Server((host, int(port)), create_app(backend), numthreads=THREADS, timeout=TIMEOUT,
                                   server_name="inbox-daemon console")
        if console.tls_cert is not None and console.tls_key is not None:
            self._server.ssl_adapter = BuiltinSSLAdapter(str(console.tls_cert), str(console.tls_key))
        try:
            self._server.prepare()          # binds now: a taken address is refused at start
        except OSError as exc:
            raise AddressUnavailable(console.address, exc.strerror or str(exc), "[console] address") from exc
        bound = self._server.bind_addr
        self.address = f"{host}:{bound[1]}" if isinstance(bound, tuple) else str(bound)
        self.scheme = "https" if console.tls_cert is not None else "http"
        self._thread = threading.Thread(target=self._server.serve, name="console", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.trail.verify_soon()

    def close(self) -> None:
        """Stop serving (cheroot waits up to 5 s for requests in flight), then close the
        connections of the threads that ended. A request still running past that keeps its own:
        a connection is never closed under another thread; the process is ending anyway."""
        self._server.stop()
        self._thread.join(timeout=5)
        with self._lock:
            ended = [t for t in self._stores if not t.is_alive()]
            stores = [self._stores.pop(t) for t in ended]
        for store in stores:
            store.close()

    # -- per-thread store connections -----------------------------------------------------------------
    def _store(self):
        store = getattr(self._local, "store", None)
        if store is None:
            store = open_store(self._config().store)
            self._local.store = store
            with self._lock:
                self._stores[threading.current_thread()] = store
        return store

    def _drop_store(self) -> None:
        store = getattr(self._local, "store", None)
        if store is None:
            return
        self._local.store = None
        with self._lock:
            self._stores.pop(threading.current_thread(), None)
        try:
            store.close()
        except Exception:  # noqa: BLE001 — a broken connection may fail to close too; it is dropped either way
            pass

    def _audit_head(self) -> Head | None:
        """The chain's head as the ledger saw it reported (verify runs on a thread of its own, with
        a connection of its own for this one read)."""
        store = open_store(self._config().store)
        try:
            stored = store.audit_head(self.trail.audit.ledger_key())
        finally:
            store.close()
        return Head(stored.chain, stored.seq, stored.hash) if stored else None

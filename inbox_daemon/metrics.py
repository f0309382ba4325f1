"""Prometheus metrics and the ``/metrics`` + ``/healthz`` endpoint (``[daemon] health``).

Exposition is prometheus_client's; the HTTP server is the standard library's threading server,
bounded: every connection holds a file descriptor the workers need for the files they read, so
the server keeps at most ``MAX_CONNECTIONS`` open, drops idle ones after ``IDLE_TIMEOUT`` and any
one after ``CONNECTION_DEADLINE``. Each daemon has its own registry, so tests can run several
daemons in one process.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from config.status import APPLIED

ROW_OUTCOMES = ("read", "rejected", "inserted", "updated", "unchanged", "superseded", "deactivated", "stale")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.files_seen = Counter("inbox_files_seen", "Files found ready in an inbox", ["inbox"], registry=r)
        self.jobs = Counter("inbox_jobs", "Job outcomes", ["partner", "status"], registry=r)
        self.rows = Counter("inbox_rows", "Rows by outcome", ["partner", "outcome"], registry=r)
        self.duration = Histogram("inbox_job_duration_seconds", "Time from fetch to reported outcome",
                                  ["partner"], registry=r,
                                  buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
        self.queue_depth = Gauge("inbox_queue_depth", "Files and jobs waiting for a worker", registry=r)
        self.in_flight = Gauge("inbox_jobs_in_flight", "Jobs being processed", registry=r)
        self.last_success = Gauge("inbox_last_success_timestamp_seconds",
                                  "Unix time of the last applied job per inbox", ["inbox"], registry=r)
        self.retries = Counter("inbox_retries", "Attempts scheduled again after a transient error",
                               ["inbox"], registry=r)
        self.webhooks = Counter("inbox_webhook_deliveries", "Webhook POST attempts by result",
                                ["partner", "result"], registry=r)

    def job_done(self, inbox: str, manifest: dict, seconds: float) -> None:
        partner, status = manifest["partner"], manifest["status"]
        self.jobs.labels(partner, status).inc()
        for outcome in ROW_OUTCOMES:
            self.rows.labels(partner, outcome).inc(manifest["rows"].get(outcome, 0))
        self.duration.labels(partner).observe(seconds)
        if status in APPLIED:
            self.last_success.labels(inbox).set_to_current_time()


MAX_CONNECTIONS = 64          # open health connections (each one a file descriptor and a thread)
IDLE_TIMEOUT = 5.0            # seconds a connection may stay silent (each read and write)
CONNECTION_DEADLINE = 10.0    # seconds a connection may live at all: a trickle of bytes ends too
SLOT_WAIT = 0.5               # seconds a new connection waits for a slot before it is closed
LISTEN_BACKLOG = 128          # connections the kernel holds until they are accepted


class AddressUnavailable(Exception):
    """A configured address (``[daemon] health``, ``[console] address``) cannot be listened on:
    taken by another process, not an address of this host, or a port this user may not bind. A
    configuration problem."""

    def __init__(self, address: str, reason: str, key: str = "[daemon] health"):
        super().__init__(f"cannot listen on {address} ({key}): {reason}")
        self.address = address
        self.reason = reason
        self.key = key


class _Connection:
    __slots__ = ("opened", "idle")

    def __init__(self) -> None:
        self.opened = time.monotonic()
        self.idle = True          # no request line yet: the first to go when the slots are full


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, as ``ThreadingHTTPServer``, but never more than
    ``MAX_CONNECTIONS`` of them. A connection beyond that evicts the oldest one that has not
    sent its request yet (a client that opened a connection and went quiet), waits briefly for
    its slot, and is closed at once when none frees up. Sockets are shut down and closed only
    under ``_slots``, while they are known open: a closed descriptor's number may already be
    another file's."""

    daemon_threads = True
    block_on_close = False        # closing the server must not wait for a silent client
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        self._slots = threading.Condition()
        self._open: dict[socket.socket, _Connection] = {}
        self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        with self._slots:
            if len(self._open) >= MAX_CONNECTIONS:
                self._evict_oldest_idle()
                self._slots.wait_for(lambda: len(self._open) < MAX_CONNECTIONS, timeout=SLOT_WAIT)
            if len(self._open) >= MAX_CONNECTIONS:
                self.refused += 1
                self._close(request)
                return
            self._open[request] = _Connection()
        try:
            super().process_request(request, client_address)      # starts the connection's thread
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 — a broken client connection is the client's problem
            pass
        finally:
            self._release(request)

    def mark_busy(self, request) -> None:
        with self._slots:
            if request in self._open:
                self._open[request].idle = False

    def service_actions(self) -> None:
        """Called by ``serve_forever`` between polls: end connections past their deadline."""
        cutoff = time.monotonic() - CONNECTION_DEADLINE
        with self._slots:
            for request, conn in self._open.items():
                if conn.opened < cutoff:
                    with suppress(OSError):
                        request.shutdown(socket.SHUT_RDWR)     # its thread reads the end and closes

    def _evict_oldest_idle(self) -> None:
        idle = [(conn.opened, id(request), request) for request, conn in self._open.items() if conn.idle]
        if idle:
            with suppress(OSError):
                min(idle)[2].shutdown(socket.SHUT_RDWR)

    def _release(self, request) -> None:
        with self._slots:
            self._open.pop(request, None)
            self._close(request)
            self._slots.notify_all()

    @staticmethod
    def _close(request) -> None:
        with suppress(OSError):
            request.shutdown(socket.SHUT_WR)
        request.close()


class HealthServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (200 when ``healthy()`` says so, else 503).

    Raises ``AddressUnavailable`` when the address cannot be listened on."""

    def __init__(self, address: str, metrics: Metrics, healthy: Callable[[], tuple[bool, dict]]):
        host, port = address.rsplit(":", 1)
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            timeout = IDLE_TIMEOUT          # per read and write; a timeout ends the connection

            def parse_request(self) -> bool:
                self.server.mark_busy(self.connection)  # type: ignore[attr-defined]
                return super().parse_request()

            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] == "/metrics":
                    body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif self.path.split("?")[0] == "/healthz":
                    ok, detail = healthy()
                    body = (json.dumps({"ok": ok, **detail}) + "\n").encode()
                    ctype, code = "application/json", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):   # access logs would drown the JSON log stream
                pass

        try:
            self._server = _BoundedServer((host, int(port)), Handler)
        except OSError as exc:
            raise AddressUnavailable(address, exc.strerror or str(exc)) from exc
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def refused(self) -> int:
        """Connections closed unanswered because every slot was busy."""
        return self._server.refused

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        if self._thread.ident is not None:      # closed before it started: the daemon refused to start
            self._thread.join(timeout=5)

"""Prometheus metrics and the ``/metrics`` + ``/healthz`` endpoint (``[daemon] health``).

Exposition is prometheus_client's; the HTTP server is the standard library's threading server.
Each daemon has its own registry, so tests can run several daemons in one process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
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


class HealthServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (200 when ``healthy()`` says so, else 503)."""

    def __init__(self, address: str, metrics: Metrics, healthy: Callable[[], tuple[bool, dict]]):
        host, port = address.rsplit(":", 1)
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] == "/metrics":
                    body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif self.path.split("?")[0] == "/healthz":
                    ok, detail = healthy()
                    import json
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

        self._server = ThreadingHTTPServer((host, int(port)), Handler)
        self._server.daemon_threads = True
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

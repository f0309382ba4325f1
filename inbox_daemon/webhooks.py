"""Webhooks: POST each job's result manifest to the partner's URL, signed, retried, in the background.

``X-Inbox-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact body with the secret from the
partner's ``secret_env``; ``X-Inbox-Timestamp`` carries the send time. Delivery runs on its own
thread with a bounded queue: it never blocks or fails ingest; each attempt is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from config.model import WebhookConfig
from inbox_daemon.backoff import backoff
from inbox_daemon.logs import get_logger, register_secret

ATTEMPTS = 5
BASE_DELAY = 1.0        # seconds, doubled per attempt, full jitter
MAX_DELAY = 60.0
TIMEOUT = 10.0


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class _Delivery:
    hook: WebhookConfig
    manifest: dict


class WebhookSender:
    def __init__(self, *, attempts: int = ATTEMPTS, base_delay: float = BASE_DELAY, metrics=None):
        self._queue: queue.Queue[_Delivery | None] = queue.Queue(maxsize=1000)
        self._attempts, self._base = attempts, base_delay
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()
        self.log = get_logger(component="webhooks")

    def submit(self, hook: WebhookConfig, manifest: dict) -> None:
        try:
            self._queue.put_nowait(_Delivery(hook, manifest))
        except queue.Full:
            self.log.error("webhook.dropped", job_id=manifest["job_id"], reason="delivery queue full")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._deliver(item)

    def _deliver(self, item: _Delivery) -> None:
        body = json.dumps(item.manifest, ensure_ascii=False, sort_keys=True).encode()
        secret = os.environ.get(item.hook.secret_env or "", "")
        register_secret(secret)
        partner, job_id = item.manifest["partner"], item.manifest["job_id"]
        for attempt in range(1, self._attempts + 1):
            headers = {"Content-Type": "application/json", "User-Agent": "inbox-daemon",
                       "X-Inbox-Timestamp": str(int(time.time())), "X-Inbox-Job": job_id}
            if secret:
                headers["X-Inbox-Signature"] = sign(secret, body)
            request = urllib.request.Request(item.hook.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                    code = response.status
            except urllib.error.HTTPError as exc:
                code = exc.code
            except Exception as exc:  # noqa: BLE001 — any receiver misbehaviour (bad status line,
                # TLS, reset) is one failed attempt; this thread serves every partner and must live
                code = None
                self.log.warning("webhook.attempt", partner=partner, job_id=job_id, attempt=attempt,
                                 error=str(exc))
            if code is not None:
                self.log.info("webhook.attempt", partner=partner, job_id=job_id, attempt=attempt, http_status=code)
                if 200 <= code < 300:
                    self._count(partner, "delivered")
                    return
                if 400 <= code < 500 and code not in (408, 429):
                    break        # the receiver refuses this delivery: retrying will not change that
            if attempt < self._attempts and self._stop.wait(backoff(attempt, self._base, MAX_DELAY)):
                break
        self._count(partner, "failed")
        self.log.error("webhook.failed", partner=partner, job_id=job_id, url=item.hook.url)

    def _count(self, partner: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.webhooks.labels(partner, result).inc()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then stop retrying."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(5)

"""Webhooks: each answer's result manifest POSTed to the partner's URL, signed, from a durable outbox.

The answer is put in the store's outbox by the transaction that records it (``storage.outbox``):
nothing is dropped when an endpoint is slow, the daemon restarts or crashes, and every daemon on
the store delivers what is due. Here, one dispatcher takes what is due (with a lease, so two
daemons never send one answer at once) and hands each answer to the thread of its endpoint: one
thread per endpoint, one delivery at a time, each with its own backoff, so a slow or dripping
endpoint delays only its own partner's answers. The dispatcher alone talks to the store.

``X-Inbox-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact body with the secret from the
partner's ``secret_env``; ``X-Inbox-Timestamp`` carries the send time.

Where it may go: redirects are never followed (a 3xx is a failed delivery naming the target),
and an endpoint whose name resolves to a private, loopback, link-local or otherwise non-public
address is refused unless the partner's webhook says ``allow_private = true``: a partner's
endpoint must not make the daemon reach into its own network. URLs are logged without their
credentials, query or path (Slack-style tokens live there).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import queue
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from config.model import Config, WebhookConfig
from inbox_daemon.backoff import backoff
from inbox_daemon.logs import get_logger, register_secret
from storage.base import CatalogStore, default_holder
from storage.outbox import DELIVERED, FAILED, PENDING, Delivery

MAX_ATTEMPTS = 12           # then the answer is failed for good (about two hours of backoff)
BASE_DELAY = 1.0            # seconds, doubled per attempt, full jitter
MAX_DELAY = 900.0
TIMEOUT = 10.0              # seconds per socket operation
POLL = 1.0                  # seconds between looks at the outbox when nothing nudged it
LEASE = 300.0               # seconds an answer taken for delivery stays this daemon's
IDLE = 30.0                 # seconds an endpoint's thread waits for work before it ends


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def shown_url(url: str) -> str:
    """The URL as logs show it: scheme, host and port; credentials, path and query left out."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…" if (parts.path.strip("/") or parts.query) else f"{parts.scheme}://{host}{port}"


class Refused(Exception):
    """A delivery that must not be attempted (again): the reason is recorded."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise Refused(f"the endpoint redirected ({code}) to {shown_url(newurl)}: redirects are not followed")


_OPENER = urllib.request.build_opener(_NoRedirects)


def _check_address(url: str, hook: WebhookConfig) -> None:
    """Refuse an endpoint that resolves to a non-public address, unless the partner allows it."""
    if hook.allow_private:
        return
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise ConnectionError(f"cannot resolve {host}: {exc}") from exc
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if not address.is_global:
            raise Refused(f"{host} resolves to {address}, a private or local address: refused "
                          "(set allow_private = true in the partner's webhook to allow it)")


class WebhookSender:
    """Delivers the outbox of ``open_store()``'s store for the partners of ``config()``."""

    def __init__(self, *, config: Callable[[], Config], open_store: Callable[[], CatalogStore],
                 metrics=None, poll: float = POLL, base_delay: float = BASE_DELAY):
        self._config, self._open_store = config, open_store
        self._metrics, self._poll, self._base = metrics, poll, base_delay
        self.holder = f"{default_holder()}/webhooks"
        self._nudge = threading.Event()
        self._stop = threading.Event()
        self._done: queue.Queue[tuple[Delivery, int | None, str | None, str, float]] = queue.Queue()
        self._endpoints: dict[str, queue.Queue[Delivery]] = {}
        self._busy: set[int] = set()                # taken and not yet written back
        self._lock = threading.Lock()
        self.log = get_logger(component="webhooks")
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def submit(self, hook: WebhookConfig, manifest: dict) -> None:
        """An answer was recorded (and put in the outbox with it): look at the outbox now."""
        self._nudge.set()

    # -- the dispatcher: the one thread that uses the store ------------------------------------
    def _run(self) -> None:
        store = None
        while not self._stop.is_set():
            try:
                if store is None:
                    store = self._open_store()
                self._write_back(store)
                for delivery in store.take_due(self.holder, lease=LEASE):
                    self._hand_out(delivery)
            except Exception as exc:  # noqa: BLE001 — the store away: try again at the next look
                self.log.warning("webhook.outbox_unavailable", error=str(exc))
                store = None
            self._nudge.wait(self._poll)
            self._nudge.clear()
        if store is not None:
            try:
                self._write_back(store)
                store.release_webhooks(self.holder)     # the rest is anyone's again, at once
            except Exception as exc:  # noqa: BLE001
                self.log.warning("webhook.release_failed", error=str(exc))
            store.close()

    def _write_back(self, store) -> None:
        while True:
            try:
                delivery, code, error, status, retry_in = self._done.get_nowait()
            except queue.Empty:
                return
            store.delivered(delivery, http_status=code, error=error, status=status, retry_in=retry_in)
            with self._lock:
                self._busy.discard(delivery.id)

    def _hand_out(self, delivery: Delivery) -> None:
        hook = self._hook(delivery.partner_id)
        if hook is None:
            self._done.put((delivery, None, "the partner has no webhook configured any more", FAILED, 0.0))
            return
        with self._lock:
            if delivery.id in self._busy:
                return
            self._busy.add(delivery.id)
            work = self._endpoints.get(hook.url)
            if work is None:
                work = self._endpoints[hook.url] = queue.Queue()
                threading.Thread(target=self._endpoint, args=(hook.url, work), daemon=True,
                                 name=f"webhook {shown_url(hook.url)}").start()
            work.put(delivery)

    def _hook(self, partner_id: str) -> WebhookConfig | None:
        partner = self._config().partners.get(partner_id)
        return partner.webhook if partner is not None else None

    # -- one thread per endpoint ---------------------------------------------------------------
    def _endpoint(self, url: str, work: queue.Queue[Delivery]) -> None:
        """Deliveries to one URL, one at a time; after a failure the endpoint rests (its backoff)."""
        failures = 0
        while not self._stop.is_set():
            try:
                delivery = work.get(timeout=IDLE)
            except queue.Empty:
                with self._lock:
                    if work.empty():
                        del self._endpoints[url]
                        return
                continue
            ok = self._attempt(delivery)
            failures = 0 if ok else failures + 1
            if failures and self._stop.wait(backoff(failures, self._base, MAX_DELAY)):
                return

    def _attempt(self, delivery: Delivery) -> bool:
        hook = self._hook(delivery.partner_id)
        attempt = delivery.attempts + 1
        log = self.log.bind(partner=delivery.partner_id, job_id=delivery.job_id, attempt=attempt)
        if hook is None:
            self._finish(delivery, None, "the partner has no webhook configured any more", FAILED)
            return True
        url, body = hook.url, delivery.body.encode()
        secret = os.environ.get(hook.secret_env or "", "")
        register_secret(secret)
        headers = {"Content-Type": "application/json", "User-Agent": "inbox-daemon",
                   "X-Inbox-Timestamp": str(int(time.time())), "X-Inbox-Job": delivery.job_id}
        if secret:
            headers["X-Inbox-Signature"] = sign(secret, body)
        code: int | None = None
        try:
            _check_address(url, hook)
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with _OPENER.open(request, timeout=TIMEOUT) as response:
                code = response.status
        except Refused as exc:
            log.error("webhook.refused", url=shown_url(url), reason=str(exc))
            self._finish(delivery, None, str(exc), FAILED)
            return False
        except urllib.error.HTTPError as exc:
            code = exc.code
        except Exception as exc:  # noqa: BLE001 — any receiver misbehaviour (reset, TLS, a bad
            # status line) is one failed attempt of this answer
            log.warning("webhook.attempt", url=shown_url(url), error=str(exc))
            return self._retry(delivery, None, str(exc)[:300], log)
        log.info("webhook.attempt", url=shown_url(url), http_status=code)
        if 200 <= code < 300:
            self._finish(delivery, code, None, DELIVERED)
            return True
        if 400 <= code < 500 and code not in (408, 429):
            # the receiver refuses this answer: retrying will not change that
            log.error("webhook.failed", url=shown_url(url), http_status=code)
            self._finish(delivery, code, f"HTTP {code}", FAILED)
            return False
        return self._retry(delivery, code, f"HTTP {code}", log)

    def _retry(self, delivery: Delivery, code: int | None, error: str, log) -> bool:
        if delivery.attempts + 1 >= MAX_ATTEMPTS:
            log.error("webhook.failed", reason=f"{MAX_ATTEMPTS} attempts", error=error)
            self._finish(delivery, code, error, FAILED)
        else:
            self._finish(delivery, code, error, PENDING, backoff(delivery.attempts + 1, self._base, MAX_DELAY))
        return False

    def _finish(self, delivery: Delivery, code: int | None, error: str | None, status: str,
                retry_in: float = 0.0) -> None:
        if status != PENDING and self._metrics is not None:
            self._metrics.webhooks.labels(delivery.partner_id, status).inc()
        self._done.put((delivery, code, error, status, retry_in))
        self._nudge.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop within ``timeout``: what was sent is written back, what was not stays in the
        outbox for the next start (or another daemon), at once. A delivery stuck on a slow
        endpoint is abandoned with its thread; it is due again."""
        self._stop.set()
        self._nudge.set()
        self._thread.join(timeout)

"""Webhooks from a durable outbox, against real HTTP endpoints on loopback and the real daemon:
a dripping endpoint delays only its own partner, SIGTERM does not wait for it, nothing is
dropped, an answer survives a restart, redirects are not followed, private addresses are
refused unless allowed, and URL tokens never reach the log."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from config.model import StoreConfig
from storage import open_store
from tests.conftest import run_cli, write_csv
from tests.daemon_harness import config, manifests, wait_for


class _Endpoint:
    """A real HTTP server on loopback; ``answer(handler)`` decides each POST's reply."""

    def __init__(self, answer=None):
        self.received: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.received.append(json.loads(body))
                (answer or _ok)(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ok(handler) -> None:
    handler.send_response(204)
    handler.end_headers()


def _drip(handler) -> None:
    """The status line, then a header a byte a second for a minute: each read gets a byte
    within any per-read timeout, and the answer is never complete."""
    try:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for byte in b"X-Slow: " + b"x" * 60:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(1)
    except OSError:
        return


@pytest.fixture
def endpoints():
    made: list[_Endpoint] = []

    def make(answer=None) -> _Endpoint:
        made.append(_Endpoint(answer))
        return made[-1]
    yield make
    for e in made:
        e.close()


def _partners(**hooks: str) -> str:
    return "".join(f'[[partners]]\nid = "{p}"\nwebhook = {{ url = "{url}", allow_private = true }}\n'
                   for p, url in hooks.items())


def _inboxes(*partners: str) -> str:
    return "".join(f'[[inboxes]]\npartner = "{p}"\nkind = "local"\npath = "inbox/{p}"\nsettle = "200ms"\n'
                   for p in partners)


def test_a_dripping_endpoint_delays_only_its_own_partner_and_nothing_is_dropped(tmp_path, daemons, endpoints):
    slow, fast = endpoints(_drip), endpoints()
    d = daemons(tmp_path, config(partners=_partners(slow=slow.url(), fast=fast.url()), inboxes=_inboxes("slow", "fast")))
    for i in range(30):
        write_csv(tmp_path / "inbox" / "slow" / f"s{i}.csv", ["sku", "name"], [[f"S{i}", "x"]])
        write_csv(tmp_path / "inbox" / "fast" / f"f{i}.csv", ["sku", "name"], [[f"F{i}", "x"]])

    wait_for(lambda: len(manifests(tmp_path, "slow")) == 30, 60, what="every slow partner's file answered")
    wait_for(lambda: len({m["job_id"] for m in fast.received}) == 30, 60, what="every fast partner's answer")
    assert len(slow.received) <= 1             # its one delivery at a time is still dripping

    def counts() -> dict:
        store = open_store(StoreConfig(url="sqlite:///" + str(tmp_path / "var" / "catalog.db")))
        try:
            return store.webhook_counts()
        finally:
            store.close()
    # an answer is marked delivered once its endpoint's response is read: just after it arrived
    wait_for(lambda: counts().get("delivered") == 30, 30, what="the fast partner's answers marked delivered")
    assert counts() == {"delivered": 30, "pending": 30}                 # the slow ones wait, none dropped

    started = time.monotonic()
    assert d.stop(timeout=30) == 0
    assert time.monotonic() - started < 1 + 5                            # stop_timeout 1 s (+ 5)


def test_an_answer_not_delivered_before_a_stop_is_delivered_after_the_restart(tmp_path, daemons, endpoints):
    hook = endpoints()
    port = hook.port
    hook.close()                                                          # down while the file lands
    cfg = config(partners=_partners(default=f"http://127.0.0.1:{port}/hook"))
    d = daemons(tmp_path, cfg)
    write_csv(tmp_path / "inbox" / "default" / "a.csv", ["sku", "name"], [["A", "x"]])
    [manifest] = wait_for(lambda: manifests(tmp_path) or None, 20, what="the answer")
    d.wait_event("webhook.attempt", job_id=manifest["job_id"])
    assert d.stop() == 0

    back = _Endpoint()                                                    # up again, same port
    back.server.server_close()
    back.server = ThreadingHTTPServer(("127.0.0.1", port), back.server.RequestHandlerClass)
    threading.Thread(target=back.server.serve_forever, daemon=True).start()
    try:
        d = daemons(tmp_path, cfg)
        wait_for(lambda: back.received, 30, what="the answer delivered after the restart")
        assert back.received[0]["job_id"] == manifest["job_id"]
        assert d.stop() == 0
    finally:
        back.close()


def test_a_redirect_to_another_host_is_not_followed(tmp_path, daemons, endpoints):
    target = endpoints()

    def redirect(handler) -> None:
        handler.send_response(302)
        handler.send_header("Location", target.url("/internal-admin"))
        handler.end_headers()
    hook = endpoints(redirect)
    d = daemons(tmp_path, config(partners=_partners(default=hook.url())))
    write_csv(tmp_path / "inbox" / "default" / "r.csv", ["sku", "name"], [["R", "x"]])

    event = d.wait_event("webhook.refused")
    assert "redirects are not followed" in event["reason"]
    assert hook.received and not target.received
    [manifest] = manifests(tmp_path)
    store = open_store(StoreConfig(url="sqlite:///" + str(tmp_path / "var" / "catalog.db")))
    try:     # the refusal is logged just before it is recorded in the outbox
        delivery = wait_for(lambda: next((w for w in store.webhook_deliveries(manifest["job_id"])
                                          if w["status"] != "pending"), None), what="the refusal recorded")
    finally:
        store.close()
    assert delivery["status"] == "failed" and "redirect" in delivery["last_error"]
    assert d.stop() == 0


def test_a_private_address_is_refused_unless_the_partner_allows_it(tmp_path, daemons, endpoints):
    hook = endpoints()
    partners = f'[[partners]]\nid = "default"\nwebhook = {{ url = "{hook.url()}" }}\n'
    d = daemons(tmp_path, config(partners=partners))
    write_csv(tmp_path / "inbox" / "default" / "p.csv", ["sku", "name"], [["P", "x"]])

    event = d.wait_event("webhook.refused")
    assert "private or local address" in event["reason"] and "allow_private" in event["reason"]
    time.sleep(0.5)
    assert hook.received == []
    assert d.stop() == 0


def test_tokens_in_a_webhook_url_never_reach_the_log(tmp_path, daemons, endpoints):
    hook = endpoints(lambda h: (h.send_response(500), h.end_headers()))
    url = hook.url("/services/T0001/B0002/XoxbTokenSecret42?token=QueryTokenSecret43")
    d = daemons(tmp_path, config(partners=_partners(default=url)))
    write_csv(tmp_path / "inbox" / "default" / "t.csv", ["sku", "name"], [["T", "x"]])

    d.wait_event("webhook.attempt", http_status=500)
    assert d.stop() == 0
    checked = run_cli("config", "check", "--config", str(d.config_path), cwd=tmp_path)
    assert checked.returncode == 0 and "XoxbTokenSecret42" not in checked.stdout + checked.stderr
    [manifest] = manifests(tmp_path)
    shown = json.loads(run_cli("jobs", "show", manifest["job_id"], "--config", str(d.config_path),
                               cwd=tmp_path).stdout)
    [delivery] = shown["webhooks"]
    assert delivery["status"] == "pending" and delivery["tries"][0]["http_status"] == 500
    log = d.log_path.read_text()
    assert "XoxbTokenSecret42" not in log and "QueryTokenSecret43" not in log
    assert {e.get("url") for e in d.events() if e.get("event") == "webhook.attempt"} == {f"http://127.0.0.1:{hook.port}/…"}


def test_sigterm_with_a_stuck_endpoint_exits_within_stop_timeout(tmp_path, daemons, endpoints):
    """A server that accepts the connection and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        d = daemons(tmp_path, config(partners=_partners(default=url)))
        write_csv(tmp_path / "inbox" / "default" / "s.csv", ["sku", "name"], [["S", "x"]])
        wait_for(lambda: manifests(tmp_path) or None, 20, what="the answer")
        time.sleep(0.5)                                       # the delivery is waiting on the socket

        started = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.stop(timeout=30) == 0
        elapsed = time.monotonic() - started
        print(f"\nSIGTERM while a webhook endpoint never answers: exit 0 in {elapsed:.2f} s (stop_timeout 1 s)")
        assert elapsed < 1 + 5
    finally:
        listener.close()

"""The console's pages and actions: a Flask application the daemon serves (``server.py``).

Flask, because it is the most widely kept small Python web framework and brings Jinja2, whose
templates escape every value by default (here: every template, ``.html`` or not); the console
needs no more than routing, templates, a signed session cookie and, through Flask-WTF, CSRF
tokens. Pages are plain HTML forms and links: no JavaScript at all, and a Content-Security-Policy
that allows none, so a partner's value that ever got past the escaping still could not run.

Reads never change anything. The three actions (requeue, revert, approve) each take a
confirmation page and a POST with the session's CSRF token, and are recorded in the audit trail
as ``console:<admin>``.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Flask,
    abort,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from config import Config
from config.errors import InboxDaemonError, JobNotFound
from config.status import APPLIED, REQUEUEABLE, JobStatus
from inbox_daemon import __version__
from inbox_daemon.console import charts, diagnostics
from inbox_daemon.console.access import ADMIN_NAME, TOKEN_ACTOR, Credentials, LoginThrottled
from inbox_daemon.console.trail import TrailView
from inbox_daemon.logs import get_logger
from inbox_daemon.results import diagnostics_path, manifest_path
from inbox_daemon.webhooks import shown_url
from storage.base import ledger_time, utc_in
from storage.console import JobFilter

PAGE = 50                    # jobs per page
DIAGNOSTICS_PAGE = 100       # diagnostics lines per page
CHANGES_SHOWN = 100          # products of a change set shown on a job's page
CHART_DAYS = 30
NO_COLUMN = "(none)"         # the column filter's value for lines about no column (the file as a whole)
JOB_FILTERS = ("partner", "inbox", "status", "since", "until")
SESSION_HOURS = 8
POLICY = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
          "frame-ancestors 'none'; base-uri 'none'")


@dataclass(frozen=True)
class Backend:
    """What the pages read besides the store: the configuration the daemon runs with now, its
    state (health, inboxes), a store connection for this thread, and the audit trail."""
    config: Callable[[], Config]
    daemon_state: Callable[[], dict]
    store: Callable[[], Any]
    drop_store: Callable[[], None]          # this thread's connection failed: open a new one next time
    trail: TrailView
    credentials: Credentials


def create_app(backend: Backend) -> Flask:
    log = get_logger(component="console")
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),        # sessions end when the daemon restarts
        SESSION_COOKIE_NAME="inbox_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=backend.config().console.tls_cert is not None,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        WTF_CSRF_CHECK_DEFAULT=False,              # checked in ``guard``, after the login
        WTF_CSRF_TIME_LIMIT=SESSION_HOURS * 3600,
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.jinja_env.autoescape = True
    app.jinja_env.filters.update(pretty=_pretty, ago=_ago, link=_link, pct=_pct, num=_num, shown_url=shown_url)
    csrf = CSRFProtect(app)
    needs_login = backend.config().console.login
    # logged-in sessions by a random id the signed cookie carries: logging out ends one for good,
    # not only in the browser that sent it
    sessions: dict[str, tuple[str, float]] = {}       # id -> (admin, monotonic end)
    sessions_lock = threading.Lock()

    # -- access ---------------------------------------------------------------------------------
    # Without a login, only this host's own names may be asked for: a page of another site whose
    # name was made to resolve to 127.0.0.1 (DNS rebinding) would otherwise read and act as same-origin
    local_names = {"127.0.0.1", "localhost", "[::1]", backend.config().console.host}

    @app.before_request
    def guard():
        g.actor = None
        if not needs_login and request.host.rsplit(":", 1)[0].lower() not in local_names:
            abort(421, "This console answers to its local address only (127.0.0.1 or localhost).")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and backend.credentials.check_token(header[7:].strip()):
            g.actor = TOKEN_ACTOR              # a script: no cookie, so no cross-site request can carry it
            return None
        if needs_login and request.endpoint not in ("login", "static"):
            with sessions_lock:
                admin, ends = sessions.get(session.get("sid", ""), (None, 0.0))
            if admin is None or ends < time.monotonic():
                if request.method == "GET":
                    return redirect(url_for("login", next=request.full_path))
                abort(401)
            g.actor = admin
        if request.method == "POST":
            csrf.protect()
        return None

    @app.after_request
    def headers(response):
        response.headers["Content-Security-Policy"] = POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(CSRFError)
    def refused(exc):
        return render_template("error.html", title="Refused", message=f"Refused: {exc.description} "
                               "Open the page again and confirm from there."), 400

    @app.errorhandler(JobNotFound)
    def not_found(exc):
        return render_template("error.html", title="Not found", message=str(exc)), 404

    @app.errorhandler(InboxDaemonError)
    def store_failed(exc):
        backend.drop_store()
        log.error("console.request_failed", path=request.path, error=str(exc))
        return render_template("error.html", title="Error", message=str(exc)), 503

    @app.errorhandler(Exception)
    def crashed(exc):
        if isinstance(exc, HTTPException):
            return exc
        backend.drop_store()
        log.error("console.request_failed", path=request.path, error=f"{type(exc).__name__}: {exc}", exc_info=True)
        return render_template("error.html", title="Error", message="The page failed; the daemon's log says why "
                               "(console.request_failed)."), 500

    @app.context_processor
    def common():
        return {"login": needs_login, "admin": g.get("actor"), "version": __version__,
                "statuses": [str(s) for s in JobStatus]}

    @app.route("/login", methods=["GET", "POST"])
    def login():
        error = None
        if request.method == "POST":
            csrf.protect()
            name, password = request.form.get("name", ""), request.form.get("password", "")
            try:
                ok = backend.credentials.check_password(name, password)
            except LoginThrottled as exc:
                response = make_response(render_template("login.html", error=f"Too many failed logins for this "
                                         f"name: try again in {exc.retry_after / 60:.0f} minute(s)."), 429)
                response.headers["Retry-After"] = str(int(exc.retry_after) + 1)
                return response
            if ok:
                session.clear()
                session.permanent = True
                session["sid"] = sid = secrets.token_urlsafe(24)
                now = time.monotonic()
                with sessions_lock:
                    for old in [s for s, (_, ends) in sessions.items() if ends < now]:
                        del sessions[old]
                    sessions[sid] = (name, now + SESSION_HOURS * 3600)
                return redirect(_local_next(request.args.get("next")))
            error = "Unknown name or wrong password."
        return render_template("login.html", error=error), 401 if error else 200

    @app.post("/logout")
    def logout():
        with sessions_lock:
            sessions.pop(session.get("sid", ""), None)
        session.clear()
        return redirect(url_for("login" if needs_login else "overview"))

    # -- pages ----------------------------------------------------------------------------------
    @app.get("/")
    def overview():
        config, store = backend.config(), backend.store()
        state = backend.daemon_state()
        activity = store.activity([i["id"] for i in state["inboxes"]], utc_in(-3600), utc_in(-86400))
        return render_template("overview.html", state=state, activity=activity, partners=config.partners)

    @app.get("/jobs")
    def jobs():
        config = backend.config()
        where = JobFilter(partner=request.args.get("partner") or None, inbox=request.args.get("inbox") or None,
                          status=request.args.get("status") or None, since=_time(request.args.get("since")),
                          until=_time(request.args.get("until")))
        page = backend.store().job_page(where, after=_cursor(request.args.get("after")),
                                        before=_cursor(request.args.get("before")), limit=PAGE)
        filters = {k: v for k in JOB_FILTERS if (v := request.args.get(k))}
        return render_template("jobs.html", page=page, filters=filters, partners=list(config.partners),
                               inboxes=[i.id for i in config.inboxes])

    @app.get("/jobs/<job_id>")
    def job(job_id: str):
        config, store = backend.config(), backend.store()
        found = store.job(job_id)
        diag_path = diagnostics_path(config.daemon.results_dir, found.partner_id, found.id)
        code = request.args.get("code") or None
        shown_column = request.args.get("column") or None          # as the filter form names it
        column = "" if shown_column == NO_COLUMN else shown_column
        offset = max(_int(request.args.get("offset")), 0)
        changes, more_changes, change_note = _changes(store, found)
        return render_template(
            "job.html", job=found, manifest=found.result or {}, actions=_actions(store, found),
            summary=diagnostics.summary(diag_path),
            lines=diagnostics.matching(diag_path, code=code, column=column, offset=offset, limit=DIAGNOSTICS_PAGE),
            code=code, column=shown_column, offset=offset, page_size=DIAGNOSTICS_PAGE,
            attempts=store.attempts(found.id), webhooks=store.webhook_deliveries(found.id),
            records=backend.trail.of_job(found), changes=changes, more_changes=more_changes,
            change_note=change_note, has_manifest=manifest_path(config.daemon.results_dir, found.partner_id,
                                                                found.id).exists())

    @app.get("/jobs/<job_id>/<any(manifest, diagnostics):kind>")
    def job_file(job_id: str, kind: str):
        config = backend.config()
        found = backend.store().job(job_id)
        path = (manifest_path if kind == "manifest" else diagnostics_path)(config.daemon.results_dir,
                                                                          found.partner_id, found.id)
        if not path.is_file():
            abort(404)
        return send_file(path, mimetype="application/json" if kind == "manifest" else "text/csv",
                         as_attachment=True, download_name=path.name)

    @app.get("/partners")
    def partners():
        config, store = backend.config(), backend.store()
        rows = []
        for partner in config.partners.values():
            _, days = _chart_days(store, partner.id)
            rows.append({"partner": partner, "inboxes": config.inboxes_of(partner.id),
                         "products": store.catalog_size(partner.id), "jobs": sum(d.jobs for d in days),
                         "reject_rate": _ratio(sum(d.rows_rejected for d in days), sum(d.rows_read for d in days)),
                         "duplicate_rate": _ratio(sum(d.duplicates for d in days), sum(d.jobs for d in days))})
        return render_template("partners.html", rows=rows)

    @app.get("/partners/<partner_id>")
    def partner(partner_id: str):
        from adapters.contract import contract
        config, store = backend.config(), backend.store()
        found = config.partners.get(partner_id) or abort(404)
        today, days = _chart_days(store, found.id)
        return render_template("partner.html", partner=found, inboxes=config.inboxes_of(found.id),
                               products=store.catalog_size(found.id), chart=charts.rate_chart(days, today, CHART_DAYS),
                               contract=contract(found))

    @app.get("/catalog")
    def catalog():
        config = backend.config()
        partner_id = request.args.get("partner") or next(iter(config.partners))
        if partner_id not in config.partners:
            return render_template("error.html", title="No such partner",
                                   message=f"There is no partner {partner_id!r} in the configuration."), 404
        text = request.args.get("q", "").strip()
        after = request.args.get("after")
        store = backend.store()
        by_sku = store.products_by_sku(partner_id, text) if text and after is None else []
        by_name = store.products_by_name(partner_id, text, after=after or "") if text else None
        return render_template("catalog.html", partners=list(config.partners), partner_id=partner_id, q=text,
                               by_sku=by_sku, by_name=by_name, after=after)

    @app.get("/catalog/product")
    def product():
        partner_id, sku = request.args.get("partner", ""), request.args.get("sku", "")
        store = backend.store()
        row = store.product(partner_id, sku) or abort(404)
        return render_template("product.html", partner_id=partner_id, product=row,
                               history=store.product_history(partner_id, sku))

    @app.get("/audit")
    def audit():
        trail = backend.trail
        trail.refresh()
        return render_template("audit.html", records=trail.latest(50), verification=trail.verification(),
                               damaged=trail.audit.damaged())

    @app.post("/audit/verify")
    def verify():
        started = backend.trail.verify_soon()
        flash("Verification started." if started else "A verification is running already.")
        return redirect(url_for("audit"))

    # -- actions --------------------------------------------------------------------------------
    @app.route("/jobs/<job_id>/<any(requeue, revert, approve):action>", methods=["GET", "POST"])
    def act(job_id: str, action: str):
        config, store = backend.config(), backend.store()
        found = store.job(job_id)
        if action not in _actions(store, found):
            return render_template("error.html", title="Not possible",
                                   message=f"Job {found.id} is {found.status}: it cannot be {_DONE[action]} now."), 409
        if request.method == "GET":
            plan = _revert_plan(store, found) if action == "revert" else None
            return render_template("confirm.html", job=found, action=action, plan=plan,
                                   name=session.get("name", ""))
        actor = g.actor or _named(request.form.get("name", ""))
        if actor is None:
            flash("Say who you are (letters, digits, . _ @ -): the audit trail records it.")
            return redirect(url_for("act", job_id=job_id, action=action))
        return _perform(config, store, found, action, actor)

    def _perform(config: Config, store, found, action: str, actor: str):
        from inbox_daemon.pipeline import Pipeline
        who = f"console:{actor}"
        pipeline = Pipeline(config, store, actor=who)
        if action == "requeue":
            done = pipeline.requeue(ids=[found.id])
            flash(f"Requeued by {actor}: the daemon runs it again." if done else "It was not requeued (its status "
                  "changed meanwhile).")
            return redirect(url_for("job", job_id=found.id))
        if action == "approve":
            pipeline.approve(found.id, who)
            flash(f"Approved by {actor}: the daemon applies it without the price check.")
            return redirect(url_for("job", job_id=found.id))
        result = pipeline.revert(found.id)
        flash(f"Reverted by {actor}: {result.status}. {result.manifest.get('message', '')}")
        return redirect(url_for("job", job_id=result.manifest["job_id"]))

    return app


# -- helpers --------------------------------------------------------------------------------------

_DONE = {"requeue": "requeued", "revert": "reverted", "approve": "approved"}


def _actions(store, job) -> tuple[str, ...]:
    """What an admin may do to ``job`` now."""
    actions = []
    if job.status in REQUEUEABLE:
        actions.append("requeue")
    if job.status in APPLIED and job.catalog_version is not None and _not_reverted(store, job):
        actions.append("revert")
    if job.status == JobStatus.HELD and not job.approved_by:
        actions.append("approve")
    return tuple(actions)


def _chart_days(store, partner_id: str) -> tuple[date, list]:
    """Today (UTC) and the partner's days of the last ``CHART_DAYS``: the chart's and the list's."""
    today = datetime.now(UTC).date()
    return today, store.partner_days(partner_id, (today - timedelta(days=CHART_DAYS - 1)).isoformat())


def _not_reverted(store, job) -> bool:
    try:
        store.check_not_reverted(job, force=False)
    except JobNotFound:
        return False
    return True


def _revert_plan(store, job) -> dict:
    """What the confirmation page says a revert would do: read only (a page that a browser may
    prefetch must not take the partner's write lock, as a dry run of the revert would)."""
    try:
        return {"preview": store.revert_preview(job), "error": None}
    except JobNotFound as exc:           # pruned, or reverted already: the POST would say the same
        return {"preview": None, "error": str(exc)}


def _changes(store, job) -> tuple[list[dict], bool, str | None]:
    if job.catalog_version is None:
        return [], False, None
    try:
        shown = list(itertools.islice(store.job_changes(job, page=CHANGES_SHOWN + 1), CHANGES_SHOWN + 1))
    except JobNotFound as exc:
        return [], False, str(exc)
    return shown[:CHANGES_SHOWN], len(shown) > CHANGES_SHOWN, None


def _named(name: str) -> str | None:
    name = name.strip()
    if not ADMIN_NAME.match(name):
        return None
    session["name"] = name
    return name


def _local_next(target: str | None) -> str:
    """Only a path of this console: never another site (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return "/"
    return target


def _cursor(value: str | None) -> tuple[str, str] | None:
    if not value or "," not in value:
        return None
    at, job_id = value.split(",", 1)
    return at, job_id


def _time(value: str | None) -> str | None:
    """A date or time as the ledger writes times (ISO 8601, UTC); anything else is no filter."""
    if not value:
        return None
    try:
        return ledger_time(datetime.fromisoformat(value))
    except ValueError:
        return None


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


# -- template filters -------------------------------------------------------------------------------

def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _ago(value: str | None) -> str:
    if not value:
        return "never"
    try:
        then = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    seconds = (datetime.now(UTC) - then).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{max(seconds, 0):.0f} s ago"


def _link(value: Any) -> str | None:
    """A partner's URL as a link target only when it is http(s): never ``javascript:`` or ``data:``."""
    text = str(value or "")
    return text if urlsplit(text).scheme in ("http", "https") else None


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ("" if value is None else str(value))

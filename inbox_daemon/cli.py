"""``inbox-daemon``: the command line.

Exit codes: 0 applied (succeeded, partial, duplicate) · 1 failed · 2 usage or config error ·
4 rejected or held (nothing applied) · 141 output cut off (the reader of a pipe went away: ``| head``).

What partners control (file names, above all) reaches the operator's terminal escaped: JSON
output escapes control characters as ``\\uXXXX`` (the same JSON value), text output shows them
as ``\\x1b``, so no name can retitle, clear or rewrite a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, get_args

from config import Config, ConfigError
from config.model import FORMAT_NAMES, FeedMode
from config.status import REQUEUEABLE, JobStatus
from inbox_daemon import __version__, memory
from inbox_daemon.jsontext import json_text

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 4
EXIT_BROKEN_PIPE = 128 + 13      # as a shell reports a command that SIGPIPE ended (`set -o pipefail`)
EXIT_BY_STATUS = {JobStatus.SUCCEEDED: EXIT_OK, JobStatus.PARTIAL: EXIT_OK, JobStatus.DUPLICATE: EXIT_OK,
                  JobStatus.REJECTED: EXIT_REJECTED, JobStatus.HELD: EXIT_REJECTED, JobStatus.FAILED: EXIT_FAILED,
                  JobStatus.RUNNING: EXIT_FAILED}


class UsageError(Exception):
    pass


def shown(text: object) -> str:
    """``text`` for a terminal: characters that are not printable (controls, escape sequences'
    ESC and BEL, bidirectional overrides, line separators) as Python writes them in a literal
    (``\\x1b``, ``\\u202e``); everything else as it is."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _print_json(value) -> None:
    print(json_text(value, indent=2))


def _config(args) -> Config:
    from inbox_daemon import settings  # imports adapters, and pyarrow: not for --help
    return settings.load(getattr(args, "config", None))


def _partner(config: Config, partner_id: str):
    if partner_id not in config.partners:
        raise UsageError(f"unknown partner {partner_id!r}; configured: {', '.join(config.partners)}")
    return config.partners[partner_id]


def _store(config: Config):
    from storage import open_store
    return open_store(config.store)


def _setup_logs(config: Config, args) -> None:
    from inbox_daemon import logs
    # one-shot commands keep stdout for their answer: their logs go to stderr
    stream = sys.stdout if args.command == "run" else sys.stderr
    level = "debug" if getattr(args, "verbose", False) else (
        config.daemon.log_level if args.command == "run" else "warning")
    logs.configure(fmt=config.daemon.log_format, level=level, stream=stream)


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self._last = max(total, 1), label, 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and done < self.total:
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac:6.1%} {done / 1e6:8.1f} MB")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\r" + " " * 80 + "\r")
        sys.stderr.flush()


def _summary(manifest: dict) -> str:
    r = manifest["rows"]
    text = (f"{manifest['status']}: {r['read']} read, {r['rejected']} rejected, {r['warnings']} with warnings; "
            f"{r['inserted']} inserted, {r['updated']} updated, {r['unchanged']} unchanged, "
            f"{r['superseded']} superseded, {r['deactivated']} deactivated, {r.get('stale', 0)} stale "
            f"(job {manifest['job_id']}, {manifest.get('duration_ms', 0) / 1000:.2f} s)")
    if manifest.get("duplicate_of"):
        text += f"; duplicate of {manifest['duplicate_of']}"
    if manifest.get("reapplies"):
        text += f"; applies job {manifest['reapplies']} again"
    if manifest.get("message"):
        text += f"\n  {shown(manifest['message'])}"
    return text


# -- commands ------------------------------------------------------------------------------------

def cmd_ingest(args, *, dry_run: bool = False) -> int:
    from inbox_daemon.drop import Drop, delivery_time
    from inbox_daemon.pipeline import Pipeline, default_actor
    config = _config(args)
    _setup_logs(config, args)
    partner = _partner(config, args.partner)
    path = Path(args.path)
    if not path.is_file():
        raise UsageError(f"not a file: {path}")
    store = _store(config)
    try:
        stat = path.stat()
        drop = Drop(inbox="cli", partner=partner.id, key=str(path.resolve()), name=path.name,
                    uri=path.resolve().as_uri(), size=stat.st_size, version=str(stat.st_mtime_ns),
                    delivered=delivery_time(stat.st_ctime_ns / 1e9))    # as a local inbox dates it
        progress = Progress(drop.size, path.name) if sys.stderr.isatty() and not args.json else None
        try:
            result = Pipeline(config, store, actor=default_actor()).process_path(
                path, drop, fmt=args.format, mode=args.mode, dry_run=dry_run or args.dry_run,
                progress=progress)
        finally:
            if progress:
                progress.close()
    finally:
        store.close()
    if result.status == JobStatus.RUNNING:
        print(f"inbox-daemon: {result.manifest['message']}; try again when it is done", file=sys.stderr)
    elif args.json:
        _print_json(result.manifest)
    else:
        print(_summary(result.manifest))
        if result.manifest_path:
            print(shown(result.manifest_path))
        if result.manifest.get("diagnostics"):
            folder = config.daemon.results_dir / partner.id
            print(shown(folder / result.manifest["diagnostics"]))
    return _exit_code(result.manifest)


def _exit_code(manifest: dict) -> int:
    """By the job's status; a duplicate as the job it duplicates: content that was rejected or
    held is no more applied for being sent again (a script must not take it as applied)."""
    status = manifest["status"]
    if status == JobStatus.DUPLICATE and manifest.get("duplicate_of_status") in (JobStatus.REJECTED, JobStatus.HELD):
        return EXIT_REJECTED
    return EXIT_BY_STATUS.get(status, EXIT_FAILED)


def cmd_run(args) -> int:
    from inbox_daemon.daemon import Daemon
    from inbox_daemon.metrics import AddressUnavailable
    config = _config(args)
    _setup_logs(config, args)
    try:
        return Daemon(config, config_path=args.config, once=args.once).run()
    except AddressUnavailable as exc:     # logged by the daemon; the one line for a human
        print(f"inbox-daemon: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_validate(args) -> int:
    return cmd_ingest(args, dry_run=True)


def _job_json(job) -> dict:
    data = job.as_dict()
    data.pop("spool_path", None)
    return data


def _catalog_file(config: Config) -> Path | None:
    """The SQLite catalog's file, resolved against the current directory as the store opens it;
    None for a server store."""
    prefix = "sqlite:///"
    return Path(config.store.url[len(prefix):]).absolute() if config.store.url.startswith(prefix) else None


def _require_catalog(config: Config) -> None:
    """The jobs commands read the daemon's catalog. A relative ``state_dir`` resolves against the
    current directory, so run from elsewhere it names a folder the daemon never wrote to: opening
    the store there would create an empty catalog and answer "no jobs". Refused instead."""
    path = _catalog_file(config)
    if path is None or path.exists():
        return
    where = config.source or "the built-in default"
    hint = (f"state_dir {str(config.daemon.state_dir)!r} of {where} is relative to the current directory "
            f"({Path.cwd()}): run from the daemon's working directory, or make state_dir absolute"
            if not config.daemon.state_dir.is_absolute() else
            f"state_dir of {where}: has the daemon run with this configuration yet?")
    raise UsageError(f"no catalog at {shown(path)}; {shown(hint)}")


# the actions each option of ``jobs`` means something to: given to another, it is refused, not ignored
_JOBS_OPTIONS = {"status": ("list", "requeue"), "partner": ("list", "requeue"), "limit": ("list",),
                 "json": ("list", "show", "diff", "revert"), "csv": ("diff",), "parquet": ("diff",),
                 "dry_run": ("revert",), "force": ("revert",), "by": ("approve",)}


def cmd_jobs(args) -> int:
    for option, actions in _JOBS_OPTIONS.items():
        if getattr(args, option) not in (None, False) and args.action not in actions:
            raise UsageError(f"--{option.replace('_', '-')} is for jobs {' and '.join(actions)}, not jobs {args.action}")
    config = _config(args)
    _setup_logs(config, args)
    _require_catalog(config)
    store = _store(config)
    try:
        if args.action == "list":
            jobs = store.jobs(status=args.status, partner_id=args.partner, limit=args.limit)
            if args.json:
                _print_json([_job_json(j) for j in jobs])
            else:
                print(f"{'JOB':<26} {'PARTNER':<12} {'STATUS':<11} {'TRY':>3} {'READ':>8} {'REJ':>6}  "
                      f"{'CREATED':<24} FILE")
                for j in jobs:
                    rows = (j.result or {}).get("rows", {})
                    print(f"{shown(j.id):<26} {shown(j.partner_id):<12} {shown(j.status):<11} {j.attempt:>3} "
                          f"{rows.get('read', ''):>8} {rows.get('rejected', ''):>6}  {shown(j.created_at):<24} "
                          f"{shown(j.source_name)}")
        elif args.action == "show":
            job = store.job(args.ids[0])
            _print_json({**_job_json(job), "attempts": store.attempts(job.id),
                         "webhooks": store.webhook_deliveries(job.id)})
        elif args.action == "requeue":
            if bool(args.ids) == bool(args.status):
                raise UsageError("give job ids, or --status (with optional --partner), not both")
            if args.status and args.status not in REQUEUEABLE:
                raise UsageError(f"--status must be {' or '.join(sorted(REQUEUEABLE))}")
            from inbox_daemon.pipeline import Pipeline, default_actor
            ids = Pipeline(config, store, actor=default_actor()).requeue(ids=args.ids, status=args.status,
                                                                         partner_id=args.partner)
            print(f"requeued {len(ids)} job(s)" + ("".join(f"\n  {shown(i)}" for i in ids)))
        elif args.action == "diff":
            _one_id(args)
            _write_change_set(store.job_changes(store.job(args.ids[0])), args)
        elif args.action == "revert":
            return _revert(config, store, args)
        elif args.action == "approve":
            from inbox_daemon.pipeline import Pipeline, default_actor
            _one_id(args)
            by = args.by or default_actor()
            job = Pipeline(config, store, actor=by).approve(args.ids[0], by)
            print(f"approved by {shown(by)}: job {shown(job.id)} ({shown(job.source_name)}) is queued; the daemon "
                  "applies it as it is, without the price check")
    finally:
        store.close()
    return EXIT_OK


def _one_id(args) -> None:
    if len(args.ids) != 1:
        raise UsageError(f"jobs {args.action} takes one job id")


def _binary_out(fmt: str):
    """stdout for ``fmt``; Parquet is not for a terminal."""
    if fmt == "parquet" and sys.stdout.isatty():
        raise UsageError("Parquet is binary: redirect it to a file (> catalog.parquet)")
    sys.stdout.flush()
    return sys.stdout.buffer


def _cell(value, width: int) -> str:
    text = "" if value is None else shown(json.dumps(value, ensure_ascii=False) if not isinstance(value, str)
                                          else value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _write_change_set(records, args) -> None:
    """A job's changes as a table, or as --json (NDJSON, a product a line), --csv or --parquet."""
    from inbox_daemon.exports import OutputFormat, write_changes
    fmt: OutputFormat | None = "ndjson" if args.json else "csv" if args.csv else "parquet" if args.parquet else None
    if fmt is not None:
        write_changes(records, _binary_out(fmt), fmt)
        return
    print(f"{'SKU':<24} {'CHANGE':<12} {'COLUMN':<12} {'BEFORE':<30} AFTER")
    count = 0
    for record in records:
        count += 1
        before, after = record["before"], record["after"]
        for column in dict.fromkeys([*before, *after]):
            print(f"{_cell(record['sku'], 24):<24} {record['change']:<12} {column:<12} "
                  f"{_cell(before.get(column), 30):<30} {_cell(after.get(column), 60)}")
    print(f"{count} product(s) changed")


def _revert(config: Config, store, args) -> int:
    from inbox_daemon.pipeline import Pipeline, default_actor
    _one_id(args)
    target = store.job(args.ids[0])
    if args.dry_run:
        counts = store.revert(None, target, force=args.force)
        conflicts = store.revert_plan(target)
        print(f"dry run: reverting job {shown(target.id)} ({shown(target.source_name)}) would restore "
              f"{counts.updated} product(s), deactivate {counts.deactivated} it inserted, make "
              f"{counts.reactivated} it deactivated active again")
        if conflicts:
            what = ("restored all the same, overwriting what those jobs set in the same columns" if args.force
                    else "left as they are (--force restores them too, overwriting what those jobs set in the "
                         "columns this job changed)")
            print(f"{len(conflicts)} product(s) were changed again by a later job since: {what}")
            for sku, _, by in conflicts[:20]:
                print(f"  {shown(sku)}  (job {shown(by)})")
        return EXIT_OK
    result = Pipeline(config, store, actor=default_actor()).revert(target.id, force=args.force)
    if args.json:
        _print_json(result.manifest)
    else:
        print(f"{result.status}: {shown(result.manifest.get('message', ''))} (job {shown(result.manifest['job_id'])})")
        if result.manifest_path:
            print(shown(result.manifest_path))
        if result.manifest.get("diagnostics"):
            print(shown(config.daemon.results_dir / target.partner_id / result.manifest["diagnostics"]))
    return EXIT_BY_STATUS.get(result.status, EXIT_FAILED)


def cmd_catalog(args) -> int:
    config = _config(args)
    _setup_logs(config, args)
    _require_catalog(config)
    partner = _partner(config, args.partner)
    store = _store(config)
    try:
        if args.action == "history":
            if not args.sku:
                raise UsageError("catalog history takes a SKU")
            events = store.product_history(partner.id, args.sku)
            if args.json:
                _print_json(events)
                return EXIT_OK
            for event in events:
                print(f"{shown(event['at'] or '?')}  {event['change']:<12} job {shown(event['job'] or '?')}  "
                      f"{shown(event['file'] or '')}" + (f"  (reverts {shown(event['reverts'])})"
                                                         if event.get("reverts") else ""))
                for column in dict.fromkeys([*event["before"], *event["after"]]):
                    print(f"    {column:<12} {_cell(event['before'].get(column), 30):<30} → "
                          f"{_cell(event['after'].get(column), 60)}")
            return EXIT_OK
        from inbox_daemon.exports import write_catalog
        from storage.history import EXPORT_SCHEMA
        since = store.since_version(partner.id, args.since) if args.since else -1     # every product
        out = _binary_out(args.format)
        version, batches = store.export(partner.id, since)
        count = write_catalog(batches, EXPORT_SCHEMA, out, args.format)
        out.flush()
        cursor = store.cursor(partner.id, version)
        print(f"exported {count} product(s) of {partner.id}" + (" changed since that cursor" if args.since else "")
              + (f"; next time: --since {cursor}" if cursor else ""), file=sys.stderr)
    finally:
        store.close()
    return EXIT_OK


def _has_catalog(config: Config) -> bool:
    """A PostgreSQL store always; an SQLite one once its file exists (opening it would make one)."""
    path = _catalog_file(config)
    return path is None or path.exists()


def _audit_head(config: Config, audit):
    """The chain's head as the catalog's ledger last saw it reported (None without a catalog)."""
    if not _has_catalog(config):
        return None
    store = _store(config)
    try:
        return store.audit_head(audit.ledger_key())
    finally:
        store.close()


def cmd_audit(args) -> int:
    from inbox_daemon.audit import Head, open_audit
    from storage.base import AuditHead
    config = _config(args)
    audit = open_audit(config.daemon)
    if args.action == "verify":
        stored = _audit_head(config, audit)
        head = Head(stored.chain, stored.seq, stored.hash) if stored else None
        count, problem = audit.verify(head)
        if problem:
            print(f"audit chain BROKEN after {count} good record(s): {shown(problem)}")
            return EXIT_FAILED
        print(f"audit chain intact: {count} record(s) in {config.daemon.audit_dir}"
              + (f", reaching seq {head.seq} as the catalog's ledger saw it" if head else
                 " (no catalog: its end is not checked)"))
        if audit.damaged():
            print(f"quarantined lines to look at: {shown(json.dumps(audit.damaged()))} (then: inbox-daemon audit ack)")
        return EXIT_OK
    if args.action == "ack":
        # the trail as it is now is the one to go on with: its damage looked at, its chain (a
        # folder deleted and begun again) the one the ledger follows from here
        damage = audit.acknowledge()
        stored = _audit_head(config, audit)
        last = audit.last_record()
        if last is not None and _has_catalog(config):
            store = _store(config)
            try:
                store.reset_audit_head(AuditHead(audit.ledger_key(), audit.chain_id(), last["seq"], last["hash"]))
            finally:
                store.close()
        print("acknowledged: " + (shown(json.dumps(damage)) if damage else "no quarantined lines")
              + (f"; the ledger now follows chain {audit.chain_id()} (it followed {stored.chain})"
                 if stored and stored.chain != audit.chain_id() else ""))
        return EXIT_OK
    for line in audit.tail(args.n):
        print(line)
    if args.follow:
        try:
            for line in audit.follow():
                print(line, flush=True)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def cmd_console(args) -> int:
    """``console hash-password``: the hash ``admins_env`` holds for an admin (``name=<hash>``).
    The password is read from the terminal (twice), or as the first line of stdin."""
    import getpass

    from inbox_daemon.console.access import hash_password
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise UsageError("a password needs at least 8 characters")
    print(hash_password(password))
    return EXIT_OK


def cmd_contract(args) -> int:
    from adapters.contract import contract
    config = _config(args)
    partner = _partner(config, args.partner)
    _print_json(contract(partner))
    return EXIT_OK


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def cmd_config(args) -> int:
    from inbox_daemon.logs import mask_url
    try:
        config = _config(args)
        if config.console.address:
            from inbox_daemon.console.access import credentials
            credentials(config.console)     # the console needs a login nobody could give
    except ConfigError as exc:
        where = f" in {exc.source}" if exc.source else ""
        print(f"configuration errors{where}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    data = _plain(config)
    data["store"]["url"] = mask_url(data["store"]["url"])
    from inbox_daemon.webhooks import shown_url
    for partner in data["partners"].values():
        if partner.get("webhook"):           # Slack-style URLs carry their token in the path
            partner["webhook"]["url"] = shown_url(partner["webhook"]["url"])
    if args.probe:
        data["probe"] = _probe(config)
    data["source"] = str(config.source) if config.source else "built-in default"
    data["partners"] = list(data["partners"].values())
    _print_json(data)
    from config import missing_secrets
    for warning in missing_secrets(config):
        print(f"warning: {warning}", file=sys.stderr)
    if args.probe and not all(p["ok"] for p in data["probe"]):
        for p in data["probe"]:
            if not p["ok"]:
                print(f"  {p['inbox']}: {p['detail']}", file=sys.stderr)
        print("configuration valid, but some inboxes cannot be reached", file=sys.stderr)
        return EXIT_FAILED
    print("configuration OK", file=sys.stderr)
    return EXIT_OK


def _probe(config: Config) -> list[dict]:
    """Connect to every inbox: reachability, authentication, host key (``config check --probe``)."""
    from config.errors import InboxError
    from inbox_daemon.inboxes import open_inbox
    results = []
    for inbox_cfg in config.inboxes:
        try:
            inbox = open_inbox(inbox_cfg)
            try:
                outcome = inbox.probe()
            finally:
                inbox.close()
        except (InboxError, OSError) as exc:
            outcome = {"ok": False, "detail": str(exc)}
        results.append({"inbox": inbox_cfg.id, "kind": inbox_cfg.kind, **outcome})
    return results


# -- parser --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inbox-daemon",
        description="Partner catalog files in, exactly-once catalog changes out.",
        epilog="Exit codes: 0 applied (succeeded, partial, duplicate), 1 failed, 2 usage or configuration "
               "error, 4 rejected (nothing applied).")
    parser.add_argument("--version", action="version", version=f"inbox-daemon {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH",
                        help="TOML configuration (default: $INBOX_DAEMON_CONFIG, else built-in default)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="the daemon: watch the inboxes and apply what arrives")
    p.add_argument("--once", action="store_true", help="process what is there, then exit (cron, tests)")

    for name, helptext in (("ingest", "apply one file to the catalog"),
                           ("validate", "dry run: judge a file, write nothing to the catalog")):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("path")
        p.add_argument("--partner", default="default", help="partner id (default: default)")
        p.add_argument("--format", choices=sorted(FORMAT_NAMES), help="override the format the name suggests")
        p.add_argument("--mode", choices=get_args(FeedMode), default="delta")
        p.add_argument("--json", action="store_true", help="print the result manifest")
        if name == "ingest":
            p.add_argument("--dry-run", action="store_true", help="same as validate")
        else:
            p.set_defaults(dry_run=True)

    p = sub.add_parser("jobs", parents=[common], help="list, show, requeue, diff, revert and approve jobs",
                       description="diff: what a job changed; revert: undo it (a job of its own, with its "
                                   "manifest); approve: apply a file held for its prices")
    p.add_argument("action", choices=("list", "show", "requeue", "diff", "revert", "approve"))
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--status", choices=[str(s) for s in JobStatus])
    p.add_argument("--partner")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json", action="store_true", help="diff: NDJSON, a product a line")
    p.add_argument("--csv", action="store_true", help="diff: CSV (sku, change, column, before, after)")
    p.add_argument("--parquet", action="store_true", help="diff: Parquet, the same columns")
    p.add_argument("--dry-run", action="store_true", help="revert: say what it would do, change nothing")
    p.add_argument("--force", action="store_true",
                   help="revert: also restore products a later job changed since, overwriting what it set "
                        "in the columns this job changed")
    p.add_argument("--by", help="approve: the admin's name for the audit trail (default: cli:<user>)")

    p = sub.add_parser("catalog", parents=[common], help="a product's history; the catalog exported",
                       description="history: every change to one product, newest first. export: the "
                                   "partner's products (or those changed since a cursor) to stdout; the "
                                   "cursor for next time goes to stderr")
    p.add_argument("action", choices=("history", "export"))
    p.add_argument("sku", nargs="?")
    p.add_argument("--partner", default="default")
    p.add_argument("--format", choices=("parquet", "csv", "ndjson"), default="csv", help="export: default csv")
    p.add_argument("--since", metavar="JOB_OR_TIME",
                   help="export: only products changed after this job (the cursor an export printed) or time")
    p.add_argument("--json", action="store_true", help="history: as JSON")

    p = sub.add_parser("audit", parents=[common], help="verify or tail the audit trail")
    p.add_argument("action", choices=("verify", "tail", "ack"),
                   help="ack: an operator looked at quarantined lines (or a replaced folder): the trail goes on")
    p.add_argument("-n", type=int, default=20, help="tail: records to show")
    p.add_argument("-f", "--follow", action="store_true", help="tail: keep printing new records")

    p = sub.add_parser("console", help="the admin console's credentials",
                       description="hash-password: print the hash of a password, for [console] admins_env "
                                   "(name=<hash>); read from the terminal, or the first line of stdin")
    p.add_argument("action", choices=("hash-password",))

    p = sub.add_parser("contract", parents=[common], help="JSON Schema of an accepted row + example")
    p.add_argument("--partner", default="default")

    p = sub.add_parser("config", parents=[common], help="check and print the resolved configuration")
    p.add_argument("action", choices=("check",))
    p.add_argument("--probe", action="store_true",
                   help="also connect to every inbox: reachability, authentication, host key")
    return parser


COMMANDS = {"run": cmd_run, "ingest": cmd_ingest, "validate": cmd_validate, "jobs": cmd_jobs, "audit": cmd_audit,
            "contract": cmd_contract, "config": cmd_config, "catalog": cmd_catalog,
            "console": cmd_console}


PRIVATE_UMASK = 0o027      # results, audit, spool and catalog: never world-readable


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Partner data and the audit trail are nobody else's business: whatever umask the shell
    # gave us, nothing this process creates is world-accessible (stricter umasks are kept).
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)
    memory.tune()                   # before the first thread and the first large allocation
    from config.errors import InboxDaemonError, JobNotFound, StoreError
    from inbox_daemon import logs
    logs.configure(level="warning", stream=sys.stderr)     # until a command sets its own
    try:
        if args.command == "jobs" and args.action == "show" and len(args.ids) != 1:
            raise UsageError("jobs show takes one job id")
        code = COMMANDS[args.command](args)
        sys.stdout.flush()                  # a reader gone shows here, not at exit
        return code
    except BrokenPipeError:
        # ``inbox-daemon jobs list | head -1``: the reader took what it wanted. Quiet, and
        # nothing left for the interpreter to flush into the closed pipe at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        print(f"inbox-daemon: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, JobNotFound) as exc:
        print(f"inbox-daemon: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"inbox-daemon: store error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except InboxDaemonError as exc:         # e.g. the results could not be written: try again
        print(f"inbox-daemon: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

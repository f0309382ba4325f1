"""The order of steps for one file, and nothing else:

    spool + sha256 → claim → read → judge → stage → merge → commit (rows + outcome)
        → diagnostics + manifest → audit

Each stage is a function of its own; ``Pipeline.process`` only sequences them and decides what
an error means: a ``FeedError`` (Terminal) rejects the job with a diagnostics line, a
``Transient`` error (or an unexpected one) fails this attempt: the daemon retries it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapters.mapping import ColumnMap, candidates, preset_of, requested_paths, resolve_columns
from adapters.platforms import AUTO, RECORD_PATHS, detect_preset
from adapters.readers import BLOCK_SIZE, Block, ReadOptions, detect_format, read_blocks
from adapters.rows import Shaper, shaper_for, with_notes
from adapters.validation import DIAGNOSTICS_SCHEMA, ERROR, Judged, carried_columns, diagnostics_lines, judge
from config.canonical import MERGED_COLUMNS
from config.errors import (
    Cancelled,
    CatalogChanged,
    FeedError,
    JobNotFound,
    PriceShockHeld,
    ResultsUnwritable,
    SourceChanged,
    StoreError,
    TooManyRejects,
    Transient,
)
from config.model import Config, Limits, PartnerConfig
from config.status import KEEP_SPOOL, JobStatus
from inbox_daemon import __version__, failpoints, spool, tempfiles
from inbox_daemon.audit import open_audit
from inbox_daemon.drop import Drop, delivery_time
from inbox_daemon.exports import changes_name, write_changes
from inbox_daemon.logs import get_logger
from inbox_daemon.results import DiagnosticsWriter, write_manifest
from inbox_daemon.spool import spool_file
from storage.base import (
    TO_RUN,
    AuditHead,
    CatalogStore,
    Claim,
    Columns,
    Job,
    MergeCounts,
    Outcome,
    Recognised,
    Source,
    new_job_id,
    utcnow,
)
from storage.changes import record_hashes
from storage.history import FORCED_REVERT_MODE, REVERT_MODE, PriceShockRule, RevertCounts, revert_identity


def _notify(partner: PartnerConfig | None) -> bool:
    """Is the partner told of its answers by webhook? Then the answer goes in the outbox, in the
    transaction that records it (``storage.outbox``)."""
    return partner is not None and partner.webhook is not None


def read_options(partner: PartnerConfig, limits: Limits, progress=None) -> ReadOptions:
    """How this partner's files are read: encoding, delimiter (the partner's, else the preset's,
    else sniffed), sheet, header row, where the records are and which nested list is rows
    (JSON/XML), nested paths the mapping names, and the limits. Temporary copies are
    locked (``tempfiles.create``), so the next start removes a crash's and no live one."""
    preset = preset_of(partner)
    return ReadOptions(encoding=partner.encoding, progress=progress,
                       delimiter=partner.delimiter or (preset.delimiter if preset else None),
                       paths=requested_paths(partner), sheet=partner.sheet, limits=limits,
                       record_path=preset.record_path if preset else (),
                       guess_paths=RECORD_PATHS if partner.preset == AUTO else (),
                       expand=preset.expand if preset else None, header_row=partner.header_row,
                       make_temp=tempfiles.create)


@dataclass
class Totals:
    read: int = 0
    rejected: int = 0
    warnings: int = 0
    skipped: int = 0              # rows that are no catalog row of their own (Shopify image rows,
                                  # Magento store-view rows)
    recognised: int = 0           # rows read that the catalog had taken as they are: not judged again
    error_codes: dict[str, int] = field(default_factory=dict)

    def add(self, judged: Judged) -> None:
        self.read += judged.read
        self.rejected += judged.rejected
        self.warnings += judged.warned
        for code, n in judged.error_codes.items():
            self.error_codes[code] = self.error_codes.get(code, 0) + n


@dataclass(frozen=True)
class Run:
    """One job's run through the stages: what every stage needs to know, passed as one."""
    job: Job
    partner: PartnerConfig
    spooled: Path
    fmt: str | None
    mode: str
    dry_run: bool
    progress: Callable[[int], None] | None
    should_stop: Callable[[], bool]
    log: Any
    # raises ``SourceChanged`` if the partner's file changed since it was read; asked right
    # before the commit (a watched inbox's file; nothing to ask for a file given to ``ingest``)
    verify_source: Callable[[], None] = lambda: None


@dataclass
class Progress:
    """What one attempt has gathered so far: counts, diagnostics, and when it started."""
    diagnostics: DiagnosticsWriter
    totals: Totals = field(default_factory=Totals)
    carried: frozenset[str] = frozenset()     # the stored columns the file sets (its headers')
    name_column: str = "name"                 # the partner's column for a name, for diagnostics
    platform: dict = field(default_factory=dict)   # preset chosen (preset = "auto") or hinted

    def describe(self, manifest: dict) -> None:
        """Adds to the manifest what was learnt of the file's platform."""
        manifest.update(self.platform)
    started: str = field(default_factory=utcnow)
    clock: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Result:
    """What ``process`` did: the manifest (as written) and where it is. ``replay``: nothing was
    done, the file had its answer already (the caller only archives it)."""
    status: JobStatus
    manifest: dict
    manifest_path: Path | None
    replay: bool = False


def default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


class Pipeline:
    def __init__(self, config: Config, store: CatalogStore, *, actor: str = "daemon"):
        self.config = config
        self.store = store
        self.actor = actor
        self.audit = open_audit(config.daemon)

    # -- entry points ---------------------------------------------------------------------------
    def process_path(self, path: Path, drop: Drop, *, fmt: str | None = None, mode: str = "delta",
                     dry_run: bool = False, progress: Callable[[int], None] | None = None) -> Result:
        """Spool a local file, then process it."""
        partner = self.config.partner(drop.partner)
        with contextlib.suppress(OSError):            # spool_file says what is wrong with the file
            self.store.read_ahead(partner.id, size=path.stat().st_size, mode=mode)
        # a dry run gets its own spool name: the real one may be kept for a requeued job
        spooled, sha256, size = spool_file(path, self.config.daemon.spool_dir / partner.id,
                                           suffix=".validate" if dry_run else "")
        drop = dataclasses.replace(drop, size=size)
        try:
            return self.process(spooled, sha256, drop, fmt=fmt, mode=mode, dry_run=dry_run,
                                progress=progress)
        finally:
            if dry_run:
                spooled.unlink(missing_ok=True)

    def process(self, spooled: Path, sha256: str, drop: Drop, *, fmt: str | None = None,
                mode: str = "delta", dry_run: bool = False,
                progress: Callable[[int], None] | None = None,
                should_stop: Callable[[], bool] = lambda: False, watching: bool = False,
                verify_source: Callable[[], None] = lambda: None) -> Result:
        """Run one spooled file through every stage. ``should_stop`` is asked between batches: when
        it says yes the job is abandoned before its commit and released back to ``queued``.
        ``watching``: the caller watches an inbox, where the very file a job came from may be
        seen again after its answer (a look racing the report): then it is not a duplicate.
        ``verify_source`` is asked right before the commit: a file that changed since it was
        read (an upload that went on after a pause) is abandoned, nothing of it applied."""
        failpoints.reached("after_spool")
        partner = self.config.partner(drop.partner)
        log = get_logger(partner=partner.id, inbox=drop.inbox, file=drop.name, sha256=sha256[:12])
        source = Source(uri=drop.uri, name=drop.name, size=drop.size, version=drop.version,
                        delivered_at=drop.delivered or delivery_time(time.time()))
        try:
            fmt = fmt or detect_format(drop.name)
        except FeedError:
            fmt = None          # reported as the job's rejection below, with the job recorded
        if dry_run:
            job = _dry_run_job(drop, sha256, source, fmt, mode, spooled)
        else:
            claim = self.store.claim(partner_id=partner.id, sha256=sha256, inbox=drop.inbox,
                                     source=source, fmt=fmt, mode=mode, spool_path=str(spooled),
                                     answered_if_same_file=watching)
            job = claim.job
            log = log.bind(job_id=job.id)
            if claim.kind not in TO_RUN:
                return self._not_to_run(claim, spooled, log)
            log.info("job.started", attempt=job.attempt, kind=claim.kind, size=drop.size,
                     delivered_at=job.delivered_at, reapplies=job.reapplies)
            failpoints.reached("after_claim")
        run = Run(job=job, partner=partner, spooled=spooled, fmt=fmt, mode=mode, dry_run=dry_run,
                  progress=progress, should_stop=should_stop, log=log, verify_source=verify_source)
        try:
            outcome = self._apply(run)
        except (Cancelled, KeyboardInterrupt):
            if not dry_run:
                self.store.release(job)
            log.info("job.released", reason="stopped before its commit; nothing was applied")
            raise
        if dry_run:
            return Result(outcome.status, outcome.result, None)
        if outcome.status == JobStatus.ABANDONED:
            _drop_copy(spooled, outcome.status)      # no answer: the complete file gets one
            return Result(outcome.status, outcome.result, None)
        return self.report(job, outcome.result, spooled, log)

    def _not_to_run(self, claim: Claim, spooled: Path | None, log) -> Result:
        """A claim whose content is not to be applied here: record a duplicate, finish the report
        of an outcome committed before a crash, replay an answer, or leave it to its runner."""
        job = claim.job
        if claim.kind == "duplicate":
            return self._duplicate(job, spooled, log)
        if claim.kind == "busy":
            log.info("job.busy", status=job.status)
            doing = (f"job {job.reverts} is being reverted right now" if job.reverts
                     else "the same content is being processed right now")
            return Result(JobStatus.RUNNING, {"job_id": job.id, "status": JobStatus.RUNNING, "message":
                          f"{doing} as job {job.id}"}, None)
        assert job.result is not None       # its outcome is committed, the manifest with it
        if claim.kind == "unreported":
            log.info("job.report_resumed")
            return self.report(job, job.result, spooled, log)
        # "reported": this file was answered already (kept, a restart before its archive, a look
        # that raced its report). Spool names are content: the copy just read is the one of the
        # job that holds this content, kept only where that job's status needs it
        log.info("job.already_reported", status=job.status)
        holder = self.store.job(job.duplicate_of) if job.duplicate_of else job
        _drop_copy(spooled, holder.status)
        return Result(job.status, job.result, None, replay=True)

    # -- stages ---------------------------------------------------------------------------------
    def _apply(self, run: Run) -> Outcome:
        """Read, judge, stage, merge and commit the file. A load stages only what differs from the
        catalog as it read it; if another job changed the partner's catalog meanwhile, the file
        is read once more with the catalog held for the whole load."""
        try:
            return self._apply_once(run, exclusive=False)
        except CatalogChanged as exc:
            run.log.info("job.reread", reason=str(exc))
            return self._apply_once(run, exclusive=True)

    def _apply_once(self, run: Run, *, exclusive: bool) -> Outcome:
        """One attempt at the file: its outcome (applied, rejected or failed) is recorded in the
        store either way, except when stopping (``Cancelled``) or when the catalog moved under a
        shared load (``CatalogChanged``: ``_apply`` reads it again)."""
        progress = Progress(DiagnosticsWriter(self.config.daemon.results_dir / run.partner.id, run.job.id))
        try:
            if run.fmt is None:
                detect_format(run.job.source_name)           # raises UnknownFormat with the reason
            with self.store.load(run.job, exclusive=exclusive) as load:
                self._stage(run, load, progress)
                if run.should_stop():
                    raise Cancelled()
                if run.job.size > BLOCK_SIZE:
                    _give_back_memory()      # before the merge takes the page cache and the sorter
                outcome = self._merge(run, load, progress)
            return outcome
        except FeedError as exc:
            return self._reject(run, progress, exc)
        except SourceChanged as exc:
            return self._abandon(run, progress, exc)
        except Cancelled:
            progress.diagnostics.discard()
            raise
        except Exception as exc:
            if isinstance(exc, CatalogChanged) and not exclusive:
                progress.diagnostics.discard()
                raise                   # read again, exclusively (``_apply``)
            # Transient: worth another attempt. Anything else is a defect or a surprise from a
            # library: the job fails (and is retried, then quarantined) rather than stay "running".
            return self._fail(run, progress, exc)
        except BaseException:          # KeyboardInterrupt: the caller releases the job
            progress.diagnostics.discard()
            raise

    def _stage(self, run: Run, load, progress: Progress) -> None:
        """Read the file block by block: shape rows (presets' row models), map the partner's
        columns, judge whole columns, write diagnostics, stage the valid rows."""
        partner, totals = run.partner, progress.totals
        options = read_options(partner, self.config.daemon.limits, run.progress)
        # the partner's decimal separator is a convention of text files only
        decimal = partner.decimal_separator if run.fmt in ("csv", "tsv", "xlsx") else "."
        blocks = read_blocks(run.spooled, name=run.job.source_name, fmt=run.fmt, options=options)
        # the first block's header tells the platform (``_platform``), which decides the row model
        first = next(blocks, None)
        if first is not None:
            partner = self._platform(run, partner, first.batch.schema.names, progress)
            blocks = itertools.chain([first], blocks)
        shaper: Shaper = shaper_for(preset.rows if (preset := preset_of(partner)) else None,
                                    sku=candidates(partner, "sku"))
        cmap: ColumnMap | None = None
        names: list[str] | None = None
        carried: frozenset[str] = frozenset()
        salt = 0

        def shaped() -> Iterator[_Shaped]:
            nonlocal cmap, names, carried, salt
            for block in shaper.shaped(blocks):
                if run.should_stop():
                    raise Cancelled()
                totals.skipped = shaper.skipped
                if cmap is None or block.batch.schema.names != names:
                    names = block.batch.schema.names
                    cmap = resolve_columns(names, partner, require=cmap is None)
                    carried = carried_columns(cmap)
                    progress.carried |= carried
                    progress.name_column = cmap.partner_column("name")
                    salt = record_salt(partner, names, run.fmt, decimal)
                yield _Shaped(block, shaper.notes, cmap, carried, salt)

        # the records of the next blocks are hashed and looked up on a thread while this one reads
        # and judges (a file of more than one block): on two cores, the hashing costs no time.
        # While the catalog they are looked up in is still being read, the file is read further
        # ahead (``_ahead``): the hashing goes on, only the looking up waits for it
        for n, (item, (records, done)) in enumerate(_ahead(
                shaped(), lambda it: _hashed(load, it), load.keeps_records and run.job.size > BLOCK_SIZE,
                further=lambda: not load.ready()), start=1):
            block, records, recognised = done or _recognised(load, item, records)
            judged = with_notes(judge(block, item.cmap, partner, decimal=decimal), item.notes)
            progress.diagnostics.write(judged.diagnostics)
            load.stage(judged.valid, judged.rejected_keys, Columns(item.carried),
                       records=_valid_records(judged, block, records), recognised=recognised)
            failpoints.reached("mid_stage")
            if n % _RELEASE_EVERY == 0:
                _give_back_memory()
            totals.add(judged)
            if recognised is not None:
                totals.read += len(recognised.rows)
                totals.recognised += len(recognised.rows)
        if totals.read and totals.rejected > partner.max_reject_ratio * totals.read:
            raise TooManyRejects(rejected=totals.rejected, read=totals.read, max_ratio=partner.max_reject_ratio)

    def _merge(self, run: Run, load, progress: Progress) -> Outcome:
        """Merge the staged rows and commit them with the job's outcome, in one transaction (a
        dry run rolls back)."""
        totals = progress.totals
        counts = load.merge(mode=run.mode, max_deactivate_ratio=run.partner.max_deactivate_ratio,
                            columns=Columns(progress.carried), hold=_price_rule(run))
        if counts.unnamed:
            self._refuse_unnamed(run, progress, counts)
        status = JobStatus.PARTIAL if totals.rejected else JobStatus.SUCCEEDED
        manifest = self._manifest(run.job, status, totals, counts, progress.diagnostics.finish(),
                                  progress.started, progress.clock, run.fmt, run.mode, dry_run=run.dry_run)
        # what the file set (in catalog terms): a column it does not carry was left as it was
        manifest["columns"] = [c for c in MERGED_COLUMNS if c in progress.carried]
        if run.partner.write_changes and not run.dry_run:
            manifest["changes"] = changes_name(run.job.id)
        progress.describe(manifest)
        outcome = Outcome(status=status, result=manifest, notify=_notify(run.partner))
        if run.dry_run:
            load.abort()
        else:
            run.verify_source()                 # the file read is still the partner's whole file
            failpoints.reached("before_commit")
            load.commit(outcome)
            failpoints.reached("after_commit")
        # the manifest is committed with the rows, so its duration stops short of the commit; the
        # log line also says when the commit ended (a large file's commit takes seconds)
        run.log.info("job.applied", status=status, read=totals.read, recognised=totals.recognised,
                     rejected=totals.rejected, inserted=counts.inserted, updated=counts.updated, unchanged=counts.unchanged,
                     deactivated=counts.deactivated, stale=counts.stale, duration_ms=manifest["duration_ms"],
                     committed_ms=int((time.monotonic() - progress.clock) * 1000))
        return outcome

    @staticmethod
    def _platform(run: Run, partner: PartnerConfig, header: list[str], progress: Progress) -> PartnerConfig:
        """``preset = "auto"``: the partner as if it had the preset its file's header shows (or
        none). Otherwise a file that is clearly another platform's export than the partner's
        preset (or none) says which one to set."""
        detected = detect_preset(header, partner)
        if partner.preset == AUTO:
            progress.platform["preset"] = detected
            run.log.info("file.preset_detected", preset=detected)
            return dataclasses.replace(partner, preset=detected)
        if detected not in (None, partner.preset):
            read_as = (f"preset \"{partner.preset}\": it is read as {partner.preset}'s" if partner.preset
                       else "no preset: its columns are read by their names alone")
            progress.platform["hint"] = (f"this file looks like an export of {detected}, and partner {partner.id} has "
                                         f"{read_as}. Set preset = \"{detected}\" (or \"auto\") for this partner, "
                                         "or send the file to the right inbox.")
            run.log.warning("file.looks_like_platform_export", preset=detected)
        return partner

    @staticmethod
    def _refuse_unnamed(run: Run, progress: Progress, counts: MergeCounts) -> None:
        """Rows the merge refused (a new product without a name) are rejected rows like any
        other: a diagnostics line each (after the lines of the judged rows) and counted against
        ``max_reject_ratio``."""
        rows, skus = zip(*counts.unnamed, strict=True)
        n = len(rows)
        progress.diagnostics.write(diagnostics_lines(
            pa.array(rows, pa.int64()), pa.array(skus, pa.string()), severity=ERROR, column=progress.name_column,
            code="name_required",
            message="the catalog has no product with this sku yet, and a new product needs a name"))
        totals = progress.totals
        totals.rejected += n
        totals.error_codes["name_required"] = totals.error_codes.get("name_required", 0) + n
        if totals.rejected > run.partner.max_reject_ratio * totals.read:
            raise TooManyRejects(rejected=totals.rejected, read=totals.read, max_ratio=run.partner.max_reject_ratio)

    def _reject(self, run: Run, progress: Progress, exc: FeedError) -> Outcome:
        """The file as a whole cannot be applied: nothing of it is, and a diagnostics line says
        why. A file held for approval (``PriceShockHeld``) is ``held``, its manifest saying why
        with examples: ``jobs approve`` applies it."""
        totals = progress.totals
        status = JobStatus.HELD if exc.held else JobStatus.REJECTED
        progress.diagnostics.write(_file_problem(exc))
        totals.error_codes[exc.code] = totals.error_codes.get(exc.code, 0) + 1
        message = str(exc)
        if exc.held and not run.dry_run:
            message += f". If the prices are right: inbox-daemon jobs approve {run.job.id}"
        manifest = self._manifest(run.job, status, totals, None, progress.diagnostics.finish(),
                                  progress.started, progress.clock, run.fmt, run.mode, dry_run=run.dry_run,
                                  message=message)
        if isinstance(exc, PriceShockHeld):
            manifest["price_shock"] = exc.details()
        progress.describe(manifest)
        outcome = Outcome(status=status, result=manifest, error=str(exc), notify=_notify(run.partner))
        if not run.dry_run:
            self.store.finish(run.job, outcome)
        run.log.warning(f"job.{status}", code=exc.code, reason=str(exc), read=totals.read,
                        rejected=totals.rejected)
        return outcome

    def reject_unread(self, job: Job, partner: PartnerConfig, exc: FeedError, log) -> Result:
        """A file refused before it was read (over ``max_file_bytes``): rejected as a whole like
        any other, with its diagnostics line, manifest and ledger outcome, and reported."""
        run = Run(job=job, partner=partner, spooled=Path(), fmt=job.format, mode=job.mode, dry_run=False,
                  progress=None, should_stop=lambda: False, log=log)
        outcome = self._reject(run, Progress(DiagnosticsWriter(self.config.daemon.results_dir / partner.id, job.id)),
                               exc)
        return self.report(job, outcome.result, None, log)

    def _abandon(self, run: Run, progress: Progress, exc: SourceChanged) -> Outcome:
        """The partner's file changed after it was read: what was read may be the first part of
        an upload that paused and went on. Nothing of it is applied and the partner gets no
        answer for it; the inbox offers the file again once it is complete."""
        progress.diagnostics.discard()
        manifest = self._manifest(run.job, JobStatus.ABANDONED, progress.totals, None, None, progress.started,
                                  progress.clock, run.fmt, run.mode, dry_run=run.dry_run, message=str(exc))
        outcome = Outcome(status=JobStatus.ABANDONED, result=manifest, error=str(exc))
        self.store.finish(run.job, outcome)
        run.log.warning("job.abandoned", reason=str(exc), read=progress.totals.read)
        return outcome

    def _fail(self, run: Run, progress: Progress, exc: Exception) -> Outcome:
        """This attempt failed; the job is recorded ``failed`` (the journey decides what next)."""
        progress.diagnostics.discard()
        manifest = self._manifest(run.job, JobStatus.FAILED, progress.totals, None, None, progress.started,
                                  progress.clock, run.fmt, run.mode, dry_run=run.dry_run, message=str(exc))
        outcome = Outcome(status=JobStatus.FAILED, result=manifest, error=str(exc))
        if not run.dry_run:
            self.store.finish(run.job, outcome)
        run.log.error("job.failed", error=str(exc), error_type=type(exc).__name__, attempt=run.job.attempt,
                      exc_info=not isinstance(exc, Transient))
        return outcome

    def _duplicate(self, job: Job, spooled: Path | None, log) -> Result:
        # ``claim`` records a duplicate started, pointing at the job it duplicates
        assert job.duplicate_of is not None and job.started_at is not None
        original = self.store.job(job.duplicate_of)
        message = f"the same content was already received as job {original.id} ({original.status})"
        manifest = self._manifest(job, JobStatus.DUPLICATE, Totals(), None, None, job.started_at, time.monotonic(),
                                  job.format, job.mode, dry_run=False, message=message)
        manifest["duplicate_of"] = original.id
        manifest["duplicate_of_status"] = original.status      # applied, or rejected or held: nothing was
        self.store.finish(job, Outcome(status=JobStatus.DUPLICATE, result=manifest,
                                       notify=_notify(self.config.partners.get(job.partner_id))))
        log.info("job.duplicate", duplicate_of=original.id, original_status=original.status)
        _drop_copy(spooled, original.status)
        return self.report(job, manifest, None, log)

    def give_up(self, job: Job, reason: str, log) -> Result:
        """Quarantine a job that retrying cannot help any more, and tell the partner why."""
        manifest = self._manifest(job, JobStatus.QUARANTINED, Totals(), None, None, job.started_at or utcnow(),
                                  time.monotonic(), job.format, job.mode, dry_run=False, message=reason)
        if job.result and job.result.get("rows"):
            manifest["rows"] = job.result["rows"]       # what the last attempt got to see
        self.store.finish(job, Outcome(status=JobStatus.QUARANTINED, result=manifest, error=reason,
                                       notify=_notify(self.config.partners.get(job.partner_id))))
        log.error("job.quarantined", job_id=job.id, attempts=job.attempt, reason=reason)
        return self.report(job, manifest, None, log)

    def report(self, job: Job, manifest: dict, spooled: Path | None, log) -> Result:
        """Files for people, after the outcome is durable. Safe to repeat (claim 'unreported')."""
        try:
            if manifest.get("changes"):
                self._write_changes(job, manifest)
            path = write_manifest(self.config.daemon.results_dir, manifest)
            failpoints.reached("after_manifest")
            folder = self.audit.ledger_key()
            seen = self.store.audit_head(folder)         # before the append: see _check_trail
            record = self.audit.append(f"job.{manifest['status']}", partner=job.partner_id, job_id=job.id,
                                       sha256=job.sha256, source=manifest["source"], actor=self.actor,
                                       details={"status": manifest["status"], "rows": manifest["rows"],
                                                "errors": manifest["errors"], "attempt": manifest["attempt"],
                                                "duplicate_of": manifest.get("duplicate_of"),
                                                "manifest": str(path)})
        except OSError as exc:
            self.store.let_report_go(job)
            raise ResultsUnwritable(f"the outcome of job {job.id} is committed but could not be reported: "
                                    f"{exc}") from exc
        failpoints.reached("after_audit")
        chain = self.audit.chain_id()
        self._check_trail(seen, chain, record, log)
        self.store.mark_reported(job.id, AuditHead(folder, chain, record["seq"], record["hash"]))
        failpoints.reached("after_report")
        _drop_copy(spooled, manifest["status"])
        log.info("job.reported", status=manifest["status"], manifest=str(path))
        return Result(JobStatus(manifest["status"]), manifest, path)

    def _check_trail(self, seen: AuditHead | None, chain: str, record: dict, log) -> None:
        """The record just appended should come after the last one the ledger saw reported (read
        before the append, so another process's later reports cannot make it look early). One
        that does not means records were cut off the trail's end (a file deleted, truncated)
        since: the trail is marked damaged (``/healthz`` degraded) until an operator has looked
        (``audit verify``, then ``audit ack``). A trail of another chain in the same folder is
        another host's (the ledger follows its first) or a folder begun again: ``verify`` tells."""
        if seen is None or seen.chain != chain or record["seq"] > seen.seq:
            return
        found = {"reason": f"the trail ends before seq {seen.seq}, which the ledger saw reported: records were "
                           f"cut off its end", "new_seq": record["seq"], "at": utcnow()}
        self.audit.mark_damaged(found)
        log.error("audit.trail_cut", reported_seq=seen.seq, new_seq=record["seq"],
                  action="inbox-daemon audit verify, then audit ack")

    # -- revert and approve ---------------------------------------------------------------------
    def revert(self, target_id: str, *, force: bool = False) -> Result:
        """Undo what job ``target_id`` changed, as a job of its own (``storage.history``): one
        per job reverted, so a revert cut off by a crash is run again, never twice."""
        target = self.store.job(target_id)
        # refused early with the reason (the revert's transaction checks both again, under its lock)
        self.store.check_not_reverted(target, force=force)
        self.store.change_set_of(target)
        source = Source(uri=f"revert:{target.id}", name=f"revert of {target.source_name}", size=0)
        return self.run_revert_claim(target.partner_id, revert_identity(target, force), target.inbox, source,
                                     FORCED_REVERT_MODE if force else REVERT_MODE, target.id)

    def run_revert_claim(self, partner_id: str, sha256: str, inbox: str, source: Source, mode: str,
                         reverts: str) -> Result:
        """Claim a revert job (new, or one cut off before: its attempt starts over) and run it."""
        claim = self.store.claim(partner_id=partner_id, sha256=sha256, inbox=inbox, source=source, fmt=None,
                                 mode=mode, spool_path=None, reverts=reverts)
        log = get_logger(partner=partner_id, job_id=claim.job.id, reverts=reverts)
        if claim.kind not in TO_RUN:
            return self._not_to_run(claim, None, log)
        log.info("job.started", attempt=claim.job.attempt, kind=claim.kind, reverts=reverts)
        return self._run_revert(claim.job, log)

    def run_revert_job(self, job: Job) -> Result:
        """A revert job found queued (its runner died before its commit): run it here."""
        assert job.reverts is not None
        return self.run_revert_claim(job.partner_id, job.sha256, job.inbox, job.source, job.mode, job.reverts)

    def _run_revert(self, job: Job, log) -> Result:
        target = self.store.job(job.reverts or "")
        partner = self.config.partners.get(job.partner_id)
        diagnostics = DiagnosticsWriter(self.config.daemon.results_dir / job.partner_id, job.id)
        started, clock = utcnow(), time.monotonic()

        def outcome(counts: RevertCounts) -> Outcome:
            if counts.conflicts:
                skus, by = zip(*counts.conflicts, strict=True)
                diagnostics.write(diagnostics_lines(
                    pa.array([None] * len(skus), pa.int64()), pa.array(skus, pa.string()), severity=ERROR,
                    column="sku", code="revert_conflict",
                    message="changed again by a later job since (the value: that job): left as it is; "
                            "jobs revert --force restores it too", values=pa.array(by, pa.string())))
            status = JobStatus.PARTIAL if counts.conflicts else JobStatus.SUCCEEDED
            merged = MergeCounts(staged=0, superseded=0, inserted=0, updated=counts.updated + counts.reactivated,
                                 unchanged=0, deactivated=counts.deactivated)
            message = (f"reverts job {target.id} ({target.source_name}): {counts.updated} products restored, "
                       f"{counts.deactivated} it inserted deactivated, {counts.reactivated} it deactivated active "
                       f"again; {len(counts.conflicts)} changed by a later job since, left as they are"
                       + (f"; {counts.forced} of those restored all the same (--force)" if counts.forced else ""))
            manifest = self._manifest(job, status, Totals(), merged, diagnostics.finish(), started, clock, None,
                                      job.mode, dry_run=False, message=message)
            manifest["reverts"] = target.id
            manifest["rows"].update(reactivated=counts.reactivated, conflicts=len(counts.conflicts),
                                    forced=counts.forced)
            failpoints.reached("before_commit")
            return Outcome(status=status, result=manifest, notify=_notify(partner))

        try:
            self.store.revert(job, target, force=job.mode == FORCED_REVERT_MODE, outcome=outcome)
        except JobNotFound as exc:
            # nothing to revert any more (pruned meanwhile, or reverted by another revert first)
            diagnostics.discard()
            manifest = self._manifest(job, JobStatus.REJECTED, Totals(), None, None, started, clock, None, job.mode,
                                      dry_run=False, message=str(exc))
            manifest["reverts"] = target.id
            self.store.finish(job, Outcome(status=JobStatus.REJECTED, result=manifest, error=str(exc),
                                           notify=_notify(partner)))
            log.warning("job.rejected", reason=str(exc))
            return self.report(job, manifest, None, log)
        except (Transient, StoreError) as exc:
            diagnostics.discard()
            manifest = self._manifest(job, JobStatus.FAILED, Totals(), None, None, started, clock, None, job.mode,
                                      dry_run=False, message=str(exc))
            self.store.finish(job, Outcome(status=JobStatus.FAILED, result=manifest, error=str(exc)))
            log.error("job.failed", error=str(exc), error_type=type(exc).__name__, attempt=job.attempt)
            return Result(JobStatus.FAILED, manifest, None)
        failpoints.reached("after_commit")
        job = self.store.job(job.id)
        assert job.result is not None
        log.info("job.applied", status=job.status, **{k: v for k, v in job.result["rows"].items() if v})
        return self.report(job, job.result, None, log)

    def requeue(self, *, ids: Iterable[str] = (), status: JobStatus | None = None,
                partner_id: str | None = None) -> list[str]:
        """Put jobs back to ``queued`` (a running daemon runs them again from their spooled copy),
        each recorded in the audit trail under this pipeline's actor."""
        requeued = self.store.requeue(ids=ids, status=status, partner_id=partner_id)
        for job_id in requeued:
            job = self.store.job(job_id)
            self.audit.append("job.requeued", partner=job.partner_id, job_id=job.id, sha256=job.sha256,
                              source=job.source.as_dict(), actor=self.actor, details={"attempt": job.attempt})
        return requeued

    def approve(self, job_id: str, by: str) -> Job:
        """A held file released by ``by``: queued, to be applied without the price check, and
        recorded in the audit trail under their name."""
        job = self.store.approve(job_id, by)
        self.audit.append("job.approved", partner=job.partner_id, job_id=job.id, sha256=job.sha256,
                          source=job.source.as_dict(), actor=by, details={"held": (job.result or {}).get("price_shock")})
        return job

    def _write_changes(self, job: Job, manifest: dict) -> None:
        """What the job changed (``write_changes``), next to its manifest, written before it. A
        change set pruned before the report (``history_days = 0``, a report long delayed) leaves
        the manifest without it."""
        try:
            changes = self.store.job_changes(self.store.job(job.id))
        except JobNotFound:
            manifest.pop("changes")
            return
        with tempfiles.atomic(self.config.daemon.results_dir / job.partner_id / manifest["changes"]) as out:
            write_changes(changes, out, "csv")

    def _manifest(self, job: Job, status: str, totals: Totals, counts, diagnostics: str | None,
                  started: str, clock: float, fmt: str | None, mode: str, *, dry_run: bool,
                  message: str | None = None) -> dict:
        manifest = {
            "job_id": job.id, "partner": job.partner_id, "inbox": job.inbox, "source": job.source.as_dict(),
            "sha256": job.sha256, "format": fmt, "mode": mode, "status": status, "attempt": job.attempt,
            "rows": _rows(totals, counts), "errors": dict(sorted(totals.error_codes.items())),
            "diagnostics": diagnostics, "started_at": started, "finished_at": utcnow(),
            "duration_ms": int((time.monotonic() - clock) * 1000), "version": __version__,
        }
        if job.approved_by:
            manifest["approved_by"] = job.approved_by
        if job.reapplies:
            manifest["reapplies"] = job.reapplies
            manifest.setdefault("message", f"the same content as job {job.reapplies}, applied again: the "
                                           "partner delivered other content since")
        if message:
            manifest["message"] = message
        if dry_run:
            manifest["dry_run"] = True
        return manifest


RECORD_RULES = 1      # bump when what a record becomes changes in a way __version__ does not say


def record_salt(partner: PartnerConfig, names: list[str], fmt: str | None, decimal: str) -> int:
    """The fingerprint of everything but a record's cells that decides the catalog row it
    becomes: the partner's whole configuration (its mapping, preset, defaults), the file's
    column names in their order, its format and decimal separator, and the daemon's version.
    Records hashed under another salt are never recognised (``storage.changes.record_hashes``)."""
    text = repr((__version__, RECORD_RULES, partner, names, fmt, decimal))
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class _Shaped:
    """A shaped block with what judging it needs: the shaper's notes on it, the column map of
    its header, the stored columns it sets and the salt its records are hashed with."""
    block: Block
    notes: pa.Table
    cmap: ColumnMap
    carried: frozenset[str]
    salt: int


_AHEAD = 1      # blocks whose records are hashed ahead of the one being judged
# ... and while the catalog they are looked up in is still being read: the one core the read
# leaves would otherwise wait with the file's reader (~0.2 s of a 500k-row re-send). A bound
# of its own, whatever the file's size: 8 blocks of 4 MiB and their hashes
_EARLY = 8
# blocks staged between two releases of the memory the allocator holds unused: the 5M-row
# import's peak RSS was 403-485 MB from run to run without, 406-408 MB with (every 4 blocks)
_RELEASE_EVERY = 4


def _give_back_memory() -> None:
    """The Arrow allocator keeps freed blocks for reuse, more or less of them by how the threads
    happened to run: given back to the system every few blocks and before the merge, a file's
    peak memory stays flat whatever its size."""
    pa.default_memory_pool().release_unused()


def _ahead(items: Iterator[_Shaped], work: Callable[[_Shaped], Any], threaded: bool, *,
           further: Callable[[], bool] = lambda: False) -> Iterator[tuple[_Shaped, Any]]:
    """Each item with ``work(item)``, in order; ``threaded``: the work of the next ``_AHEAD``
    items runs on a thread of its own while the caller takes the items (reads the file), and
    of up to ``_EARLY`` items while ``further()`` says so (then back to ``_AHEAD``)."""
    if not threaded:
        for item in items:
            yield item, work(item)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="records") as pool:
        pending: deque[tuple[_Shaped, Future]] = deque()
        try:
            for item in items:
                pending.append((item, pool.submit(work, item)))
                # once ``further()`` says no more, back down to ``_AHEAD`` before reading on
                while len(pending) > _AHEAD and not (len(pending) < _EARLY and further()):
                    first, done = pending.popleft()
                    yield first, done.result()
            while pending:
                first, done = pending.popleft()
                yield first, done.result()
        finally:
            for _, future in pending:
                future.cancel()


_Recognising = tuple[Block, np.ndarray | None, Recognised | None]


def _hashed(load, item: _Shaped) -> tuple[np.ndarray | None, _Recognising | None]:
    """The block's record hashes (None: the load keeps none), and, when the catalog they are
    looked up in is read already, what ``_recognised`` makes of them (None: not yet)."""
    block = item.block
    if not load.keeps_records or not block.batch.num_rows:
        return None, (block, None, None)
    records = record_hashes(block.batch, item.salt, block.typed_cells)
    return records, _recognised(load, item, records) if load.ready() else None


def _recognised(load, item: _Shaped, records: np.ndarray) -> _Recognising:
    """The block without the records the load recognises as taken by the catalog as they are
    (those skip judging), each remaining row's record hash (``_hashed``), and the rows left out.
    A row the reader flagged (undecodable cells, too many cells) or the shaper warned about is
    never recognised: its diagnostics line must be written again."""
    block, notes = item.block, item.notes
    at = load.recognise(records)
    trusted = at >= 0
    for _, mask in (*block.bad_cells, *block.refused_rows):
        trusted &= ~pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    if notes.num_rows:
        noted = pc.is_in(block.row_numbers(), value_set=notes.column("row").combine_chunks())
        trusted &= ~noted.to_numpy(zero_copy_only=False)
    if not trusted.any():
        return block, records, None
    rows = block.row_numbers().to_numpy(zero_copy_only=False)
    rest = ~trusted
    return block.filter(pa.array(rest)), records[rest], Recognised(at=at[trusted], rows=rows[trusted])


def _valid_records(judged: Judged, block: Block, records: np.ndarray | None) -> pa.Array | None:
    """The record hash of each valid row, NULL for a row with a diagnostics line (a warning):
    such a record is never recognised, so its warning is given again every time."""
    if records is None:
        return None
    valid_rows = judged.valid.column("row")
    at = pc.index_in(valid_rows, value_set=block.row_numbers())
    values = pa.array(records).take(at)
    if judged.diagnostics.num_rows:
        warned = pc.is_in(valid_rows, value_set=judged.diagnostics.column("row").combine_chunks())
        values = pc.if_else(warned, pa.scalar(None, pa.int64()), values)
    return values


def _price_rule(run: Run) -> PriceShockRule | None:
    """The partner's price-shock hold, unless an admin approved this very file."""
    if run.job.approved_by:
        return None
    p = run.partner
    return PriceShockRule(factor=p.price_shock_factor, max_ratio=p.max_price_shock_ratio,
                          min_products=p.price_shock_min_products)


def _drop_copy(spooled: Path | None, status: str) -> None:
    """The spooled copy, once a job of ``status`` needs it no more; else kept, made durable
    before the file leaves its inbox (requeue reads it: ``inbox_daemon.spool``)."""
    if spooled is None:
        return
    if status in KEEP_SPOOL:
        spool.keep(spooled)
    else:
        spooled.unlink(missing_ok=True)


def _rows(totals: Totals, counts) -> dict:
    """The manifest's ``rows``; ``counts`` (the merge's) is None when nothing was merged."""
    return {
        "read": totals.read, "valid": totals.read - totals.rejected, "rejected": totals.rejected,
        "warnings": totals.warnings, "skipped": totals.skipped,
        **{k: getattr(counts, k) if counts else 0
           for k in ("superseded", "inserted", "updated", "unchanged", "deactivated", "stale")},
    }


def _file_problem(exc: FeedError) -> pa.Table:
    """The diagnostics line for a problem with the file as a whole."""
    return pa.table({
        "row": [exc.row], "sku": [None], "severity": ["error"], "column": [exc.column],
        "code": [exc.code], "message": [str(exc)], "value": [exc.value],
    }, schema=DIAGNOSTICS_SCHEMA)


def _dry_run_job(drop: Drop, sha256: str, source: Source, fmt, mode, spooled: Path) -> Job:
    now = utcnow()
    return Job(id=f"validate-{new_job_id()}", partner_id=drop.partner, inbox=drop.inbox, sha256=sha256,
               source_uri=source.uri, source_name=source.name, size=source.size,
               source_version=source.version, delivered_at=source.delivered_at, format=fmt, mode=mode,
               status=JobStatus.RUNNING, attempt=1,
               duplicate_of=None, spool_path=str(spooled), error=None, result=None, created_at=now,
               started_at=now, finished_at=None, reported_at=None)

"""The exceptions of inbox-daemon, and whether each is worth retrying.

    InboxDaemonError
    ├── FeedError (Terminal)           the file cannot be applied as a whole → job ``rejected``
    │   ├── UnknownFormat              no reader for this name / --format
    │   ├── UnreadableFile             a parser gave up (bad bytes, invalid JSON, ragged CSV)
    │   ├── MissingColumn              a required canonical column is not in the file
    │   ├── DuplicateColumn            two columns of the file have the same name
    │   ├── LimitExceeded              too many columns, a line too long, a gzip bomb
    │   ├── TooManyRejects             more rows with errors than ``max_reject_ratio``
    │   ├── DeactivationRefused        snapshot would deactivate more than ``max_deactivate_ratio``
    │   └── PriceShockHeld             its prices jump (``max_price_shock_ratio``) → job ``held``
    ├── StoreError                     the catalog store failed
    │   ├── StoreBusy (Transient)      locked / serialization failure: retry
    │   ├── StoreUnavailable (Transient) cannot connect / I/O error: retry
    │   └── CatalogChanged (Transient) the partner's catalog moved under a load: read the file again
    ├── JobNotFound                    ``jobs show|requeue`` with an unknown id
    ├── Cancelled                      the daemon is stopping: the job is released, not failed
    │   └── LeaseLost                  another daemon took the job over: this attempt commits nothing
    ├── InboxError                     an inbox could not list, fetch or archive
    │   ├── InboxUnavailable (Transient)  I/O or network trouble: retry
    │   └── InboxMisconfigured (Terminal) access denied, missing folder/bucket, host key refused
    ├── SpoolError (Transient)         the local spool could not be written
    └── ResultsUnwritable (Transient)  a manifest or audit record could not be written

``Terminal`` and ``Transient`` are markers mixed into domain errors. Foreign exceptions
(pyarrow, ijson, sqlite, OS) are mapped where they are caught and raised ``from`` the original;
the pipeline alone decides what a marker means for the job.
"""

from __future__ import annotations


class Terminal(Exception):
    """Marker: retrying cannot help; the outcome is final until someone changes something."""


class Transient(Exception):
    """Marker: worth another attempt after a backoff (``except Transient`` catches them all)."""


class InboxDaemonError(Exception):
    code = "error"


class FeedError(InboxDaemonError, Terminal):
    """The file as a whole cannot be applied. ``code`` goes into the manifest's ``errors``."""

    code = "unreadable"
    column: str | None = None
    row: int | None = None
    value: str | None = None
    held = False            # True: the job waits for an admin's approval instead (``PriceShockHeld``)


class UnknownFormat(FeedError):
    code = "unknown_format"

    def __init__(self, *, name: str, known: list[str]):
        self.name, self.known = name, known
        super().__init__(f"cannot tell the format of {name!r}: use one of the extensions for "
                         f"{', '.join(known)} (optionally .gz), or --format")


class UnreadableFile(FeedError):
    code = "unreadable"

    def __init__(self, *, reason: str, row: int | None = None):
        self.reason, self.row = reason, row
        super().__init__(reason)


class LimitExceeded(FeedError):
    """The file is bigger than ``[limits]`` allows in one respect; nothing was applied."""
    code = "limit_exceeded"

    def __init__(self, *, limit: str, reason: str, row: int | None = None):
        self.limit, self.reason, self.row = limit, reason, row
        super().__init__(f"{reason} (limits.{limit})")


class MissingColumn(FeedError):
    code = "missing_column"

    def __init__(self, *, column: str, expected: str, found: list[str]):
        # ``column`` on a FeedError is what the partner sees: the column name we looked for
        self.canonical, self.column, self.expected, self.found = column, expected, expected, found
        shown = ", ".join(found[:20]) + (" …" if len(found) > 20 else "")
        named = repr(expected) if expected == column else f"{expected!r} (canonical {column!r})"
        super().__init__(f"required column {named} is missing; "
                         f"the file has: {shown or 'no columns'}")


class DuplicateColumn(FeedError):
    code = "duplicate_column"

    def __init__(self, *, column: str):
        self.column = column
        super().__init__(f"the file has more than one column named {column!r}: each name must be unique")


class TooManyRejects(FeedError):
    code = "too_many_rejects"

    def __init__(self, *, rejected: int, read: int, max_ratio: float):
        self.rejected, self.read, self.max_ratio = rejected, read, max_ratio
        super().__init__(f"{rejected} of {read} rows have errors, more than max_reject_ratio "
                         f"{max_ratio:g}: nothing was applied")


class DeactivationRefused(FeedError):
    code = "deactivation_refused"

    def __init__(self, *, would_deactivate: int, active: int, max_ratio: float):
        self.would_deactivate, self.active, self.max_ratio = would_deactivate, active, max_ratio
        super().__init__(f"this snapshot would deactivate {would_deactivate} of {active} active SKUs, "
                         f"more than max_deactivate_ratio {max_ratio:g}: nothing was applied")


class PriceShockHeld(FeedError):
    """Nothing is applied, as with any ``FeedError``; the job is ``held`` rather than rejected:
    the file may be right (a real repricing), and ``jobs approve`` applies it as it is."""
    code = "price_shock"
    held = True

    def __init__(self, *, updated: int, shocked: int, examples: tuple[dict, ...], factor: float, max_ratio: float):
        self.updated, self.shocked, self.examples = updated, shocked, examples
        self.factor, self.max_ratio = factor, max_ratio
        super().__init__(f"held for approval: {shocked} of the {updated} products this file updates change price "
                         f"by x{factor:g} or more (either way), more than max_price_shock_ratio {max_ratio:g}; "
                         "nothing was applied")

    def details(self) -> dict:
        return {"updated": self.updated, "shocked": self.shocked, "price_shock_factor": self.factor,
                "max_price_shock_ratio": self.max_ratio, "examples": list(self.examples)}


class StoreError(InboxDaemonError):
    code = "store_error"


class StoreBusy(StoreError, Transient):
    code = "store_busy"


class StoreUnavailable(StoreError, Transient):
    code = "store_unavailable"


class StoreReplaced(StoreError, Transient):
    """The catalog is not the one this daemon opened: deleted, replaced or emptied under it. No
    outcome is recorded and no file answered; every attempt fails the same way (``/healthz``
    degraded, the files stay in their inboxes) until an operator restarts the daemon."""
    code = "store_replaced"


class JobNotFound(InboxDaemonError, Terminal):
    code = "job_not_found"


class SpoolError(InboxDaemonError, Transient):
    code = "spool_error"


class ResultsUnwritable(InboxDaemonError, Transient):
    """The outcome is committed but its manifest or audit record could not be written (disk
    full, a folder in the way): reporting is retried; the ledger says "unreported" meanwhile."""
    code = "results_unwritable"


class Cancelled(InboxDaemonError):
    code = "cancelled"


class LeaseLost(Cancelled):
    """Our claim on the job expired and another daemon holds it now (its attempt number moved
    on): this attempt must not commit. Raised by the store at commit, so it is never too late."""
    code = "lease_lost"


class InboxError(InboxDaemonError):
    code = "inbox_error"


class InboxUnavailable(InboxError, Transient):
    code = "inbox_unavailable"


class InboxMisconfigured(InboxError, Terminal):
    code = "inbox_misconfigured"


class SourceGone(InboxError, Terminal):
    """The file is no longer in the inbox when it is to be read (local or SFTP): deleted by the
    partner, or already taken in and archived by another look at it. Nothing to read and nothing
    wrong with the inbox: not retried, and no fault for /healthz."""
    code = "source_gone"


class CatalogChanged(StoreError, Transient):
    """Another job changed this partner's catalog between the moment this one read what the
    catalog holds (to stage only what differs) and its merge: what it left out may be stale.
    The job is read again with the catalog held from the start (``load(exclusive=True)``)."""
    code = "catalog_changed"


class SourceChanged(InboxUnavailable):
    """The partner's file changed after it was judged ready (an upload that paused longer than
    ``settle``, then went on): what was read may be a truncated copy. Raised by an inbox's
    ``fetch`` (changed while read) or ``verify_unchanged`` (changed before the commit); nothing
    of that read is applied, and the file is read again once it is ready."""
    code = "source_changed"

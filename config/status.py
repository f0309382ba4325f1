"""A job's status: one type for the ledger, the pipeline, the inboxes and the command line
(here, on the floor every package shares, like the canonical row and the error tree).

    queued → running → succeeded | partial | rejected | failed | duplicate | abandoned
                                             failed → (retried) … → quarantined
                                             abandoned → (the file, read again once complete) running
                                             held → (jobs approve) queued

``JobStatus`` is a ``StrEnum``: a member *is* its text, so it is written to SQL parameters, JSON
manifests and logs as that text and compares equal to the text read back from the store. The
groups below are the only place a set of statuses is spelt out.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"              # waiting for a worker (new, requeued, or released on stop)
    RUNNING = "running"            # a worker holds it under a lease
    SUCCEEDED = "succeeded"        # every row applied
    PARTIAL = "partial"            # applied; some rows rejected (within max_reject_ratio)
    REJECTED = "rejected"          # nothing applied: the file as a whole cannot be
    FAILED = "failed"              # this attempt failed for a transient reason: retried
    QUARANTINED = "quarantined"    # retried max_attempts times: an operator must act
    DUPLICATE = "duplicate"        # content already received: no catalog change
    ABANDONED = "abandoned"        # the file changed after it was read (an upload went on): nothing
                                   # applied, no answer; the file is read again once it is complete
    HELD = "held"                  # nothing applied: its prices jump (max_price_shock_ratio); an
                                   # admin's ``jobs approve`` queues it again to be applied


#: statuses a job rests in once an attempt is over (``failed`` may still be retried)
FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.PARTIAL, JobStatus.REJECTED, JobStatus.FAILED,
                   JobStatus.QUARANTINED, JobStatus.DUPLICATE, JobStatus.ABANDONED, JobStatus.HELD})
#: statuses ``jobs requeue`` puts back to ``queued``
REQUEUEABLE = frozenset({JobStatus.REJECTED, JobStatus.FAILED, JobStatus.QUARANTINED})
#: statuses a work item may (re)start; an abandoned job only when its content is read again
#: (a partner's upload that really ended where it paused): never from its spooled copy alone
RUNNABLE = frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.ABANDONED})
#: the file's rows reached the catalog
APPLIED = frozenset({JobStatus.SUCCEEDED, JobStatus.PARTIAL})
#: outcomes archived the ``on_success`` way (processed/, delete, keep); the others go to failed/
ARCHIVED_AS_SUCCESS = APPLIED | {JobStatus.DUPLICATE}
#: the spooled copy is still needed (the job may run again, or be requeued)
KEEP_SPOOL = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.REJECTED, JobStatus.FAILED,
                        JobStatus.QUARANTINED, JobStatus.HELD})

#: how an attempt ends when it is stopped before its commit (``jobs show``): not a job status,
#: the job itself goes back to ``queued``
ATTEMPT_RELEASED = "released"
#: how an attempt ends when its daemon died or lost its lease before it finished (``kill -9``):
#: found at the next start (or by another daemon), and the job queued again
ATTEMPT_INTERRUPTED = "interrupted"

"""Reasons of restarts and failures: each is a condition reason, an event reason and a metric
label at once, so they are spelled once here."""

from __future__ import annotations

# Reasons of restarts and failures; they are condition reasons, event reasons and metric labels.
REASON_WORKER_FAILED = "WorkerFailed"

REASON_EVICTED = "Evicted"

REASON_PREEMPTED = "Preempted"

REASON_GANG_TIMEOUT = "GangTimeout"

REASON_WAITING_FOR_CAPACITY = "WaitingForCapacity"

REASON_STALLED = "Stalled"

REASON_ATTEMPT_LOST = "AttemptDeleted"

REASON_DEADLINE = "DeadlineExceeded"

REASON_RESTART_LIMIT = "RestartLimitExceeded"

REASON_INVALID_SPEC = "InvalidSpec"

REASON_FAILED_CREATE = "FailedCreate"

REASON_INVALID_IMAGE = "InvalidImage"

REASON_CHILDREN_RESTORED = "ChildrenRestored"

REASON_POD_FORCE_DELETED = "WorkerForceDeleted"

# The reasons a whole-group restart is counted under (acceltrain_operator_restarts_total).
RESTART_REASONS = (
    REASON_WORKER_FAILED,
    REASON_EVICTED,
    REASON_PREEMPTED,
    REASON_GANG_TIMEOUT,
    REASON_STALLED,
    REASON_ATTEMPT_LOST,
)

"""Suspend policy: ``runPolicy.suspend`` deletes the live attempt (the trainer checkpoints on
SIGTERM); resuming creates a new attempt once the old one is gone, without counting a restart."""

from __future__ import annotations

from accel_operator import api, constants
from accel_operator.lifecycle.attempts import (
    create_attempt,
    delete_attempts_up_to,
    old_attempt_remains,
    worker_counts,
)
from accel_operator.lifecycle.conditions import StatusDraft
from accel_operator.lifecycle.model import Observed, Plan


def suspend(
    spec: api.AccelTrainJobSpec, state: StatusDraft, observed: Observed, plan: Plan, current: int
) -> None:
    delete_attempts_up_to(observed, plan, current)
    remaining = old_attempt_remains(observed, current)
    if remaining:
        message = (
            f"suspending: waiting for the pods of attempt {current} to checkpoint and stop "
            f"({len(remaining)} object(s) left)"
        )
    elif current:
        message = f"suspended; attempt {current} stopped, resuming starts a new attempt"
    else:
        message = "suspended before the first attempt"
    value = state.status
    value.phase = api.Phase.SUSPENDED
    value.next_attempt_time = None
    state.set(constants.CONDITION_SUSPENDED, True, "Suspended", message)
    state.lower(constants.CONDITION_RUNNING, "Suspended", "the job is suspended")
    state.lower(constants.CONDITION_SCHEDULED, "Suspended", "the job is suspended")
    state.lower(constants.CONDITION_PROGRESSING, "Suspended", "the job is suspended")
    state.lower(constants.CONDITION_RESTARTING, "Suspended", "the job is suspended")
    value.workers = worker_counts(observed.pods_of(current), spec.workers)
    value.message = message


def resume(
    spec: api.AccelTrainJobSpec, state: StatusDraft, observed: Observed, plan: Plan, current: int
) -> None:
    delete_attempts_up_to(observed, plan, current)
    remaining = old_attempt_remains(observed, current)
    if remaining:
        message = f"resuming: waiting for attempt {current} to stop ({', '.join(remaining[:5])})"
        state.set(constants.CONDITION_SUSPENDED, True, "Suspended", message)
        state.status.message = message
        return
    create_attempt(spec, state, plan, current + 1)

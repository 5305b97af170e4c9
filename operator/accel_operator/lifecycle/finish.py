"""How a job ends and goes: success, ``runPolicy.activeDeadlineSeconds`` and
``runPolicy.ttlSecondsAfterFinished``."""

from __future__ import annotations

import datetime as dt

from accel_operator import api, constants
from accel_operator.lifecycle.attempts import tear_down_all
from accel_operator.lifecycle.conditions import StatusDraft
from accel_operator.lifecycle.failure import fail
from accel_operator.lifecycle.model import AttemptView, DeleteJob, Observed, Plan
from accel_operator.lifecycle.reasons import REASON_DEADLINE
from accel_operator.lifecycle.times import format_time, parse_time


def succeed(
    spec: api.AccelTrainJobSpec,
    state: StatusDraft,
    observed: Observed,
    plan: Plan,
    attempt_job: AttemptView,
) -> None:
    value = state.status
    value.phase = api.Phase.SUCCEEDED
    value.completion_time = format_time(state.now)
    value.next_attempt_time = None
    if spec.training.max_steps is not None:
        value.progress.step = spec.training.max_steps
    value.progress.eta = None
    step = value.progress.step
    message = f"training finished in attempt {attempt_job.attempt}" + (
        f" at step {step}" if step else ""
    )
    value.message = message
    state.set(constants.CONDITION_SUCCEEDED, True, "Completed", message)
    state.lower(constants.CONDITION_RUNNING, "Completed", "every worker finished")
    state.lower(constants.CONDITION_PROGRESSING, "Completed", "training finished")
    after_finish(spec, state, observed, plan)


def deadline_passed(
    spec: api.AccelTrainJobSpec, state: StatusDraft, observed: Observed, plan: Plan, current: int
) -> bool:
    """runPolicy.activeDeadlineSeconds: fail the job once it has run that long (and look again
    when it will have)."""
    deadline = spec.run_policy.active_deadline_seconds
    started = parse_time(state.status.start_time)
    if deadline is None or started is None:
        return False
    left = (started + dt.timedelta(seconds=deadline) - state.now).total_seconds()
    if left > 0:
        plan.requeue(left)
        return False
    fail(
        state,
        REASON_DEADLINE,
        f"the job ran longer than runPolicy.activeDeadlineSeconds ({deadline} s); "
        f"attempt {current} was stopped",
    )
    tear_down_all(observed, plan)
    return True


def after_finish(
    spec: api.AccelTrainJobSpec, state: StatusDraft, observed: Observed, plan: Plan
) -> None:
    failed = state.condition(constants.CONDITION_FAILED)
    # A failure that stopped running pods (deadline, stall, gang) keeps them stopped.
    holds_pods = any(not pod.finished and not pod.deleting for pod in observed.pods)
    if failed is not None and failed.status == "True" and holds_pods:
        tear_down_all(observed, plan)
    ttl = spec.run_policy.ttl_seconds_after_finished
    finished = parse_time(state.status.completion_time)
    if ttl is None or finished is None:
        return
    left = (finished + dt.timedelta(seconds=ttl) - state.now).total_seconds()
    if left <= 0:
        plan.actions.append(DeleteJob())
    else:
        plan.requeue(left)

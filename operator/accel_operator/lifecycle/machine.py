"""The state machine's top: :func:`decide` moves a job on from its phase, one policy at a time
(see the package docstring for the phases and the guarantees)."""

from __future__ import annotations

import datetime as dt

from accel_operator import api, constants
from accel_operator.lifecycle.attempts import (
    await_restart,
    create_attempt,
    record_new_attempt,
    restore_children,
    worker_counts,
)
from accel_operator.lifecycle.conditions import StatusDraft, transition_events
from accel_operator.lifecycle.failure import (
    fail,
    handle_failure,
    restart_or_fail,
    restarted_after_disruption,
)
from accel_operator.lifecycle.finish import after_finish, deadline_passed, succeed
from accel_operator.lifecycle.model import (
    FINISHED_PHASES,
    SAFETY_REQUEUE_SECONDS,
    AttemptView,
    Decision,
    Observed,
    Plan,
)
from accel_operator.lifecycle.progress import record_progress, supervise_running
from accel_operator.lifecycle.reasons import REASON_ATTEMPT_LOST, REASON_INVALID_SPEC
from accel_operator.lifecycle.scheduling import (
    await_start,
    cannot_start,
    report_scheduling,
    wait_for_admission,
)
from accel_operator.lifecycle.suspend import resume, suspend


def decide(
    spec: api.AccelTrainJobSpec,
    status: api.AccelTrainJobStatus,
    observed: Observed,
    now: dt.datetime,
    *,
    reconcile_interval: float = constants.DEFAULT_RECONCILE_INTERVAL_SECONDS,
) -> Decision:
    """The next status, actions and events for one AccelTrainJob (see the package docstring)."""
    state = StatusDraft(status, now, observed.generation, observed.native_gang)
    plan = Plan()
    state.status.observed_generation = observed.generation
    _advance_by_phase(spec, state, observed, plan, reconcile_interval)
    if observed.recheck_after is not None and state.status.phase not in FINISHED_PHASES:
        plan.requeue(observed.recheck_after)
    if state.condition(constants.CONDITION_RECONCILED) is not None:
        state.set(constants.CONDITION_RECONCILED, True, "Reconciled", "the API server answers")
    new_status = state.status
    requeue = min(plan.due) if plan.due else None
    if new_status.phase not in FINISHED_PHASES:
        requeue = (
            min(requeue, SAFETY_REQUEUE_SECONDS) if requeue is not None else SAFETY_REQUEUE_SECONDS
        )
    return Decision(
        status=new_status,
        actions=tuple(plan.actions),
        events=(*transition_events(status, new_status), *plan.events),
        requeue_after=requeue,
        restart_reason=plan.restart_reason,
        launch_seconds=plan.launch_seconds,
    )


def api_retrying(
    status: api.AccelTrainJobStatus, message: str, now: dt.datetime, generation: int
) -> Decision:
    """The decision while the API server refuses the operator for a reason retrying may cure:
    the job keeps its phase, and a condition says why nothing moves and when it is retried."""
    state = StatusDraft(status, now, generation)
    state.set(constants.CONDITION_RECONCILED, False, "ApiRetrying", message)
    return Decision(status=state.status, events=())


def invalid_spec(
    status: api.AccelTrainJobStatus, message: str, now: dt.datetime, generation: int
) -> Decision:
    """The decision for a spec that cannot work: Failed with reason InvalidSpec, no children."""
    state = StatusDraft(status, now, generation)
    state.status.observed_generation = generation
    if state.status.phase not in FINISHED_PHASES or not state.is_true(constants.CONDITION_FAILED):
        fail(state, REASON_INVALID_SPEC, message)
    return Decision(status=state.status, events=tuple(transition_events(status, state.status)))


def _advance_by_phase(
    spec: api.AccelTrainJobSpec,
    state: StatusDraft,
    observed: Observed,
    plan: Plan,
    reconcile_interval: float,
) -> None:
    """Move the job on from where it is: a finished job waits for its TTL, the deadline, an
    attempt a crashed reconcile left unrecorded, suspension, a restart's backoff, the first
    attempt, a lost attempt Job, then the live attempt is supervised."""
    current = max(state.status.attempt, observed.highest_attempt)

    if state.status.phase in FINISHED_PHASES:
        after_finish(spec, state, observed, plan)
        return

    if deadline_passed(spec, state, observed, plan, current):
        return
    # An attempt created by an earlier reconcile that stopped before writing the status.
    if current > state.status.attempt:
        record_new_attempt(spec, state, current)

    if spec.run_policy.suspend:
        suspend(spec, state, observed, plan, current)
        return
    if state.status.phase is api.Phase.SUSPENDED:
        resume(spec, state, observed, plan, current)
        return
    if state.status.phase is api.Phase.RESTARTING:
        await_restart(spec, state, observed, plan, current)
        return
    if current == 0:
        create_attempt(spec, state, plan, 1)
        return
    attempt_job = observed.attempt(current)
    if attempt_job is None or attempt_job.deleting:
        restart_or_fail(
            spec,
            state,
            observed,
            plan,
            current,
            REASON_ATTEMPT_LOST,
            f"the Job of attempt {current} was deleted while the attempt ran",
        )
        return
    if (observed.missing_children or observed.changed_children) and not (
        attempt_job.complete or attempt_job.failed
    ):
        restore_children(
            plan, attempt_job.attempt, observed.missing_children, observed.changed_children
        )
    _supervise(spec, state, observed, plan, attempt_job, reconcile_interval)


def _supervise(
    spec: api.AccelTrainJobSpec,
    state: StatusDraft,
    observed: Observed,
    plan: Plan,
    attempt_job: AttemptView,
    reconcile_interval: float,
) -> None:
    """A live attempt, top to bottom: finished, failed, disrupted, queued, unable to start;
    else its scheduling, its start (against the gang clock) and its run."""
    pods = [pod for pod in observed.pods_of(attempt_job.attempt) if not pod.deleting]
    state.status.workers = worker_counts(pods, spec.workers)
    if observed.progress is not None and observed.progress.first_step_reported:
        record_progress(spec, state, observed.progress)
    if attempt_job.complete:
        succeed(spec, state, observed, plan, attempt_job)
        return
    if attempt_job.failed:
        handle_failure(spec, state, observed, plan, attempt_job)
        return
    if restarted_after_disruption(spec, state, observed, plan, attempt_job):
        return
    if attempt_job.suspended:
        wait_for_admission(spec, state, attempt_job)
        return
    if cannot_start(spec, state, observed, plan, attempt_job, pods):
        return
    report_scheduling(spec, state, attempt_job, pods)
    started = [pod for pod in pods if pod.started]
    if len(started) < spec.workers:
        await_start(spec, state, observed, plan, attempt_job, pods, reconcile_interval)
        return
    supervise_running(spec, state, observed, plan, attempt_job, started, reconcile_interval)

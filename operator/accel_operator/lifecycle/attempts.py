"""Attempts: recording and creating the next one, deleting old ones, waiting out a restart's
backoff until the old attempt's pods are gone (force-deleting those a lost node keeps), and
restoring a live attempt's children deleted out of band."""

from __future__ import annotations

from collections.abc import Sequence

from accel_operator import api, constants, gang
from accel_operator.lifecycle.conditions import StatusDraft
from accel_operator.lifecycle.model import (
    SAFETY_REQUEUE_SECONDS,
    CreateAttempt,
    Event,
    ForceDeletePod,
    Observed,
    Plan,
    PodView,
    RestoreChildren,
)
from accel_operator.lifecycle.reasons import REASON_CHILDREN_RESTORED, REASON_POD_FORCE_DELETED
from accel_operator.lifecycle.times import format_time, parse_time

STUCK_TERMINATION_SECONDS = 30

"""A deleted pod still there this long after its grace period ended has a kubelet that does
not answer (a healthy one ends it within the grace period)."""


def record_new_attempt(spec: api.AccelTrainJobSpec, state: StatusDraft, attempt: int) -> None:
    value = state.status
    value.attempt = attempt
    value.phase = api.Phase.PENDING if spec.run_policy.queue_name else api.Phase.STARTING
    value.next_attempt_time = None
    if value.start_time is None:
        value.start_time = format_time(state.now)
    placement = gang.in_force(spec, state.native_gang)
    value.gang_policy = placement.policy
    state.set(
        constants.CONDITION_CREATED,
        True,
        "AttemptCreated",
        f"attempt {attempt} created: {spec.workers} worker pod(s), world size "
        f"{spec.world_size}; gang {placement.note}",
    )
    state.lower(constants.CONDITION_RESTARTING, "AttemptStarted", f"attempt {attempt} started")
    if state.is_true(constants.CONDITION_SUSPENDED):
        state.set(constants.CONDITION_SUSPENDED, False, "Resumed", f"resumed as attempt {attempt}")
    state.lower(constants.CONDITION_RUNNING, "WorkersStarting", f"attempt {attempt} is starting")
    state.lower(constants.CONDITION_SCHEDULED, "WaitingForPods", f"attempt {attempt} is starting")
    state.lower(
        constants.CONDITION_PROGRESSING, "WorkersStarting", f"attempt {attempt} is starting"
    )
    state.lower(constants.CONDITION_STRAGGLER, "WorkersStarting", f"attempt {attempt} is starting")
    value.rank_spread = None
    value.workers = api.WorkerCounts(total=spec.workers, summary=f"0/{spec.workers}")
    value.message = f"attempt {attempt} created"


def create_attempt(
    spec: api.AccelTrainJobSpec, state: StatusDraft, plan: Plan, attempt: int
) -> None:
    plan.actions.append(CreateAttempt(attempt))
    record_new_attempt(spec, state, attempt)
    plan.requeue(spec.run_policy.gang_timeout_seconds)


def old_attempt_remains(observed: Observed, up_to: int) -> list[str]:
    """Names of Jobs and pods of attempts up to ``up_to`` that still exist."""
    left = [attempt_job.name for attempt_job in observed.attempts if attempt_job.attempt <= up_to]
    left += [pod.name for pod in observed.pods if pod.attempt <= up_to]
    return left


def delete_attempts_up_to(observed: Observed, plan: Plan, up_to: int) -> None:
    """Delete every attempt up to ``up_to`` that still has a Job or pods not being deleted."""
    for attempt_job in observed.attempts:
        if attempt_job.attempt <= up_to and not attempt_job.deleting:
            plan.delete(attempt_job.attempt)
    for pod in observed.pods:
        # A pod whose Job is gone is not garbage-collected with it: delete it by itself.
        if pod.attempt <= up_to and not pod.deleting and observed.attempt(pod.attempt) is None:
            plan.delete(pod.attempt)


def tear_down_all(observed: Observed, plan: Plan) -> None:
    for attempt_job in observed.attempts:
        if not attempt_job.deleting:
            plan.delete(attempt_job.attempt)
    for pod in observed.pods:
        # Pods whose Job is already gone or going: deleting the attempt again removes them.
        if not pod.deleting and not pod.finished and observed.attempt(pod.attempt) is None:
            plan.delete(pod.attempt)


def await_restart(
    spec: api.AccelTrainJobSpec, state: StatusDraft, observed: Observed, plan: Plan, current: int
) -> None:
    delete_attempts_up_to(observed, plan, current)
    _force_pods_of_lost_nodes(state, observed, plan, current)
    remaining = old_attempt_remains(observed, current)
    due = parse_time(state.status.next_attempt_time) or state.now
    left = (due - state.now).total_seconds()
    if left > 0:
        plan.requeue(left)
        return
    if remaining:
        # Pod and Job deletions arrive as watch events; the requeue is a safety net.
        plan.requeue(SAFETY_REQUEUE_SECONDS)
        return
    create_attempt(spec, state, plan, current + 1)


def _force_pods_of_lost_nodes(
    state: StatusDraft, observed: Observed, plan: Plan, up_to: int
) -> None:
    """Pods of torn-down attempts whose kubelet will never confirm their end: evicted by the
    taint manager from a node that is unreachable or not ready, or still there
    STUCK_TERMINATION_SECONDS after their grace period ended. The next attempt waits for every
    old pod to be gone, so without this a lost node would hold the group back for good."""
    for pod in observed.pods:
        if pod.attempt > up_to or not pod.deleting or pod.finished:
            continue
        lost = pod.disruption == constants.DISRUPTION_BY_TAINT and not pod.ready
        overdue = None
        if pod.deletion_deadline is not None:
            since = (state.now - pod.deletion_deadline).total_seconds()
            overdue = since >= STUCK_TERMINATION_SECONDS
            if not overdue and not lost:
                plan.requeue(STUCK_TERMINATION_SECONDS - since)
        if not (lost or overdue):
            continue
        plan.actions.append(ForceDeletePod(pod.name))
        why = "its node is unreachable or not ready" if lost else "its kubelet never finished it"
        where = f" on {pod.node_name}" if pod.node_name else ""
        plan.events.append(
            Event(
                "Warning",
                REASON_POD_FORCE_DELETED,
                f"worker {pod.name}{where} of attempt {pod.attempt} was deleted without "
                f"waiting for its kubelet: {why}",
            )
        )


def restore_children(
    plan: Plan, attempt: int, missing: tuple[str, ...], changed: tuple[str, ...]
) -> None:
    """A live attempt's pods resolve each other through its headless Service, mount its
    ConfigMap, and a re-created pod waits for its gang Workload: one deleted or changed out of
    band is applied again, and the attempt goes on."""
    plan.actions.append(RestoreChildren(attempt, (*missing, *changed)))
    what = []
    if missing:
        verb = "were" if len(missing) > 1 else "was"
        what.append(f"the {' and '.join(missing)} of attempt {attempt} {verb} deleted")
    if changed:
        verb = "were" if len(changed) > 1 else "was"
        what.append(f"the {' and '.join(changed)} of attempt {attempt} {verb} changed out of band")
    plan.events.append(
        Event(
            "Warning",
            REASON_CHILDREN_RESTORED,
            f"{' and '.join(what)} while the attempt ran; applied again as rendered",
        )
    )


def worker_counts(pods: Sequence[PodView], total: int) -> api.WorkerCounts:
    live = [pod for pod in pods if not pod.deleting]
    ready = sum(1 for pod in live if pod.phase == "Running" and pod.ready)
    return api.WorkerCounts(
        total=total,
        ready=ready,
        active=sum(1 for pod in live if not pod.finished),
        succeeded=sum(1 for pod in live if pod.phase == "Succeeded"),
        failed=sum(1 for pod in live if pod.phase == "Failed"),
        summary=f"{ready}/{total}",
    )

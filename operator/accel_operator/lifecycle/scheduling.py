"""Scheduling and gang policy: Kueue admission, the Scheduled condition with the scheduler's
reasons, workers that can never start, and ``runPolicy.gangTimeoutSeconds`` (an attempt waiting
for room keeps waiting, one placed in part is retried without spending a restart)."""

from __future__ import annotations

import datetime as dt

from accel_operator import api, constants
from accel_operator.lifecycle.attempts import tear_down_all
from accel_operator.lifecycle.conditions import StatusDraft
from accel_operator.lifecycle.failure import fail, replace_attempt, restart_or_fail
from accel_operator.lifecycle.model import AttemptView, Observed, Plan, PodView
from accel_operator.lifecycle.reasons import (
    REASON_FAILED_CREATE,
    REASON_GANG_TIMEOUT,
    REASON_INVALID_IMAGE,
    REASON_WAITING_FOR_CAPACITY,
)

# FailedCreate messages of causes that waiting cannot cure: an invalid pod, a pod security
# violation, an admission webhook's denial. Quota and missing ServiceAccounts can be cured.
_PERMANENT_CREATE_FAILURES = ("is invalid", "violates podsecurity", "denied the request")

# Container waiting reasons that mean the image reference itself is wrong.
_PERMANENT_WAITING_REASONS = ("InvalidImageName",)

# Container waiting reasons of a normal start.
_NORMAL_WAITING_REASONS = ("", "ContainerCreating", "PodInitializing")


def _pending_description(
    spec: api.AccelTrainJobSpec, attempt_job: AttemptView, pods: list[PodView]
) -> str:
    """'<pod> (<scheduler reason>)' for every worker that does not run, including uncreated ones."""
    by_index = {pod.index: pod for pod in pods if pod.index is not None}
    parts = []
    for index in range(spec.workers):
        pod = by_index.get(index)
        if pod is None:
            parts.append(f"{attempt_job.name}-{index} (not created)")
        elif not pod.started:
            why = pod.unschedulable_message or (
                f"bound to {pod.node_name}, not running yet" if pod.node_name else "not scheduled"
            )
            if pod.waiting_reason:
                why = pod.waiting
            parts.append(f"{pod.name} ({why})")
    return "; ".join(parts)


def cannot_start(
    spec: api.AccelTrainJobSpec,
    state: StatusDraft,
    observed: Observed,
    plan: Plan,
    attempt_job: AttemptView,
    pods: list[PodView],
) -> bool:
    """Fail at once when the workers can never start (an image reference the runtime refuses,
    pods Kubernetes will never admit); True when the job was failed."""
    bad_image = next(
        (pod for pod in pods if pod.waiting_reason in _PERMANENT_WAITING_REASONS), None
    )
    if bad_image is not None:
        message = (
            f"spec.image: the container runtime refuses the image of {bad_image.name} "
            f"({bad_image.waiting}); fix spec.image and "
            "recreate the AccelTrainJob"
        )
        fail(state, REASON_INVALID_IMAGE, message)
        tear_down_all(observed, plan)
        return True
    if not attempt_job.create_failure or len(pods) >= spec.workers:
        return False
    message = (
        f"the Job controller cannot create the worker pods of attempt {attempt_job.attempt}: "
        f"{attempt_job.create_failure}"
    )
    if any(marker in attempt_job.create_failure.lower() for marker in _PERMANENT_CREATE_FAILURES):
        fail(state, REASON_FAILED_CREATE, message)
        tear_down_all(observed, plan)
        return True
    # Quota, a ServiceAccount still to be created: the gang timeout bounds the wait.
    state.set(constants.CONDITION_SCHEDULED, False, REASON_FAILED_CREATE, message)
    state.status.message = message
    return False


def wait_for_admission(
    spec: api.AccelTrainJobSpec, state: StatusDraft, attempt_job: AttemptView
) -> None:
    state.status.phase = api.Phase.PENDING
    queue = spec.run_policy.queue_name
    message = (
        f"the Job {attempt_job.name} waits for admission by Kueue (queue {queue})"
        if queue
        else f"the Job {attempt_job.name} is suspended"
    )
    if attempt_job.admission_message:
        message += f": {attempt_job.admission_message}"
    state.set(constants.CONDITION_SCHEDULED, False, "WaitingForAdmission", message)
    state.status.message = message


def report_scheduling(
    spec: api.AccelTrainJobSpec, state: StatusDraft, attempt_job: AttemptView, pods: list[PodView]
) -> None:
    bound = sum(1 for pod in pods if pod.node_name)
    if bound >= spec.workers:
        state.set(
            constants.CONDITION_SCHEDULED,
            True,
            "AllWorkersScheduled",
            f"all {spec.workers} worker(s) are bound to nodes",
        )
    elif not (attempt_job.create_failure and len(pods) < spec.workers):
        state.set(
            constants.CONDITION_SCHEDULED,
            False,
            "WaitingForPods",
            f"{bound}/{spec.workers} worker(s) scheduled; waiting: "
            + _pending_description(spec, attempt_job, pods),
        )


def _report_waiting_containers(state: StatusDraft, pods: list[PodView]) -> None:
    """Say which workers' containers cannot start yet and why (an image pull, a missing
    Secret key): the gang timeout would otherwise be the first a user hears of it."""
    stuck = [
        f"{pod.name} ({pod.waiting})"
        for pod in pods
        if not pod.started and pod.waiting_reason not in _NORMAL_WAITING_REASONS
    ]
    if stuck:
        message = "worker containers cannot start yet: " + "; ".join(stuck)
        state.set(constants.CONDITION_RUNNING, False, "ContainersWaiting", message)
        state.status.message = message


def await_start(
    spec: api.AccelTrainJobSpec,
    state: StatusDraft,
    observed: Observed,
    plan: Plan,
    attempt_job: AttemptView,
    pods: list[PodView],
    reconcile_interval: float,
) -> None:
    """Not every worker has started: Starting, until the gang timeout."""
    state.status.phase = api.Phase.STARTING
    _report_waiting_containers(state, pods)
    # The gang clock runs from the Job's start. A Job created suspended for Kueue gets its
    # startTime only when the Job controller has seen it admitted: until then, wait.
    gang_start = attempt_job.started or (
        None if spec.run_policy.queue_name else attempt_job.created
    )
    if gang_start is None:
        plan.requeue(reconcile_interval)
        return
    limit = spec.run_policy.gang_timeout_seconds
    left = (gang_start + dt.timedelta(seconds=limit) - state.now).total_seconds()
    if left > 0:
        plan.requeue(left)
        return
    _gang_timeout(spec, state, observed, plan, attempt_job, pods, reconcile_interval)


def _gang_timeout(
    spec: api.AccelTrainJobSpec,
    state: StatusDraft,
    observed: Observed,
    plan: Plan,
    attempt_job: AttemptView,
    pods: list[PodView],
    reconcile_interval: float,
) -> None:
    """Not every worker runs after runPolicy.gangTimeoutSeconds. An attempt with no worker
    placed holds nothing: it keeps waiting for room. One the cluster placed only in part holds
    nodes others could use: it is torn down and retried after the backoff, without spending a
    restart (waiting for capacity is not a failure; activeDeadlineSeconds bounds the wait).
    Anything else (workers placed but not starting) is a failure and spends a restart."""
    limit = spec.run_policy.gang_timeout_seconds
    pending = _pending_description(spec, attempt_job, pods)
    waiting = [pod for pod in pods if not pod.started]
    capacity = not attempt_job.create_failure and all(not pod.node_name for pod in waiting)
    if capacity and not any(pod.node_name for pod in pods):
        message = (
            f"all {spec.workers} worker(s) of attempt {attempt_job.attempt} wait for room "
            f"together; no node is held. Pending: {pending}"
        )
        state.set(constants.CONDITION_SCHEDULED, False, REASON_WAITING_FOR_CAPACITY, message)
        state.status.message = message
        plan.requeue(reconcile_interval)
        return
    message = (
        f"not every worker of attempt {attempt_job.attempt} was running within "
        f"runPolicy.gangTimeoutSeconds ({limit} s); the attempt was torn down so that no "
        f"node resources stay held. Pending: {pending}"
    )
    state.set(constants.CONDITION_SCHEDULED, False, REASON_GANG_TIMEOUT, message)
    if capacity:
        _retry_for_capacity(spec, state, plan, attempt_job.attempt, message)
        return
    restart_or_fail(spec, state, observed, plan, attempt_job.attempt, REASON_GANG_TIMEOUT, message)


def _retry_for_capacity(
    spec: api.AccelTrainJobSpec, state: StatusDraft, plan: Plan, attempt: int, message: str
) -> None:
    """Tear a partly placed attempt down and retry it; no restart is spent."""
    delay = spec.run_policy.backoff_seconds
    state.status.gang_retries += 1
    replace_attempt(
        state,
        plan,
        attempt,
        delay,
        REASON_GANG_TIMEOUT,
        f"capacity retry {state.status.gang_retries} (spends no restart): attempt {attempt + 1} "
        f"starts in {delay} s; {message}",
    )

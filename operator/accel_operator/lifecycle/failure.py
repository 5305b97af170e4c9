"""Failure and restart policy: which failures are permanent (exit codes, the pod failure
policy), which restart the group (spending ``runPolicy.maxRestarts`` with exponential backoff)
and which are the cluster's doing (evictions, preemptions: a restart that spends nothing)."""

from __future__ import annotations

import datetime as dt

from accel_operator import api, constants
from accel_operator.lifecycle.attempts import tear_down_all
from accel_operator.lifecycle.conditions import StatusDraft
from accel_operator.lifecycle.model import AttemptView, FailureView, Observed, Plan, PodView
from accel_operator.lifecycle.reasons import (
    REASON_EVICTED,
    REASON_PREEMPTED,
    REASON_RESTART_LIMIT,
    REASON_WORKER_FAILED,
)
from accel_operator.lifecycle.times import format_time

# The cap of the exponential restart backoff (runPolicy.backoffSeconds doubles up to it).
MAX_BACKOFF_SECONDS = 600

LOG_TAIL_CHARACTERS = 1500

# The grace period of the surviving pods of an attempt in which a worker failed. Their ranks wait
# in a collective for the lost one and can neither finish a step nor save a checkpoint (saving
# needs every rank), so their own grace (render.TERMINATION_GRACE_SECONDS, for the SIGTERM
# checkpoint of an eviction or a suspend) would only hold the GPUs and delay the next attempt.
FAILED_ATTEMPT_GRACE_SECONDS = 5

# Failed reasons of the permanent exit codes; "PermanentFailure" when the pod failure policy
# fired without an exit code the operator could read.
PERMANENT_REASONS = {
    int(constants.ExitCode.CONFIG_ERROR): "ConfigError",
    int(constants.ExitCode.DATA_ERROR): "DataError",
    int(constants.ExitCode.MISSING_INPUT): "MissingInput",
    int(constants.ExitCode.OUT_OF_MEMORY): "OutOfMemory",
}

EXIT_CODE_MEANINGS = {
    0: "success",
    int(constants.ExitCode.CONFIG_ERROR): "configuration error, permanent",
    int(constants.ExitCode.DATA_ERROR): "data error, permanent",
    int(constants.ExitCode.MISSING_INPUT): "missing input, permanent",
    int(constants.ExitCode.OUT_OF_MEMORY): "out of memory, permanent",
    int(constants.ExitCode.COMMUNICATION_LOST): "lost a peer or the rendezvous, retryable",
    int(constants.ExitCode.PREEMPTED): "stopped by SIGTERM after a checkpoint, retryable",
}


def backoff_seconds(spec: api.AccelTrainJobSpec, restarts_so_far: int) -> int:
    """Delay before the restart that follows ``restarts_so_far`` earlier restarts."""
    base = spec.run_policy.backoff_seconds
    if base == 0:
        return 0
    # Beyond 2**10 the cap has long been reached; keep the integer small.
    return int(min(base * 2 ** min(restarts_so_far, 10), MAX_BACKOFF_SECONDS))


def exit_code_text(code: int | None) -> str:
    if code is None:
        return "no exit code"
    meaning = EXIT_CODE_MEANINGS.get(code)
    if meaning is None and code > 128:
        meaning = f"killed by signal {code - 128}, retryable"
    return f"exit code {code} ({meaning})" if meaning else f"exit code {code}"


def failure_summary(failure: FailureView | None, attempt_job: AttemptView) -> str:
    """One message naming the worker, its exit code and the trainer's last log lines."""
    if failure is None:
        detail = attempt_job.failure_message or attempt_job.failure_reason or "the Job failed"
        return f"attempt {attempt_job.attempt} failed: {detail}"
    text = f"worker {failure.pod} failed with {exit_code_text(failure.exit_code)}"
    tail = failure.log_tail.strip()
    if tail:
        if len(tail) > LOG_TAIL_CHARACTERS:
            tail = "..." + tail[-LOG_TAIL_CHARACTERS:]
        text += f"; last log lines:\n{tail}"
    return text


def _failed_worker(worker: FailureView) -> api.FailedWorker:
    lines = worker.log_tail.strip().splitlines()
    last = lines[-1] if lines else ""
    if len(last) > api.LAST_LINE_CHARACTERS:
        last = "..." + last[-(api.LAST_LINE_CHARACTERS - 3) :]
    return api.FailedWorker(
        pod=worker.pod,
        index=worker.index,
        node=worker.node,
        exit_code=worker.exit_code,
        reason=worker.reason,
        last_line=last,
    )


def _others_failed(workers: tuple[FailureView, ...], first: FailureView | None) -> str:
    """A line naming the other failed workers (status.failedWorkers has the details)."""
    others = [worker for worker in workers if first is None or worker.pod != first.pod]
    if not others:
        return ""
    named = [
        f"{worker.pod} ({exit_code_text(worker.exit_code)}"
        + (f", {worker.reason}" if worker.reason else "")
        + (f", node {worker.node}" if worker.node else "")
        + ")"
        for worker in others[:3]
    ]
    more = f" and {len(others) - 3} more" if len(others) > 3 else ""
    return f"\nalso failed: {'; '.join(named)}{more} (status.failedWorkers)"


def fail(state: StatusDraft, reason: str, message: str) -> None:
    value = state.status
    value.phase = api.Phase.FAILED
    value.completion_time = format_time(state.now)
    value.next_attempt_time = None
    value.message = message
    state.set(constants.CONDITION_FAILED, True, reason, message)
    state.lower(constants.CONDITION_RUNNING, "Failed", "the job failed")
    state.lower(constants.CONDITION_RESTARTING, "Failed", "the job failed")
    if state.is_true(constants.CONDITION_PROGRESSING):
        state.set(constants.CONDITION_PROGRESSING, False, "Failed", "the job failed")


def handle_failure(
    spec: api.AccelTrainJobSpec,
    state: StatusDraft,
    observed: Observed,
    plan: Plan,
    attempt_job: AttemptView,
) -> None:
    failure = observed.failure
    code = failure.exit_code if failure else None
    state.status.last_exit_code = code
    state.status.failed_workers = [
        _failed_worker(worker) for worker in observed.failed_workers[: api.MAX_FAILED_WORKERS]
    ]
    summary = failure_summary(failure, attempt_job) + _others_failed(
        observed.failed_workers, failure
    )
    permanent = code is not None and code in constants.PERMANENT_EXIT_CODES
    disrupted = [
        pod for pod in observed.pods if pod.attempt == attempt_job.attempt and pod.disruption
    ]
    if disrupted and attempt_job.failure_reason != "PodFailurePolicy":
        _restart_after_disruption(spec, state, plan, attempt_job.attempt, disrupted[0])
        return
    if attempt_job.failure_reason == "PodFailurePolicy" or permanent:
        reason = PERMANENT_REASONS.get(code if code is not None else -1, "PermanentFailure")
        fail(
            state,
            reason,
            f"{summary}\n(a permanent exit code: restarting cannot help; fix the spec or data)",
        )
        return
    restart_or_fail(spec, state, observed, plan, attempt_job.attempt, REASON_WORKER_FAILED, summary)


def restarted_after_disruption(
    spec: api.AccelTrainJobSpec,
    state: StatusDraft,
    observed: Observed,
    plan: Plan,
    attempt_job: AttemptView,
) -> bool:
    """Evicted or preempted and not yet gone: on a lost node it never will be, and the Job does
    not fail until it is. The group restarts now rather than wait for that."""
    disrupted = [
        pod
        for pod in observed.pods_of(attempt_job.attempt)
        if pod.disruption and pod.deleting and not pod.finished
    ]
    if disrupted:
        _restart_after_disruption(spec, state, plan, attempt_job.attempt, disrupted[0])
    return bool(disrupted)


def _restart_after_disruption(
    spec: api.AccelTrainJobSpec, state: StatusDraft, plan: Plan, attempt: int, pod: PodView
) -> None:
    """An eviction, preemption or drain is the cluster's doing, not the job's: the group restarts
    from its checkpoint without spending ``runPolicy.maxRestarts``."""
    preempted = "Preemption" in pod.disruption
    reason = REASON_PREEMPTED if preempted else REASON_EVICTED
    where = f" on {pod.node_name}" if pod.node_name else ""
    cause = pod.disruption
    if pod.disruption == constants.DISRUPTION_BY_TAINT and not pod.ready:
        cause += ": its node is unreachable or not ready past runPolicy.nodeLossSeconds"
    message = (
        f"worker {pod.name}{where} was {'preempted' if preempted else 'evicted'} "
        f"({cause}); attempt {attempt + 1} resumes from the last checkpoint in "
        f"{spec.run_policy.backoff_seconds} s (a disruption spends no runPolicy.maxRestarts)"
    )
    replace_attempt(state, plan, attempt, spec.run_policy.backoff_seconds, reason, message)


def restart_or_fail(
    spec: api.AccelTrainJobSpec,
    state: StatusDraft,
    observed: Observed,
    plan: Plan,
    attempt: int,
    reason: str,
    message: str,
) -> None:
    value = state.status
    budget = spec.run_policy.max_restarts
    if value.restarts >= budget:
        fail(
            state,
            REASON_RESTART_LIMIT if budget else reason,
            f"{message}; no restarts left (runPolicy.maxRestarts: {budget})",
        )
        if any(not pod.finished and not pod.deleting for pod in observed.pods):
            tear_down_all(observed, plan)
        return
    delay = backoff_seconds(spec, value.restarts)
    value.restarts += 1
    replace_attempt(
        state,
        plan,
        attempt,
        delay,
        reason,
        f"restart {value.restarts}/{budget}: attempt {attempt + 1} starts in {delay} s "
        f"(after the pods of attempt {attempt} are gone); {message}",
    )


def replace_attempt(
    state: StatusDraft, plan: Plan, attempt: int, delay: int, reason: str, message: str
) -> None:
    """Tear ``attempt`` down; the next one is created ``delay`` seconds later."""
    value = state.status
    value.phase = api.Phase.RESTARTING
    value.next_attempt_time = format_time(state.now + dt.timedelta(seconds=delay))
    value.message = message
    state.set(constants.CONDITION_RESTARTING, True, reason, message)
    state.lower(constants.CONDITION_RUNNING, "Restarting", f"attempt {attempt} is being replaced")
    plan.delete(attempt, FAILED_ATTEMPT_GRACE_SECONDS if reason == REASON_WORKER_FAILED else None)
    plan.restart_reason = reason
    plan.requeue(delay)

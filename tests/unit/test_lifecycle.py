"""The AccelTrainJob state machine, table-driven over observed cluster states.

Each case gives the spec (as overrides of a minimal one), the status the job had, what the
reconciler observed, and asserts what a user would then see: phase, restarts, conditions and
their reasons, the actions on the cluster and the events posted.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from accel_operator import api, constants, lifecycle, observe
from accel_operator.lifecycle import (
    AttemptView,
    CreateAttempt,
    DeleteAttempt,
    DeleteJob,
    FailureView,
    Observed,
    PodView,
    ProgressSample,
)

from .conftest import MINIMAL_SPEC

CREATED = dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return CREATED + dt.timedelta(seconds=seconds)


def ts(seconds: float) -> str:
    return lifecycle.format_time(at(seconds))


def make_spec(**run_policy: Any) -> api.AccelTrainJobSpec:
    document = copy.deepcopy(MINIMAL_SPEC)
    document["runPolicy"] = {"backoffSeconds": 10, "gangTimeoutSeconds": 60, **run_policy}
    return api.parse_spec(document, name="bert")


def job(attempt: int = 1, created: float = 1, **fields: Any) -> AttemptView:
    fields.setdefault("started", at(created))
    return AttemptView(attempt=attempt, name=f"bert-a{attempt}", created=at(created), **fields)


def pod(index: int, phase: str = "Running", attempt: int = 1, **fields: Any) -> PodView:
    defaults: dict[str, Any] = {
        "node_name": "acceltrain-cpu-0" if phase != "Pending" else None,
        "ready": phase == "Running",
        "pod_ip": f"10.77.0.{10 + index}" if phase == "Running" else None,
        "running_since": at(5) if phase in ("Running", "Succeeded") else None,
    }
    defaults.update(fields)
    return PodView(
        name=f"bert-a{attempt}-{index}-x{index}",
        attempt=attempt,
        index=index,
        phase=phase,
        **defaults,
    )


def running_pods(attempt: int = 1) -> tuple[PodView, ...]:
    return (pod(0, attempt=attempt), pod(1, attempt=attempt))


def status_after(
    phase: api.Phase, attempt: int = 1, restarts: int = 0, **fields: Any
) -> api.AccelTrainJobStatus:
    conditions = fields.pop("conditions", [])
    status = api.AccelTrainJobStatus(
        phase=phase,
        attempt=attempt,
        restarts=restarts,
        start_time=ts(1),
        conditions=[
            api.Condition(
                type=kind, status=value, reason=reason, message="", last_transition_time=ts(t)
            )
            for kind, value, reason, t in conditions
        ],
        **fields,
    )
    return status


def sample(step: int, **fields: Any) -> ProgressSample:
    fields.setdefault("steps_this_process", step)
    fields.setdefault("samples_per_second", 100.0)
    return ProgressSample(step=step, **fields)


def condition(decision: lifecycle.Decision, kind: str) -> api.Condition:
    found = next((c for c in decision.status.conditions if c.type == kind), None)
    assert found is not None, f"no {kind} condition in {decision.status.conditions}"
    return found


def reasons(decision: lifecycle.Decision) -> list[str]:
    return [event.reason for event in decision.events]


@dataclasses.dataclass
class Case:
    name: str
    spec: api.AccelTrainJobSpec
    status: api.AccelTrainJobStatus
    observed: Observed
    now: dt.datetime
    check: Callable[[lifecycle.Decision], None]


def _new_job(d: lifecycle.Decision) -> None:
    assert d.actions == (CreateAttempt(1),)
    assert d.status.phase is api.Phase.STARTING
    assert d.status.attempt == 1
    assert d.status.start_time == ts(0.5)
    assert condition(d, constants.CONDITION_CREATED).status == "True"
    assert reasons(d) == ["AttemptCreated"]


def _queued_job_waits(d: lifecycle.Decision) -> None:
    assert d.actions == ()
    assert d.status.phase is api.Phase.PENDING
    scheduled = condition(d, constants.CONDITION_SCHEDULED)
    assert (scheduled.status, scheduled.reason) == ("False", "WaitingForAdmission")
    assert "queue team-queue" in scheduled.message
    assert d.status.restarts == 0


def _queued_job_says_why(d: lifecycle.Decision) -> None:
    _queued_job_waits(d)
    scheduled = condition(d, constants.CONDITION_SCHEDULED)
    assert scheduled.message == (
        "the Job bert-a1 waits for admission by Kueue (queue team-queue): insufficient unused "
        "quota for nvidia.com/gpu, 2 more needed"
    )
    assert d.status.message == scheduled.message


def _admitted_job_waits(d: lifecycle.Decision) -> None:
    assert d.actions == ()
    assert d.status.phase is api.Phase.STARTING
    assert d.status.restarts == 0


def _pending_within_gang_timeout(d: lifecycle.Decision) -> None:
    assert d.actions == ()
    assert d.status.phase is api.Phase.STARTING
    assert d.requeue_after == pytest.approx(31.0)
    scheduled = condition(d, constants.CONDITION_SCHEDULED)
    assert scheduled.reason == "WaitingForPods"
    assert "Insufficient nvidia.com/gpu" in scheduled.message


def _gang_timeout_tears_down(d: lifecycle.Decision) -> None:
    assert d.actions == (DeleteAttempt(1),)
    assert d.status.phase is api.Phase.RESTARTING
    # Waiting for capacity is not a failure: no restart is spent, the retry is counted apart.
    assert (d.status.restarts, d.status.gang_retries) == (0, 1)
    assert "spends no restart" in d.status.message
    assert d.status.next_attempt_time == ts(61 + 10)
    scheduled = condition(d, constants.CONDITION_SCHEDULED)
    assert (scheduled.status, scheduled.reason) == ("False", "GangTimeout")
    assert "bert-a1-1-x1 (0/3 nodes are available: 3 Insufficient nvidia.com/gpu.)" in (
        scheduled.message
    )
    assert condition(d, constants.CONDITION_RESTARTING).reason == "GangTimeout"
    assert d.restart_reason == "GangTimeout"
    assert "GangTimeout" in reasons(d)
    assert all(e.type == "Warning" for e in d.events if e.reason == "GangTimeout")


def _backoff_not_over(d: lifecycle.Decision) -> None:
    assert d.actions == ()
    assert d.status.phase is api.Phase.RESTARTING
    assert d.requeue_after == pytest.approx(5.0)


def _backoff_over_but_pods_remain(d: lifecycle.Decision) -> None:
    assert d.creates == []
    assert d.status.phase is api.Phase.RESTARTING


def _leftover_pod_deleted(d: lifecycle.Decision) -> None:
    assert d.actions == (DeleteAttempt(1),)
    assert d.status.phase is api.Phase.RESTARTING


def _backoff_over_next_attempt(d: lifecycle.Decision) -> None:
    assert d.actions == (CreateAttempt(2),)
    assert d.status.attempt == 2
    assert d.status.restarts == 1
    assert d.status.phase is api.Phase.STARTING
    assert d.status.next_attempt_time is None
    restarting = condition(d, constants.CONDITION_RESTARTING)
    assert (restarting.status, restarting.reason) == ("False", "AttemptStarted")


def _pods_only_running(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.RUNNING
    assert d.status.workers.summary == "2/2"
    running = condition(d, constants.CONDITION_RUNNING)
    assert (running.status, running.reason) == ("True", "AllWorkersRunning")
    assert d.launch_seconds == pytest.approx(5.0)
    assert reasons(d) == ["AllWorkersRunning"]


def _waiting_for_first_step(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.STARTING
    assert condition(d, constants.CONDITION_RUNNING).status == "True"
    assert d.requeue_after == pytest.approx(3.0)


def _first_step_makes_running(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.RUNNING
    progress = d.status.progress
    # Rank 0's 100 samples/s times world size 4 (2 workers x 2 procs).
    assert progress.samples_per_second == 400.0
    assert progress.step == 5
    assert progress.total_steps == 20
    # 15 steps left at 100 / (8 x 1) steps per second.
    assert progress.eta == "2s"
    assert progress.last_step_time == ts(20)
    assert condition(d, constants.CONDITION_PROGRESSING).reason == "StepAdvancing"


def _complete(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.SUCCEEDED
    assert d.status.completion_time == ts(100)
    assert d.status.progress.step == 20
    assert condition(d, constants.CONDITION_SUCCEEDED).status == "True"
    assert "Completed" in reasons(d)
    assert d.actions == ()
    assert d.requeue_after is None


def _permanent_failure(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.FAILED
    assert d.status.restarts == 0
    assert d.status.last_exit_code == 66
    failed = condition(d, constants.CONDITION_FAILED)
    assert failed.reason == "MissingInput"
    assert "exit code 66" in failed.message
    assert "data.path /data/missing.jsonl does not exist" in failed.message
    assert d.actions == ()
    assert [e.type for e in d.events if e.reason == "MissingInput"] == ["Warning"]


def _retryable_failure(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.RESTARTING
    assert d.status.restarts == 1
    assert d.status.last_exit_code == 137
    # The survivors wait in a collective for the lost rank: they go with a short grace.
    assert d.actions == (DeleteAttempt(1, grace_seconds=lifecycle.FAILED_ATTEMPT_GRACE_SECONDS),)
    restarting = condition(d, constants.CONDITION_RESTARTING)
    assert restarting.reason == "WorkerFailed"
    assert "exit code 137 (killed by signal 9, retryable)" in restarting.message
    assert d.restart_reason == "WorkerFailed"


def _evicted(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.RESTARTING
    assert d.status.restarts == 0
    # The other workers keep their own grace period for the SIGTERM checkpoint.
    assert d.actions == (DeleteAttempt(1),)
    restarting = condition(d, constants.CONDITION_RESTARTING)
    assert restarting.reason == "Evicted"
    assert "worker bert-a1-0-x0 on gpu-3 was evicted (EvictionByEvictionAPI)" in restarting.message
    assert "spends no runPolicy.maxRestarts" in restarting.message
    assert d.restart_reason == "Evicted"
    assert d.status.next_attempt_time == ts(30 + 10)


def _preempted_without_restarts_left(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.RESTARTING
    assert d.status.restarts == 2
    assert condition(d, constants.CONDITION_RESTARTING).reason == "Preempted"
    assert d.restart_reason == "Preempted"


def _budget_exhausted(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.FAILED
    failed = condition(d, constants.CONDITION_FAILED)
    assert failed.reason == "RestartLimitExceeded"
    assert "exit code 75" in failed.message
    assert "maxRestarts: 2" in failed.message
    assert d.creates == []


def _backoff_doubles(d: lifecycle.Decision) -> None:
    assert d.status.restarts == 3
    assert d.status.next_attempt_time == ts(100 + 40)


def _suspend(d: lifecycle.Decision) -> None:
    assert d.actions == (DeleteAttempt(1),)
    assert d.status.phase is api.Phase.SUSPENDED
    assert d.status.restarts == 0
    assert condition(d, constants.CONDITION_SUSPENDED).status == "True"
    assert condition(d, constants.CONDITION_RUNNING).status == "False"
    assert "Suspended" in reasons(d)


def _resume(d: lifecycle.Decision) -> None:
    assert d.actions == (CreateAttempt(2),)
    assert d.status.restarts == 0
    assert d.status.attempt == 2
    suspended = condition(d, constants.CONDITION_SUSPENDED)
    assert (suspended.status, suspended.reason) == ("False", "Resumed")
    assert "Resumed" in reasons(d)


def _resume_waits_for_pods(d: lifecycle.Decision) -> None:
    assert d.creates == []
    assert d.status.phase is api.Phase.SUSPENDED


def _deadline(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.FAILED
    assert condition(d, constants.CONDITION_FAILED).reason == "DeadlineExceeded"
    assert d.actions == (DeleteAttempt(1),)


def _ttl_due(d: lifecycle.Decision) -> None:
    assert d.actions == (DeleteJob(),)


def _ttl_not_due(d: lifecycle.Decision) -> None:
    assert d.actions == ()
    assert d.requeue_after == pytest.approx(20.0)


def _stall_restarts(d: lifecycle.Decision) -> None:
    progressing = condition(d, constants.CONDITION_PROGRESSING)
    assert (progressing.status, progressing.reason) == ("False", "Stalled")
    assert d.status.phase is api.Phase.RESTARTING
    assert d.actions == (DeleteAttempt(1),)
    assert d.restart_reason == "Stalled"
    assert "Stalled" in reasons(d)


def _stall_reported_only(d: lifecycle.Decision) -> None:
    assert condition(d, constants.CONDITION_PROGRESSING).reason == "Stalled"
    assert d.status.phase is api.Phase.RUNNING
    assert d.actions == ()


def _adopts_attempt_created_before_a_crash(d: lifecycle.Decision) -> None:
    assert d.creates == []
    assert d.status.attempt == 2
    assert d.status.phase is api.Phase.STARTING
    assert d.status.restarts == 1


def _deleted_job_restarts(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.RESTARTING
    assert condition(d, constants.CONDITION_RESTARTING).reason == "AttemptDeleted"


def _forbidden_pods_fail_at_once(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.FAILED
    failed = condition(d, constants.CONDITION_FAILED)
    assert failed.reason == "FailedCreate"
    assert "violates PodSecurity" in failed.message
    assert d.actions == (DeleteAttempt(1),)
    assert "FailedCreate" in reasons(d)


def _quota_waits_and_says_why(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.STARTING
    scheduled = condition(d, constants.CONDITION_SCHEDULED)
    assert (scheduled.status, scheduled.reason) == ("False", "FailedCreate")
    assert "exceeded quota" in scheduled.message
    assert "exceeded quota" in d.status.message
    assert [e.type for e in d.events if e.reason == "FailedCreate"] == ["Warning"]
    assert d.actions == ()


def _invalid_image_fails_naming_the_field(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.FAILED
    failed = condition(d, constants.CONDITION_FAILED)
    assert failed.reason == "InvalidImage"
    assert failed.message.startswith("spec.image: the container runtime refuses the image")
    assert "InvalidImageName" in failed.message
    assert d.actions == (DeleteAttempt(1),)


def _image_pull_backoff_is_shown_while_waiting(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.STARTING
    running = condition(d, constants.CONDITION_RUNNING)
    assert (running.status, running.reason) == ("False", "ContainersWaiting")
    assert "bert-a1-1-x1 (ImagePullBackOff: Back-off pulling image)" in running.message
    assert d.status.message == running.message


PSA_DENIAL = (
    'Error creating: pods "bert-a1-0-abcde" is forbidden: violates PodSecurity '
    '"restricted:latest": runAsNonRoot != true'
)
QUOTA_DENIAL = 'Error creating: pods "bert-a1-1-x" is forbidden: exceeded quota: gpu, requested'

CASES = [
    Case(
        "pods that pod security refuses fail the job at once",
        make_spec(),
        status_after(api.Phase.STARTING),
        Observed(created=CREATED, attempts=(job(create_failure=PSA_DENIAL),)),
        at(5),
        _forbidden_pods_fail_at_once,
    ),
    Case(
        "pods over quota wait, and the condition says why",
        make_spec(),
        status_after(api.Phase.STARTING),
        Observed(created=CREATED, attempts=(job(create_failure=QUOTA_DENIAL),), pods=(pod(0),)),
        at(5),
        _quota_waits_and_says_why,
    ),
    Case(
        "an image reference the runtime refuses fails the job at once",
        make_spec(),
        status_after(api.Phase.STARTING),
        Observed(
            created=CREATED,
            attempts=(job(),),
            pods=(
                pod(0),
                pod(
                    1,
                    "Pending",
                    node_name="n1",
                    waiting_reason="InvalidImageName",
                    waiting_message='couldn\'t parse image name "Ghcr.io/X"',
                ),
            ),
        ),
        at(5),
        _invalid_image_fails_naming_the_field,
    ),
    Case(
        "an image that cannot be pulled yet shows in the scheduling condition",
        make_spec(),
        status_after(api.Phase.STARTING),
        Observed(
            created=CREATED,
            attempts=(job(),),
            pods=(
                pod(0),
                pod(
                    1,
                    "Pending",
                    node_name="n1",
                    waiting_reason="ImagePullBackOff",
                    waiting_message="Back-off pulling image",
                ),
            ),
        ),
        at(5),
        _image_pull_backoff_is_shown_while_waiting,
    ),
    Case(
        "a new job creates attempt 1",
        make_spec(),
        api.AccelTrainJobStatus(),
        Observed(created=CREATED),
        at(0.5),
        _new_job,
    ),
    Case(
        "a queued Job waits for admission without a gang timer",
        make_spec(queueName="team-queue"),
        status_after(api.Phase.PENDING),
        Observed(created=CREATED, attempts=(job(suspended=True, started=None),)),
        at(3600),
        _queued_job_waits,
    ),
    Case(
        "a queued Job shows why Kueue has not admitted it",
        make_spec(queueName="team-queue"),
        status_after(api.Phase.PENDING),
        Observed(
            created=CREATED,
            attempts=(
                job(
                    suspended=True,
                    started=None,
                    admission_message="insufficient unused quota for nvidia.com/gpu, 2 more needed",
                ),
            ),
        ),
        at(3600),
        _queued_job_says_why,
    ),
    Case(
        "a just-admitted Job without a start time yet gets its full gang timeout",
        make_spec(queueName="team-queue"),
        status_after(api.Phase.PENDING),
        Observed(created=CREATED, attempts=(job(started=None),), pods=(pod(0, "Pending"),)),
        at(3600),
        _admitted_job_waits,
    ),
    Case(
        "pending pods within the gang timeout wait",
        make_spec(),
        status_after(api.Phase.STARTING),
        Observed(
            created=CREATED,
            attempts=(job(),),
            pods=(
                pod(0),
                pod(1, "Pending", unschedulable_message="0/3 nodes: Insufficient nvidia.com/gpu"),
            ),
        ),
        at(30),
        _pending_within_gang_timeout,
    ),
    Case(
        "the gang timeout tears the attempt down and names the pending pods",
        make_spec(),
        status_after(api.Phase.STARTING),
        Observed(
            created=CREATED,
            attempts=(job(),),
            pods=(
                pod(0),
                pod(
                    1,
                    "Pending",
                    unschedulable_message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                ),
            ),
        ),
        at(61),
        _gang_timeout_tears_down,
    ),
    Case(
        "restarting waits for the backoff",
        make_spec(),
        status_after(api.Phase.RESTARTING, restarts=1, next_attempt_time=ts(40)),
        Observed(created=CREATED),
        at(35),
        _backoff_not_over,
    ),
    Case(
        "restarting waits until no pod of the old attempt remains",
        make_spec(),
        status_after(api.Phase.RESTARTING, restarts=1, next_attempt_time=ts(40)),
        Observed(created=CREATED, pods=(pod(0, deleting=True),)),
        at(50),
        _backoff_over_but_pods_remain,
    ),
    Case(
        "a leftover pod whose Job is gone is deleted before the next attempt",
        make_spec(),
        status_after(api.Phase.RESTARTING, restarts=1, next_attempt_time=ts(40)),
        Observed(created=CREATED, pods=(pod(1, "Failed", exit_code=137),)),
        at(50),
        _leftover_pod_deleted,
    ),
    Case(
        "after the backoff the next attempt is created",
        make_spec(),
        status_after(
            api.Phase.RESTARTING,
            restarts=1,
            next_attempt_time=ts(40),
            conditions=[("Restarting", "True", "WorkerFailed", 30)],
        ),
        Observed(created=CREATED),
        at(50),
        _backoff_over_next_attempt,
    ),
    Case(
        "pods running and metrics out of reach: Running on pod state",
        make_spec(),
        status_after(api.Phase.STARTING),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods(), progress_visible=False),
        at(10),
        _pods_only_running,
    ),
    Case(
        "pods running without a reported step: still Starting",
        make_spec(),
        status_after(api.Phase.STARTING),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods()),
        at(10),
        _waiting_for_first_step,
    ),
    Case(
        "the first step makes the job Running with job-wide throughput",
        make_spec(),
        status_after(api.Phase.STARTING, conditions=[("Running", "True", "AllWorkersRunning", 8)]),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods(), progress=sample(5)),
        at(20),
        _first_step_makes_running,
    ),
    Case(
        "a complete Job makes the job Succeeded",
        make_spec(),
        status_after(api.Phase.RUNNING),
        Observed(
            created=CREATED,
            attempts=(job(complete=True),),
            pods=(pod(0, "Succeeded"), pod(1, "Succeeded")),
        ),
        at(100),
        _complete,
    ),
    Case(
        "a permanent exit code fails the job after one attempt with the trainer's message",
        make_spec(),
        status_after(api.Phase.STARTING),
        Observed(
            created=CREATED,
            attempts=(job(failed=True, failure_reason="PodFailurePolicy"),),
            pods=(pod(0, "Failed", exit_code=66), pod(1, "Failed", exit_code=143)),
            failed_workers=(
                FailureView(
                    "bert-a1-0-x0",
                    66,
                    "MissingInputError: data.path /data/missing.jsonl does not exist; mount it",
                ),
            ),
        ),
        at(12),
        _permanent_failure,
    ),
    Case(
        "a retryable failure restarts the group",
        make_spec(),
        status_after(api.Phase.RUNNING),
        Observed(
            created=CREATED,
            attempts=(job(failed=True, failure_reason="BackoffLimitExceeded"),),
            pods=(pod(0, "Failed", exit_code=137), pod(1, "Failed", exit_code=75)),
            failed_workers=(FailureView("bert-a1-0-x0", 137, ""),),
        ),
        at(30),
        _retryable_failure,
    ),
    Case(
        "an evicted worker restarts the group without spending a restart",
        make_spec(),
        status_after(api.Phase.RUNNING),
        Observed(
            created=CREATED,
            attempts=(job(failed=True, failure_reason="BackoffLimitExceeded"),),
            pods=(
                pod(
                    0,
                    "Failed",
                    exit_code=143,
                    node_name="gpu-3",
                    disruption="EvictionByEvictionAPI",
                ),
                pod(1, "Failed", exit_code=137),
            ),
            failed_workers=(FailureView("bert-a1-0-x0", 143, ""),),
        ),
        at(30),
        _evicted,
    ),
    Case(
        "a preempted worker restarts the group even with no restarts left",
        make_spec(maxRestarts=2),
        status_after(api.Phase.RUNNING, attempt=3, restarts=2),
        Observed(
            created=CREATED,
            attempts=(job(3, failed=True, failure_reason="BackoffLimitExceeded"),),
            pods=(pod(0, "Failed", attempt=3, exit_code=143, disruption="PreemptionByScheduler"),),
            failed_workers=(FailureView("bert-a3-0-x0", 143, ""),),
        ),
        at(30),
        _preempted_without_restarts_left,
    ),
    Case(
        "a retryable failure without restarts left fails the job",
        make_spec(maxRestarts=2),
        status_after(api.Phase.RUNNING, attempt=3, restarts=2),
        Observed(
            created=CREATED,
            attempts=(job(3, failed=True, failure_reason="BackoffLimitExceeded"),),
            failed_workers=(FailureView("bert-a3-1-x1", 75, "lost peer"),),
        ),
        at(30),
        _budget_exhausted,
    ),
    Case(
        "the backoff doubles with every restart",
        make_spec(),
        status_after(api.Phase.RUNNING, attempt=3, restarts=2),
        Observed(
            created=CREATED,
            attempts=(job(3, failed=True, failure_reason="BackoffLimitExceeded"),),
            failed_workers=(FailureView("bert-a3-1-x1", 75, ""),),
        ),
        at(100),
        _backoff_doubles,
    ),
    Case(
        "suspending deletes the attempt and is not a restart",
        make_spec(suspend=True),
        status_after(api.Phase.RUNNING, conditions=[("Running", "True", "AllWorkersRunning", 8)]),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods()),
        at(40),
        _suspend,
    ),
    Case(
        "resuming creates a new attempt once the old one is gone",
        make_spec(),
        status_after(api.Phase.SUSPENDED, conditions=[("Suspended", "True", "Suspended", 40)]),
        Observed(created=CREATED),
        at(60),
        _resume,
    ),
    Case(
        "resuming waits for the suspended attempt's pods to stop",
        make_spec(),
        status_after(api.Phase.SUSPENDED, conditions=[("Suspended", "True", "Suspended", 40)]),
        Observed(created=CREATED, pods=(pod(0, deleting=True),)),
        at(60),
        _resume_waits_for_pods,
    ),
    Case(
        "the active deadline fails the job and stops its pods",
        make_spec(activeDeadlineSeconds=30),
        status_after(api.Phase.RUNNING),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods()),
        at(40),
        _deadline,
    ),
    Case(
        "the TTL deletes a finished job",
        make_spec(ttlSecondsAfterFinished=30),
        status_after(api.Phase.SUCCEEDED, completion_time=ts(100)),
        Observed(created=CREATED, attempts=(job(complete=True),)),
        at(131),
        _ttl_due,
    ),
    Case(
        "before the TTL a finished job waits",
        make_spec(ttlSecondsAfterFinished=30),
        status_after(api.Phase.SUCCEEDED, completion_time=ts(100)),
        Observed(created=CREATED, attempts=(job(complete=True),)),
        at(110),
        _ttl_not_due,
    ),
    Case(
        "no new step within the progress deadline restarts the attempt",
        make_spec(progressDeadlineSeconds=30),
        status_after(
            api.Phase.RUNNING,
            progress=api.Progress(step=7, last_step_time=ts(20)),
            conditions=[
                ("Running", "True", "AllWorkersRunning", 8),
                ("Progressing", "True", "StepAdvancing", 12),
            ],
        ),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods(), progress=sample(7)),
        at(55),
        _stall_restarts,
    ),
    Case(
        "an exporter that stops answering while Running is caught as a stall",
        make_spec(progressDeadlineSeconds=30, restartOnStall=False),
        status_after(
            api.Phase.RUNNING,
            progress=api.Progress(step=7, last_step_time=ts(20)),
            conditions=[("Running", "True", "AllWorkersRunning", 8)],
        ),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods(), progress=None),
        at(55),
        _stall_reported_only,
    ),
    Case(
        "a stall without restartOnStall is reported only",
        make_spec(progressDeadlineSeconds=30, restartOnStall=False),
        status_after(
            api.Phase.RUNNING,
            progress=api.Progress(step=7, last_step_time=ts(20)),
            conditions=[("Running", "True", "AllWorkersRunning", 8)],
        ),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods(), progress=sample(7)),
        at(55),
        _stall_reported_only,
    ),
    Case(
        "an attempt created before a crash is adopted, not created again",
        make_spec(),
        status_after(api.Phase.RESTARTING, restarts=1, next_attempt_time=ts(40)),
        Observed(created=CREATED, attempts=(job(2, created=45),)),
        at(46),
        _adopts_attempt_created_before_a_crash,
    ),
    Case(
        "a Job deleted behind the operator's back counts as a failed attempt",
        make_spec(),
        status_after(api.Phase.RUNNING),
        Observed(created=CREATED),
        at(46),
        _deleted_job_restarts,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decide(case: Case) -> None:
    case.check(lifecycle.decide(case.spec, case.status, case.observed, case.now))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_repeating_a_reconcile_creates_nothing_twice_and_settles(case: Case) -> None:
    first = lifecycle.decide(case.spec, case.status, case.observed, case.now)
    # The cluster once the first decision's creations happened.
    observed = case.observed
    for create in first.creates:
        observed = dataclasses.replace(
            observed, attempts=(*observed.attempts, job(create.attempt, created=0.5))
        )
    second = lifecycle.decide(case.spec, first.status, observed, case.now)
    assert second.creates == []
    assert second.status.attempt == first.status.attempt
    assert second.status.restarts == first.status.restarts
    third = lifecycle.decide(case.spec, second.status, observed, case.now)
    assert third.status == second.status
    assert third.events == ()
    assert third.creates == []


def test_transition_time_moves_only_when_a_condition_flips() -> None:
    spec = make_spec()
    status = status_after(
        api.Phase.STARTING, conditions=[("Scheduled", "False", "WaitingForPods", 2)]
    )
    pending = Observed(created=CREATED, attempts=(job(),), pods=(pod(0), pod(1, "Pending")))
    still_pending = lifecycle.decide(spec, status, pending, at(10))
    assert condition(still_pending, "Scheduled").last_transition_time == ts(2)
    scheduled = lifecycle.decide(
        spec,
        still_pending.status,
        dataclasses.replace(pending, pods=running_pods()),
        at(12),
    )
    assert condition(scheduled, "Scheduled").status == "True"
    assert condition(scheduled, "Scheduled").last_transition_time == ts(12)


def test_a_restarted_attempt_resumes_the_step_count_from_its_checkpoint() -> None:
    spec = make_spec()
    status = status_after(
        api.Phase.STARTING,
        attempt=2,
        restarts=1,
        progress=api.Progress(step=14, last_step_time=ts(20)),
        conditions=[("Running", "True", "AllWorkersRunning", 40)],
    )
    observed = Observed(
        created=CREATED,
        attempts=(job(2, created=35),),
        pods=running_pods(2),
        progress=sample(11, steps_this_process=1, checkpoint_step=10),
    )
    decision = lifecycle.decide(spec, status, observed, at(50))
    assert decision.status.progress.step == 11
    assert decision.status.phase is api.Phase.RUNNING
    assert decision.status.last_checkpoint is not None
    assert decision.status.last_checkpoint.step == 10
    assert decision.status.last_checkpoint.path == "/checkpoints/step-00000010"


def test_a_new_attempt_before_its_first_step_keeps_the_last_progress() -> None:
    spec = make_spec()
    status = status_after(
        api.Phase.STARTING, attempt=2, progress=api.Progress(step=14, samples_per_second=80.0)
    )
    observed = Observed(
        created=CREATED,
        attempts=(job(2),),
        pods=running_pods(2),
        progress=sample(0, steps_this_process=0, samples_per_second=0.0),
    )
    decision = lifecycle.decide(spec, status, observed, at(50))
    assert decision.status.progress.step == 14
    assert decision.status.progress.samples_per_second == 80.0


def test_an_invalid_spec_fails_the_job_with_the_field_in_the_message() -> None:
    decision = lifecycle.invalid_spec(
        api.AccelTrainJobStatus(),
        "invalid AccelTrainJob: checkpoint.path (/ckpt) is not on a persistentVolumeClaim",
        at(1),
        3,
    )
    failed = condition(decision, constants.CONDITION_FAILED)
    assert decision.status.phase is api.Phase.FAILED
    assert failed.reason == "InvalidSpec"
    assert "checkpoint.path" in failed.message
    assert failed.observed_generation == 3
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "InvalidSpec")]


@pytest.mark.parametrize(
    ("backoff", "restarts", "delay"),
    [(10, 0, 10), (10, 1, 20), (10, 3, 80), (10, 6, 600), (10, 60, 600), (0, 5, 0)],
)
def test_backoff_doubles_and_is_capped_at_ten_minutes(
    backoff: int, restarts: int, delay: int
) -> None:
    assert lifecycle.backoff_seconds(make_spec(backoffSeconds=backoff), restarts) == delay


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (44.2, "45s"), (200, "3m20s"), (3720, "1h02m"), (183600, "2d03h")],
)
def test_durations_read_like_kubectl(seconds: float, text: str) -> None:
    assert lifecycle.format_duration(seconds) == text


# --- observing the cluster ------------------------------------------------------------------
def _pod_object(
    name: str, index: int, phase: str, exit_code: int | None = None, **status: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": constants.TRAINER_CONTAINER, "state": {}}
    if exit_code is not None:
        container["state"] = {
            "terminated": {"exitCode": exit_code, "startedAt": ts(3), "message": ""}
        }
    return {
        "metadata": {
            "name": name,
            "labels": {constants.LABEL_ATTEMPT: "2", constants.LABEL_JOB_NAME: "bert"},
            "annotations": {constants.LABEL_JOB_COMPLETION_INDEX: str(index)},
        },
        "spec": {"nodeName": "acceltrain-gpu-0"} if phase != "Pending" else {},
        "status": {"phase": phase, "containerStatuses": [container], **status},
    }


def test_every_failed_worker_is_listed_and_the_message_names_the_others() -> None:
    failed = tuple(
        FailureView(
            f"bert-a1-{index}-x{index}",
            code,
            f"step 40\nrank {index}: {reason} here",
            index=index,
            node=f"gpu-{index}",
            reason=reason,
        )
        for index, code, reason in ((1, 137, "OOMKilled"), (0, 75, "Error"), (2, 75, "Error"))
    )
    observed = Observed(
        created=CREATED,
        attempts=(job(failed=True, failure_reason="BackoffLimitExceeded"),),
        pods=(pod(0, "Failed", exit_code=75), pod(1, "Failed", exit_code=137)),
        failed_workers=failed,
    )
    decision = lifecycle.decide(make_spec(), status_after(api.Phase.RUNNING), observed, at(30))
    listed = decision.status.failed_workers
    assert [(w.pod, w.index, w.node, w.exit_code, w.reason) for w in listed] == [
        ("bert-a1-1-x1", 1, "gpu-1", 137, "OOMKilled"),
        ("bert-a1-0-x0", 0, "gpu-0", 75, "Error"),
        ("bert-a1-2-x2", 2, "gpu-2", 75, "Error"),
    ]
    assert listed[0].last_line == "rank 1: OOMKilled here"
    message = condition(decision, constants.CONDITION_RESTARTING).message
    assert "; worker bert-a1-1-x1 failed with exit code 137 (" in message
    assert "also failed: bert-a1-0-x0 (exit code 75" in message
    assert "Error, node gpu-0); bert-a1-2-x2" in message
    assert message.endswith("(status.failedWorkers)")
    dumped = decision.status.model_dump(by_alias=True)
    assert dumped["failedWorkers"][0]["lastLine"] == "rank 1: OOMKilled here"


def test_a_failure_of_hundreds_of_workers_keeps_a_bounded_list() -> None:
    failed = tuple(FailureView(f"bert-a1-{i}-x", 75, "x" * 5000, index=i) for i in range(300))
    observed = Observed(
        created=CREATED,
        attempts=(job(failed=True, failure_reason="BackoffLimitExceeded"),),
        failed_workers=failed,
    )
    decision = lifecycle.decide(make_spec(), status_after(api.Phase.RUNNING), observed, at(30))
    assert len(decision.status.failed_workers) == api.MAX_FAILED_WORKERS
    assert all(len(w.last_line) <= api.LAST_LINE_CHARACTERS for w in decision.status.failed_workers)
    assert "and 296 more (status.failedWorkers)" in decision.status.message


def test_the_permanent_exit_code_explains_a_failed_attempt() -> None:
    pods = [
        observe.pod_view(_pod_object("bert-a2-0-a", 0, "Failed", 143)),
        observe.pod_view(_pod_object("bert-a2-1-b", 1, "Failed", 65)),
        observe.pod_view(_pod_object("bert-a2-2-c", 2, "Failed", 1)),
    ]
    worker = observe.failed_workers(pods)[0]
    assert (worker.name, worker.exit_code, worker.attempt, worker.index) == (
        "bert-a2-1-b",
        65,
        2,
        1,
    )


def test_a_pod_the_scheduler_cannot_place_carries_its_reason() -> None:
    unplaced = _pod_object(
        "bert-a2-1-b",
        1,
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    view = observe.pod_view(unplaced)
    assert view.unschedulable_message == "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    assert not view.started
    bare = _pod_object("bert-a2-0-a", 0, "Pending")
    assert observe.needs_scheduler_events([observe.pod_view(bare)], at(60))
    events = [
        {
            "reason": "FailedScheduling",
            "involvedObject": {"kind": "Pod", "name": "bert-a2-0-a"},
            "lastTimestamp": ts(5),
            "message": "0/4 nodes are available: 4 node(s) didn't match Pod's node affinity.",
        }
    ]
    messages = observe.scheduler_messages(events)
    assert "node affinity" in observe.pod_view(bare, messages).unschedulable_message


def test_events_are_read_only_for_pods_and_jobs_left_waiting_past_the_grace() -> None:
    fresh = _pod_object("bert-a2-0-a", 0, "Pending")
    fresh["metadata"]["creationTimestamp"] = ts(10)
    grace = observe.EVENT_READ_GRACE_SECONDS
    # A pod the scheduler has not looked at yet: no Events read for it on every launch.
    assert not observe.needs_scheduler_events([observe.pod_view(fresh)], at(10 + grace - 1))
    assert observe.needs_scheduler_events([observe.pod_view(fresh)], at(10 + grace))
    attempt = job(2, created=10)
    assert not observe.needs_create_failures(attempt, [], 2, at(10 + grace - 1))
    assert observe.needs_create_failures(attempt, [], 2, at(10 + grace))
    pods = [observe.pod_view(fresh), observe.pod_view(_pod_object("bert-a2-1-b", 1, "Pending"))]
    assert not observe.needs_create_failures(attempt, pods, 2, at(60))
    assert not observe.needs_create_failures(job(2, created=10, failed=True), [], 2, at(60))


def test_job_conditions_become_the_attempt_outcome() -> None:
    failed = {
        "metadata": {
            "name": "bert-a3",
            "labels": {constants.LABEL_ATTEMPT: "3"},
            "creationTimestamp": ts(0),
        },
        "spec": {"suspend": False},
        "status": {
            "startTime": ts(1),
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"}
            ],
        },
    }
    view = observe.attempt_view(failed)
    assert view is not None
    assert (view.attempt, view.failed, view.failure_reason) == (3, True, "PodFailurePolicy")
    assert view.started == at(1)
    assert observe.attempt_view({"metadata": {"name": "unrelated"}}) is None


def test_a_job_marked_retrying_is_marked_reconciled_once_the_api_server_answers() -> None:
    spec = make_spec()
    retrying = lifecycle.api_retrying(
        status_after(api.Phase.RUNNING), "HTTP 429: slow down; retrying in 6 s", at(10), 1
    )
    reconciled = condition(retrying, constants.CONDITION_RECONCILED)
    assert (reconciled.status, reconciled.reason) == ("False", "ApiRetrying")
    assert retrying.status.phase is api.Phase.RUNNING
    observed = Observed(created=CREATED, attempts=(job(),), pods=running_pods())
    after = lifecycle.decide(spec, retrying.status, observed, at(20))
    assert condition(after, constants.CONDITION_RECONCILED).status == "True"
    # A job that never had trouble carries no such condition.
    fresh = lifecycle.decide(spec, status_after(api.Phase.RUNNING), observed, at(20))
    assert all(c.type != constants.CONDITION_RECONCILED for c in fresh.status.conditions)


def test_kueue_reason_is_the_workloads_false_quota_condition() -> None:
    pending = {
        "status": {
            "conditions": [
                {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "no"},
            ]
        }
    }
    admitted = {"status": {"conditions": [{"type": "QuotaReserved", "status": "True"}]}}

    assert observe.kueue_admission_message([pending]) == "no"
    assert observe.kueue_admission_message([admitted]) == ""
    assert observe.kueue_admission_message([]) == ""


def test_a_pod_the_cluster_evicted_is_seen_as_a_disruption_and_a_crash_is_not() -> None:
    evicted = _pod_object(
        "bert-a2-0-a",
        0,
        "Failed",
        143,
        conditions=[
            {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
        ],
    )
    cleared = _pod_object(
        "bert-a2-1-b",
        1,
        "Failed",
        1,
        conditions=[{"type": "DisruptionTarget", "status": "False", "reason": "x"}],
    )
    assert observe.pod_view(evicted).disruption == "EvictionByEvictionAPI"
    assert observe.pod_view(cleared).disruption == ""
    assert observe.pod_view(_pod_object("bert-a2-2-c", 2, "Failed", 1)).disruption == ""


# --- a lost node --------------------------------------------------------------------------------
def _lost(index: int, attempt: int = 1, **fields: Any) -> PodView:
    """A worker the taint manager evicted from a node that stopped answering: still Running as
    far as the API server knows (no kubelet reports otherwise), not ready, being deleted."""
    fields.setdefault("deletion_deadline", at(150))
    return pod(
        index,
        attempt=attempt,
        node_name="gpu-lost",
        ready=False,
        deleting=True,
        disruption=constants.DISRUPTION_BY_TAINT,
        **fields,
    )


def test_a_worker_evicted_from_a_lost_node_restarts_the_group_without_spending_a_restart() -> None:
    observed = Observed(
        created=CREATED, attempts=(job(),), pods=(pod(0), _lost(1)), progress=sample(40)
    )
    decision = lifecycle.decide(make_spec(), status_after(api.Phase.RUNNING), observed, at(100))
    assert decision.status.phase is api.Phase.RESTARTING
    assert (decision.status.restarts, decision.restart_reason) == (0, lifecycle.REASON_EVICTED)
    assert lifecycle.DeleteAttempt(1) in decision.actions
    message = condition(decision, constants.CONDITION_RESTARTING).message
    assert "worker bert-a1-1-x1 on gpu-lost was evicted (DeletionByTaintManager" in message
    assert "runPolicy.nodeLossSeconds" in message


def test_a_pod_left_on_a_lost_node_is_force_deleted_so_the_next_attempt_can_start() -> None:
    restarting = status_after(api.Phase.RESTARTING, next_attempt_time=ts(60))
    observed = Observed(
        created=CREATED,
        attempts=(job(deleting=True),),
        pods=(_lost(1), pod(0, deleting=True, deletion_deadline=at(200))),
    )
    decision = lifecycle.decide(make_spec(), restarting, observed, at(100))
    assert decision.force_deletes == [lifecycle.ForceDeletePod("bert-a1-1-x1")]
    [event] = [e for e in decision.events if e.reason == lifecycle.REASON_POD_FORCE_DELETED]
    assert "worker bert-a1-1-x1 on gpu-lost of attempt 1" in event.message
    assert "its node is unreachable or not ready" in event.message
    # The healthy worker's kubelet still has its grace period: that pod is left to it.
    assert decision.status.attempt == 1


def test_a_pod_whose_kubelet_never_ends_it_is_force_deleted_after_its_grace_period() -> None:
    restarting = status_after(api.Phase.RESTARTING, next_attempt_time=ts(60))
    stuck = pod(0, deleting=True, deletion_deadline=at(100))
    observed = Observed(created=CREATED, attempts=(), pods=(stuck,))
    within = lifecycle.decide(make_spec(), restarting, observed, at(100 + 29))
    assert within.force_deletes == []
    assert within.requeue_after == pytest.approx(1)
    overdue = lifecycle.decide(make_spec(), restarting, observed, at(100 + 30))
    assert overdue.force_deletes == [lifecycle.ForceDeletePod("bert-a1-0-x0")]
    assert "its kubelet never finished it" in overdue.events[-1].message

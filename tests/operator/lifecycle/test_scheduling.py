"""Scheduling: Kueue admission, the Scheduled condition with the scheduler's and the Job
controller's reasons, workers that can never start, and the gang timeout."""

from __future__ import annotations

import pytest

from accel_operator import api, constants, lifecycle
from accel_operator.lifecycle import (
    DeleteAttempt,
    Observed,
)
from tests.operator.lifecycle.cases import (
    CREATED,
    Case,
    at,
    condition,
    job,
    make_spec,
    pod,
    reasons,
    status_after,
    ts,
)


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
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decide(case: Case) -> None:
    case.check(lifecycle.decide(case.spec, case.status, case.observed, case.now))

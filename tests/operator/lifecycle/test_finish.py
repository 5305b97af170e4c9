"""How a job ends: success, the active deadline, the TTL after finishing."""

from __future__ import annotations

import pytest

from accel_operator import api, constants, lifecycle
from accel_operator.lifecycle import (
    DeleteAttempt,
    DeleteJob,
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
    running_pods,
    status_after,
    ts,
)


def _complete(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.SUCCEEDED
    assert d.status.completion_time == ts(100)
    assert d.status.progress.step == 20
    assert condition(d, constants.CONDITION_SUCCEEDED).status == "True"
    assert "Completed" in reasons(d)
    assert d.actions == ()
    assert d.requeue_after is None


def _deadline(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.FAILED
    assert condition(d, constants.CONDITION_FAILED).reason == "DeadlineExceeded"
    assert d.actions == (DeleteAttempt(1),)


def _ttl_due(d: lifecycle.Decision) -> None:
    assert d.actions == (DeleteJob(),)


def _ttl_not_due(d: lifecycle.Decision) -> None:
    assert d.actions == ()
    assert d.requeue_after == pytest.approx(20.0)


CASES = [
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
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decide(case: Case) -> None:
    case.check(lifecycle.decide(case.spec, case.status, case.observed, case.now))

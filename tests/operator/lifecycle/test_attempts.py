"""Attempts: the first one, adopting one a crash left unrecorded, waiting out a restart's backoff
until the old attempt is gone, and force-deleting pods a lost node keeps."""

from __future__ import annotations

import pytest

from accel_operator import api, constants, lifecycle
from accel_operator.lifecycle import (
    CreateAttempt,
    DeleteAttempt,
    Observed,
)
from tests.operator.lifecycle.cases import (
    CREATED,
    Case,
    at,
    condition,
    job,
    lost_pod,
    make_spec,
    pod,
    reasons,
    status_after,
    ts,
)


def _new_job(d: lifecycle.Decision) -> None:
    assert d.actions == (CreateAttempt(1),)
    assert d.status.phase is api.Phase.STARTING
    assert d.status.attempt == 1
    assert d.status.start_time == ts(0.5)
    assert condition(d, constants.CONDITION_CREATED).status == "True"
    assert reasons(d) == ["AttemptCreated"]


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


def _adopts_attempt_created_before_a_crash(d: lifecycle.Decision) -> None:
    assert d.creates == []
    assert d.status.attempt == 2
    assert d.status.phase is api.Phase.STARTING
    assert d.status.restarts == 1


CASES = [
    Case(
        "a new job creates attempt 1",
        make_spec(),
        api.AccelTrainJobStatus(),
        Observed(created=CREATED),
        at(0.5),
        _new_job,
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
        "an attempt created before a crash is adopted, not created again",
        make_spec(),
        status_after(api.Phase.RESTARTING, restarts=1, next_attempt_time=ts(40)),
        Observed(created=CREATED, attempts=(job(2, created=45),)),
        at(46),
        _adopts_attempt_created_before_a_crash,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decide(case: Case) -> None:
    case.check(lifecycle.decide(case.spec, case.status, case.observed, case.now))


def test_a_pod_left_on_a_lost_node_is_force_deleted_so_the_next_attempt_can_start() -> None:
    restarting = status_after(api.Phase.RESTARTING, next_attempt_time=ts(60))
    observed = Observed(
        created=CREATED,
        attempts=(job(deleting=True),),
        pods=(lost_pod(1), pod(0, deleting=True, deletion_deadline=at(200))),
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

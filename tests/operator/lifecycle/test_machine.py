"""The state machine as a whole: every policy's cases through decide(), and the property that makes
a reconcile safe to repeat."""

from __future__ import annotations

import dataclasses

import pytest

from accel_operator import api, lifecycle
from accel_operator.lifecycle import Observed
from tests.operator.lifecycle import (
    test_attempts,
    test_failure,
    test_finish,
    test_progress,
    test_scheduling,
    test_suspend,
)
from tests.operator.lifecycle.cases import CREATED, Case, at, job, make_spec, status_after

# Every policy's table: a reconcile of any of those situations is safe to repeat.
ALL_CASES = [
    *test_attempts.CASES,
    *test_scheduling.CASES,
    *test_failure.CASES,
    *test_suspend.CASES,
    *test_progress.CASES,
    *test_finish.CASES,
]


@pytest.mark.parametrize("case", ALL_CASES, ids=[case.name for case in ALL_CASES])
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


def test_a_put_off_look_at_the_cluster_brings_the_job_back_by_then() -> None:
    # Pods not created yet: the reconciler put off reading why, for 3 s.
    observed = Observed(created=CREATED, attempts=(job(1, created=1),), recheck_after=3.0)
    status = status_after(api.Phase.STARTING)
    decision = lifecycle.decide(make_spec(), status, observed, at(2))
    assert decision.requeue_after == 3.0
    without = lifecycle.decide(
        make_spec(), status, dataclasses.replace(observed, recheck_after=None), at(2)
    )
    assert without.requeue_after is not None and without.requeue_after > 3.0

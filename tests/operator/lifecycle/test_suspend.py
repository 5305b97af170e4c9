"""Suspend and resume."""

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
    make_spec,
    pod,
    reasons,
    running_pods,
    status_after,
)


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


CASES = [
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
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decide(case: Case) -> None:
    case.check(lifecycle.decide(case.spec, case.status, case.observed, case.now))

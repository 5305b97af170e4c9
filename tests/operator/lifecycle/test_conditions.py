"""Conditions: transition times, the Reconciled condition while the API server refuses, and an
invalid spec."""

from __future__ import annotations

import dataclasses

from accel_operator import api, constants, lifecycle
from accel_operator.lifecycle import (
    Observed,
)
from tests.operator.lifecycle.cases import (
    CREATED,
    at,
    condition,
    job,
    make_spec,
    pod,
    running_pods,
    status_after,
    ts,
)


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

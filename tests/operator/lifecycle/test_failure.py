"""Failures: permanent exit codes, restarts with backoff and their budget, disruptions that spend no
restart, and what the status says about failed workers."""

from __future__ import annotations

import pytest

from accel_operator import api, constants, lifecycle, observe
from accel_operator.lifecycle import (
    DeleteAttempt,
    FailureView,
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
    pod_object,
    sample,
    status_after,
    ts,
)


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


def _deleted_job_restarts(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.RESTARTING
    assert condition(d, constants.CONDITION_RESTARTING).reason == "AttemptDeleted"


CASES = [
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


@pytest.mark.parametrize(
    ("backoff", "restarts", "delay"),
    [(10, 0, 10), (10, 1, 20), (10, 3, 80), (10, 6, 600), (10, 60, 600), (0, 5, 0)],
)
def test_backoff_doubles_and_is_capped_at_ten_minutes(
    backoff: int, restarts: int, delay: int
) -> None:
    assert lifecycle.backoff_seconds(make_spec(backoffSeconds=backoff), restarts) == delay


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
        observe.pod_view(pod_object("bert-a2-0-a", 0, "Failed", 143)),
        observe.pod_view(pod_object("bert-a2-1-b", 1, "Failed", 65)),
        observe.pod_view(pod_object("bert-a2-2-c", 2, "Failed", 1)),
    ]
    worker = observe.failed_workers(pods)[0]
    assert (worker.name, worker.exit_code, worker.attempt, worker.index) == (
        "bert-a2-1-b",
        65,
        2,
        1,
    )


def test_a_worker_evicted_from_a_lost_node_restarts_the_group_without_spending_a_restart() -> None:
    observed = Observed(
        created=CREATED, attempts=(job(),), pods=(pod(0), lost_pod(1)), progress=sample(40)
    )
    decision = lifecycle.decide(make_spec(), status_after(api.Phase.RUNNING), observed, at(100))
    assert decision.status.phase is api.Phase.RESTARTING
    assert (decision.status.restarts, decision.restart_reason) == (0, lifecycle.REASON_EVICTED)
    assert lifecycle.DeleteAttempt(1) in decision.actions
    message = condition(decision, constants.CONDITION_RESTARTING).message
    assert "worker bert-a1-1-x1 on gpu-lost was evicted (DeletionByTaintManager" in message
    assert "runPolicy.nodeLossSeconds" in message

"""Reading the cluster into the lifecycle's views: scheduler and Kueue reasons, Job outcomes,
disruptions, and when Events are worth a read."""

from __future__ import annotations

from accel_operator import constants, observe
from tests.operator.lifecycle.cases import (
    at,
    job,
    pod,
    pod_object,
    ts,
)


def test_a_pod_the_scheduler_cannot_place_carries_its_reason() -> None:
    unplaced = pod_object(
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
    bare = pod_object("bert-a2-0-a", 0, "Pending")
    assert observe.scheduler_events_due_in([observe.pod_view(bare)], at(60)) == 0
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
    fresh = pod_object("bert-a2-0-a", 0, "Pending")
    fresh["metadata"]["creationTimestamp"] = ts(10)
    grace = observe.EVENT_READ_GRACE_SECONDS
    # A pod the scheduler has not looked at yet: no Events read for it on every launch, but
    # one as soon as it has waited the grace.
    assert observe.scheduler_events_due_in([observe.pod_view(fresh)], at(11)) == grace - 1
    assert observe.scheduler_events_due_in([observe.pod_view(fresh)], at(10 + grace)) == 0
    placed = pod(0, "Running", attempt=2)
    assert observe.scheduler_events_due_in([placed], at(60)) is None
    attempt = job(2, created=10)
    assert observe.create_failures_due_in(attempt, [], 2, at(12)) == grace - 2
    assert observe.create_failures_due_in(attempt, [], 2, at(10 + grace)) == 0
    pods = [observe.pod_view(fresh), observe.pod_view(pod_object("bert-a2-1-b", 1, "Pending"))]
    assert observe.create_failures_due_in(attempt, pods, 2, at(60)) is None
    assert observe.create_failures_due_in(job(2, created=10, failed=True), [], 2, at(60)) is None


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
    evicted = pod_object(
        "bert-a2-0-a",
        0,
        "Failed",
        143,
        conditions=[
            {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
        ],
    )
    cleared = pod_object(
        "bert-a2-1-b",
        1,
        "Failed",
        1,
        conditions=[{"type": "DisruptionTarget", "status": "False", "reason": "x"}],
    )
    assert observe.pod_view(evicted).disruption == "EvictionByEvictionAPI"
    assert observe.pod_view(cleared).disruption == ""
    assert observe.pod_view(pod_object("bert-a2-2-c", 2, "Failed", 1)).disruption == ""

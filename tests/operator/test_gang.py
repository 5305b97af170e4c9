"""Gang policies: what each adds to an attempt, which one is in force, and what a gang timeout
costs under it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from accel_operator import api, constants, gang, lifecycle, render
from accel_operator.lifecycle import DeleteAttempt, Observed
from tests.operator.lifecycle.cases import CREATED, at, condition, job, pod, status_after
from tests.specs import MINIMAL_SPEC

REF = render.JobRef(name="bert", namespace="team-a", uid="uid-1")


def _spec(**run_policy: Any) -> api.AccelTrainJobSpec:
    document = copy.deepcopy(MINIMAL_SPEC)
    document["runPolicy"] = {"gangTimeoutSeconds": 60, **run_policy}
    return api.parse_spec(document, name="bert")


def _children(spec: api.AccelTrainJobSpec, native: bool) -> dict[str, dict[str, Any]]:
    defaults = render.ClusterDefaults(trainer_image="img:1", native_gang=native)
    return {child["kind"]: child for child in render.render_attempt(spec, REF, 2, defaults)}


def test_native_gang_renders_a_workload_of_all_workers_that_the_pods_name() -> None:
    rendered = render.render_attempt(
        _spec(), REF, 2, render.ClusterDefaults(trainer_image="img:1", native_gang=True)
    )
    kinds = [child["kind"] for child in rendered]
    assert kinds == ["ConfigMap", "Service", "Workload", "Job"]
    workload = rendered[2]
    assert workload["apiVersion"] == "scheduling.k8s.io/v1alpha1"
    assert workload["metadata"]["name"] == "bert-a2"
    assert workload["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert workload["spec"]["podGroups"] == [
        {"name": "workers", "policy": {"gang": {"minCount": 2}}}
    ]
    template = rendered[3]["spec"]["template"]["spec"]
    assert template["workloadRef"] == {"name": "bert-a2", "podGroup": "workers"}
    assert "schedulerName" not in template


def test_auto_falls_back_to_the_timeout_guard_without_the_workload_api() -> None:
    children = _children(_spec(), native=False)
    assert set(children) == {"ConfigMap", "Service", "Job"}
    assert "workloadRef" not in children["Job"]["spec"]["template"]["spec"]
    in_force = gang.in_force(_spec(), native_available=False)
    assert in_force.policy is api.GangPolicy.TIMEOUT
    assert "does not serve scheduling.k8s.io/v1alpha1 Workloads" in in_force.note


def test_volcano_gets_a_pod_group_its_annotation_and_its_scheduler() -> None:
    children = _children(_spec(gangPolicy="Volcano", queueName="research"), native=True)
    group = children["PodGroup"]
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["spec"] == {"minMember": 2, "queue": "research"}
    template = children["Job"]["spec"]["template"]
    assert template["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "bert-a2"
    assert template["spec"]["schedulerName"] == "volcano"
    assert "workloadRef" not in template["spec"]


def test_coscheduling_gets_a_pod_group_its_label_and_the_named_scheduler() -> None:
    spec = _spec(gangPolicy="Coscheduling", schedulerName="scheduler-plugins-scheduler")
    children = _children(spec, native=True)
    group = children["PodGroup"]
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["spec"] == {"minMember": 2, "scheduleTimeoutSeconds": 60}
    template = children["Job"]["spec"]["template"]
    assert template["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "bert-a2"
    assert template["spec"]["schedulerName"] == "scheduler-plugins-scheduler"


def test_coscheduling_without_a_scheduler_name_is_refused_naming_the_field() -> None:
    with pytest.raises(api.SpecError, match=r"spec\.runPolicy\.schedulerName"):
        _spec(gangPolicy="Coscheduling")


def test_the_created_condition_says_which_policy_is_in_force() -> None:
    native = lifecycle.decide(_spec(), api.AccelTrainJobStatus(), _observed(True), at(1))
    assert native.status.gang_policy is api.GangPolicy.NATIVE
    assert "gang Native: kube-scheduler binds no worker until all 2 fit" in (
        condition(native, constants.CONDITION_CREATED).message
    )
    fallback = lifecycle.decide(_spec(), api.AccelTrainJobStatus(), _observed(False), at(1))
    assert fallback.status.gang_policy is api.GangPolicy.TIMEOUT
    assert "gang Timeout: this cluster does not serve" in (
        condition(fallback, constants.CONDITION_CREATED).message
    )


def _observed(native: bool, *pods: lifecycle.PodView) -> Observed:
    return Observed(created=CREATED, native_gang=native, attempts=(job(),), pods=pods)


def test_an_attempt_with_no_worker_placed_keeps_waiting_after_the_gang_timeout() -> None:
    observed = _observed(True, pod(0, "Pending"), pod(1, "Pending"))
    decision = lifecycle.decide(_spec(), status_after(api.Phase.STARTING), observed, at(300))
    assert decision.actions == ()
    assert decision.status.phase is api.Phase.STARTING
    assert (decision.status.restarts, decision.status.gang_retries) == (0, 0)
    scheduled = condition(decision, constants.CONDITION_SCHEDULED)
    assert scheduled.reason == "WaitingForCapacity"
    assert "no node is held" in scheduled.message


def test_workers_placed_but_never_starting_spend_a_restart_at_the_gang_timeout() -> None:
    stuck = pod(1, "Pending", node_name="gpu-3", waiting_reason="ErrImagePull")
    observed = _observed(True, pod(0), stuck)
    decision = lifecycle.decide(_spec(), status_after(api.Phase.STARTING), observed, at(300))
    assert decision.actions == (DeleteAttempt(1),)
    assert (decision.status.restarts, decision.status.gang_retries) == (1, 0)


def test_the_standard_kueue_labels_on_the_job_queue_it_and_reach_each_attempt() -> None:
    labels = {
        "kueue.x-k8s.io/queue-name": "team-a",
        "kueue.x-k8s.io/priority-class": "high",
        "team": "nlp",
    }
    spec = api.with_kueue_labels(_spec(), labels)
    assert spec.run_policy.queue_name == "team-a"
    ref = render.JobRef(
        name="bert",
        namespace="team-a",
        uid="uid-1",
        kueue_labels=tuple(sorted((k, v) for k, v in labels.items() if k.startswith("kueue"))),
    )
    job_object = render.render_job(spec, ref, 1, render.ClusterDefaults(trainer_image="img:1"))
    assert job_object["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job_object["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    assert "team" not in job_object["metadata"]["labels"]
    assert job_object["spec"]["suspend"] is True  # Kueue admits it


def test_a_queue_label_naming_another_queue_than_the_spec_is_refused() -> None:
    with pytest.raises(api.SpecError, match=r"spec\.runPolicy\.queueName \(a\) and the label"):
        api.with_kueue_labels(_spec(queueName="a"), {"kueue.x-k8s.io/queue-name": "b"})

"""The operator against the real control plane, with pods on kwok's fake GPU nodes.

Nothing trains here: kwok moves bound pods to Running and Job pods on to Succeeded, which is
enough to check children, scheduling, the gang guard, deadlines, TTL, queueing, bad specs and
crash safety quickly. Real training is in test_operator_training.py.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from accel_contract import package_version
from accel_operator import api, constants
from localcluster import kwok
from tests.operator_harness import (
    REPO_ROOT,
    Api,
    ApiError,
    OperatorProcess,
    condition,
    fail_worker,
    gpu_spec,
    running_operator,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _phase(kube: Api, namespace: str, name: str) -> str:
    return str(kube.status(namespace, name).get("phase", ""))


class PhaseWatch:
    """Every phase the job's status goes through, from a `kubectl get -w` stream started before
    the job exists (so that no early phase is missed)."""

    def __init__(self, cluster: Any, namespace: str, name: str) -> None:
        self.name = name
        self.phases: list[str] = []
        self._process = subprocess.Popen(
            [
                str(REPO_ROOT / ".tools" / "bin" / "kubectl"),
                "--kubeconfig",
                str(cluster.kubeconfig),
                "get",
                "atj",
                "-n",
                namespace,
                "--watch",
                "-o",
                "jsonpath={.metadata.name} {.status.phase}{'\\n'}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            name, _, phase = line.strip().partition(" ")
            if name == self.name and phase and (not self.phases or self.phases[-1] != phase):
                self.phases.append(phase)

    def stop(self) -> list[str]:
        self._process.terminate()
        self._process.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.phases


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(
        ref.get("uid") == uid and ref.get("controller") and ref.get("kind") == api.KIND
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def test_a_job_gets_owned_children_runs_on_gpu_nodes_and_deletion_removes_them(
    crd: Any, kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    name = "gpu-smoke"
    watch = PhaseWatch(crd, namespace, name)
    time.sleep(1)  # the watch is established
    job = kube.create_job(namespace, name, gpu_spec(workers=2, devices=4))
    uid = job["metadata"]["uid"]
    try:
        wait_for(
            "phase Succeeded", lambda: _phase(kube, namespace, name) == "Succeeded", timeout=60
        )
    finally:
        phases = watch.stop()
    assert "Running" in phases, f"phases seen: {phases}"
    assert phases[-1] == "Succeeded"

    children = kube.children(namespace, name)
    [batch_job] = children["jobs"]
    assert batch_job["metadata"]["name"] == f"{name}-a1"
    assert batch_job["spec"]["completionMode"] == "Indexed"
    assert batch_job["spec"]["completions"] == batch_job["spec"]["parallelism"] == 2
    assert [cm["metadata"]["name"] for cm in children["configmaps"]] == [f"{name}-a1-config"]
    assert [svc["metadata"]["name"] for svc in children["services"]] == [name]
    for obj in (batch_job, *children["configmaps"], *children["services"]):
        assert _owned_by(obj, uid), f"{obj['metadata']['name']} is not owned by the job"
    pods = children["pods"]
    assert len(pods) == 2
    assert all(pod["spec"]["nodeName"].startswith("acceltrain-gpu-") for pod in pods)

    status = kube.status(namespace, name)
    assert status["attempt"] == 1
    assert status["restarts"] == 0
    assert condition(status, constants.CONDITION_SUCCEEDED)["status"] == "True"
    assert {"AttemptCreated", "AllWorkersRunning", "Completed"} <= set(
        kube.event_reasons(namespace, name)
    )

    table = crd.kubectl("get", "atj", "-n", namespace).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "PHASE",
        "WORKERS",
        "STEP",
        "SAMPLES/S",
        "TOKENS/S",
        "RESTARTS",
        "AGE",
    ]
    assert table[1].split()[:2] == [name, "Succeeded"]

    metrics = operator.metrics()
    assert 'acceltrain_operator_jobs{phase="Succeeded"} 1.0' in metrics
    assert "acceltrain_operator_launch_seconds_count 1.0" in metrics
    server = json.loads(crd.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert f'build_info{{kubernetes_version="{server}",version="{package_version()}"}} 1.0' in (
        metrics
    )
    assert f"acceltrain-operator {package_version()} (Python " in operator.log_path.read_text()

    kube.delete_job(namespace, name)
    wait_for(
        "the job and every child to be gone",
        lambda: (
            kube.job(namespace, name) is None and not any(kube.children(namespace, name).values())
        ),
        timeout=60,
    )


def test_an_attempt_no_node_can_take_waits_holding_nothing_and_spending_no_restart(
    kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    name = "too-big"
    # Every GPU node has 8 GPUs: no node can take a 16-GPU worker.
    kube.create_job(
        namespace,
        name,
        gpu_spec(workers=2, devices=16, gangTimeoutSeconds=3, backoffSeconds=2, maxRestarts=5),
    )

    def waiting() -> dict[str, Any] | None:
        status = kube.status(namespace, name)
        found = condition(status, constants.CONDITION_SCHEDULED)
        return status if found.get("reason") == "WaitingForCapacity" else None

    status = wait_for("the capacity wait after the gang timeout", waiting, timeout=60)
    scheduled = condition(status, constants.CONDITION_SCHEDULED)
    assert "wait for room together; no node is held" in scheduled["message"]
    assert "Insufficient nvidia.com/gpu" in scheduled["message"]
    time.sleep(5)
    status = kube.status(namespace, name)
    assert (status["attempt"], status["restarts"], status.get("gangRetries", 0)) == (1, 0, 0)
    assert status["phase"] == "Starting"


def test_the_timeout_guard_tears_down_a_partly_placed_attempt_without_spending_a_restart(
    kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    name = "partial"
    # Five 8-GPU workers on four 8-GPU nodes: four bind and hold their GPUs, one never fits.
    spec = gpu_spec(workers=5, devices=8, gangTimeoutSeconds=3, backoffSeconds=2, maxRestarts=1)
    spec["runPolicy"]["gangPolicy"] = "Timeout"
    # The bound workers keep running (and holding their GPUs) on the kwok nodes.
    spec["env"] = [{"name": kwok.RUN_DURATION_ENV, "value": "600s"}]
    kube.create_job(namespace, name, spec)
    status = wait_for(
        "a capacity retry",
        lambda: (s := kube.status(namespace, name)).get("gangRetries", 0) >= 1 and s,
        timeout=60,
    )
    assert status["restarts"] == 0
    assert status["gangPolicy"] == "Timeout"
    scheduled = condition(status, constants.CONDITION_SCHEDULED)
    assert (scheduled["status"], scheduled["reason"]) == ("False", "GangTimeout")
    assert "Insufficient nvidia.com/gpu" in scheduled["message"]

    def attempt_one_gone() -> bool:
        children = kube.children(namespace, name)
        return not [
            obj
            for obj in (*children["pods"], *children["jobs"])
            if obj["metadata"]["labels"].get(constants.LABEL_ATTEMPT) == "1"
        ]

    wait_for("no pod or Job of attempt 1", attempt_one_gone, timeout=30)
    wait_for(
        "attempt 2 after the backoff",
        lambda: any(
            job["metadata"]["name"] == f"{name}-a2"
            for job in kube.children(namespace, name)["jobs"]
        ),
        timeout=30,
    )
    events = kube.events(namespace, name)
    assert any(e["reason"] == "GangTimeout" and e["type"] == "Warning" for e in events)
    # maxRestarts is 1, yet the job keeps retrying: capacity retries spend no restart.
    wait_for(
        "a second capacity retry",
        lambda: kube.status(namespace, name).get("gangRetries", 0) >= 2,
        timeout=60,
    )
    assert kube.status(namespace, name)["phase"] != "Failed"


def test_the_active_deadline_fails_the_job_and_removes_its_pods(
    kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    name = "deadline"
    kube.create_job(
        namespace, name, gpu_spec(devices=16, activeDeadlineSeconds=3, gangTimeoutSeconds=300)
    )
    wait_for("phase Failed", lambda: _phase(kube, namespace, name) == "Failed", timeout=60)
    failed = condition(kube.status(namespace, name), constants.CONDITION_FAILED)
    assert failed["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds (3 s)" in failed["message"]
    wait_for(
        "the attempt's Job and pods to be gone",
        lambda: not (c := kube.children(namespace, name))["jobs"] and not c["pods"],
        timeout=30,
    )


def test_a_finished_job_is_deleted_with_its_children_after_its_ttl(
    kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    name = "short-lived"
    kube.create_job(namespace, name, gpu_spec(ttlSecondsAfterFinished=2))
    wait_for(
        "phase Succeeded",
        lambda: (kube.job(namespace, name) or {}).get("status", {}).get("phase") == "Succeeded",
        timeout=60,
    )
    finished = time.monotonic()
    wait_for(
        "the job and its children to be deleted",
        lambda: (
            kube.job(namespace, name) is None and not any(kube.children(namespace, name).values())
        ),
        timeout=60,
    )
    assert time.monotonic() - finished >= 1.0


def test_a_queued_job_waits_suspended_for_admission_without_a_gang_timeout(
    kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    name = "queued"
    kube.create_job(namespace, name, gpu_spec(queueName="team-queue", gangTimeoutSeconds=2))
    job_path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}-a1"
    batch_job = wait_for(
        "the suspended Job",
        lambda: next(iter(kube.children(namespace, name)["jobs"]), None),
        timeout=30,
    )
    assert batch_job["spec"]["suspend"] is True
    assert batch_job["metadata"]["labels"][constants.LABEL_KUEUE_QUEUE] == "team-queue"
    wait_for("phase Pending", lambda: _phase(kube, namespace, name) == "Pending", timeout=30)
    time.sleep(4)  # twice the gang timeout: it must not run while the Job is suspended
    status = kube.status(namespace, name)
    assert status["phase"] == "Pending"
    assert status["restarts"] == 0
    assert condition(status, constants.CONDITION_SCHEDULED)["reason"] == "WaitingForAdmission"

    # What Kueue does when it admits the workload.
    kube.client.request(
        "PATCH",
        job_path,
        verb="patch",
        resource="jobs",
        body={"spec": {"suspend": False}},
        content_type="application/merge-patch+json",
    )
    wait_for("phase Succeeded", lambda: _phase(kube, namespace, name) == "Succeeded", timeout=60)


def test_a_spec_whose_job_the_api_server_refuses_fails_at_once_with_nothing_created(
    kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    name = "bad-key"
    # The CRD has no grammar for Secret keys; the Job's pod template validation does.
    key_ref = {"name": "hub", "key": "token file"}
    spec = {**gpu_spec(), "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": key_ref}}]}
    created = time.monotonic()
    kube.create_job(namespace, name, spec)
    wait_for("phase Failed", lambda: _phase(kube, namespace, name) == "Failed", timeout=30)
    assert time.monotonic() - created < 5
    failed = condition(kube.status(namespace, name), constants.CONDITION_FAILED)
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.env: the API server refuses the Job")
    assert "token file" in failed["message"]
    assert kube.event_reasons(namespace, name).count("InvalidSpec") == 1
    # The dry run came first: not even the ConfigMap or Service of the attempt exists.
    assert not any(kube.children(namespace, name).values())
    time.sleep(3)  # no retry loop: the operator does not come back to it
    log = operator.log_path.read_text()
    assert "Traceback" not in log
    assert log.count("bad-key") <= 3, log


def test_pods_that_pod_security_refuses_fail_the_job_at_once_naming_the_reason(
    kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    kube._request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}",
        body={"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
        content_type="application/merge-patch+json",
    )
    name = "host-path"
    spec = gpu_spec()
    spec["volumes"] = [{"name": "data", "mountPath": "/data", "hostPath": {"path": "/srv"}}]
    kube.create_job(namespace, name, spec)
    wait_for("phase Failed", lambda: _phase(kube, namespace, name) == "Failed", timeout=30)
    failed = condition(kube.status(namespace, name), constants.CONDITION_FAILED)
    assert failed["reason"] == "FailedCreate"
    assert "violates PodSecurity" in failed["message"]
    assert "hostPath" in failed["message"]
    assert "FailedCreate" in kube.event_reasons(namespace, name)
    assert "GangTimeout" not in kube.event_reasons(namespace, name)
    wait_for("the attempt to be torn down", lambda: not kube.children(namespace, name)["jobs"], 30)


def test_pods_over_quota_wait_and_the_job_says_why(
    kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    kube._request(
        "POST",
        f"/api/v1/namespaces/{namespace}/resourcequotas",
        body={
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "gpus"},
            "spec": {"hard": {"requests.nvidia.com/gpu": "2"}},
        },
    )
    name = "over-quota"
    kube.create_job(namespace, name, gpu_spec(workers=2, devices=2))

    def says_why() -> dict[str, Any] | None:
        found = condition(kube.status(namespace, name), constants.CONDITION_SCHEDULED)
        return found if found.get("reason") == "FailedCreate" else None

    scheduled = wait_for("the FailedCreate condition", says_why, timeout=30)
    assert "exceeded quota" in scheduled["message"]
    assert _phase(kube, namespace, name) == "Starting"
    assert "exceeded quota" in kube.status(namespace, name)["message"]


def test_killing_the_operator_at_random_moments_of_five_launches_leaves_exactly_their_children(
    crd: Any, kube: Api, namespace: str, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    print(f"random seed {seed}")
    chance = random.Random(seed)
    names = [f"launch-{index}" for index in range(5)]
    workers = {name: chance.randint(1, 4) for name in names}
    operator = OperatorProcess(crd, namespace, tmp_path)
    operator.start()
    try:
        pending = list(names)
        for _ in range(10):
            if pending:
                name = pending.pop(0)
                kube.create_job(namespace, name, gpu_spec(workers=workers[name], devices=1))
            time.sleep(chance.uniform(0.0, 1.2))
            operator.kill()
            operator.start()
        for name in names:
            wait_for(
                f"{name} to succeed",
                lambda name=name: _phase(kube, namespace, name) == "Succeeded",
                timeout=90,
            )
    except BaseException:
        print(operator.log_tail(200))
        raise
    finally:
        operator.stop()

    for name in names:
        status = kube.status(namespace, name)
        assert (status["attempt"], status["restarts"]) == (1, 0), name
        children = kube.children(namespace, name)
        assert [job["metadata"]["name"] for job in children["jobs"]] == [f"{name}-a1"]
        assert [cm["metadata"]["name"] for cm in children["configmaps"]] == [f"{name}-a1-config"]
        # A single worker's ranks meet on loopback: only jobs of several workers get a Service.
        services = [name] if workers[name] > 1 else []
        assert [svc["metadata"]["name"] for svc in children["services"]] == services, name
        assert len(children["pods"]) == workers[name], name
        uid = kube.job(namespace, name)["metadata"]["uid"]  # type: ignore[index]
        assert all(
            _owned_by(obj, uid)
            for obj in (*children["jobs"], *children["configmaps"], *children["services"])
        )
    # Nothing of ours without an owner: every Job and ConfigMap belongs to one of the five.
    all_jobs = kube.items(f"/apis/batch/v1/namespaces/{namespace}/jobs")
    all_maps = [
        cm
        for cm in kube.items(f"/api/v1/namespaces/{namespace}/configmaps")
        if cm["metadata"]["name"] != "kube-root-ca.crt"
    ]
    assert len(all_jobs) == len(all_maps) == 5


class BindingSampler:
    """Samples, every 50 ms, how many worker pods of each job hold a node (bound, not
    finished)."""

    def __init__(self, kube: Api, namespace: str, jobs: list[str]) -> None:
        self.kube, self.namespace, self.jobs = kube, namespace, jobs
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pods = self.kube.items(f"/api/v1/namespaces/{self.namespace}/pods")
            bound: dict[str, int] = dict.fromkeys(self.jobs, 0)
            for item in pods:
                owner = item["metadata"].get("labels", {}).get(constants.LABEL_JOB_NAME)
                finished = (item.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                # A finished pod keeps its nodeName but no longer holds the node's GPUs.
                if owner in bound and item["spec"].get("nodeName") and not finished:
                    bound[owner] += 1
            self.samples.append((time.monotonic(), bound))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def partial_seconds(self, job: str, workers: int) -> float:
        """How long ``job`` held some but not all of its workers' nodes before it first held
        them all (its workers finishing one by one afterwards is not a partial placement)."""
        first_partial = None
        for when, bound in self.samples:
            if bound[job] >= workers:
                return 0.0 if first_partial is None else when - first_partial
            if bound[job] > 0 and first_partial is None:
                first_partial = when
        return 0.0 if first_partial is None else self.samples[-1][0] - first_partial


def test_native_gang_places_two_jobs_that_cannot_both_fit_whole_and_in_turn(
    kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    # Each job needs 5 x 4 of the 4 x 8 kwok GPUs (62 %): the two cannot run side by side.
    jobs = ["gang-a", "gang-b"]
    sampler = BindingSampler(kube, namespace, jobs)
    try:
        for name in jobs:
            spec = gpu_spec(workers=5, devices=4)
            # Each job's workers hold their GPUs for 10 s on the kwok nodes: without a gang,
            # the second job would hold part of its GPUs for all that time.
            spec["env"] = [{"name": kwok.RUN_DURATION_ENV, "value": "10s"}]
            kube.create_job(namespace, name, spec)
            # The second job comes once the first holds its GPUs. Two gangs whose pods reach
            # the scheduler interleaved can each reserve part of the GPUs at the gang's Permit
            # stage and wait for each other until kube-scheduler's 5-minute gang timeout
            # (Kubernetes 1.35 alpha; see docs/benchmarks.md): real, but not what this tests.
            wait_for(
                f"{name} to hold its GPUs",
                lambda n=name: any(bound[n] == 5 for _, bound in sampler.samples),  # type: ignore[misc]
                timeout=60,
            )
        for name in jobs:
            wait_for(
                f"{name} Succeeded",
                lambda n=name: _phase(kube, namespace, n) == "Succeeded",  # type: ignore[misc]
                timeout=120,
            )
    finally:
        sampler.stop()
    for name in jobs:
        status = kube.status(namespace, name)
        assert status["gangPolicy"] == "Native"
        assert (status["restarts"], status.get("gangRetries", 0)) == (0, 0)
        created = condition(status, constants.CONDITION_CREATED)
        assert "gang Native: kube-scheduler binds no worker until all 5 fit" in created["message"]
        # Binding is all at once: no sample shows a part of a gang holding GPUs for longer
        # than the scheduler takes to bind five pods (well under a second when idle; the
        # bound is for a loaded two-core machine, and half the other job's run time).
        assert sampler.partial_seconds(name, 5) < 5.0, sampler.samples
    # In turn: while one job held all its workers' GPUs, the other waited holding none (the
    # 12 GPUs left could have taken 3 of its workers).
    assert any(sorted(bound[n] for n in jobs) == [0, 5] for _, bound in sampler.samples), (
        sampler.samples
    )


def test_an_evicted_worker_restarts_the_group_without_spending_a_restart(
    kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    # maxRestarts 0: a crash would fail the job; an eviction must not.
    spec = gpu_spec(workers=2, devices=2, backoffSeconds=1, maxRestarts=0)
    spec["env"] = [{"name": kwok.RUN_DURATION_ENV, "value": "4s"}]
    kube.create_job(namespace, "evicted", spec)
    wait_for("the job to run", lambda: _phase(kube, namespace, "evicted") == "Running", 60, 0.2)
    worker = kube.children(namespace, "evicted")["pods"][0]
    # What the kubelet and the API server report for a pod drained off its node.
    fail_worker(kube, namespace, worker, exit_code=143, disruption="EvictionByEvictionAPI")
    wait_for("Succeeded", lambda: _phase(kube, namespace, "evicted") == "Succeeded", 90, 0.5)
    status = kube.status(namespace, "evicted")
    assert (status["attempt"], status["restarts"]) == (2, 0)
    evictions = [e for e in kube.events(namespace, "evicted") if e["reason"] == "Evicted"]
    assert evictions and evictions[0]["type"] == "Warning"
    assert f"worker {worker['metadata']['name']}" in evictions[0]["message"]
    assert "spends no runPolicy.maxRestarts" in evictions[0]["message"]
    assert 'acceltrain_operator_restarts_total{reason="Evicted"} 1.0' in operator.metrics()


def test_an_attempt_job_deleted_behind_the_operators_back_starts_the_next_attempt(
    crd: Any, namespace: str, kube: Api, operator: OperatorProcess
) -> None:
    """The operator reads its children from its watch cache: a Job deleted while the cache is
    warm must leave it (no phantom attempt), and the lost attempt restarts the group."""
    name = "lost-job"
    spec = gpu_spec(workers=2, devices=1, backoffSeconds=1)
    spec["env"] = [{"name": kwok.RUN_DURATION_ENV, "value": "6s"}]
    kube.create_job(namespace, name, spec)
    wait_for("the job to run", lambda: _phase(kube, namespace, name) == "Running", 60, 0.2)
    crd.kubectl("delete", "job", f"{name}-a1", "-n", namespace, "--wait=false")

    wait_for("Succeeded", lambda: _phase(kube, namespace, name) == "Succeeded", 90, 0.5)
    status = kube.status(namespace, name)
    assert status["attempt"] == 2
    lost = [e for e in kube.events(namespace, name) if e["reason"] == "AttemptDeleted"]
    assert lost and "the Job of attempt 1 was deleted while the attempt ran" in lost[0]["message"]
    assert 'acceltrain_operator_restarts_total{reason="AttemptDeleted"} 1.0' in operator.metrics()


def test_a_deleted_or_changed_service_config_map_and_gang_workload_come_back_while_it_runs(
    crd: Any, kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    name = "restored"
    spec = gpu_spec(workers=2, devices=1)
    spec["env"] = [{"name": kwok.RUN_DURATION_ENV, "value": "15s"}]
    kube.create_job(namespace, name, spec)
    wait_for("the job to run", lambda: _phase(kube, namespace, name) == "Running", 60, 0.2)

    def uids() -> dict[str, str | None]:
        now = {**kube.children(namespace, name), "workloads": kube.workloads(namespace, name)}
        return {
            kind: now[kind][0]["metadata"]["uid"] if now[kind] else None
            for kind in ("services", "configmaps", "workloads")
        }

    before = uids()
    assert all(before.values()), before
    deleted = time.monotonic()
    crd.kubectl(
        "delete", f"service/{name}", f"configmap/{name}-a1-config",
        f"workloads.scheduling.k8s.io/{name}-a1", "-n", namespace,
    )  # fmt: skip

    def all_recreated() -> bool:
        return all(uid not in (None, before[kind]) for kind, uid in uids().items())

    wait_for("the Service, ConfigMap and Workload recreated", all_recreated, 10, interval=0.1)
    print(f"recreated {time.monotonic() - deleted:.2f} s after the deletion")

    # Changed out of band: the trainer's config and the Service's selector are put back.
    rendered = kube.children(namespace, name)
    config_map, service = rendered["configmaps"][0], rendered["services"][0]
    key, label = next(iter(config_map["data"])), next(iter(service["spec"]["selector"]))
    changed = time.monotonic()
    crd.kubectl(
        "patch", f"configmap/{name}-a1-config", "-n", namespace, "--type=merge",
        "-p", json.dumps({"data": {key: "{}"}}),
    )  # fmt: skip
    crd.kubectl(
        "patch", f"service/{name}", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"selector": {label: "someone-else"}}}),
    )  # fmt: skip

    def both_reverted() -> bool:
        now = kube.children(namespace, name)
        return (
            now["configmaps"][0]["data"] == config_map["data"]
            and now["services"][0]["spec"]["selector"] == service["spec"]["selector"]
        )

    wait_for("the ConfigMap and Service reverted", both_reverted, timeout=10, interval=0.1)
    print(f"reverted {time.monotonic() - changed:.2f} s after the change")
    wait_for("Succeeded", lambda: _phase(kube, namespace, name) == "Succeeded", 90, 0.5)
    status = kube.status(namespace, name)
    assert (status["attempt"], status["restarts"]) == (1, 0)
    # One warning, or one per child when the two deletions reached separate reconciles.
    restored = [e for e in kube.events(namespace, name) if e["reason"] == "ChildrenRestored"]
    assert restored and {e["type"] for e in restored} == {"Warning"}
    said = " / ".join(e["message"] for e in restored)
    assert all(kind in said for kind in ("ConfigMap", "Service", "Workload")), said
    assert "of attempt 1" in said, said
    assert "deleted while the attempt ran" in said
    assert "changed out of band" in said


# scheduler-plugins' PodGroup API as a bare CRD: the operator only needs it to be served (no
# scheduler runs the Coscheduling plugin here, so the attempt's pods stay Pending).
POD_GROUP_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podgroups.scheduling.x-k8s.io"},
    "spec": {
        "group": "scheduling.x-k8s.io",
        "names": {"kind": "PodGroup", "plural": "podgroups", "singular": "podgroup"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def _lists(kube: Api, path: str) -> bool:
    try:
        kube.items(path)
    except ApiError as error:
        assert error.status == 429, error
        return False
    return True


def test_a_deleted_pod_group_comes_back_where_its_api_is_served(
    crd: Any, kube: Api, namespace: str, tmp_path: Path
) -> None:
    """The operator started after the PodGroup API appeared watches PodGroups and restores the
    live attempt's one, as it does the native Workload."""
    name = "grouped"
    groups = f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{namespace}/podgroups"
    crd.kubectl("apply", "-f", "-", input=json.dumps(POD_GROUP_CRD))
    try:
        crd.wait_crd_established(POD_GROUP_CRD["metadata"]["name"])
        # A new CRD's storage answers 429 for a moment; the operator's watch would start late.
        wait_for("PodGroups listed", lambda: _lists(kube, groups), timeout=30, interval=0.2)
        with running_operator(crd, namespace, tmp_path):
            spec = gpu_spec(workers=2, devices=1)
            spec["runPolicy"] = {
                "gangPolicy": "Coscheduling",
                "schedulerName": "scheduler-plugins-scheduler",
            }
            kube.create_job(namespace, name, spec)
            first = wait_for("the PodGroup", lambda: kube.items(groups), timeout=30)
            before = first[0]["metadata"]["uid"]
            # The API server may refuse watches of a CRD this new for a moment (429 while its
            # watch cache starts), and kopf retries after a backoff: the deletion must come
            # after the operator's watch runs, as it would for a CRD installed long before.
            time.sleep(3)
            deleted = time.monotonic()
            crd.kubectl("delete", f"podgroups.scheduling.x-k8s.io/{name}-a1", "-n", namespace)

            def recreated() -> bool:
                return [g["metadata"]["uid"] for g in kube.items(groups)] not in ([], [before])

            wait_for("the PodGroup recreated", recreated, timeout=10, interval=0.1)
            print(f"recreated {time.monotonic() - deleted:.2f} s after the deletion")
            status = kube.status(namespace, name)
            assert (status["attempt"], status["restarts"]) == (1, 0), status
            said = [e["message"] for e in kube.events(namespace, name)
                    if e["reason"] == "ChildrenRestored"]  # fmt: skip
            assert any("the PodGroup of attempt 1 was deleted" in m for m in said), said
            kube.delete_job(namespace, name)
    finally:
        crd.kubectl("delete", "crd", POD_GROUP_CRD["metadata"]["name"], "--timeout=60s")


def test_every_failed_worker_is_named_in_the_status_with_its_node_code_and_last_line(
    kube: Api, namespace: str, operator: OperatorProcess
) -> None:
    name = "three-failed"
    spec = gpu_spec(workers=3, devices=1, maxRestarts=0)
    spec["env"] = [{"name": kwok.RUN_DURATION_ENV, "value": "60s"}]
    kube.create_job(namespace, name, spec)
    wait_for("the job to run", lambda: _phase(kube, namespace, name) == "Running", 60, 0.2)
    pods = sorted(kube.children(namespace, name)["pods"], key=lambda p: p["metadata"]["name"])
    # A rank runs out of memory; its peers lose it (75) a moment later, as a real group does.
    failures = [(pods[1], 137, "OOMKilled", "step 12\nrank 1: killed: out of memory")]
    failures += [(pods[i], 75, "Error", f"rank {i}: lost a peer, exit 75") for i in (0, 2)]
    for pod, code, reason, last_lines in failures:
        fail_worker(kube, namespace, pod, exit_code=code, reason=reason, message=last_lines)
    wait_for("Failed", lambda: _phase(kube, namespace, name) == "Failed", 60, 0.2)
    status = kube.status(namespace, name)
    listed = {w["pod"]: w for w in status["failedWorkers"]}
    assert len(listed) == 3, status["failedWorkers"]
    assert status["failedWorkers"][0]["pod"] == pods[1]["metadata"]["name"]
    for pod, code, reason, last_lines in failures:
        worker = listed[pod["metadata"]["name"]]
        assert (worker["exitCode"], worker["reason"]) == (code, reason)
        assert worker["node"] == pod["spec"]["nodeName"]
        assert worker["lastLine"] == last_lines.splitlines()[-1]
    assert f"worker {pods[1]['metadata']['name']} failed with exit code 137" in status["message"]
    assert "also failed: " in status["message"] and "(status.failedWorkers)" in status["message"]

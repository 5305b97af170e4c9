"""Two behaviours that need a cluster of their own, which they share to start one cluster, not two.

- Without the Workload API (before Kubernetes 1.35, or its gates off), the operator detects it at
  start-up, falls back to the Timeout gang policy, and says so on every job.
- A node that stops answering: its workers are evicted after runPolicy.nodeLossSeconds and the
  group restarts on the nodes left, from its checkpoint, spending no restart. The shared cluster
  runs with a node-monitor grace of a day (a busy machine must not lose its process node), this
  one with 20 s. The lost node has a kwok process of its own, killed as a machine that loses
  power: nothing renews its Lease or ends its pods, so the operator also has to delete the pod
  left on it without waiting for a kubelet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from accel_operator import constants
from localcluster import Cluster, kwok
from tests.operator_harness import Api, condition, gpu_spec, install_crd, running_operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NODE_MONITOR_GRACE = "20s"
NODE_LOSS_SECONDS = 5
MORTAL = "mortal-0"
# Node-monitor grace (20 s) and its 5 s check period, nodeLossSeconds (5 s), the taint manager,
# the teardown, a 1 s backoff and the new pods' start, with room for a busy machine.
RECOVERY_LIMIT = 75


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path_factory.mktemp("own-cluster"),
        gpu_nodes=2,
        process_node=False,
        prometheus=False,
        native_gang=False,
        node_monitor_grace=NODE_MONITOR_GRACE,
    )
    cluster.start()
    try:
        install_crd(cluster)
        cluster.add_mortal_gpu_node(MORTAL, gpus=8)
        yield cluster
    finally:
        cluster.stop()


def test_without_the_workload_api_auto_means_timeout_and_the_job_says_so(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    kube = Api(own_cluster.kubeconfig)
    namespace = "fallback"
    own_cluster.kubectl("create", "namespace", namespace)
    with running_operator(own_cluster, namespace, tmp_path) as operator:
        kube.create_job(namespace, "auto", gpu_spec(workers=1, devices=1))
        wait_for(
            "the job to Succeed",
            lambda: kube.status(namespace, "auto").get("phase") == "Succeeded",
            timeout=120,
        )
        status = kube.status(namespace, "auto")
        assert status["gangPolicy"] == "Timeout"
        created = condition(status, constants.CONDITION_CREATED)
        assert (
            "gang Timeout: this cluster does not serve scheduling.k8s.io/v1alpha1"
            in (created["message"])
        )
        job = kube.children(namespace, "auto")["jobs"][0]
        assert "workloadRef" not in job["spec"]["template"]["spec"]
        assert "no Workload API on this cluster" in operator.log_path.read_text()


def _attempt_running(kube: Api, namespace: str, name: str, attempt: int) -> bool:
    status = kube.status(namespace, name)
    return (
        status.get("attempt") == attempt
        and status.get("phase") == "Running"
        and status.get("workers", {}).get("ready") == 3
    )


def test_a_lost_node_restarts_the_group_on_the_nodes_left_without_spending_a_restart(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    kube = Api(own_cluster.kubeconfig)
    namespace, name = "node-loss", "three-nodes"
    own_cluster.kubectl("create", "namespace", namespace)
    spec = gpu_spec(workers=3, devices=8, backoffSeconds=1, maxRestarts=0)
    spec["runPolicy"]["nodeLossSeconds"] = NODE_LOSS_SECONDS
    spec["env"] = [{"name": kwok.RUN_DURATION_ENV, "value": "600s"}]
    with running_operator(own_cluster, namespace, tmp_path) as operator:
        kube.create_job(namespace, name, spec)
        # Three 8-GPU workers fill the three nodes, the mortal one among them.
        wait_for("attempt 1 running", lambda: _attempt_running(kube, namespace, name, 1), 90)
        pods = kube.children(namespace, name)["pods"]
        assert MORTAL in {pod["spec"]["nodeName"] for pod in pods}
        # Room for the restarted group once the mortal node is gone.
        own_cluster.add_gpu_nodes(["spare-0"], gpus=8)

        lost = time.monotonic()
        own_cluster.lose_node(MORTAL)
        wait_for(
            "attempt 2 running on the nodes left",
            lambda: _attempt_running(kube, namespace, name, 2),
            timeout=RECOVERY_LIMIT,
            interval=0.5,
        )
        recovered = time.monotonic() - lost
        print(f"node lost -> attempt 2 running: {recovered:.1f} s")

        status = kube.status(namespace, name)
        assert (status["attempt"], status["restarts"]) == (2, 0), status
        nodes = {pod["spec"]["nodeName"] for pod in kube.children(namespace, name)["pods"]}
        assert MORTAL not in nodes and "spare-0" in nodes, nodes
        events = kube.events(namespace, name)
        evicted = [e["message"] for e in events if e["reason"] == "Evicted"]
        assert evicted and f"on {MORTAL} was evicted (DeletionByTaintManager" in evicted[0]
        assert "runPolicy.nodeLossSeconds" in evicted[0]
        forced = [e["message"] for e in events if e["reason"] == "WorkerForceDeleted"]
        assert forced and "its node is unreachable or not ready" in forced[0], forced
        assert 'acceltrain_operator_restarts_total{reason="Evicted"} 1.0' in operator.metrics()
        restarting = [
            c for c in status["conditions"] if c["type"] == constants.CONDITION_RESTARTING
        ]
        assert restarting and restarting[0]["status"] == "False"

"""A cluster without the Workload API (before Kubernetes 1.35, or its gates off): the operator
detects it at start-up, falls back to the Timeout gang policy, and says so on every job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from accel_operator import constants
from localcluster import Cluster

from .operator_harness import Api, condition, gpu_spec, install_crd, running_operator, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def old_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path_factory.mktemp("old-cluster"),
        gpu_nodes=1,
        process_node=False,
        prometheus=False,
        native_gang=False,
    )
    cluster.start()
    try:
        install_crd(cluster)
        yield cluster
    finally:
        cluster.stop()


def test_without_the_workload_api_auto_means_timeout_and_the_job_says_so(
    old_cluster: Cluster, tmp_path: Path
) -> None:
    kube = Api(old_cluster.kubeconfig)
    namespace = "fallback"
    old_cluster.kubectl("create", "namespace", namespace)
    with running_operator(old_cluster, namespace, tmp_path) as operator:
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

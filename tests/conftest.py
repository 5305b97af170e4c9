"""Fixtures shared by the whole suite. Tests live by the package they test (``operator/``,
``trainer/``, ``chart/``, ``localcluster/``, ``benchmarks/``, ``images/``, ``repo/``); markers, not
folders, say what a test needs.

* ``cluster``: one local cluster (hack/localcluster) for the whole session (etcd, API server,
  controller-manager, scheduler, kwok GPU nodes, the process node, Prometheus), started in a
  temporary directory and stopped at the end. ``ACCELTRAIN_CLUSTER_KUBECONFIG=.cluster/kubeconfig``
  reuses a cluster that is already running (``make cluster-up``) instead, and leaves it running:
  fast iteration on one test.
* ``namespace``: a fresh namespace per test (ready for pods: its default ServiceAccount and
  root CA ConfigMap exist), deleted afterwards.
* ``kube_api``: a ``kubernetes.client.ApiClient`` for the cluster.
* ``minimal_spec``: a copy of the smallest valid AccelTrainJob spec.

Every test that uses the session's cluster is marked ``cluster``. When such a test fails, its
report gets the last lines of every component log, the pods and events of its namespace and the
logs of its pods on the process node.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "hack"))

from localcluster import Cluster, ClusterError  # noqa: E402
from tests.specs import MINIMAL_SPEC  # noqa: E402

if TYPE_CHECKING:
    from tests.operator_harness import Api, OperatorProcess

REUSE_ENV = "ACCELTRAIN_CLUSTER_KUBECONFIG"
LOG_TAIL_LINES = 40


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture
def minimal_spec() -> dict[str, Any]:
    return copy.deepcopy(MINIMAL_SPEC)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reuse = os.environ.get(REUSE_ENV)
    if reuse:
        kubeconfig = Path(reuse).resolve()
        if not kubeconfig.exists():
            raise ClusterError(
                f"{REUSE_ENV}={reuse} does not exist: start a cluster with `make cluster-up` "
                "or unset the variable to let the tests start their own"
            )
        running = Cluster.attach(kubeconfig.parent)
        running.wait_ready(timeout=30)
        yield running
        return
    started = Cluster(tmp_path_factory.mktemp("cluster"), gpu_nodes=4, gpus_per_node=8)
    started.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def deepspeed_ops() -> None:
    """DeepSpeed's CPU op built once, before the first trainer pod starts (modules that train
    ask for it with ``pytest.mark.usefixtures("deepspeed_ops")``)."""
    from tests.operator_harness import build_deepspeed_ops

    build_deepspeed_ops()


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> Cluster:
    """The cluster with the AccelTrainJob CRD installed."""
    from tests.operator_harness import install_crd

    install_crd(cluster)
    return cluster


@pytest.fixture
def kube(crd: Cluster) -> Api:
    from tests.operator_harness import Api

    return Api(crd.kubeconfig)


@pytest.fixture
def operator(crd: Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    from tests.operator_harness import running_operator

    with running_operator(crd, namespace, tmp_path) as running:
        yield running


@pytest.fixture(scope="session")
def kube_api(cluster: Cluster) -> Iterator[k8s.ApiClient]:
    api_client = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")
    base = base.removeprefix("test-")[:40].strip("-")
    return f"t-{base}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_api: k8s.ApiClient) -> Iterator[str]:
    core = k8s.CoreV1Api(kube_api)
    name = _namespace_name(request.node.name)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    # Pods are rejected until the serviceaccount controller has created "default", and the
    # projected token volume needs the root CA ConfigMap.
    deadline = time.monotonic() + 30
    while True:
        accounts = core.list_namespaced_service_account(name).items
        config_maps = core.list_namespaced_config_map(name).items
        if any(sa.metadata.name == "default" for sa in accounts) and any(
            cm.metadata.name == "kube-root-ca.crt" for cm in config_maps
        ):
            break
        if time.monotonic() > deadline:
            raise ClusterError(f"namespace {name} got no default ServiceAccount within 30 s")
        time.sleep(0.1)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_bytes()[-64 * 1024 :].decode(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def _failure_report(cluster: Cluster, namespace: str | None) -> str:
    parts = []
    for component, path in cluster.component_logs().items():
        parts.append(f"----- {component}: {path} (last {LOG_TAIL_LINES} lines) -----")
        parts.append(_tail(path, LOG_TAIL_LINES))
    if namespace is not None:
        for what in ("pods", "events"):
            result = cluster.kubectl(
                "get", what, "-n", namespace, "-o", "wide", check=False, timeout=20
            )
            parts.append(f"----- kubectl get {what} -n {namespace} -----")
            parts.append(result.stdout + result.stderr)
        if cluster.real_node:
            for pod in cluster.kubectl(
                "get", "pods", "-n", namespace, "-o", "name", check=False, timeout=20
            ).stdout.split():
                logs = cluster.kubectl(
                    "logs", "-n", namespace, pod, "--all-containers", f"--tail={LOG_TAIL_LINES}",
                    check=False, timeout=20,
                )  # fmt: skip
                parts.append(f"----- kubectl logs {pod} (last {LOG_TAIL_LINES} lines) -----")
                parts.append(logs.stdout + logs.stderr)
        pods_dir = cluster.node_agent_state_dir / "pods"
        for log in sorted(pods_dir.glob(f"{namespace}_*/*.log")):
            parts.append(f"----- pod log {log} (last {LOG_TAIL_LINES} lines) -----")
            parts.append(_tail(log, LOG_TAIL_LINES))
    return "\n".join(parts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.failed:
        return report
    funcargs = getattr(item, "funcargs", {})
    running = funcargs.get("cluster") or funcargs.get("real_cluster")
    if not isinstance(running, Cluster):
        return report
    try:
        text = _failure_report(running, funcargs.get("namespace"))
    except Exception as error:  # the report must never hide the test's own failure
        text = f"collecting the cluster logs failed: {error!r}"
    report.sections.append(("local cluster logs", text))
    return report

"""The local cluster behaves like a real Kubernetes cluster: pinned version, CRDs and watches,
scheduling of GPU pods on kwok nodes, garbage collection, Prometheus discovery, clean shutdown."""

from __future__ import annotations

import json
import secrets
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.rest import ApiException

from localcluster import Cluster, pinned_versions
from localcluster.processes import group_members, start_ticks_of
from localcluster.prometheus import active_targets, query

pytestmark = pytest.mark.cluster

T = TypeVar("T")

GPU = "nvidia.com/gpu"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# kwok never pulls images; a name that cannot resolve shows that nothing tries to.
FAKE_IMAGE = "registry.invalid/acceltrain/noop:0"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Polls ``probe`` until it returns something other than None/False; fails with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def gpu_pod(name: str, *, pool: str = "gpu", gpus: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"acceltrain.io/pool": pool},
            "tolerations": [GPU_TOLERATION],
            "containers": [
                {
                    "name": "main",
                    "image": FAKE_IMAGE,
                    "resources": {"limits": {GPU: str(gpus)}},
                }
            ],
        },
    }


def test_kubectl_version_reports_the_pinned_kubernetes_version(cluster: Cluster) -> None:
    pinned = pinned_versions()["KUBERNETES_VERSION"]

    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)

    assert versions["serverVersion"]["gitVersion"] == pinned
    assert versions["clientVersion"]["gitVersion"] == pinned
    assert versions["serverVersion"]["minor"] == pinned.split(".")[1]


WIDGET_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: widgets.harness.acceltrain.io
    spec:
      group: harness.acceltrain.io
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
        - name: v1
          served: true
          storage: true
          schema:
            openAPIV3Schema:
              type: object
              properties:
                spec:
                  type: object
                  properties:
                    size: {type: integer, minimum: 1}
    """
)


def test_a_custom_resource_can_be_defined_created_and_watched(
    cluster: Cluster, namespace: str, kube_api: k8s.ApiClient
) -> None:
    cluster.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    cluster.wait_crd_established("widgets.harness.acceltrain.io", timeout=30)
    custom = k8s.CustomObjectsApi(kube_api)
    group, version, plural = "harness.acceltrain.io", "v1", "widgets"
    # Discovery of a new CRD lags its Established condition by a moment on a busy API server.
    listed = wait_for(
        "the widgets resource to be served",
        lambda: _try(
            lambda: custom.list_namespaced_custom_object(group, version, namespace, plural)
        ),
        timeout=30,
    )

    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object(
            group, version, namespace, plural,
            {"apiVersion": f"{group}/{version}", "kind": "Widget",
             "metadata": {"name": "bad"}, "spec": {"size": 0}},
        )  # fmt: skip
    assert rejected.value.status == 422
    assert "spec.size" in str(rejected.value.body)

    seen: list[tuple[str, int]] = []
    stream = watch.Watch().stream(
        custom.list_namespaced_custom_object,
        group, version, namespace, plural,
        resource_version=listed["metadata"]["resourceVersion"],
        timeout_seconds=30,
    )  # fmt: skip
    custom.create_namespaced_custom_object(
        group, version, namespace, plural,
        {"apiVersion": f"{group}/{version}", "kind": "Widget",
         "metadata": {"name": "w1"}, "spec": {"size": 1}},
    )  # fmt: skip
    for event in stream:
        obj = event["object"]
        seen.append((event["type"], obj["spec"]["size"]))
        if event["type"] == "ADDED":
            custom.patch_namespaced_custom_object(
                group, version, namespace, plural, "w1", {"spec": {"size": 2}}
            )
        if event["type"] == "MODIFIED":
            break

    assert seen == [("ADDED", 1), ("MODIFIED", 2)]


def _try(call: Callable[[], T]) -> T | None:
    try:
        return call()
    except ApiException:
        return None


@pytest.mark.slow
def test_200_gpu_pods_fill_25_kwok_nodes_and_the_201st_stays_pending(
    cluster: Cluster, namespace: str, kube_api: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(kube_api)
    # A pool of its own, so that the shared GPU nodes and other tests' pods do not change the sums.
    pool = f"scale-{secrets.token_hex(3)}"
    nodes = [f"{pool}-{index}" for index in range(25)]
    cluster.add_gpu_nodes(nodes, gpus=8, pool=pool, timeout=60)
    try:
        pods = [gpu_pod(f"gpu-{index}", pool=pool) for index in range(200)]
        cluster.kubectl(
            "create", "-n", namespace, "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}),
        )  # fmt: skip

        def all_running() -> list[k8s.V1Pod] | None:
            items = core.list_namespaced_pod(namespace).items
            running = [pod for pod in items if pod.status.phase == "Running"]
            return running if len(running) == 200 else None

        running = wait_for("200 GPU pods to be Running", all_running, timeout=120, interval=1)
        per_node: dict[str, int] = {}
        for pod in running:
            per_node[pod.spec.node_name] = per_node.get(pod.spec.node_name, 0) + 1
        assert per_node == {node: 8 for node in nodes}

        cluster.kubectl(
            "create", "-n", namespace, "-f", "-", input=json.dumps(gpu_pod("gpu-200", pool=pool))
        )

        def scheduling_failure() -> k8s.CoreV1Event | None:
            events = core.list_namespaced_event(
                namespace, field_selector="involvedObject.name=gpu-200"
            ).items
            return next((e for e in events if e.reason == "FailedScheduling"), None)

        event = wait_for("a FailedScheduling event for gpu-200", scheduling_failure, timeout=30)
        assert f"Insufficient {GPU}" in event.message
        pending = core.read_namespaced_pod("gpu-200", namespace)
        assert pending.status.phase == "Pending"
        assert pending.spec.node_name is None
    finally:
        cluster.kubectl(
            "delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force",
            "--wait=false", check=False,
        )  # fmt: skip
        cluster.delete_nodes(nodes)


def test_deleting_an_owner_garbage_collects_its_children(
    cluster: Cluster, namespace: str, kube_api: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owner"))
    )
    owner_ref = k8s.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="child", owner_references=[owner_ref])),
    )
    child_pod = gpu_pod("child-pod")
    child_pod["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    ]
    core.create_namespaced_pod(namespace, child_pod)
    wait_for(
        "the child pod to run on a kwok node",
        lambda: core.read_namespaced_pod("child-pod", namespace).status.phase == "Running",
        timeout=30,
    )

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def children_left() -> list[str]:
        names = [cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items]
        names += [pod.metadata.name for pod in core.list_namespaced_pod(namespace).items]
        return [name for name in names if name in ("child", "child-pod")]

    wait_for("the children to be collected", lambda: not children_left(), timeout=60)
    assert children_left() == []


@pytest.mark.slow
def test_stopping_a_cluster_leaves_no_process_behind(tmp_path: Path, cluster: Cluster) -> None:
    # A second cluster next to the session one also shows that two clusters coexist.
    second = Cluster(tmp_path / "second", gpu_nodes=1, process_node=False, prometheus=True)
    second.start()
    try:
        assert second.api_url != cluster.api_url
        nodes = json.loads(second.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        assert [node["metadata"]["name"] for node in nodes] == second.gpu_node_names
        started = {name: (pid, start_ticks_of(pid)) for name, pid in second.pids().items()}
        assert set(started) == {
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
            "prometheus",
        }  # fmt: skip
        assert all(ticks is not None for _, ticks in started.values())
    finally:
        second.stop()

    still_running = {
        name: pid for name, (pid, ticks) in started.items() if start_ticks_of(pid) == ticks
    }
    assert still_running == {}
    # Nor any child a component started in its process group.
    assert {name: group_members(pid) for name, (pid, _) in started.items()} == {
        name: [] for name in started
    }
    assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"


PROBE_SERVER = textwrap.dedent(
    """
    import http.server

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'acceltrain_harness_probe{source="pod"} 42\\n'
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

    http.server.HTTPServer(("0.0.0.0", 9400), Metrics).serve_forever()
    """
)


@pytest.mark.slow
def test_prometheus_discovers_a_pod_and_promql_returns_its_sample(
    cluster: Cluster, namespace: str, kube_api: k8s.ApiClient
) -> None:
    assert cluster.prometheus_url is not None and cluster.process_node_name is not None
    core = k8s.CoreV1Api(kube_api)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe-0", "labels": {"acceltrain.io/job-name": "probe"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": cluster.process_node_name},
            "containers": [
                {
                    "name": "exporter",
                    "image": FAKE_IMAGE,
                    "command": ["python", "-c", PROBE_SERVER],
                    "ports": [{"name": "metrics", "containerPort": 9400}],
                }
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)
    pod_ip = wait_for(
        "the probe pod to run on the process node",
        lambda: (lambda p: p.status.pod_ip if p.status.phase == "Running" else None)(
            core.read_namespaced_pod("probe-0", namespace)
        ),
        timeout=60,
    )

    promql = f'acceltrain_harness_probe{{namespace="{namespace}"}}'
    samples = wait_for(
        "Prometheus to scrape the probe pod",
        lambda: query(cluster.prometheus_url or "", promql),
        timeout=60,
        interval=1,
    )

    assert len(samples) == 1
    labels, (_, value) = samples[0]["metric"], samples[0]["value"]
    assert value == "42"
    assert labels["pod"] == "probe-0"
    assert labels["source"] == "pod"
    target = next(
        t for t in active_targets(cluster.prometheus_url) if t["labels"].get("pod") == "probe-0"
    )
    assert target["scrapeUrl"] == f"http://{pod_ip}:9400/metrics"
    assert target["health"] == "up"

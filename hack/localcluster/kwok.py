"""Fake GPU nodes: the kwok controller's command line and the Node objects it manages.

kwok manages only nodes that carry the annotation ``kwok.x-k8s.io/node: fake``; the process node
registered by the node agent does not, so kwok never touches it. The real kube-scheduler places
pods on these nodes by their ``nvidia.com/gpu`` capacity, labels and taint, and kwok moves the
bound pods through Pending -> Running (-> Succeeded for Job pods) with the stages of
``.tools/share/kwok-stages.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MANAGED_ANNOTATION = "kwok.x-k8s.io/node"
MANAGED_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"
POOL_LABEL = "acceltrain.io/pool"
GPU_POOL = "gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_TAINT_VALUE = "present"
# kwok hands out pod IPs from this range. Nothing listens on them and nothing connects to them:
# Prometheus only scrapes pods of the process node.
POD_CIDR = "10.0.0.1/16"
# Pod addresses of nodes that have a kwok process of their own (Cluster.add_mortal_gpu_node).
MORTAL_POD_CIDR = "10.1.0.1/16"
# kwok reports this as every fake node's address; loopback, so any stray connection stays local.
NODE_IP = "127.0.0.1"
# How long the Lease kwok keeps fresh for each node says it is alive (kwokctl's default).
NODE_LEASE_SECONDS = 40


# kwok moves at most 4 pods through a stage at a time by default: with each status patch taking
# tens of milliseconds on a busy machine, that capped a scale run at about 8 pod transitions per
# second, which is what the launch latency then measured. kwokctl raises these for large clusters.
PARALLELISM = 32
CONFIGURATION = f"""\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  podPlayStageParallelism: {PARALLELISM}
  nodePlayStageParallelism: 8
  nodeLeaseParallelism: 8
"""


# A Job pod on a kwok node completes at once, unless its first container's env names how long
# it runs (a duration such as "30s"): benchmarks of contention need pods that hold their GPUs.
RUN_DURATION_ENV = "KWOK_RUN_DURATION"
_RUN_DURATION_QUERY = f'.spec.containers[0].env[]? | select(.name == "{RUN_DURATION_ENV}") | .value'


def write_stages(built: Path, path: Path) -> Path:
    """The stages of the built kwok, with the Job-pod completion delayed by
    :data:`RUN_DURATION_ENV` where a pod sets it."""
    documents = [doc for doc in yaml.safe_load_all(built.read_text()) if doc]
    for document in documents:
        if document.get("kind") == "Stage" and document["metadata"]["name"] == "pod-complete":
            document["spec"]["delay"] = {
                "durationMilliseconds": 0,
                "durationFrom": {"expressionFrom": _RUN_DURATION_QUERY},
            }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def write_configuration(path: Path) -> Path:
    """The KwokConfiguration (parallelism) that :func:`argv` passes next to the stages."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONFIGURATION)
    return path


def argv(
    binary: Path,
    *,
    kubeconfig: Path,
    stages: Path,
    server_port: int,
    configuration: Path | None = None,
    managed_value: str = MANAGED_VALUE,
    pod_cidr: str = POD_CIDR,
) -> list[str]:
    """kwok managing the nodes annotated ``kwok.x-k8s.io/node=<managed_value>``."""
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--config={stages}",
        *([f"--config={configuration}"] if configuration is not None else []),
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={MANAGED_ANNOTATION}={managed_value}",
        f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
        f"--cidr={pod_cidr}",
        f"--node-ip={NODE_IP}",
        f"--server-address=127.0.0.1:{server_port}",
    ]


def gpu_node(
    name: str,
    *,
    gpus: int,
    pool: str = GPU_POOL,
    cpu: str = "64",
    memory: str = "512Gi",
    pods: int = 110,
    extra_labels: dict[str, str] | None = None,
    taint_key: str = GPU_TAINT_KEY,
) -> dict[str, Any]:
    """A Node object for kwok to manage: ``gpus`` x ``nvidia.com/gpu`` in pool ``pool``, tainted."""
    capacity = {"cpu": cpu, "memory": memory, "pods": str(pods), GPU_RESOURCE: str(gpus)}
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        POOL_LABEL: pool,
        **(extra_labels or {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {MANAGED_ANNOTATION: MANAGED_VALUE},
        },
        "spec": {
            "taints": [{"key": taint_key, "value": GPU_TAINT_VALUE, "effect": "NoSchedule"}],
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }

"""The pure pieces of hack/localcluster/kueue.py: which of Kueue's webhooks are installed and
where they point, the CRDs' conversion webhook, Kueue's Configuration and command line, the queue
fixture's objects. (Kueue itself runs in the integration environment, see the module.)"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from localcluster.kueue import (
    CONVERSION_CRDS,
    QUEUE_LABEL,
    KueueFiles,
    KueuePorts,
    QueueFixture,
    argv,
    configuration,
    crd_objects,
    object_path,
    queue_objects,
    webhook_objects,
)

URL = "https://127.0.0.1:9443"


def _hook(name: str, group: str, resource: str, path: str) -> dict[str, Any]:
    return {
        "admissionReviewVersions": ["v1"],
        "clientConfig": {
            "service": {"name": "webhook-service", "namespace": "system", "path": path}
        },
        "failurePolicy": "Fail",
        "name": name,
        "rules": [
            {
                "apiGroups": [group],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": [resource],
            }
        ],
        "sideEffects": "None",
    }


def _manifests(tmp_path: Path) -> Path:
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mutating-webhook-configuration"},
        "webhooks": [
            _hook("mjob.kb.io", "batch", "jobs", "/mutate-batch-v1-job"),
            _hook("mpod.kb.io", "", "pods", "/mutate--v1-pod"),
            _hook("mrayjob.kb.io", "ray.io", "rayjobs", "/mutate-ray-io-v1-rayjob"),
            _hook("mworkload.kb.io", "kueue.x-k8s.io", "workloads", "/mutate-workload"),
        ],
    }
    (tmp_path / "webhooks.yaml").write_text(yaml.safe_dump_all([mutating]))
    (tmp_path / "crd").mkdir()
    for name in ("workloads.kueue.x-k8s.io", "topologies.kueue.x-k8s.io"):
        crd = {"kind": "CustomResourceDefinition", "metadata": {"name": name}, "spec": {}}
        (tmp_path / "crd" / f"{name}.yaml").write_text(yaml.safe_dump(crd))
    return tmp_path


def test_only_kueues_own_and_the_job_webhooks_are_installed_pointing_at_loopback(
    tmp_path: Path,
) -> None:
    [config] = webhook_objects(_manifests(tmp_path), URL, "Q0E=")
    assert config["metadata"]["name"] == "kueue-mutating-webhook-configuration"
    hooks = {hook["name"]: hook for hook in config["webhooks"]}
    assert set(hooks) == {"mjob.kb.io", "mworkload.kb.io"}
    assert hooks["mjob.kb.io"]["clientConfig"] == {
        "url": f"{URL}/mutate-batch-v1-job",
        "caBundle": "Q0E=",
    }
    # Unlabelled Jobs never reach Kueue; Kueue's own kinds always do.
    selector = hooks["mjob.kb.io"]["objectSelector"]["matchExpressions"]
    assert selector == [{"key": QUEUE_LABEL, "operator": "Exists"}]
    assert "objectSelector" not in hooks["mworkload.kb.io"]


def test_converted_crds_call_kueues_conversion_webhook(tmp_path: Path) -> None:
    crds = {crd["metadata"]["name"]: crd for crd in crd_objects(_manifests(tmp_path), URL, "Q0E=")}
    assert "workloads.kueue.x-k8s.io" in CONVERSION_CRDS
    webhook = crds["workloads.kueue.x-k8s.io"]["spec"]["conversion"]["webhook"]
    assert webhook["clientConfig"] == {"url": f"{URL}/convert", "caBundle": "Q0E="}
    assert "conversion" not in crds["topologies.kueue.x-k8s.io"]["spec"]


def test_configuration_keeps_kueue_on_loopback_without_its_own_certificates() -> None:
    config = configuration(KueuePorts(webhook=1, health=2, metrics=3), Path("/c"))
    assert config["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": "/c"}
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:2"
    assert config["metrics"]["bindAddress"] == "127.0.0.1:3"
    assert config["internalCertManagement"] == {"enable": False}
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["integrations"] == {"frameworks": ["batch/job"]}
    assert config["manageJobsWithoutQueueName"] is False
    assert config["featureGates"] == {"VisibilityOnDemand": False}


def test_kueue_runs_in_a_private_mount_namespace_and_becomes_the_recorded_process() -> None:
    files = KueueFiles(Path("/s/pki/kueue"))
    command = argv(Path("/bin/kueue"), files, Path("/s/kubeconfig"))
    assert "--mount" in command and command[command.index("--propagation") + 1] == "private"
    script = command[command.index("-c") + 1]
    assert "/etc/kueue/metrics/certs" not in script  # built inside the overlay, not on the host
    assert script.rstrip().endswith('exec "$@"')
    assert command[-3:] == [
        "/bin/kueue",
        "--config=/s/pki/kueue/config.yaml",
        "--kubeconfig=/s/kubeconfig",
    ]


def test_queue_fixture_objects_and_their_paths() -> None:
    fixture = QueueFixture("team-a", "lq", "cq", "kwok-gpu")
    objects = queue_objects(
        fixture,
        gpus=8,
        cpu="64",
        memory="256Gi",
        node_labels={"acceltrain.io/pool": "gpu"},
        priority_classes={"high": 1000},
    )
    assert [obj["kind"] for obj in objects] == [
        "Namespace",
        "ResourceFlavor",
        "ClusterQueue",
        "LocalQueue",
        "WorkloadPriorityClass",
    ]
    [group] = objects[2]["spec"]["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    assert {"name": "nvidia.com/gpu", "nominalQuota": "8"} in group["flavors"][0]["resources"]
    assert objects[4]["value"] == 1000
    assert [object_path(obj) for obj in objects] == [
        "/api/v1/namespaces/team-a",
        "/apis/kueue.x-k8s.io/v1beta2/resourceflavors/kwok-gpu",
        "/apis/kueue.x-k8s.io/v1beta2/clusterqueues/cq",
        "/apis/kueue.x-k8s.io/v1beta2/namespaces/team-a/localqueues/lq",
        "/apis/kueue.x-k8s.io/v1beta2/workloadpriorityclasses/high",
    ]

"""Admission on the real API server: a spec that could never run is refused at ``kubectl apply``,
with the field it is about named in the refusal.

Each case breaks one rule of the rule table (:mod:`accel_operator.rules`) or one grammar that
Kubernetes would otherwise apply only to the children, minutes later; the operator's own check
of the same rule is asserted beside it (``parse_spec``), so the two cannot drift apart.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from accel_operator import rules
from accel_operator.api import SpecError, parse_spec
from localcluster import Cluster
from tests.operator_harness import kubectl_apply

pytestmark = pytest.mark.cluster

Spec = dict[str, Any]

PVC_VOLUME = {
    "name": "ckpt",
    "mountPath": "/checkpoints",
    "persistentVolumeClaim": {"claimName": "c"},
}


def _minimal() -> Spec:
    return {
        "image": "ghcr.io/acceltrain/trainer-cpu:0.1.0",
        "devicesPerWorker": 0,
        "model": {"config": {"hiddenSize": 64, "numHeads": 2}},
        "data": {"synthetic": {}},
        "training": {"maxSteps": 10},
        "checkpoint": {"resume": False},
    }


def _apply(cluster: Cluster, namespace: str, spec: Spec) -> subprocess.CompletedProcess[str]:
    document = {
        "apiVersion": "acceltrain.io/v1alpha1",
        "kind": "AccelTrainJob",
        "metadata": {"name": "admission", "namespace": namespace},
        "spec": spec,
    }
    return kubectl_apply(cluster, namespace, document, "--dry-run=server")


def _pool(**pool: Any) -> Callable[[Spec], None]:
    return lambda spec: spec.update(nodePool=pool)


def _required(expression: dict[str, Any]) -> Callable[[Spec], None]:
    terms = {"nodeSelectorTerms": [{"matchExpressions": [expression]}]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": terms}}
    return _pool(affinity=affinity)


def _volumes(*volumes: dict[str, Any]) -> Callable[[Spec], None]:
    return lambda spec: spec.update(volumes=list(volumes))


REQUIRED_IN = (
    ".nodePool.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    ".nodeSelectorTerms[0].matchExpressions[0].values"
)

# (id, change to the minimal spec, the field path the refusal names, a fragment of its message)
CASES: list[tuple[str, Callable[[Spec], None], str, str]] = [
    ("image of only spaces", lambda s: s.update(image="   "), ".image", "not an image reference"),
    (
        "image with a leading space",
        lambda s: s.update(image=" ghcr.io/a/b:1"),
        ".image",
        "image reference",
    ),
    (
        "image with shell characters",
        lambda s: s.update(image="a;rm -rf /"),
        ".image",
        "image reference",
    ),
    (
        "image with an upper-case path",
        lambda s: s.update(image="ghcr.io/Acme/x"),
        ".image",
        "image reference",
    ),
    (
        "a PriorityClass name that is not an object name",
        lambda s: s.update(priorityClassName="Not_A_Class"),
        ".priorityClassName",
        "should match",
    ),
    (
        "a ServiceAccount name with a space",
        lambda s: s.update(serviceAccountName="trainer sa"),
        ".serviceAccountName",
        "should match",
    ),
    (
        "request above its limit",
        lambda s: s.update(resources={"requests": {"cpu": 2}, "limits": {"cpu": "1500m"}}),
        ".resources.requests",
        "a request is above its limit",
    ),
    (
        "memory request above its limit in other units",
        lambda s: s.update(
            resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "2000Mi"}}
        ),
        ".resources.requests",
        "a request is above its limit",
    ),
    (
        "a quantity that is not one",
        lambda s: s.update(resources={"requests": {"cpu": "two"}}),
        ".resources",
        "must be a quantity",
    ),
    (
        "a negative quantity",
        lambda s: s.update(resources={"limits": {"memory": "-1Gi"}}),
        ".resources",
        "must be a quantity",
    ),
    (
        "a resource name without a domain",
        lambda s: s.update(resources={"limits": {"fpga": 1}}),
        ".resources",
        "resource names are cpu, memory",
    ),
    (
        "a node selector key with a space",
        _pool(nodeSelector={"pool name": "gpu"}),
        ".nodePool.nodeSelector",
        "label keys",
    ),
    (
        "a node selector value with a slash",
        _pool(nodeSelector={"pool": "a/b"}),
        ".nodePool.nodeSelector",
        "label values",
    ),
    (
        "a toleration without key that is not Exists",
        _pool(tolerations=[{"operator": "Equal", "value": "x"}]),
        ".nodePool.tolerations[0].operator",
        "needs operator: Exists",
    ),
    (
        "a toleration with Exists and a value",
        _pool(tolerations=[{"key": "k", "operator": "Exists", "value": "x"}]),
        ".nodePool.tolerations[0].value",
        "must be empty with operator: Exists",
    ),
    (
        "tolerationSeconds without NoExecute",
        _pool(tolerations=[{"key": "k", "value": "v", "tolerationSeconds": 30}]),
        ".nodePool.tolerations[0].tolerationSeconds",
        "only to effect: NoExecute",
    ),
    (
        "a toleration key with a space",
        _pool(tolerations=[{"key": "a b", "operator": "Exists"}]),
        ".nodePool.tolerations[0].key",
        "not a label key",
    ),
    (
        "an empty In",
        _required({"key": "zone", "operator": "In"}),
        REQUIRED_IN,
        "need at least one value",
    ),
    (
        "an empty NotIn",
        _required({"key": "zone", "operator": "NotIn", "values": []}),
        REQUIRED_IN,
        "need at least one value",
    ),
    (
        "Exists with values",
        _required({"key": "zone", "operator": "Exists", "values": ["a"]}),
        REQUIRED_IN,
        "Exists and DoesNotExist none",
    ),
    (
        "Gt without an integer",
        _required({"key": "gen", "operator": "Gt", "values": ["new"]}),
        REQUIRED_IN,
        "exactly one integer",
    ),
    (
        "a volume named like the config volume",
        _volumes({"name": "acceltrain-config", "mountPath": "/cfg", "emptyDir": {}}),
        ".volumes[0].name",
        "names of volumes acceltrain adds",
    ),
    (
        "a volume named like the scratch volume",
        _volumes({"name": "scratch", "mountPath": "/s", "emptyDir": {}}),
        ".volumes[0].name",
        "names of volumes acceltrain adds",
    ),
    (
        "a volume over the scratch mount",
        _volumes({"name": "tmp", "mountPath": "/scratch/", "emptyDir": {}}),
        ".volumes[0].mountPath",
        "where acceltrain mounts",
    ),
    (
        "a volume over shared memory",
        _volumes({"name": "shm", "mountPath": "/dev/shm", "emptyDir": {"medium": "Memory"}}),
        ".volumes[0].mountPath",
        "where acceltrain mounts",
    ),
    (
        "two volumes on one mount path",
        _volumes(PVC_VOLUME, {**PVC_VOLUME, "name": "other"}),
        ".volumes",
        "same mountPath",
    ),
    (
        "two volumes with one name",
        _volumes(PVC_VOLUME, {**PVC_VOLUME, "mountPath": "/other"}),
        ".volumes",
        "same name",
    ),
    (
        "an emptyDir size that is not a quantity",
        _volumes({"name": "tmp", "mountPath": "/t", "emptyDir": {"sizeLimit": "lots"}}),
        ".volumes[0].emptyDir.sizeLimit",
        "not a quantity",
    ),
    (
        "a metrics port equal to the rendezvous port",
        lambda s: s.update(metrics={"port": 29500}),
        ".metrics.port",
        "include the rendezvous port 29500",
    ),
    (
        "a local rank's metrics port on the rendezvous port",
        lambda s: s.update(procsPerWorker=4, metrics={"port": 29498}),
        ".metrics.port",
        "include the rendezvous port 29500",
    ),
    (
        "a local rank's metrics port past 65535",
        lambda s: s.update(procsPerWorker=4, metrics={"port": 65533}),
        ".metrics.port",
        "must be at most 65535",
    ),
    (
        "a checkpoint path leaving its volume with ..",
        lambda s: s.update(volumes=[PVC_VOLUME], checkpoint={"path": "/checkpoints/../etc"}),
        ".checkpoint.path",
        "'..' segment",
    ),
    (
        "a data path with ..",
        lambda s: s.update(data={"path": "/data/../etc/passwd.jsonl"}),
        ".data",
        "'..' segment",
    ),
    (
        "a mount path with ..",
        _volumes({"name": "d", "mountPath": "/data/..", "emptyDir": {}}),
        ".volumes[0].mountPath",
        "'..' segment",
    ),
    (
        "checkpoints on an emptyDir with resume",
        lambda s: s.update(
            volumes=[{"name": "ckpt", "mountPath": "/checkpoints", "emptyDir": {}}],
            checkpoint={"resume": True},
        ),
        ".checkpoint.path",
        "not on a persistentVolumeClaim or hostPath volume",
    ),
    (
        "lamb on a CPU trainer",
        lambda s: s.update(training={"maxSteps": 10, "optimizer": {"type": "lamb"}}),
        ".training.optimizer.type",
        "lamb needs GPUs",
    ),
    (
        "GPUs requested through resources",
        lambda s: s.update(resources={"limits": {"nvidia.com/gpu": 1}}),
        ".resources",
        "comes from devicesPerWorker",
    ),
    (
        "a data file of unknown format",
        lambda s: s.update(data={"path": "/data/train.parquet"}),
        ".data.format",
        "cannot infer the format",
    ),
    (
        "a sequence longer than the positions",
        lambda s: s.update(data={"synthetic": {}, "maxLength": 1024}),
        ".data.maxLength",
        "exceeds model.config.maxPositionEmbeddings",
    ),
    (
        "an env var named like the rendezvous",
        lambda s: s.update(env=[{"name": "WORLD_SIZE", "value": "8"}]),
        ".env[0].name",
        "set by acceltrain for the rendezvous",
    ),
]


@pytest.fixture(scope="module")
def api_server(crd: Cluster) -> Cluster:
    return crd


@pytest.mark.parametrize(
    ("change", "field", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_spec_kubernetes_would_refuse_later_is_refused_at_apply_naming_the_field(
    api_server: Cluster, namespace: str, change: Callable[[Spec], None], field: str, message: str
) -> None:
    spec = _minimal()
    change(spec)
    result = _apply(api_server, namespace, spec)
    assert result.returncode != 0, f"accepted: {spec}"
    assert f"spec{field}: Invalid value" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
    # The operator refuses the same spec the same way (a CRD from an older chart, say).
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(copy.deepcopy(spec), name="admission")


@pytest.mark.parametrize(
    "owned", rules.OWNED_OVERRIDE_KEYS, ids=[key.dotted for key in rules.OWNED_OVERRIDE_KEYS]
)
def test_an_override_of_a_key_a_typed_field_owns_is_refused_naming_the_field_to_use(
    api_server: Cluster, namespace: str, owned: rules.OwnedKey
) -> None:
    value: Any = (
        {"enabled": True}
        if owned.schema.get("type") == "object"
        else (True if owned.schema.get("type") == "boolean" else 4)
    )
    overrides: dict[str, Any] = {}
    node = overrides
    for part in owned.path[:-1]:
        node = node.setdefault(part, {})
    node[owned.path[-1]] = value
    spec = _minimal()
    spec["deepspeed"] = {"overrides": overrides}
    result = _apply(api_server, namespace, spec)
    assert result.returncode != 0, f"accepted: {overrides}"
    assert f"spec.deepspeed.overrides.{owned.dotted}: Invalid value" in result.stderr
    assert owned.typed_field in result.stderr, result.stderr
    with pytest.raises(SpecError, match=f"spec.deepspeed.overrides.{owned.dotted}:"):
        parse_spec(spec, name="admission")


def test_overrides_of_keys_no_typed_field_owns_are_accepted(
    api_server: Cluster, namespace: str
) -> None:
    spec = _minimal()
    spec["deepspeed"] = {
        "overrides": {
            "zero_optimization": {"round_robin_gradients": True, "sub_group_size": 1000000},
            "flops_profiler": {"enabled": True, "profile_step": 3},
            "communication_data_type": "fp32",
        }
    }
    result = _apply(api_server, namespace, spec)
    assert result.returncode == 0, result.stderr
    parse_spec(spec, name="admission")

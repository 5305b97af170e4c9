"""The generated CRD in a real API server: examples are accepted, bad specs rejected by CEL."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import Cluster
from tests.operator_harness import kubectl_apply

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD = REPO_ROOT / "manifests" / "crd" / "acceltrain.io_acceltrainjobs.yaml"
EXAMPLES = sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def crd_installed(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.wait_crd_established("acceltrainjobs.acceltrain.io")
    # Discovery of a new group lags the Established condition by a moment.
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "atj", "-A", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the atj short name never became resolvable"
        time.sleep(0.5)
    return cluster


def _apply(
    cluster: Cluster, namespace: str, document: dict[str, Any], *flags: str
) -> subprocess.CompletedProcess[str]:
    return kubectl_apply(cluster, namespace, document, *flags)


def _minimal() -> dict[str, Any]:
    return {
        "apiVersion": "acceltrain.io/v1alpha1",
        "kind": "AccelTrainJob",
        "metadata": {"name": "minimal"},
        "spec": {
            "image": "ghcr.io/acceltrain/trainer-cpu:0.1.0",
            "devicesPerWorker": 0,
            "model": {"config": {"hiddenSize": 64, "numHeads": 2}},
            "data": {"synthetic": {}},
            "training": {"maxSteps": 10},
            "checkpoint": {"resume": False},
        },
    }


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_is_accepted_by_the_api_server(
    crd_installed: Cluster, namespace: str, example: Path
) -> None:
    # Every object of the file: the job and the claims it mounts.
    for document in yaml.safe_load_all(example.read_text()):
        result = _apply(crd_installed, namespace, document, "--dry-run=server")
        assert result.returncode == 0, result.stderr


def test_the_api_server_fills_defaults_from_the_models(
    crd_installed: Cluster, namespace: str
) -> None:
    result = _apply(crd_installed, namespace, _minimal())
    assert result.returncode == 0, result.stderr
    stored = json.loads(
        crd_installed.kubectl("get", "atj", "minimal", "-n", namespace, "-o", "json").stdout
    )["spec"]
    assert stored["deepspeed"]["zero"]["stage"] == 2
    assert stored["deepspeed"]["precision"] == "bf16"
    assert stored["runPolicy"]["maxRestarts"] == 3
    assert stored["metrics"]["port"] == 9400
    assert stored["training"]["optimizer"]["type"] == "adamw"
    assert "pruning" not in stored


REJECTIONS: list[tuple[str, dict[str, Any], str]] = [
    (
        "fp16 on cpu",
        {"deepspeed": {"precision": "fp16"}},
        "fp16 is not supported by DeepSpeed on CPU",
    ),
    (
        "offload at stage 0",
        {"deepspeed": {"zero": {"stage": 0, "offloadOptimizer": "cpu"}}},
        "offloadOptimizer: cpu needs deepspeed.zero.stage >= 1",
    ),
    (
        "param offload at stage 2",
        {"deepspeed": {"zero": {"stage": 2, "offloadParams": "cpu"}}},
        "offloadParams: cpu needs deepspeed.zero.stage: 3",
    ),
    (
        "pretrained and config",
        {"model": {"pretrained": "/models/x", "config": {"hiddenSize": 64, "numHeads": 2}}},
        "set exactly one of model.pretrained or model.config",
    ),
    (
        "reserved env",
        {"env": [{"name": "MASTER_ADDR", "value": "x"}]},
        "are set by acceltrain for the rendezvous",
    ),
    ("pruning order", {"pruning": {"startStep": 5, "endStep": 5}}, "startStep must be smaller"),
    (
        "pruning past the end",
        {"pruning": {"startStep": 1, "endStep": 50}},
        "spec.pruning.endStep: is after training.maxSteps",
    ),
    ("bad stage", {"deepspeed": {"zero": {"stage": 4}}}, "should be less than or equal to 3"),
    ("unknown field", {"wrokers": 2}, 'unknown field "spec.wrokers"'),
]


@pytest.mark.parametrize(
    ("patch", "message"), [(p, m) for _, p, m in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_the_api_server_rejects_a_spec_that_cannot_work(
    crd_installed: Cluster, namespace: str, patch: dict[str, Any], message: str
) -> None:
    document = _minimal()
    document["spec"].update(copy.deepcopy(patch))
    result = _apply(crd_installed, namespace, document)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_api_server_rejects_a_name_too_long_for_pod_hostnames(
    crd_installed: Cluster, namespace: str
) -> None:
    document = _minimal()
    document["metadata"]["name"] = "j" * 54
    result = _apply(crd_installed, namespace, document)
    assert result.returncode != 0
    assert "metadata.name must be at most 53 characters" in result.stderr


def test_running_jobs_keep_their_spec_but_may_suspend(
    crd_installed: Cluster, namespace: str
) -> None:
    document = _minimal()
    assert _apply(crd_installed, namespace, document).returncode == 0
    document["spec"]["workers"] = 4
    changed = _apply(crd_installed, namespace, document)
    assert changed.returncode != 0
    assert "spec.workers is immutable" in changed.stderr
    document["spec"]["workers"] = 1
    document["spec"]["runPolicy"] = {"suspend": True, "maxRestarts": 7}
    suspended = _apply(crd_installed, namespace, document)
    assert suspended.returncode == 0, suspended.stderr


def test_kubectl_explain_shows_the_model_descriptions(crd_installed: Cluster) -> None:
    explained = crd_installed.kubectl("explain", "atj.spec.deepspeed.zero.stage").stdout
    assert "ZeRO stage 0-3" in explained


def test_kubectl_get_prints_the_progress_columns(crd_installed: Cluster, namespace: str) -> None:
    assert _apply(crd_installed, namespace, _minimal()).returncode == 0
    header = crd_installed.kubectl("get", "atj", "-n", namespace).stdout.splitlines()[0].split()
    assert header == [
        "NAME",
        "PHASE",
        "WORKERS",
        "STEP",
        "SAMPLES/S",
        "TOKENS/S",
        "RESTARTS",
        "AGE",
    ]

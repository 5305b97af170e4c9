"""A spec that cannot work is rejected with a message naming the field and the fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from accel_contract.config import RESERVED_ENV_NAMES
from accel_operator import api
from accel_operator.api import SpecError, parse_spec
from tests.specs import MINIMAL_SPEC

Patch = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Patch:
    def apply(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    return apply


def _delete(path: str) -> Patch:
    def apply(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for part in parents:
            node = node[part]
        del node[leaf]

    return apply


def _all(*patches: Patch) -> Patch:
    def apply(spec: dict[str, Any]) -> None:
        for patch in patches:
            patch(spec)

    return apply


GPU = _all(_set("devicesPerWorker", 2), _delete("procsPerWorker"))

# (id, patch of MINIMAL_SPEC, fragment the error must contain or None when the spec is valid)
CASES: list[tuple[str, Patch, str | None]] = [
    ("minimal spec is valid", _all(), None),
    ("fp16 on GPUs is valid", _all(GPU, _set("deepspeed.precision", "fp16")), None),
    (
        "fp16 on a CPU trainer is refused",
        _set("deepspeed.precision", "fp16"),
        "deepspeed.precision: fp16 is not supported by DeepSpeed on CPU trainers",
    ),
    (
        "bf16 override with fp16 precision is refused",
        _all(
            GPU,
            _set("deepspeed.precision", "fp16"),
            _set("deepspeed.overrides", {"bf16": {"enabled": True}}),
        ),
        "spec.deepspeed.overrides.bf16: acceltrain sets this from deepspeed.precision",
    ),
    (
        "fp16 override with bf16 precision is refused",
        _all(GPU, _set("deepspeed.overrides", {"fp16": {"enabled": True}})),
        "spec.deepspeed.overrides.fp16: acceltrain sets this from deepspeed.precision",
    ),
    (
        "even a disabled fp16 override is refused: precision owns the block",
        _set("deepspeed.overrides", {"fp16": {"enabled": False}}),
        "spec.deepspeed.overrides.fp16",
    ),
    ("pruning schedule in order is valid", _set("pruning", {"startStep": 2, "endStep": 10}), None),
    (
        "pruning that starts after it ends is refused",
        _set("pruning", {"startStep": 10, "endStep": 10}),
        "pruning.startStep (10) must be smaller than pruning.endStep (10)",
    ),
    (
        "pruning sparsity of 1 is refused",
        _set("pruning", {"targetSparsity": 1.0, "endStep": 10}),
        "spec.pruning.targetSparsity: Input should be less than 1",
    ),
    (
        "pruning sparsity of 0 is refused",
        _set("pruning", {"targetSparsity": 0.0, "endStep": 10}),
        "spec.pruning.targetSparsity: Input should be greater than 0",
    ),
    (
        "pruning that ends after training is refused",
        _set("pruning", {"startStep": 0, "endStep": 50}),
        "spec.pruning.endStep: is after training.maxSteps",
    ),
    (
        "pruning with ZeRO-3 is accepted",
        _all(_set("pruning", {"endStep": 10}), _set("deepspeed.zero", {"stage": 3})),
        None,
    ),
    (
        "optimizer offload at stage 0 is refused",
        _set("deepspeed.zero", {"stage": 0, "offloadOptimizer": "cpu"}),
        "deepspeed.zero.offloadOptimizer: cpu needs deepspeed.zero.stage >= 1",
    ),
    (
        "optimizer offload at stage 1 is valid",
        _set("deepspeed.zero", {"stage": 1, "offloadOptimizer": "cpu"}),
        None,
    ),
    (
        "parameter offload at stage 2 is refused",
        _set("deepspeed.zero", {"stage": 2, "offloadParams": "cpu"}),
        "deepspeed.zero.offloadParams: cpu needs deepspeed.zero.stage: 3",
    ),
    (
        "parameter offload at stage 3 is valid",
        _set("deepspeed.zero", {"stage": 3, "offloadParams": "cpu", "offloadOptimizer": "cpu"}),
        None,
    ),
    (
        "both pretrained and config is refused",
        _set("model.pretrained", "/models/bert"),
        "set exactly one of model.pretrained",
    ),
    (
        "neither pretrained nor config is refused",
        _delete("model.config"),
        "set exactly one of model.pretrained",
    ),
    (
        "both data path and synthetic is refused",
        _set("data.path", "/data/train.jsonl"),
        "set exactly one of data.path",
    ),
    (
        "an unknown data format is refused",
        _all(_delete("data.synthetic"), _set("data.path", "/data/train.parquet")),
        "spec.data.format: cannot infer the format of data.path",
    ),
    (
        "both maxSteps and epochs is refused",
        _set("training.epochs", 2),
        "set exactly one of training.maxSteps or training.epochs",
    ),
    *[
        (
            f"user env {name} is refused",
            _set("env", [{"name": name, "value": "x"}]),
            f"spec.env[0].name: {', '.join(sorted(RESERVED_ENV_NAMES))} and ACCELTRAIN_*",
        )
        for name in (
            "MASTER_ADDR",
            "MASTER_PORT",
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "NODE_RANK",
            "ACCELTRAIN_ANYTHING",
        )
    ],
    ("a user env var of its own is valid", _set("env", [{"name": "HF_TOKEN", "value": "x"}]), None),
    (
        "an env var without a value is refused",
        _set("env", [{"name": "HF_TOKEN"}]),
        "spec.env[0]: set exactly one of value or valueFrom",
    ),
    (
        "GPUs in resources are refused",
        _set("resources", {"limits": {"nvidia.com/gpu": 1}}),
        "spec.resources: do not set nvidia.com/gpu; it comes from devicesPerWorker",
    ),
    (
        "procsPerWorker different from the GPUs is refused",
        _all(_set("devicesPerWorker", 2), _set("procsPerWorker", 4)),
        "spec.procsPerWorker: must equal devicesPerWorker on GPU workers",
    ),
    (
        "lamb on a CPU trainer is refused",
        _set("training.optimizer", {"type": "lamb"}),
        "spec.training.optimizer.type: lamb needs GPUs",
    ),
    (
        "checkpoints on no persistent volume are refused when resuming",
        _set("volumes", []),
        "spec.checkpoint.path: is not on a persistentVolumeClaim or hostPath volume",
    ),
    (
        "checkpoints on an emptyDir are refused when resuming",
        _set("volumes", [{"name": "ckpt", "mountPath": "/checkpoints", "emptyDir": {}}]),
        "checkpoint.resume: false",
    ),
    (
        "checkpoints without resume need no volume",
        _all(_set("volumes", []), _set("checkpoint.resume", False)),
        None,
    ),
    (
        "checkpoints in a sub-directory of a PVC mount are valid",
        _all(
            _set("checkpoint.path", "/mnt/ckpt/run-1"),
            _set(
                "volumes",
                [
                    {
                        "name": "ckpt",
                        "mountPath": "/mnt",
                        "persistentVolumeClaim": {"claimName": "c"},
                    }
                ],
            ),
        ),
        None,
    ),
    (
        "a volume with two sources is refused",
        _set(
            "volumes",
            [
                {
                    "name": "ckpt",
                    "mountPath": "/checkpoints",
                    "hostPath": {"path": "/x"},
                    "emptyDir": {},
                }
            ],
        ),
        "spec.volumes[0]: set exactly one of persistentVolumeClaim, hostPath, emptyDir",
    ),
    (
        "a volume over the config mount is refused",
        _set(
            "volumes",
            [
                *MINIMAL_SPEC["volumes"],
                {"name": "cfg", "mountPath": "/etc/acceltrain", "emptyDir": {}},
            ],
        ),
        "spec.volumes[1].mountPath: /etc/acceltrain, /scratch, /dev/shm are where",
    ),
    (
        "maxLength longer than the positions is refused",
        _set("data.maxLength", 1024),
        "spec.data.maxLength: data.maxLength exceeds model.config.maxPositionEmbeddings",
    ),
    (
        "hidden size not divisible by heads is refused",
        _set("model.config.numHeads", 3),
        "model.config.hiddenSize (64) must be divisible by model.config.numHeads (3)",
    ),
    ("zero workers are refused", _set("workers", 0), "spec.workers: Input should be greater"),
    ("an unknown field is refused", _set("wrokers", 2), "spec.wrokers: Extra inputs"),
    (
        "an unknown ZeRO stage is refused",
        _set("deepspeed.zero", {"stage": 4}),
        "spec.deepspeed.zero.stage: Input should be less than or equal to 3",
    ),
]


@pytest.mark.parametrize(
    ("patch", "expected"), [(p, e) for _, p, e in CASES], ids=[c[0] for c in CASES]
)
def test_spec_validation(patch: Patch, expected: str | None) -> None:
    spec = copy.deepcopy(MINIMAL_SPEC)
    patch(spec)
    if expected is None:
        parse_spec(spec, name="job")
        return
    with pytest.raises(SpecError) as raised:
        parse_spec(spec, name="job")
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bert", None),
        ("a" * api.MAX_JOB_NAME_LENGTH, None),
        ("a" * (api.MAX_JOB_NAME_LENGTH + 1), f"at most {api.MAX_JOB_NAME_LENGTH}"),
        ("9lives", "must be a DNS-1035 label"),
        ("Bert", "must be a DNS-1035 label"),
        ("bert-", "must be a DNS-1035 label"),
    ],
)
def test_job_name_keeps_every_derived_name_a_dns_label(name: str, expected: str | None) -> None:
    if expected is None:
        parse_spec(copy.deepcopy(MINIMAL_SPEC), name=name)
        hostname = f"{name}-a{'9' * api.MAX_ATTEMPT_DIGITS}-{api.MAX_WORKERS - 1}"
        assert len(hostname) <= 63
        return
    with pytest.raises(SpecError, match=r"metadata\.name") as raised:
        parse_spec(copy.deepcopy(MINIMAL_SPEC), name=name)
    assert expected in str(raised.value)


def test_every_problem_is_reported_at_once() -> None:
    spec = copy.deepcopy(MINIMAL_SPEC)
    spec["deepspeed"] = {"precision": "fp16", "zero": {"stage": 0, "offloadOptimizer": "cpu"}}
    spec["training"]["optimizer"] = {"type": "lamb"}
    with pytest.raises(SpecError) as raised:
        parse_spec(spec, name="job")
    message = str(raised.value)
    assert "spec.deepspeed.precision: fp16" in message
    assert "spec.deepspeed.zero.offloadOptimizer: cpu" in message
    assert "spec.training.optimizer.type: lamb" in message


def test_defaults_fill_a_minimal_spec() -> None:
    spec = parse_spec(copy.deepcopy(MINIMAL_SPEC), name="job")
    assert spec.deepspeed.zero.stage == 2
    assert spec.deepspeed.precision is api.Precision.BF16
    assert spec.metrics.port == 9400
    assert spec.run_policy.max_restarts == 3
    assert spec.run_policy.gang_timeout_seconds == 300
    assert spec.procs == 2
    assert spec.world_size == 4

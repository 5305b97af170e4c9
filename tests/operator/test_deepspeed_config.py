"""Every rendered ds_config.json is accepted by DeepSpeed's own parser with the spec's values."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from accel_operator import api, render
from tests.specs import MINIMAL_SPEC, example_files, load_example

deepspeed_config = pytest.importorskip("deepspeed.runtime.config")


@pytest.fixture
def world_of(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Make DeepSpeed's parser believe it runs in a world of the given size (no process group)."""

    def set_world(size: int) -> None:
        monkeypatch.setattr(deepspeed_config.dist, "get_rank", lambda *a, **k: 0)
        monkeypatch.setattr(deepspeed_config.dist, "get_world_size", lambda *a, **k: size)

    yield set_world


def _variant(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL_SPEC)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spec


GPU = {"devicesPerWorker": 4, "procsPerWorker": None}

VARIANTS: dict[str, dict[str, Any]] = {
    **{f"example {path.stem}": load_example(path)["spec"] for path in example_files()},
    **{
        f"zero {stage} {precision}": _variant(
            deepspeed={"zero": {"stage": stage}, "precision": precision}
        )
        for stage in range(4)
        for precision in ("fp32", "bf16")
    },
    "zero 2 fp16 on gpus": {
        **_variant(deepspeed={"zero": {"stage": 2}, "precision": "fp16"}),
        **GPU,
    },
    "zero 3 offload": _variant(
        deepspeed={"zero": {"stage": 3, "offloadOptimizer": "cpu", "offloadParams": "cpu"}}
    ),
    "zero 1 optimizer offload": _variant(
        deepspeed={"zero": {"stage": 1, "offloadOptimizer": "cpu"}}
    ),
    "sgd with momentum": _variant(training__optimizer={"type": "sgd", "lr": 0.1, "momentum": 0.8}),
    "adam": _variant(training__optimizer={"type": "adam", "lr": 0.001}),
    "lamb on gpus": {**_variant(training__optimizer={"type": "lamb"}), **GPU},
    "cosine schedule": _variant(
        training__scheduler={"type": "cosine", "warmupSteps": 5, "minLrRatio": 0.1}
    ),
    "constant schedule": _variant(training__scheduler={"type": "constant", "warmupSteps": 3}),
    "accumulation and clipping": _variant(
        training__gradientAccumulation=4, training__gradientClipping=0.5, training__microBatchSize=3
    ),
    "activation checkpointing": _variant(deepspeed={"activationCheckpointing": True}),
    "overrides merged last": _variant(
        deepspeed={
            "zero": {"stage": 2},
            "overrides": {"zero_optimization": {"round_robin_gradients": True}},
        }
    ),
}


def _clean(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if value is not None}


@pytest.mark.parametrize("raw", list(VARIANTS.values()), ids=list(VARIANTS))
def test_deepspeed_parses_rendered_config_with_the_spec_values(
    raw: dict[str, Any], world_of: Any
) -> None:
    spec = api.parse_spec(_clean(raw))
    rendered = render.deepspeed_config(spec)
    world_of(spec.world_size)
    parsed = deepspeed_config.DeepSpeedConfig(copy.deepcopy(rendered))

    training = spec.training
    assert parsed.train_micro_batch_size_per_gpu == training.micro_batch_size
    assert parsed.gradient_accumulation_steps == training.gradient_accumulation
    assert (
        parsed.train_batch_size
        == training.micro_batch_size * training.gradient_accumulation * spec.world_size
    )
    assert parsed.gradient_clipping == (training.gradient_clipping or 0.0)

    zero = spec.deepspeed.zero
    assert parsed.zero_optimization_stage == zero.stage
    assert parsed.zero_enabled == (zero.stage > 0)
    offload_optimizer = parsed.zero_config.offload_optimizer
    offload_param = parsed.zero_config.offload_param
    if zero.offload_optimizer is api.OffloadDevice.CPU:
        assert offload_optimizer is not None and offload_optimizer.device == "cpu"
    else:
        assert offload_optimizer is None or offload_optimizer.device == "none"
    if zero.offload_params is api.OffloadDevice.CPU:
        assert offload_param is not None and offload_param.device == "cpu"
    else:
        assert offload_param is None or offload_param.device == "none"

    precision = spec.deepspeed.precision
    assert parsed.bfloat16_config.enabled == (precision is api.Precision.BF16)
    assert parsed.float16_config.enabled == (precision is api.Precision.FP16)
    if precision is api.Precision.FP16:
        assert parsed.float16_config.initial_scale_power == spec.deepspeed.fp16.initial_scale_power
        assert parsed.float16_config.loss_scale_window == spec.deepspeed.fp16.loss_scale_window

    optimizer = training.optimizer
    assert parsed.optimizer_name.lower() == optimizer.type.value
    assert parsed.optimizer_params["lr"] == optimizer.lr
    assert parsed.optimizer_params["weight_decay"] == optimizer.weight_decay
    if optimizer.type.value == "sgd":
        assert parsed.optimizer_params["momentum"] == optimizer.momentum

    scheduler_names = {
        "constant": "WarmupLR",
        "linear": "WarmupDecayLR",
        "cosine": "WarmupCosineLR",
    }
    assert parsed.scheduler_name == scheduler_names[training.scheduler.type.value]
    # DeepSpeed refuses 0 warmup steps; a spec without warmup gets DeepSpeed's shortest.
    assert parsed.scheduler_params["warmup_num_steps"] == max(1, training.scheduler.warmup_steps)
    if training.max_steps is not None and training.scheduler.type.value != "constant":
        assert parsed.scheduler_params["total_num_steps"] == training.max_steps

    for key, value in spec.deepspeed.overrides.get("zero_optimization", {}).items():
        assert getattr(parsed.zero_config, key) == value


def test_overrides_merge_into_nested_blocks_without_dropping_siblings() -> None:
    spec = api.parse_spec(
        _variant(
            deepspeed={
                "zero": {"stage": 2},
                "overrides": {
                    "zero_optimization": {"round_robin_gradients": True},
                    "flops_profiler": {"enabled": True},
                },
            }
        )
    )
    rendered = render.deepspeed_config(spec)
    assert rendered["zero_optimization"]["round_robin_gradients"] is True
    assert rendered["zero_optimization"]["stage"] == 2
    assert rendered["flops_profiler"] == {"enabled": True}


def test_cpu_adam_uses_torch_kernels_and_gpu_adam_does_not() -> None:
    cpu = render.deepspeed_config(api.parse_spec(_variant()))
    gpu = render.deepspeed_config(api.parse_spec(_clean({**_variant(), **GPU})))
    assert cpu["optimizer"]["params"]["torch_adam"] is True
    assert "torch_adam" not in gpu["optimizer"]["params"]


def test_epochs_leave_the_step_count_to_the_trainer() -> None:
    spec = _variant()
    spec["training"] = {"epochs": 2}
    rendered = render.deepspeed_config(api.parse_spec(spec))
    assert "total_num_steps" not in rendered["scheduler"]["params"]


def _learning_rates(rendered: dict[str, Any], steps: int) -> list[float]:
    """The learning rate of each optimizer step, from the scheduler DeepSpeed builds out of
    the rendered config (as its engine does: the class named by ``type`` with ``params``)."""
    torch = pytest.importorskip("torch")
    lr_schedules = pytest.importorskip("deepspeed.runtime.lr_schedules")
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=rendered["optimizer"]["params"]["lr"])
    block = rendered["scheduler"]
    scheduler = getattr(lr_schedules, block["type"])(optimizer, **block["params"])
    rates = []
    for _ in range(steps):
        rates.append(float(optimizer.param_groups[0]["lr"]))
        scheduler.step()
    return rates


SCHEDULES = [
    {"type": schedule, "warmupSteps": warmup, "minLrRatio": 0.1}
    for schedule in ("constant", "linear", "cosine")
    for warmup in (0, 1, 5)
]


@pytest.mark.parametrize(
    "schedule", SCHEDULES, ids=[f"{s['type']} warmup {s['warmupSteps']}" for s in SCHEDULES]
)
def test_deepspeed_builds_the_rendered_scheduler_and_it_follows_the_spec(
    schedule: dict[str, Any],
) -> None:
    steps, lr = 20, 0.01
    spec = api.parse_spec(
        _variant(
            training={
                "maxSteps": steps,
                "optimizer": {"type": "sgd", "lr": lr},
                "scheduler": schedule,
            }
        )
    )
    rates = _learning_rates(render.deepspeed_config(spec), steps)

    assert all(0.0 <= rate <= lr for rate in rates), rates
    assert max(rates) == pytest.approx(lr, rel=0.02)
    warmup = schedule["warmupSteps"]
    if schedule["type"] == "constant":
        # Without warmup the rate is the spec's from the very first step.
        expected_start = lr if warmup == 0 else 0.0
        assert rates[0] == pytest.approx(expected_start)
        assert rates[-1] == pytest.approx(lr)
    elif schedule["type"] == "linear":
        assert rates[-1] < 0.2 * lr
        assert rates[-6:] == sorted(rates[-6:], reverse=True)
    else:
        assert rates[-1] == pytest.approx(0.1 * lr, rel=0.1)
        if warmup == 0:
            # DeepSpeed's cosine schedule starts its very first step at 0; then the full rate.
            assert rates[1] == pytest.approx(lr)
    if warmup >= 2:
        assert rates[warmup - 1] < lr, f"no warmup over {warmup} steps: {rates}"

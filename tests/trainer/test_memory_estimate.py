"""The memory preflight: the ZeRO accounting of model states, the activation estimate, the
per-rank budget, and the one-line refusal that names only the spec fields that would help."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from accel_contract.config import ENV_MEMORY_LIMIT_BYTES, ExitCode, ModelSpec, TrainerConfig
from accel_trainer.errors import ConfigError
from accel_trainer.memoryfit import (
    FIT_MARGIN,
    Budget,
    MemoryEstimate,
    TrainingSetup,
    container_memory_limit,
    count_parameters,
    estimate,
    format_bytes,
    memory_budget,
    setup_for,
)
from accel_trainer.models import ModelShape, build_model, empty_model, model_shape
from accel_trainer.tokenization import from_serialized, train_wordpiece

GIB = 1024**3
PSI = 1_000_000
# One micro-batch of 16 x 32 tokens through 2 layers of width 64: 32,768 token-units per layer.
TOKEN_UNITS = 16 * 32 * 64

# A model of one million parameters on 4 ranks, bf16 AdamW, micro-batch 16 of 32 tokens.
BASE = TrainingSetup(
    num_params=PSI,
    num_layers=2,
    hidden_size=64,
    world_size=4,
    zero_stage=0,
    precision="bf16",
    optimizer="adamw",
    sgd_momentum=False,
    offload_optimizer=False,
    offload_params=False,
    micro_batch=16,
    seq_length=32,
    activation_checkpointing=False,
    on_gpu=True,
)


def setup(**changes: Any) -> TrainingSetup:
    return dataclasses.replace(BASE, **changes)


def parts(result: MemoryEstimate) -> tuple[int, int, int]:
    return result.params, result.grads, result.optimizer


# --- model states: the ZeRO paper's 2 + 2 + K bytes per parameter, split by stage ------------
@pytest.mark.parametrize(
    ("precision", "stage", "expected"),
    [
        # bf16/fp16: 2 params + 2 grads + 12 optimizer (fp32 master, momentum, variance), N = 4.
        ("bf16", 0, (2_000_000, 2_000_000, 12_000_000)),
        ("bf16", 1, (2_000_000, 2_000_000, 3_000_000)),
        ("bf16", 2, (2_000_000, 500_000, 3_000_000)),
        ("fp16", 3, (500_000, 500_000, 3_000_000)),
        # fp32: 4 params + 4 grads + 8 optimizer (momentum, variance; no master copy).
        ("fp32", 0, (4_000_000, 4_000_000, 8_000_000)),
        ("fp32", 1, (4_000_000, 4_000_000, 2_000_000)),
        ("fp32", 2, (4_000_000, 1_000_000, 2_000_000)),
        ("fp32", 3, (1_000_000, 1_000_000, 2_000_000)),
    ],
)
def test_model_states_per_rank_follow_the_zero_paper_for_each_stage_and_precision(
    precision: str, stage: int, expected: tuple[int, int, int]
) -> None:
    result = estimate(setup(precision=precision, zero_stage=stage), None)

    assert parts(result) == expected
    assert result.host_total == 0
    assert result.device_total == sum(expected) + result.activations


@pytest.mark.parametrize(
    ("precision", "momentum", "optimizer_bytes"),
    [
        ("bf16", True, 8_000_000),  # fp32 master copy + momentum
        ("bf16", False, 4_000_000),  # fp32 master copy only
        ("fp32", True, 4_000_000),  # momentum only
        ("fp32", False, 0),
    ],
)
def test_sgd_keeps_a_master_copy_in_mixed_precision_and_momentum_when_asked(
    precision: str, momentum: bool, optimizer_bytes: int
) -> None:
    result = estimate(setup(optimizer="sgd", sgd_momentum=momentum, precision=precision), None)

    assert result.optimizer == optimizer_bytes


def test_an_optimizer_outside_the_table_is_counted_like_adam() -> None:
    assert estimate(setup(optimizer="onebitlamb"), None).optimizer == 12_000_000


def test_offloading_moves_optimizer_state_and_parameters_from_the_gpu_to_the_host() -> None:
    optimizer_only = estimate(setup(zero_stage=2, offload_optimizer=True), None)
    both = estimate(setup(zero_stage=3, offload_optimizer=True, offload_params=True), None)

    assert optimizer_only.host_total == 3_000_000
    assert optimizer_only.device_total == 2_000_000 + 500_000 + optimizer_only.activations
    assert both.host_total == 3_000_000 + 500_000
    assert both.device_total == 500_000 + both.activations


def test_a_cpu_trainer_counts_offloaded_state_against_the_same_memory() -> None:
    offloaded = estimate(
        setup(on_gpu=False, zero_stage=3, offload_optimizer=True, offload_params=True), None
    )
    kept = estimate(setup(on_gpu=False, zero_stage=3), None)

    assert offloaded.host_total == 0
    assert offloaded.device_total == kept.device_total == 4_000_000 + offloaded.activations


# --- activations: 34 bytes per token and hidden unit per layer in 16-bit --------------------------
def test_activations_are_34_bytes_per_token_and_hidden_unit_per_layer_in_16_bit() -> None:
    assert estimate(setup(precision="bf16"), None).activations == 34 * TOKEN_UNITS * 2
    assert estimate(setup(precision="fp32"), None).activations == 68 * TOKEN_UNITS * 2
    assert estimate(setup(micro_batch=32), None).activations == 2 * 34 * TOKEN_UNITS * 2


def test_activation_checkpointing_keeps_each_layer_input_and_one_layer_at_a_time() -> None:
    result = estimate(setup(activation_checkpointing=True, num_layers=24), None)

    assert result.activations == 2 * TOKEN_UNITS * 24 + 34 * TOKEN_UNITS


# --- the verdict ----------------------------------------------------------------------------------
def test_a_run_fits_up_to_the_safety_margin_of_the_budget() -> None:
    needed = estimate(setup(), None).device_total
    exactly = Budget(int(needed / FIT_MARGIN) + 1, "test")
    short = Budget(int(needed / FIT_MARGIN) - 1024, "test")

    assert FIT_MARGIN == 0.9
    assert estimate(setup(), exactly).fits
    assert not estimate(setup(), short).fits
    assert estimate(setup(), None).fits  # no budget: the check is skipped


def test_the_estimate_line_shows_parts_budget_and_verdict() -> None:
    result = estimate(setup(zero_stage=2), Budget(80 * GIB, "GPU 0, NVIDIA H100 80GB HBM3"))

    line = result.describe()

    assert line == (
        "memory estimate per rank: params 1.9 MiB, grads 488.3 KiB, optimizer 2.9 MiB, "
        "activations 2.1 MiB; 7.4 MiB on the device and 0 B on the host, for 1,000,000 "
        "parameters at ZeRO stage 2 with bf16 over 4 rank(s); budget 80.0 GiB (GPU 0, NVIDIA "
        "H100 80GB HBM3), fits within 90% of it"
    )


def test_offloaded_parts_are_marked_as_on_the_host() -> None:
    result = estimate(setup(zero_stage=3, offload_optimizer=True, offload_params=True), None)

    assert result.describe().startswith(
        "memory estimate per rank: params 488.3 KiB on the host, grads 488.3 KiB, optimizer "
        "2.9 MiB on the host, activations 2.1 MiB; 2.6 MiB on the device and 3.3 MiB on the host"
    )


def test_without_a_budget_the_line_says_the_check_was_skipped() -> None:
    line = estimate(setup(), None).describe()

    assert f"memory check skipped: no budget known (no {ENV_MEMORY_LIMIT_BYTES}" in line


# --- the refusal names only what would help -------------------------------------------------------
# A BERT-large-sized model (350M parameters, 24 layers of 1024) on 8 GPUs of 16 GiB, bf16 AdamW,
# micro-batch 32 of 512 tokens. Per rank at stage 0: params 0.7 GB + grads 0.7 GB + optimizer
# 4.2 GB, activations 32 x 512 x 1024 x 34 x 24 = 13,690,208,256 bytes; 14.4 GiB usable.
LARGE = {"num_params": 350_000_000, "num_layers": 24, "hidden_size": 1024, "seq_length": 512}
T4 = Budget(16 * GIB, "GPU 0, NVIDIA T4")


def test_a_gpu_refusal_at_stage_0_lists_every_remedy_in_spec_field_names() -> None:
    result = estimate(setup(**LARGE, world_size=8, micro_batch=32), T4)

    message = result.failure_message()

    assert not result.fits
    assert "\n" not in message
    assert message == (
        "memory: training needs 18.0 GiB per rank at ZeRO stage 0 with bf16 over 8 rank(s) "
        "(params 667.6 MiB, grads 667.6 MiB, optimizer 3.9 GiB, activations 12.8 GiB), but a "
        "rank has 16.0 GiB (GPU 0, NVIDIA T4), 90% of which is usable; "
        "set deepspeed.zero.stage: 3, "
        "set deepspeed.zero.offloadOptimizer: cpu (with deepspeed.zero.stage >= 1), "
        "set deepspeed.zero.offloadParams: cpu (with deepspeed.zero.stage: 3), "
        # (14.4 GiB - 5.6 GB of model states) / 427,819,008 bytes per sample = 23.05
        "lower training.microBatchSize to 23 (now 32; raise training.gradientAccumulation to "
        "keep the batch), "
        "lower data.maxLength to 368 (now 512), "
        "or turn on deepspeed.activationCheckpointing"
    )


def test_a_refusal_leaves_out_what_is_already_set() -> None:
    # 48 layers at micro-batch 1 of 131,072 tokens: 131,072 x 1024 x 2 bytes x (48 + 17).
    done = setup(
        **{**LARGE, "num_layers": 48, "seq_length": 131072},
        world_size=8,
        zero_stage=3,
        offload_optimizer=True,
        offload_params=True,
        activation_checkpointing=True,
        micro_batch=1,
    )
    result = estimate(done, T4)

    message = result.failure_message()

    assert not result.fits
    assert message.endswith(
        "; raise devicesPerWorker/workers (ZeRO shards over more ranks), "
        "or lower data.maxLength to 115492 (now 131072)"
    )
    for already_set in ("zero.stage", "offload", "microBatchSize", "activationCheckpointing"):
        assert already_set not in message


# 100M parameters, 12 layers of 768, micro-batch 8 of 128 tokens, bf16 AdamW at ZeRO stage 2 on
# 2 CPU ranks of a pod limited to 2 GiB: 200 MB + 100 MB + 600 MB + 320,864,256 bytes per rank.
BASE_SIZE = {"num_params": 100_000_000, "num_layers": 12, "hidden_size": 768, "seq_length": 128}
CPU_BUDGET = Budget(
    GIB,
    f"container memory limit 2.0 GiB from {ENV_MEMORY_LIMIT_BYTES}, over 2 local rank(s)",
    shared_by=2,
)


def test_a_cpu_refusal_suggests_more_workers_and_a_memory_limit_but_not_offload() -> None:
    cpu = setup(**BASE_SIZE, on_gpu=False, zero_stage=2, world_size=2, micro_batch=8)
    result = estimate(cpu, CPU_BUDGET)

    message = result.failure_message()

    assert not result.fits
    assert message.startswith("memory: training needs 1.1 GiB per rank at ZeRO stage 2 with bf16")
    # On 4 ranks: 200 MB + 50 MB + 300 MB + 321 MB = 871 MB <= 0.9 GiB.
    assert "; raise workers (ZeRO shards over more ranks, fits on 4 ranks), " in message
    assert "set deepspeed.zero.stage: 3, " in message
    assert "offload" not in message
    assert "devicesPerWorker" not in message
    assert "lower training.microBatchSize to 1 (now 8;" in message
    # 1,220,864,256 bytes / 0.9 for each of the 2 local ranks.
    assert message.endswith(
        "turn on deepspeed.activationCheckpointing, "
        "or raise resources.limits.memory to 2.5 GiB or more"
    )


def test_a_single_rank_at_stage_0_is_told_that_stage_3_needs_more_ranks() -> None:
    result = estimate(setup(**BASE_SIZE, on_gpu=False, world_size=1), CPU_BUDGET)

    message = result.failure_message()

    assert "set deepspeed.zero.stage: 3 and raise workers, " in message
    assert "raise workers (ZeRO" not in message


def test_sizes_are_shown_in_the_largest_binary_unit_below_them() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1024, 1536 * 1024, 3 * GIB, 5 * 1024 * GIB)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 MiB",
        "3.0 GiB",
        "5.0 TiB",
    ]


# --- the budget -----------------------------------------------------------------------------------
def test_a_cpu_rank_gets_the_containers_limit_over_the_pods_local_ranks(tmp_path: Path) -> None:
    env = {ENV_MEMORY_LIMIT_BYTES: str(8 * GIB)}

    budget = memory_budget("cpu", local_rank=1, local_world_size=2, env=env, cgroup_file=tmp_path)

    assert budget == Budget(
        4 * GIB,
        f"container memory limit 8.0 GiB from {ENV_MEMORY_LIMIT_BYTES}, over 2 local rank(s)",
        shared_by=2,
    )


def test_a_gpu_rank_gets_its_devices_memory_whatever_the_container_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    asked: list[int] = []

    def properties(index: int) -> Any:
        asked.append(index)
        return types.SimpleNamespace(total_memory=80 * GIB, name="NVIDIA H100 80GB HBM3")

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    env = {ENV_MEMORY_LIMIT_BYTES: str(GIB)}

    budget = memory_budget("cuda", local_rank=3, local_world_size=8, env=env, cgroup_file=tmp_path)

    assert budget == Budget(80 * GIB, "GPU 3, NVIDIA H100 80GB HBM3")
    assert asked == [3]


def test_the_env_limit_wins_over_the_cgroup_which_counts_unless_it_says_max(
    tmp_path: Path,
) -> None:
    cgroup = tmp_path / "memory.max"
    cgroup.write_text("2147483648\n")

    assert container_memory_limit({ENV_MEMORY_LIMIT_BYTES: "1000"}, cgroup) == (
        1000,
        ENV_MEMORY_LIMIT_BYTES,
    )
    assert container_memory_limit({}, cgroup) == (2 * GIB, str(cgroup))
    cgroup.write_text("max\n")
    assert container_memory_limit({}, cgroup) is None
    assert container_memory_limit({}, tmp_path / "missing") is None


@pytest.mark.parametrize("raw", ["2Gi", "-5", "0"])
def test_a_malformed_limit_env_is_a_permanent_config_error(raw: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"env {ENV_MEMORY_LIMIT_BYTES}=") as raised:
        container_memory_limit({ENV_MEMORY_LIMIT_BYTES: raw}, tmp_path / "memory.max")

    assert raised.value.exit_code == ExitCode.CONFIG_ERROR


# --- inputs: the model on the meta device and the run's settings ---------------------------------
@pytest.fixture(scope="module")
def tokenizer() -> Any:
    texts = [f"token{i % 7} word{i % 11} and the end" for i in range(100)]
    return from_serialized(train_wordpiece(texts, 80), max_length=32)


def trainer_config(architecture: str, task: str) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "model": {
                "task": task,
                "config": {"architecture": architecture, "hiddenSize": 32, "numLayers": 3},
            },
            "data": {"synthetic": {}},
            "training": {"maxSteps": 1, "microBatchSize": 4},
        }
    )


@pytest.mark.parametrize(
    ("architecture", "task"),
    [("bert", "sequence-classification"), ("gpt2", "causal-lm"), ("llama", "causal-lm")],
)
def test_the_meta_model_counts_the_parameters_the_real_model_has(
    architecture: str, task: str, tokenizer: Any
) -> None:
    config = trainer_config(architecture, task)
    labels = [] if task == "causal-lm" else ["a", "b"]

    counted = count_parameters(config, tokenizer, labels)
    real = model_shape(
        build_model(config.model, tokenizer, labels, seed=0, activation_checkpointing=False)
    )

    assert counted == real
    assert counted.num_layers == 3 and counted.hidden_size == 32


def test_the_meta_model_holds_no_weights(tokenizer: Any) -> None:
    spec = ModelSpec.model_validate({"config": {"hiddenSize": 1024, "numLayers": 24}})

    model = empty_model(spec, tokenizer, ["a", "b"])

    assert {parameter.device for parameter in model.parameters()} == {torch.device("meta")}


def test_the_setup_reads_stage_precision_optimizer_offload_and_batch_from_ds_config() -> None:
    config = trainer_config("bert", "sequence-classification").model_copy(
        update={"activation_checkpointing": True}
    )
    ds_config = {
        "train_micro_batch_size_per_gpu": 6,
        "bf16": {"enabled": True},
        "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}},
        "zero_optimization": {
            "stage": 3,
            "offload_optimizer": {"device": "cpu"},
            "offload_param": {"device": "cpu"},
        },
    }
    shape = ModelShape(num_params=10, num_layers=2, hidden_size=8)

    result = setup_for(config, ds_config, shape, world_size=4, seq_length=24)

    assert result == TrainingSetup(
        num_params=10,
        num_layers=2,
        hidden_size=8,
        world_size=4,
        zero_stage=3,
        precision="bf16",
        optimizer="sgd",
        sgd_momentum=True,
        offload_optimizer=True,
        offload_params=True,
        micro_batch=6,
        seq_length=24,
        activation_checkpointing=True,
        on_gpu=False,
    )

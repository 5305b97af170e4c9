"""What the trainer checks before any rank starts, and how it adapts ds_config.json to the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from accel_contract.config import TrainerConfig
from accel_trainer.errors import ConfigError, MissingInputError
from accel_trainer.runconfig import (
    LocalOverrides,
    apply_overrides,
    check_inputs_exist,
    load_deepspeed_config,
    load_trainer_config,
    resolve_deepspeed_config,
    validate,
    with_schedule_length,
)

TRAINER: dict[str, Any] = {
    "model": {"config": {"hiddenSize": 64, "numHeads": 2, "maxPositionEmbeddings": 64}},
    "data": {"synthetic": {}, "maxLength": 32},
    "training": {"maxSteps": 100, "microBatchSize": 4},
}
DS: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "train_batch_size": 32,
    "zero_optimization": {"stage": 2},
    "bf16": {"enabled": True},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 10}},
}


def config(**changes: Any) -> TrainerConfig:
    return TrainerConfig.model_validate({**TRAINER, **changes})


def ds(**changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(DS)), **changes}


@pytest.mark.parametrize(
    ("ds_config", "device", "message"),
    [
        (
            ds(bf16={"enabled": False}, fp16={"enabled": True}),
            "cpu",
            "spec.deepspeed.precision: fp16 is not supported by DeepSpeed on CPU trainers",
        ),
        (ds(fp16={"enabled": True}), "cpu", "fp16 and bf16 are both enabled"),
        (
            ds(optimizer={"type": "Lamb", "params": {}}),
            "cpu",
            "spec.training.optimizer.type: lamb needs GPUs",
        ),
        (
            ds(zero_optimization={"stage": 2, "offload_param": {"device": "cpu"}}),
            "cpu",
            "spec.deepspeed.zero.offloadParams: cpu needs deepspeed.zero.stage: 3",
        ),
        (
            ds(zero_optimization={"stage": 0, "offload_optimizer": {"device": "cpu"}}),
            "cpu",
            "spec.deepspeed.zero.offloadOptimizer: cpu needs deepspeed.zero.stage >= 1",
        ),
        (ds(zero_optimization={"stage": 4}), "cpu", "zero_optimization.stage is 4"),
        ({k: v for k, v in DS.items() if k != "optimizer"}, "cpu", "no optimizer block"),
    ],
)
def test_configs_that_cannot_run_are_refused_naming_the_setting(
    ds_config: dict[str, Any], device: str, message: str
) -> None:
    with pytest.raises(
        ConfigError, match="^ds_config.json: " + message.replace("(", r"\(").replace(")", r"\)")
    ):
        validate(config(device=device), ds_config, world_size=2)


def test_a_max_length_beyond_the_position_embeddings_is_refused() -> None:
    too_long = config(data={"synthetic": {}, "maxLength": 128})

    with pytest.raises(
        ConfigError, match=r"spec.data.maxLength: data.maxLength exceeds .*maxPositionEmbeddings"
    ):
        validate(too_long, ds(), world_size=1)


def test_a_valid_cpu_config_passes() -> None:
    validate(config(), ds(), world_size=2)


def test_trainer_json_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "trainer.json"
    path.write_text(json.dumps({**TRAINER, "training": {"maxSteps": 0}}))

    with pytest.raises(ConfigError, match=rf"^{path}: training.maxSteps: Input should be greater"):
        load_trainer_config(path)


def test_the_deepspeed_path_is_made_absolute_next_to_trainer_json(tmp_path: Path) -> None:
    path = tmp_path / "trainer.json"
    path.write_text(json.dumps(TRAINER))

    assert load_trainer_config(path).deepspeed_config == str(tmp_path / "ds_config.json")


def test_ds_config_json_errors_give_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "ds_config.json"
    path.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n')

    with pytest.raises(ConfigError, match=rf"^{path}:2:\d+: not valid JSON"):
        load_deepspeed_config(path)


def test_missing_files_are_missing_input(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=r"--config .* does not exist"):
        load_trainer_config(tmp_path / "trainer.json")
    with pytest.raises(MissingInputError, match=r"deepspeedConfig .* does not exist"):
        load_deepspeed_config(tmp_path / "ds_config.json")
    with pytest.raises(MissingInputError, match=r"model\.pretrained '/models/bert' does not exist"):
        check_inputs_exist(config(model={"pretrained": "/models/bert"}))


def test_the_batch_size_follows_the_actual_world_size() -> None:
    resolved = resolve_deepspeed_config(ds(), config(), world_size=3, total_steps=100)

    assert resolved["train_batch_size"] == 4 * 2 * 3


def test_a_scheduler_without_a_length_gets_the_runs_step_count() -> None:
    resolved = resolve_deepspeed_config(ds(), config(), world_size=1, total_steps=321)

    assert resolved["scheduler"]["params"]["total_num_steps"] == 321


def test_a_rendered_scheduler_length_is_kept_and_a_cli_length_replaces_it() -> None:
    rendered = ds(scheduler={"type": "WarmupCosineLR", "params": {"total_num_steps": 500}})

    kept = resolve_deepspeed_config(rendered, config(), world_size=1, total_steps=50)
    replaced = with_schedule_length(rendered, 50)

    assert kept["scheduler"]["params"]["total_num_steps"] == 500
    assert replaced["scheduler"]["params"]["total_num_steps"] == 50
    assert rendered["scheduler"]["params"]["total_num_steps"] == 500


def test_cli_max_steps_replaces_epochs() -> None:
    by_epochs = config(training={"epochs": 3})

    overridden = apply_overrides(by_epochs, LocalOverrides(max_steps=7, metrics_port=9999))

    assert (overridden.training.max_steps, overridden.training.epochs) == (7, None)
    assert overridden.metrics.port == 9999

"""Reading and checking a run's configuration before any rank starts: ``trainer.json``,
``ds_config.json`` and the CLI overrides of local runs.

Everything here fails with a one-line :class:`~accel_trainer.errors.ConfigError` (exit 64) or
:class:`~accel_trainer.errors.MissingInputError` (exit 66) that names the field or file and the
fix, because the operator shows that line as the reason a job failed. The checks catch what
DeepSpeed would only reject minutes into a run (fp16 or LAMB on a CPU trainer) or would accept
and then behave unexpectedly.

:func:`resolve_deepspeed_config` adapts the rendered DeepSpeed config to the run as it actually
is: the batch size for the real world size and the scheduler length when it depends on the data.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from accel_contract import rules
from accel_contract.config import TrainerConfig
from accel_trainer.errors import ConfigError, MissingInputError

# DeepSpeed schedulers whose length is their total_num_steps parameter.
_SCHEDULERS_WITH_LENGTH = ("WarmupDecayLR", "WarmupCosineLR")


@dataclass(frozen=True)
class LocalOverrides:
    """CLI settings for local runs that replace fields of trainer.json."""

    max_steps: int | None = None
    checkpoint_dir: str | None = None
    output_dir: str | None = None
    metrics_port: int | None = None


def load_trainer_config(path: str | Path) -> TrainerConfig:
    file = Path(path)
    if not file.is_file():
        raise MissingInputError(
            f"--config '{file}' does not exist: mount the ConfigMap with trainer.json or pass "
            "the path of a trainer.json"
        )
    try:
        config = TrainerConfig.load(file)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConfigError(
            f"{file}: {where}: {first['msg']} ({len(error.errors())} problem(s) in total): "
            "fix trainer.json"
        ) from None
    except ValueError as error:
        raise ConfigError(f"{file}: not valid trainer JSON ({error}): fix trainer.json") from None
    # Absolute, because the ranks read a copy of the resolved config from another directory.
    absolute = str(Path(config.deepspeed_config).resolve())
    return config.model_copy(update={"deepspeed_config": absolute})


def load_deepspeed_config(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise MissingInputError(
            f"deepspeedConfig '{file}' does not exist: it is rendered next to trainer.json "
            "(ds_config.json); check the ConfigMap or the deepspeedConfig field"
        )
    try:
        loaded = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{file}:{error.lineno}:{error.colno}: not valid JSON ({error.msg}): fix ds_config.json"
        ) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{file}: expected a JSON object at the top level: fix ds_config.json")
    return loaded


def apply_overrides(config: TrainerConfig, overrides: LocalOverrides) -> TrainerConfig:
    training = config.training
    if overrides.max_steps is not None:
        training = training.model_copy(update={"max_steps": overrides.max_steps, "epochs": None})
    checkpoint = config.checkpoint
    if overrides.checkpoint_dir is not None:
        checkpoint = checkpoint.model_copy(update={"dir": overrides.checkpoint_dir})
    metrics = config.metrics
    if overrides.metrics_port is not None:
        metrics = metrics.model_copy(update={"port": overrides.metrics_port})
    update: dict[str, Any] = {"training": training, "checkpoint": checkpoint, "metrics": metrics}
    if overrides.output_dir is not None:
        update["output_dir"] = overrides.output_dir
    return config.model_copy(update=update)


def precision_of(ds_config: dict[str, Any]) -> str:
    """fp16, bf16 or fp32, as the DeepSpeed config enables it."""
    if _enabled(ds_config.get("fp16")):
        return "fp16"
    if _enabled(ds_config.get("bf16")) or _enabled(ds_config.get("bfloat16")):
        return "bf16"
    return "fp32"


def zero_stage_of(ds_config: dict[str, Any]) -> int:
    zero = ds_config.get("zero_optimization") or {}
    return int(zero.get("stage", 0)) if isinstance(zero, dict) else 0


def _enabled(section: Any) -> bool:
    return isinstance(section, dict) and bool(section.get("enabled", False))


def _offload_device(zero: dict[str, Any], key: str) -> str:
    section = zero.get(key)
    if isinstance(section, dict):
        return str(section.get("device", "none"))
    return "none"


def run_facts(config: TrainerConfig, ds_config: dict[str, Any]) -> rules.RunFacts:
    """What the shared run rules look at, read from trainer.json and ds_config.json."""
    zero = ds_config.get("zero_optimization") or {}
    optimizer = ds_config.get("optimizer") or {}
    architecture = config.model.config
    return rules.RunFacts(
        on_cpu=config.device == "cpu",
        precision=precision_of(ds_config),
        zero_stage=zero_stage_of(ds_config),
        offload_optimizer=_offload_device(zero, "offload_optimizer") != "none",
        offload_params=_offload_device(zero, "offload_param") != "none",
        optimizer=str(optimizer.get("type", "")).lower(),
        max_length=config.data.max_length,
        max_positions=architecture.max_position_embeddings if architecture else None,
    )


def validate(config: TrainerConfig, ds_config: dict[str, Any], world_size: int) -> None:
    """Reject configurations that cannot run here, before any rank starts."""
    ds_file = config.deepspeed_config
    if _enabled(ds_config.get("fp16")) and (
        _enabled(ds_config.get("bf16")) or _enabled(ds_config.get("bfloat16"))
    ):
        raise ConfigError(f"{ds_file}: fp16 and bf16 are both enabled: enable at most one")
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "device is cuda but this pod sees no GPU: request nvidia.com/gpu "
                "(devicesPerWorker) on a GPU node, or use devicesPerWorker 0 for a CPU trainer"
            )
    optimizer = ds_config.get("optimizer")
    if not isinstance(optimizer, dict) or not optimizer.get("type"):
        raise ConfigError(
            f"{ds_file}: no optimizer block: DeepSpeed builds the optimizer from ds_config.json, "
            "so it needs optimizer.type and optimizer.params"
        )
    stage = zero_stage_of(ds_config)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{ds_file}: zero_optimization.stage is {stage}: use 0, 1, 2 or 3")
    broken = rules.problems(rules.RUN_RULES, run_facts(config, ds_config))
    if broken:
        raise ConfigError(f"{ds_file}: " + "; ".join(broken))
    micro = ds_config.get("train_micro_batch_size_per_gpu", config.training.micro_batch_size)
    accumulation = ds_config.get(
        "gradient_accumulation_steps", config.training.gradient_accumulation
    )
    if (
        not isinstance(micro, int)
        or micro < 1
        or not isinstance(accumulation, int)
        or accumulation < 1
    ):
        raise ConfigError(
            f"{ds_file}: train_micro_batch_size_per_gpu and gradient_accumulation_steps must be "
            "positive integers"
        )
    if world_size < 1:
        raise ConfigError("the world size must be at least 1: check procsPerWorker and workers")


def check_inputs_exist(config: TrainerConfig) -> None:
    """Fail fast (exit 66) when a path the config names is missing in this pod."""
    data = config.data
    for path, field in (
        (data.path, "data.path"),
        (data.eval_path, "data.evalPath"),
        (data.test_path, "data.testPath"),
    ):
        if path is not None and not Path(path).is_file():
            raise MissingInputError(
                f"{field} '{path}' does not exist in this pod: mount the volume that holds it or "
                f"fix {field}"
            )
    for path, field in (
        (config.model.pretrained, "model.pretrained"),
        (config.model.tokenizer, "model.tokenizer"),
    ):
        if path is not None and _looks_like_path(path) and not os.path.exists(path):
            raise MissingInputError(
                f"{field} '{path}' does not exist in this pod: mount the volume that holds the "
                f"model or fix {field}"
            )


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~"))


def resolve_deepspeed_config(
    ds_config: dict[str, Any],
    config: TrainerConfig,
    *,
    world_size: int,
    total_steps: int,
) -> dict[str, Any]:
    """The DeepSpeed config for this run: batch size for the real world size, scheduler length."""
    resolved = copy.deepcopy(ds_config)
    micro = int(
        resolved.setdefault("train_micro_batch_size_per_gpu", config.training.micro_batch_size)
    )
    accumulation = int(
        resolved.setdefault("gradient_accumulation_steps", config.training.gradient_accumulation)
    )
    # Rendered for the spec's world size; a local run with another --nproc differs.
    resolved["train_batch_size"] = micro * accumulation * world_size
    scheduler = resolved.get("scheduler")
    if isinstance(scheduler, dict) and scheduler.get("type") in _SCHEDULERS_WITH_LENGTH:
        params = scheduler.setdefault("params", {})
        params.setdefault("total_num_steps", total_steps)
        warmup = int(params.get("warmup_num_steps", 0))
        if warmup > params["total_num_steps"]:
            params["warmup_num_steps"] = params["total_num_steps"]
    return resolved


def with_schedule_length(ds_config: dict[str, Any], steps: int) -> dict[str, Any]:
    """``ds_config`` with its scheduler spanning ``steps`` (a CLI ``--max-steps`` run)."""
    resolved = copy.deepcopy(ds_config)
    scheduler = resolved.get("scheduler")
    if isinstance(scheduler, dict) and scheduler.get("type") in _SCHEDULERS_WITH_LENGTH:
        scheduler.setdefault("params", {})["total_num_steps"] = steps
    return resolved


def micro_batch_of(ds_config: dict[str, Any], config: TrainerConfig) -> tuple[int, int]:
    """(micro-batch per rank, gradient accumulation) as DeepSpeed will use them."""
    micro = int(ds_config.get("train_micro_batch_size_per_gpu", config.training.micro_batch_size))
    accumulation = int(
        ds_config.get("gradient_accumulation_steps", config.training.gradient_accumulation)
    )
    return micro, accumulation

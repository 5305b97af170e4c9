"""Every ZeRO stage (with and without offload, fp32 and bf16) trains the tiny BERT on 2 CPU ranks
until its loss falls; a CPU job asking for fp16 is refused before any rank starts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from .conftest import render_job, run_trainer

pytestmark = [pytest.mark.training, pytest.mark.slow]

STAGES: dict[str, dict[str, Any]] = {
    "zero0-fp32": {"zero": {"stage": 0}, "precision": "fp32"},
    "zero1-bf16-optimizer-offload": {
        "zero": {"stage": 1, "offloadOptimizer": "cpu"},
        "precision": "bf16",
    },
    "zero2-bf16": {"zero": {"stage": 2}, "precision": "bf16"},
    "zero3-bf16-optimizer-and-parameter-offload": {
        "zero": {"stage": 3, "offloadOptimizer": "cpu", "offloadParams": "cpu"},
        "precision": "bf16",
    },
}


@pytest.mark.parametrize("deepspeed", STAGES.values(), ids=STAGES.keys())
def test_each_zero_stage_trains_and_the_loss_falls(
    tmp_path: Path, deepspeed: dict[str, Any]
) -> None:
    job = render_job(tmp_path, {"deepspeed": deepspeed})

    run = run_trainer(job)

    assert run.returncode == 0, run.tail()
    progress = run.progress()
    assert [line["step"] for line in progress] == [5, 10, 15, 20, 25, 30, 35, 40]
    first, last = progress[0]["loss"], progress[-1]["loss"]
    assert math.isfinite(last) and last < 0.5 * first, (first, last)
    assert all(line["samples_per_second"] > 0 for line in progress)
    evaluation = job.eval_report()
    assert evaluation["step"] == 40
    assert evaluation["accuracy"] >= 0.9
    assert f"ZeRO-{deepspeed['zero']['stage']} {deepspeed['precision']}" in run.output
    assert job.checkpoint_state()["step"] == 40


def test_adam_with_accumulation_cosine_schedule_and_activation_checkpointing_trains(
    tmp_path: Path,
) -> None:
    job = render_job(
        tmp_path,
        {
            "training": {
                "maxSteps": 30,
                "microBatchSize": 8,
                "gradientAccumulation": 2,
                "optimizer": {"type": "adam", "lr": 0.003},
                "scheduler": {"type": "cosine", "warmupSteps": 2},
            },
            "deepspeed": {
                "zero": {"stage": 1},
                "precision": "fp32",
                "activationCheckpointing": True,
            },
        },
    )

    run = run_trainer(job)

    assert run.returncode == 0, run.tail()
    progress = run.progress()
    assert progress[-1]["loss"] < 0.5 * progress[0]["loss"]
    assert progress[-1]["lr"] < 0.01 * 0.003  # the cosine decay reached its floor of 0
    # Each optimizer step used 2 micro-batches of 8 on each of the 2 ranks.
    assert job.checkpoint_state()["samples_seen"] == 30 * 8 * 2 * 2


def test_fp16_on_a_cpu_trainer_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    job = render_job(tmp_path)
    ds_config = job.ds_config()
    ds_config.pop("bf16", None)
    ds_config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    job.write_ds_config(ds_config)

    run = run_trainer(job)

    assert run.returncode == 64, run.tail()
    message = run.lines[-1]
    assert "fp16 is not supported by DeepSpeed on CPU" in message
    assert "bf16" in message and str(job.ds_config_path) in message
    assert not job.checkpoint_dir.exists()

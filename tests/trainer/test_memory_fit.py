"""The memory preflight on real runs: a job whose model state and activations cannot fit its
memory limit exits 67 (permanent) before DeepSpeed starts, with one line naming the spec fields
that would make it fit; a job well within its limit trains as before and logs its estimate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from accel_contract.config import ENV_MEMORY_LIMIT_BYTES

from .conftest import render_job, run_trainer

pytestmark = [pytest.mark.training, pytest.mark.slow]

MIB = 1024**2
GIB = 1024**3


def test_a_job_that_cannot_fit_its_memory_limit_exits_67_naming_the_fields_to_change(
    tmp_path: Path,
) -> None:
    job = render_job(tmp_path)  # the tiny BERT, ZeRO stage 2, bf16, 2 CPU ranks

    run = run_trainer(job, env={ENV_MEMORY_LIMIT_BYTES: str(2 * MIB)})

    assert run.returncode == 67, run.tail()
    last = run.lines[-1]
    assert re.match(
        r"accel-trainer: exit 67: rank [01]: memory: training needs [\d.]+ [KM]iB per rank at "
        r"ZeRO stage 2 with bf16 over 2 rank\(s\) \(params ",
        last,
    ), run.tail()
    assert (
        "but a rank has 1.0 MiB (container memory limit 2.0 MiB from "
        f"{ENV_MEMORY_LIMIT_BYTES}, over 2 local rank(s)), 90% of which is usable; "
    ) in last
    for remedy in (
        "raise workers (ZeRO shards over more ranks",
        "set deepspeed.zero.stage: 3",
        "lower training.microBatchSize",
        "turn on deepspeed.activationCheckpointing",
        "raise resources.limits.memory to",
    ):
        assert remedy in last, last
    assert "offload" not in last  # a CPU trainer's host memory is its device memory
    # Refused before the model was built and DeepSpeed initialised.
    assert "accel-trainer: ready:" not in run.output
    assert not (job.checkpoint_dir / "latest").exists()


def test_a_job_well_within_its_memory_limit_trains_and_logs_its_estimate(tmp_path: Path) -> None:
    job = render_job(tmp_path, {"training": {"maxSteps": 5}})

    run = run_trainer(job, env={ENV_MEMORY_LIMIT_BYTES: str(64 * GIB)})

    assert run.returncode == 0, run.tail()
    estimate = next(line for line in run.lines if "memory estimate per rank:" in line)
    assert estimate.endswith(
        "budget 32.0 GiB (container memory limit 64.0 GiB from "
        f"{ENV_MEMORY_LIMIT_BYTES}, over 2 local rank(s)), fits within 90% of it"
    )
    # The count from the model on the meta device is the real model's.
    counted = re.search(r"for ([\d,]+) parameters at ZeRO stage 2 with bf16 over 2", estimate)
    ready = re.search(r"accel-trainer: ready: .*, ([\d,]+) parameters,", run.output)
    assert counted and ready and counted.group(1) == ready.group(1), run.tail()
    assert job.checkpoint_state()["step"] == 5

"""Preemption and resume: SIGTERM makes every rank finish its step, checkpoint and exit 76; the
resumed run then ends exactly where an uninterrupted run ends - same loss, same weights, and
every training example used once per epoch (nothing repeated or skipped)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import LiveRun, render_job, run_trainer

pytestmark = [pytest.mark.training, pytest.mark.slow]

GLOBAL_BATCH = 16 * 2  # micro-batch x ranks
STEPS = 24
INTERRUPT_AT = 12
# ZeRO-3 partitions parameters and optimizer state: the hardest state to restore.
SPEC = {
    "training": {"maxSteps": STEPS, "logEvery": 1},
    "deepspeed": {"zero": {"stage": 3}, "precision": "bf16"},
    "checkpoint": {"everySteps": None},
}


def exported_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model" / "model.safetensors"))


def test_sigterm_checkpoint_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, live_runs: list[LiveRun]
) -> None:
    straight_job = render_job(tmp_path / "straight", SPEC)
    interrupted_job = render_job(tmp_path / "interrupted", SPEC)

    straight = run_trainer(straight_job)
    assert straight.returncode == 0, straight.tail()

    live = LiveRun(interrupted_job)
    live_runs.append(live)
    live.wait_for_line(rf"accel-trainer: step {INTERRUPT_AT}/{STEPS} ")
    os.kill(live.process.pid, signal.SIGTERM)  # what the kubelet does to the pod's PID 1
    preempted = live.finish()

    assert preempted.returncode == 76, preempted.tail()
    saved = interrupted_job.checkpoint_state()
    stopped_at = saved["step"]
    assert INTERRUPT_AT <= stopped_at < STEPS, preempted.tail()
    assert f"stopped by SIGTERM: checkpoint of step {stopped_at} saved" in preempted.output
    assert saved["samples_seen"] == stopped_at * GLOBAL_BATCH
    assert not (interrupted_job.output_dir / "model").exists()

    resumed = run_trainer(interrupted_job)

    assert resumed.returncode == 0, resumed.tail()
    assert f"resumed from step-{stopped_at:08d}" in resumed.output
    resumed_steps = [int(line["step"]) for line in resumed.progress()]
    assert resumed_steps == list(range(stopped_at + 1, STEPS + 1))
    straight_losses = {int(line["step"]): line["loss"] for line in straight.progress()}
    for line in resumed.progress():
        assert line["loss"] == pytest.approx(straight_losses[int(line["step"])], abs=2e-4)

    # The data position: both runs consumed the same examples in the same order.
    final_straight = straight_job.checkpoint_state()
    final_resumed = interrupted_job.checkpoint_state()
    for key in ("step", "micro_steps", "epoch", "samples_into_epoch", "samples_seen"):
        assert final_resumed[key] == final_straight[key], key
    assert final_resumed["samples_seen"] == STEPS * GLOBAL_BATCH

    expected = exported_weights(straight_job.output_dir)
    actual = exported_weights(interrupted_job.output_dir)
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=1e-6, msg=name)

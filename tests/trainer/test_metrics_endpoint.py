"""The Prometheus endpoint of a real run, scraped while it trains: every contract series with
sane values on every rank, and ``promtool check metrics`` finds nothing to complain about."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.metrics_contract import TRAINER_CONTRACT_FAMILIES

from .conftest import LiveRun, render_job

pytestmark = [pytest.mark.training, pytest.mark.slow]

MICRO_BATCH = 16
SEQ_LENGTH = 32


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def parse(exposition: str) -> tuple[dict[str, str], dict[str, float]]:
    """(family name -> type, sample name -> value) of the acceltrain series."""
    types: dict[str, str] = {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name.startswith("acceltrain_"):
            types[family.name] = family.type
            for sample in family.samples:
                values.setdefault(sample.name, sample.value)
    return types, values


def test_metrics_endpoint_of_a_running_job_has_every_contract_series(
    tmp_path: Path, live_runs: list[LiveRun]
) -> None:
    job = render_job(
        tmp_path,
        {
            "training": {"maxSteps": 100000, "logEvery": 5},
            "pruning": {"targetSparsity": 0.3, "startStep": 0, "endStep": 10, "frequency": 5},
            "checkpoint": {"everySteps": 5},
        },
        name="metrics-demo",
    )
    live = LiveRun(job)
    live_runs.append(live)
    live.wait_for_line(r"accel-trainer: step 15/")

    expositions = {rank: scrape(job.metrics_port + rank) for rank in (0, 1)}

    for rank, exposition in expositions.items():
        types, values = parse(exposition)
        for name, kind in TRAINER_CONTRACT_FAMILIES.items():
            assert types.get(name) == kind, f"rank {rank}: {name} is {types.get(name)}"
        labels = {"acceltrain_job": "metrics-demo", "node_rank": "0"}
        for family in text_string_to_metric_families(exposition):
            for sample in family.samples:
                if family.name.startswith("acceltrain_"):
                    assert sample.labels.items() >= {**labels, "rank": str(rank)}.items()
        value = values.__getitem__
        steps = value("acceltrain_optimizer_steps_total")
        assert steps >= 15
        # Samples and tokens are this rank's: micro-batch x accumulation per step.
        samples = value("acceltrain_train_samples_total")
        assert samples == pytest.approx(steps * MICRO_BATCH, abs=MICRO_BATCH)
        # Tokens are real ones; the processed positions include the padding of each batch, cut
        # to its longest example (at most data.maxLength per sample).
        real, processed = (
            value("acceltrain_train_tokens_total"),
            value("acceltrain_train_processed_tokens_total"),
        )
        assert 0 < real < processed <= samples * SEQ_LENGTH
        assert 0 < value("acceltrain_padding_efficiency_ratio") < 1
        assert value("acceltrain_samples_per_second") > 0
        assert (
            0
            < value("acceltrain_tokens_per_second")
            < (value("acceltrain_samples_per_second") * SEQ_LENGTH)
        )
        assert value("acceltrain_tflops_per_device") > 0
        assert 0 < value("acceltrain_mfu_ratio") < 1
        assert 0 < value("acceltrain_loss") < 5
        assert 0 < value("acceltrain_learning_rate") <= 0.003
        assert value("acceltrain_sparsity_ratio") == pytest.approx(0.3, abs=0.01)
        assert value("acceltrain_loss_scale") == 1.0  # bf16 does not scale the loss
        assert value("acceltrain_device_memory_bytes") > 0
        assert value("acceltrain_step_seconds_count") >= 15
        # Own work (loading, forward) is part of a step, never all of it (backward, optimizer).
        step_mean = value("acceltrain_step_seconds_sum") / value("acceltrain_step_seconds_count")
        assert 0 < value("acceltrain_step_own_seconds") < step_mean
        assert value("acceltrain_checkpoint_seconds_count") >= 2

    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool not found: install Debian's prometheus package"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    for exposition in expositions.values():
        checked = subprocess.run(
            [promtool, "check", "metrics"],
            input=exposition,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")

    os.kill(live.process.pid, signal.SIGTERM)
    stopped = live.finish()
    assert stopped.returncode == 76, stopped.tail()
    assert "stopped by SIGTERM" in stopped.lines[-1]

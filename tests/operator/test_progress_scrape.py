"""The operator reads the trainer's real exporter output into status.progress."""

from __future__ import annotations

import copy
import datetime as dt
import socket

import prometheus_client
import pytest

from accel_operator import api, lifecycle, scrape
from accel_trainer.metrics import TrainerMetrics
from tests.specs import MINIMAL_SPEC


def _trainer_exposition(rank: int, step: int, samples: int, seconds: float) -> str:
    metrics = TrainerMetrics(job="bert", node_rank=0, rank=rank)
    for number in range(1, step + 1):
        metrics.record_step(
            step=number,
            samples=samples,
            tokens=samples * 64,
            step_seconds=seconds,
            loss=2.0 / number,
            learning_rate=1e-4,
        )
    return prometheus_client.generate_latest(metrics.registry).decode()


def test_rank_zero_progress_is_read_from_the_trainer_exporter() -> None:
    text = _trainer_exposition(rank=0, step=4, samples=16, seconds=0.5)
    sample = scrape.parse_metrics(text)
    assert sample is not None
    assert sample.step == 4
    assert sample.steps_this_process == 4
    assert sample.first_step_reported
    assert sample.samples_per_second == pytest.approx(32.0)
    assert sample.tokens_per_second == pytest.approx(32.0 * 64)
    assert sample.loss == pytest.approx(0.5)


def test_another_ranks_exporter_is_not_taken_for_rank_zero() -> None:
    rank1 = _trainer_exposition(rank=1, step=9, samples=8, seconds=0.1)
    assert scrape.parse_metrics(rank1) is None
    assert scrape.parse_metrics(rank1, rank="1") is not None


def test_an_exporter_without_a_step_yet_reports_no_progress() -> None:
    assert scrape.parse_metrics("# nothing yet\n") is None


def test_job_wide_progress_multiplies_rank_zero_by_the_world_size() -> None:
    document = copy.deepcopy(MINIMAL_SPEC)
    document["training"] = {"maxSteps": 1000, "microBatchSize": 8, "gradientAccumulation": 2}
    spec = api.parse_spec(document)
    sample = lifecycle.ProgressSample(
        step=400,
        steps_this_process=400,
        samples_per_second=32.0,
        tokens_per_second=2048.0,
        tflops_per_device=0.0123456,
        mfu=0.4567,
        loss=1.23456,
        sparsity=0.5,
    )
    now = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    progress = lifecycle.update_progress(spec, api.Progress(step=390), sample, now)
    assert spec.world_size == 4
    assert progress.samples_per_second == 128.0
    assert progress.tokens_per_second == 8190.0  # three significant digits
    assert progress.tflops_per_device == 0.0123
    assert progress.mfu == 0.457
    assert progress.total_steps == 1000
    # 600 steps left at 32 / 16 = 2 steps per second.
    assert progress.eta == "5m00s"
    assert progress.last_step_time == "2026-11-28T12:00:00Z"
    # Sparsity is only reported for jobs that prune.
    assert progress.sparsity is None


def test_scraping_is_limited_to_the_allowed_networks() -> None:
    scraper = scrape.ProgressScraper(scrape.parse_networks(["10.77.0.0/24"]))
    assert scraper.allowed("10.77.0.12")
    assert not scraper.allowed("10.0.3.4")
    assert not scraper.allowed("not-an-ip")
    assert scraper.scrape("10.0.3.4", 9400) is None
    assert scrape.ProgressScraper().allowed("10.0.3.4")
    with pytest.raises(ValueError, match="--scrape-network 'ten' is not a network"):
        scrape.parse_networks(["ten"])


def test_a_live_exporter_is_scraped_over_http() -> None:
    metrics = TrainerMetrics(job="bert", node_rank=0, rank=0)
    metrics.record_step(
        step=1, samples=8, tokens=512, step_seconds=0.25, loss=1.0, learning_rate=1e-4
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics.serve(port, addr="127.0.0.1")
    try:
        sample = scrape.ProgressScraper(timeout=5.0).scrape("127.0.0.1", port)
    finally:
        metrics.close()
    assert sample is not None
    assert (sample.step, sample.samples_per_second) == (1, pytest.approx(32.0))


def test_an_exporter_that_does_not_answer_yields_no_progress() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert scrape.ProgressScraper(timeout=1.0).scrape("127.0.0.1", port) is None


def test_the_latest_checkpoint_step_is_read_from_the_trainer() -> None:
    metrics = TrainerMetrics(job="bert", node_rank=0, rank=0)
    metrics.record_step(
        step=1, samples=8, tokens=512, step_seconds=0.25, loss=1.0, learning_rate=1e-4
    )
    before = scrape.parse_metrics(prometheus_client.generate_latest(metrics.registry).decode())
    assert before is not None
    assert before.checkpoint_step is None
    metrics.record_checkpoint(0.5, step=1)
    after = scrape.parse_metrics(prometheus_client.generate_latest(metrics.registry).decode())
    assert after is not None
    assert after.checkpoint_step == 1


def test_the_memory_preflight_estimate_reaches_the_job_status() -> None:
    metrics = TrainerMetrics(job="bert", node_rank=0, rank=0)
    metrics.record_step(
        step=1, samples=8, tokens=512, step_seconds=0.25, loss=1.0, learning_rate=1e-4
    )
    before = scrape.parse_metrics(prometheus_client.generate_latest(metrics.registry).decode())
    assert before is not None
    assert (before.estimated_memory_bytes, before.memory_budget_bytes) == (None, None)
    metrics.record_memory_estimate(device_bytes=3 << 30, host_bytes=1 << 30, budget_bytes=8 << 30)
    sample = scrape.parse_metrics(prometheus_client.generate_latest(metrics.registry).decode())
    assert sample is not None
    assert sample.estimated_memory_bytes == 3 << 30
    assert sample.memory_budget_bytes == 8 << 30
    spec = api.parse_spec(copy.deepcopy(MINIMAL_SPEC), name="bert")
    now = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    progress = lifecycle.update_progress(spec, api.Progress(), sample, now)
    shown = progress.model_dump(by_alias=True)
    assert shown["estimatedMemoryBytes"] == 3 << 30
    assert shown["memoryBudgetBytes"] == 8 << 30


def test_the_padding_efficiency_reaches_the_job_status() -> None:
    metrics = TrainerMetrics(job="bert", node_rank=0, rank=0)
    before = scrape.parse_metrics(prometheus_client.generate_latest(metrics.registry).decode())
    assert before is None or before.padding_efficiency is None
    metrics.record_step(
        step=1,
        samples=8,
        tokens=300,
        padded_tokens=512,
        step_seconds=0.25,
        loss=1.0,
        learning_rate=1e-4,
    )
    sample = scrape.parse_metrics(prometheus_client.generate_latest(metrics.registry).decode())
    assert sample is not None
    assert sample.padding_efficiency == pytest.approx(300 / 512)
    spec = api.parse_spec(copy.deepcopy(MINIMAL_SPEC), name="bert")
    now = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    progress = lifecycle.update_progress(spec, api.Progress(), sample, now)
    assert progress.model_dump(by_alias=True)["paddingEfficiency"] == 0.586

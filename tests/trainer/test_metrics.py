"""The trainer's Prometheus exporter: contract series, throughput math, peaks and the endpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from accel_trainer.metrics import (
    DEFAULT_RATE_WINDOW_STEPS,
    TrainerMetrics,
    count_matmul_params,
    device_peak_tflops,
    estimate_flops_per_token,
    measure_cpu_peak_tflops,
)
from tests.metrics_contract import TRAINER_CONTRACT_FAMILIES

LABELS = {"acceltrain_job": "bert-demo", "node_rank": "1", "rank": "3"}

GPT2_SMALL = {"num_layers": 12, "hidden_size": 768, "seq_length": 1024}
# GPT-2 small without its position embeddings (nanoGPT's get_num_params(non_embedding=True));
# the token embeddings stay in because they are tied to the LM head.
GPT2_SMALL_MATMUL_PARAMS = 123_653_376


def make_metrics(rate_window_steps: int = DEFAULT_RATE_WINDOW_STEPS) -> TrainerMetrics:
    return TrainerMetrics(
        job=LABELS["acceltrain_job"],
        node_rank=int(LABELS["node_rank"]),
        rank=int(LABELS["rank"]),
        rate_window_steps=rate_window_steps,
    )


def scrape(metrics: TrainerMetrics) -> str:
    return prometheus_client.generate_latest(metrics.registry).decode()


def sample_value(text: str, name: str, **extra_labels: str) -> float:
    wanted = {**LABELS, **extra_labels}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{wanted} in the exposition:\n{text}")


def record_steps(metrics: TrainerMetrics, steps: list[tuple[float, int, int]]) -> None:
    """Record (seconds, samples, tokens) steps, numbered from 1."""
    for number, (seconds, samples, tokens) in enumerate(steps, start=1):
        metrics.record_step(
            step=number,
            samples=samples,
            tokens=tokens,
            step_seconds=seconds,
            loss=2.5 - 0.1 * number,
            learning_rate=1e-4 * number,
        )


@pytest.fixture
def served_metrics() -> Iterator[TrainerMetrics]:
    metrics = make_metrics()
    metrics.set_model_flops(
        num_params=1_000_000,
        num_layers=2,
        hidden_size=128,
        seq_length=64,
        device_name="NVIDIA A100-SXM4-80GB",
        precision="bf16",
        peak_tflops=None,
    )
    record_steps(metrics, [(0.2, 32, 2048)] * 3)
    metrics.record_checkpoint(1.5)
    metrics.serve(0)
    yield metrics
    metrics.close()


def http_scrape(metrics: TrainerMetrics) -> tuple[str, str]:
    """(content type, body) of a GET on the exporter, through loopback."""
    url = f"http://127.0.0.1:{metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


# --- the contract ---------------------------------------------------------------------------
def test_the_readme_metrics_table_lists_every_contract_series_with_its_type() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    trainer_table = readme[readme.index("**Trainer**") : readme.index("**Operator**")]
    listed: dict[str, str] = {}
    for row in trainer_table.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`acceltrain_"):
            continue
        for name in re.findall(r"`(acceltrain_[a-z_]+)", cells[0]):
            listed[name.removesuffix("_total")] = cells[1]
    assert listed == TRAINER_CONTRACT_FAMILIES


def test_every_contract_metric_is_exported_with_its_type_and_labels() -> None:
    metrics = make_metrics()
    record_steps(metrics, [(0.5, 16, 1024), (0.25, 16, 1024), (0.25, 16, 1024)])
    metrics.record_checkpoint(3.0)

    families = {family.name: family for family in text_string_to_metric_families(scrape(metrics))}

    for name, kind in TRAINER_CONTRACT_FAMILIES.items():
        assert name in families, f"{name} missing from the exposition"
        assert families[name].type == kind, f"{name} is a {families[name].type}, not a {kind}"
        assert families[name].samples, f"{name} has no series"
        for sample in families[name].samples:
            identity = {key: sample.labels.get(key) for key in LABELS}
            assert identity == LABELS, f"{sample.name} is labelled {sample.labels}"
    memory_kinds = {
        sample.labels["kind"] for sample in families["acceltrain_device_memory_bytes"].samples
    }
    assert memory_kinds == {"rss"}  # no GPU in unit tests


def test_own_seconds_are_the_mean_of_the_rate_window_and_ignore_unmeasured_steps() -> None:
    metrics = make_metrics(rate_window_steps=2)
    assert sample_value(scrape(metrics), "acceltrain_step_own_seconds") == 0
    for step, own in enumerate((0.9, 0.2, None, 0.4), start=1):
        metrics.record_step(
            step=step,
            samples=8,
            tokens=100,
            step_seconds=1.0,
            loss=1.0,
            learning_rate=1e-4,
            own_seconds=own,
        )

    # The window holds the last two steps; the unmeasured one does not count as 0.
    assert sample_value(scrape(metrics), "acceltrain_step_own_seconds") == pytest.approx(0.4)
    with pytest.raises(ValueError, match="own_seconds"):
        metrics.record_step(
            step=5,
            samples=8,
            tokens=100,
            step_seconds=1.0,
            loss=1.0,
            learning_rate=1e-4,
            own_seconds=-1.0,
        )


def test_counters_and_step_gauge_follow_the_recorded_steps() -> None:
    metrics = make_metrics()
    record_steps(metrics, [(0.5, 16, 1000), (0.5, 16, 1200), (0.5, 8, 600)])
    assert sample_value(scrape(metrics), "acceltrain_last_checkpoint_step") == -1
    metrics.record_checkpoint(2.0, step=2)
    metrics.record_checkpoint(4.0, step=3)

    text = scrape(metrics)

    assert sample_value(text, "acceltrain_train_samples_total") == 40
    assert sample_value(text, "acceltrain_train_tokens_total") == 2800
    assert sample_value(text, "acceltrain_optimizer_steps_total") == 3
    assert sample_value(text, "acceltrain_step") == 3
    assert sample_value(text, "acceltrain_loss") == pytest.approx(2.2)
    assert sample_value(text, "acceltrain_learning_rate") == pytest.approx(3e-4)
    assert sample_value(text, "acceltrain_step_seconds_count") == 3
    assert sample_value(text, "acceltrain_step_seconds_sum") == pytest.approx(1.5)
    assert sample_value(text, "acceltrain_step_seconds_bucket", le="0.5") == 3
    assert sample_value(text, "acceltrain_step_seconds_bucket", le="0.25") == 0
    assert sample_value(text, "acceltrain_checkpoint_seconds_count") == 2
    assert sample_value(text, "acceltrain_checkpoint_seconds_sum") == pytest.approx(6.0)
    assert sample_value(text, "acceltrain_last_checkpoint_step") == 3


def test_loss_scale_and_sparsity_show_what_the_loop_reports() -> None:
    metrics = make_metrics()
    before = scrape(metrics)
    metrics.record_step(
        step=7,
        samples=8,
        tokens=512,
        step_seconds=0.1,
        loss=1.0,
        learning_rate=1e-3,
        loss_scale=65536.0,
        sparsity=0.42,
    )
    after = scrape(metrics)

    assert sample_value(before, "acceltrain_loss_scale") == 1.0
    assert sample_value(before, "acceltrain_sparsity_ratio") == 0.0
    assert sample_value(after, "acceltrain_loss_scale") == 65536.0
    assert sample_value(after, "acceltrain_sparsity_ratio") == pytest.approx(0.42)


# Run in a fresh interpreter: in the suite's long-lived process, memory freed by earlier tests'
# leftovers (a cyclic collection, a finishing thread) can cancel out the ballast between samples.
RSS_PROBE = """
import gc, json
from accel_trainer.metrics import TrainerMetrics
gc.collect()
gc.disable()
metrics = TrainerMetrics(job="j", node_rank=0, rank=0)
metrics.record_device_memory()
before = metrics.snapshot()["device_memory_bytes_rss"]
ballast = bytearray(b"\\x01") * (64 * 1024 * 1024)  # written, so every page is resident
metrics.record_device_memory()
after = metrics.snapshot()["device_memory_bytes_rss"]
exposed = metrics.registry.get_sample_value(
    "acceltrain_device_memory_bytes", {**metrics.labels, "kind": "rss"}
)
print(json.dumps({"before": before, "after": after, "exposed": exposed, "ballast": len(ballast)}))
"""


def test_cpu_device_memory_is_the_process_rss() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", RSS_PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    reading = json.loads(probe.stdout.strip().splitlines()[-1])

    assert reading["after"] - reading["before"] >= 0.9 * reading["ballast"]
    assert reading["exposed"] == reading["after"]


def test_cuda_device_memory_replaces_rss_once_cuda_is_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = make_metrics()  # constructed before CUDA is initialised: reports rss
    gib = 1024**3
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        memory_allocated=lambda: 3 * gib,
        memory_reserved=lambda: 4 * gib,
        max_memory_allocated=lambda: 5 * gib,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))

    metrics.record_device_memory()
    text = scrape(metrics)

    memory = {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "acceltrain_device_memory_bytes"
        for sample in family.samples
    }
    assert memory == {"allocated": 3 * gib, "reserved": 4 * gib, "max_allocated": 5 * gib}
    assert "device_memory_bytes_rss" not in metrics.snapshot()


def test_the_memory_estimate_and_budget_are_exported_by_kind() -> None:
    metrics = make_metrics()
    gib = 1024**3
    before = scrape(metrics)

    metrics.record_memory_estimate(device_bytes=3 * gib, host_bytes=gib, budget_bytes=16 * gib)
    text = scrape(metrics)

    for kind in ("device", "host"):
        assert sample_value(before, "acceltrain_estimated_memory_bytes", kind=kind) == 0
    assert sample_value(before, "acceltrain_memory_budget_bytes") == 0
    assert sample_value(text, "acceltrain_estimated_memory_bytes", kind="device") == 3 * gib
    assert sample_value(text, "acceltrain_estimated_memory_bytes", kind="host") == gib
    assert sample_value(text, "acceltrain_memory_budget_bytes") == 16 * gib

    metrics.record_memory_estimate(device_bytes=3 * gib, host_bytes=0, budget_bytes=None)

    assert sample_value(scrape(metrics), "acceltrain_memory_budget_bytes") == 0  # unknown


def test_instances_keep_separate_registries() -> None:
    rank0 = TrainerMetrics(job="j", node_rank=0, rank=0)
    rank1 = TrainerMetrics(job="j", node_rank=0, rank=1)
    rank1.record_step(step=1, samples=5, tokens=50, step_seconds=1.0, loss=1.0, learning_rate=0.1)

    assert "acceltrain_train_samples_total" in scrape(rank0)
    assert 'rank="1"' not in scrape(rank0)
    assert rank0.snapshot()["train_samples_total"] == 0
    assert rank1.snapshot()["train_samples_total"] == 5


# --- rates ----------------------------------------------------------------------------------
def test_rates_are_samples_over_the_seconds_of_the_last_window_of_steps() -> None:
    metrics = make_metrics(rate_window_steps=3)

    record_steps(metrics, [(2.0, 10, 1000), (1.0, 10, 1000)])
    first = metrics.snapshot()
    # The window holds the last three steps only: the slow first ones slide out.
    record_steps(metrics, [(2.0, 10, 1000), (1.0, 10, 1000), (0.5, 20, 500), (0.5, 20, 500)])
    later = scrape(metrics)

    assert first["samples_per_second"] == pytest.approx(20 / 3.0)
    assert first["tokens_per_second"] == pytest.approx(2000 / 3.0)
    assert sample_value(later, "acceltrain_samples_per_second") == pytest.approx(50 / 2.0)
    assert sample_value(later, "acceltrain_tokens_per_second") == pytest.approx(2000 / 2.0)


def test_pauses_between_steps_do_not_dilute_the_rates() -> None:
    metrics = make_metrics()
    metrics.record_step(step=1, samples=4, tokens=40, step_seconds=0.01, loss=1, learning_rate=1)
    time.sleep(0.2)  # an evaluation or a checkpoint between two steps
    metrics.record_step(step=2, samples=4, tokens=40, step_seconds=0.01, loss=1, learning_rate=1)

    assert metrics.snapshot()["samples_per_second"] == pytest.approx(8 / 0.02)


def test_tokens_count_real_tokens_and_padding_efficiency_is_real_over_processed() -> None:
    metrics = make_metrics(rate_window_steps=2)
    metrics.set_model_flops(
        num_params=1_000_000,
        num_layers=2,
        hidden_size=128,
        seq_length=32,
        device_name="NVIDIA H100 80GB HBM3",
        precision="bf16",
        peak_tflops=100.0,
    )
    for number, (real, padded) in enumerate([(300, 1000), (600, 800), (400, 800)], start=1):
        metrics.record_step(
            step=number,
            samples=8,
            tokens=real,
            padded_tokens=padded,
            step_seconds=0.5,
            loss=1.0,
            learning_rate=1e-4,
        )
    text = scrape(metrics)

    assert sample_value(text, "acceltrain_train_tokens_total") == 1300
    assert sample_value(text, "acceltrain_train_processed_tokens_total") == 2600
    # The window holds the last two steps: 1000 real of 1600 processed, in 1 s.
    assert sample_value(text, "acceltrain_padding_efficiency_ratio") == pytest.approx(1000 / 1600)
    assert sample_value(text, "acceltrain_tokens_per_second") == pytest.approx(1000.0)
    flops = metrics.flops_per_token
    assert flops is not None
    assert sample_value(text, "acceltrain_tflops_per_device") == pytest.approx(flops * 1000 / 1e12)


def test_padded_tokens_below_real_tokens_are_refused() -> None:
    metrics = make_metrics()
    with pytest.raises(ValueError, match="cannot be below tokens"):
        metrics.record_step(
            step=1, samples=1, tokens=10, padded_tokens=5, step_seconds=1, loss=1, learning_rate=1
        )


# --- FLOPs and MFU --------------------------------------------------------------------------
def test_flops_per_token_matches_a_hand_computation_for_gpt2_small() -> None:
    # 6 * 123,653,376 = 741,920,256 (dense), 12 * 12 * 768 * 1024 = 113,246,208 (attention)
    flops = estimate_flops_per_token(num_params=GPT2_SMALL_MATMUL_PARAMS, **GPT2_SMALL)

    assert flops == 855_166_464


def test_flops_estimate_rejects_a_nonsense_shape_by_name() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        estimate_flops_per_token(num_params=1000, num_layers=2, hidden_size=0, seq_length=128)


def test_matmul_params_count_a_tied_head_once_and_skip_lookup_tables() -> None:
    torch = pytest.importorskip("torch")
    embed = torch.nn.Embedding(100, 16)
    model = torch.nn.ModuleDict(
        {
            "embed": embed,
            "position": torch.nn.Embedding(32, 16),
            "block": torch.nn.Linear(16, 16),
            "head": torch.nn.Linear(16, 100, bias=False),
        }
    )
    model["head"].weight = embed.weight
    classifier = torch.nn.ModuleDict(
        {"embed": torch.nn.Embedding(100, 16), "out": torch.nn.Linear(16, 2)}
    )

    assert count_matmul_params(model) == (16 * 16 + 16) + 100 * 16
    assert count_matmul_params(classifier) == 16 * 2 + 2


def test_matmul_params_count_zero3_partitions_at_full_size() -> None:
    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(64, 64)
    # ZeRO-3 leaves an empty local tensor and records the full size in ds_numel.
    for parameter in layer.parameters():
        parameter.ds_numel = parameter.numel()
        parameter.data = torch.empty(0)

    assert count_matmul_params(layer) == 64 * 64 + 64


@pytest.mark.slow
def test_matmul_params_of_a_transformers_gpt2_match_the_hand_count() -> None:
    transformers = pytest.importorskip("transformers")
    hidden, layers, vocab = 64, 2, 1000
    config = transformers.GPT2Config(
        n_embd=hidden, n_layer=layers, n_head=4, vocab_size=vocab, n_positions=128
    )
    model = transformers.GPT2LMHeadModel(config)
    # Per block: 2 LayerNorms (2H each), qkv (H*3H + 3H), attention out (H*H + H),
    # MLP up (H*4H + 4H) and down (4H*H + H) = 12H^2 + 13H. Then the final LayerNorm (2H) and
    # the token embedding, which the LM head multiplies by; position embeddings are lookups.
    expected = layers * (12 * hidden**2 + 13 * hidden) + 2 * hidden + vocab * hidden

    assert model.lm_head.weight is model.transformer.wte.weight
    assert count_matmul_params(model) == expected == 164_096
    assert sum(p.numel() for p in model.parameters()) == expected + 128 * hidden


def test_tflops_and_mfu_use_the_given_peak() -> None:
    metrics = make_metrics()
    metrics.set_model_flops(
        num_params=GPT2_SMALL_MATMUL_PARAMS,
        device_name="NVIDIA H100 80GB HBM3",
        precision="bf16",
        peak_tflops=400.0,
        **GPT2_SMALL,
    )
    # 4 steps of 8 sequences of 1024 tokens, 0.05 s each: 163,840 tokens/s.
    record_steps(metrics, [(0.05, 8, 8 * 1024)] * 4)
    text = scrape(metrics)

    tflops = 855_166_464 * 163_840 / 1e12
    assert sample_value(text, "acceltrain_tflops_per_device") == pytest.approx(tflops)
    assert sample_value(text, "acceltrain_mfu_ratio") == pytest.approx(tflops / 400.0)
    assert metrics.peak_tflops == 400.0
    info = sample_value(
        text,
        "acceltrain_info",
        device="NVIDIA H100 80GB HBM3",
        precision="bf16",
        peak_source="config",
    )
    assert info == 1


def test_mfu_uses_the_table_peak_when_none_is_given() -> None:
    metrics = make_metrics()
    metrics.set_model_flops(
        num_params=GPT2_SMALL_MATMUL_PARAMS,
        device_name="NVIDIA A100-SXM4-80GB",
        precision="bf16",
        peak_tflops=None,
        **GPT2_SMALL,
    )
    record_steps(metrics, [(0.1, 16, 16 * 1024)])

    snapshot = metrics.snapshot()

    assert snapshot["mfu_ratio"] == pytest.approx(snapshot["tflops_per_device"] / 312.0)
    assert 0 < snapshot["mfu_ratio"] < 1


def test_unknown_device_reports_tflops_but_no_mfu() -> None:
    metrics = make_metrics()
    metrics.set_model_flops(
        num_params=1_000_000,
        num_layers=2,
        hidden_size=128,
        seq_length=64,
        device_name="NVIDIA GeForce GTX 1080",
        precision="fp32",
        peak_tflops=None,
    )
    record_steps(metrics, [(0.1, 16, 1024)])
    text = scrape(metrics)

    assert sample_value(text, "acceltrain_tflops_per_device") > 0
    assert sample_value(text, "acceltrain_mfu_ratio") == 0
    assert metrics.peak_tflops is None
    assert 'peak_source="unknown"' in text


@pytest.mark.parametrize(
    ("device", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.5),
        ("NVIDIA H100 80GB HBM3", "fp16", 989.5),
        ("NVIDIA H100 80GB HBM3", "tf32", 494.5),
        ("NVIDIA H100 80GB HBM3", "fp32", 67.0),
        ("NVIDIA H100 PCIe", "bf16", 756.5),
        ("NVIDIA H100 NVL", "bf16", 835.5),
        ("NVIDIA H200", "bf16", 989.5),
        ("NVIDIA H200", "fp32", 67.0),
        ("NVIDIA H200 NVL", "bfloat16", 835.5),
        ("NVIDIA GH200 480GB", "bf16", 989.5),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
        ("NVIDIA A100-SXM4-80GB", "fp32", 19.5),
        ("NVIDIA A100-PCIE-40GB", "fp16", 312.0),
        ("NVIDIA A10G", "bf16", 70.0),
        ("NVIDIA A10", "bf16", 125.0),
        ("NVIDIA L4", "bf16", 121.0),
        ("NVIDIA L40S", "bf16", 362.05),
        ("Tesla V100-SXM2-32GB", "fp16", 125.0),
        ("Tesla V100-PCIE-16GB", "fp16", 112.0),
        ("Tesla V100-SXM2-32GB", "bf16", None),
        ("Tesla T4", "fp16", 65.0),
        ("Tesla T4", "fp32", 8.1),
        ("AMD Instinct MI300X", "bf16", 1307.4),
        ("NVIDIA GeForce GTX 1080", "fp32", None),
    ],
)
def test_peak_table_is_looked_up_by_device_name_and_precision(
    device: str, precision: str, peak: float | None
) -> None:
    assert device_peak_tflops(device, precision) == peak


def test_unknown_precision_is_refused_with_the_accepted_values() -> None:
    with pytest.raises(ValueError, match=r"precision 'int8' is not one of bf16, fp16, tf32, fp32"):
        device_peak_tflops("NVIDIA H200", "int8")


def test_cpu_peak_is_measured_once_per_process() -> None:
    started = time.perf_counter()
    first = device_peak_tflops("cpu", "fp32")
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = measure_cpu_peak_tflops("float32")
    cached_seconds = time.perf_counter() - started

    assert first is not None
    assert 0 < first < 100  # TFLOP/s; no CPU core reaches a datacenter GPU's tensor rate
    assert again == first
    assert first_seconds < 10
    assert cached_seconds < 0.01


def test_cpu_mfu_is_a_fraction_of_the_measured_peak() -> None:
    metrics = make_metrics()
    metrics.set_model_flops(
        num_params=560_000,
        num_layers=2,
        hidden_size=128,
        seq_length=64,
        device_name="cpu",
        precision="bf16",
        peak_tflops=None,
    )
    assert metrics.peak_tflops is not None and metrics.peak_tflops > 0
    assert metrics.flops_per_token is not None
    # Steps that run at a quarter of the measured peak, whatever this CPU's speed.
    tokens = 16 * 64
    seconds = tokens * metrics.flops_per_token / (0.25 * metrics.peak_tflops * 1e12)
    record_steps(metrics, [(seconds, 16, tokens)] * 5)

    snapshot = metrics.snapshot()

    assert snapshot["mfu_ratio"] == pytest.approx(0.25, rel=1e-6)
    assert snapshot["mfu_ratio"] == pytest.approx(
        snapshot["tflops_per_device"] / metrics.peak_tflops
    )
    assert 'peak_source="measured"' in scrape(metrics)


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"step_seconds": 0.0}, "step_seconds"),
        ({"step_seconds": -1.0}, "step_seconds"),
        ({"step_seconds": float("nan")}, "step_seconds"),
        ({"samples": -1}, "samples"),
        ({"sparsity": 1.5}, "sparsity"),
    ],
)
def test_record_step_rejects_impossible_values_by_name(
    arguments: dict[str, float], field: str
) -> None:
    metrics = make_metrics()
    step = {"step": 1, "samples": 1, "tokens": 1, "step_seconds": 0.1, "loss": 1.0}
    with pytest.raises(ValueError, match=field):
        metrics.record_step(**{**step, **arguments}, learning_rate=1e-3)  # type: ignore[arg-type]
    assert metrics.snapshot()["optimizer_steps_total"] == 0


def test_identity_labels_must_name_a_job() -> None:
    with pytest.raises(ValueError, match="job must be a non-empty name"):
        TrainerMetrics(job="", node_rank=0, rank=0)


def test_negative_peak_override_is_refused_naming_the_setting() -> None:
    metrics = make_metrics()
    with pytest.raises(ValueError, match=r"metrics\.peakTflops"):
        metrics.set_model_flops(
            num_params=10,
            num_layers=1,
            hidden_size=8,
            seq_length=8,
            device_name="cpu",
            precision="fp32",
            peak_tflops=-5.0,
        )


# --- the endpoint ---------------------------------------------------------------------------
def test_endpoint_serves_the_prometheus_text_format(served_metrics: TrainerMetrics) -> None:
    content_type, body = http_scrape(served_metrics)

    assert content_type.startswith("text/plain; version=0.0.4")
    assert sample_value(body, "acceltrain_train_samples_total") == 96
    assert sample_value(body, "acceltrain_samples_per_second") == pytest.approx(160.0)
    assert 0 < sample_value(body, "acceltrain_mfu_ratio") < 1


def test_endpoint_listens_on_all_interfaces(served_metrics: TrainerMetrics) -> None:
    assert served_metrics.address == ("0.0.0.0", served_metrics.port)


def test_busy_port_is_reported_with_the_setting_to_change(
    served_metrics: TrainerMetrics,
) -> None:
    assert served_metrics.port is not None
    other = make_metrics()
    with pytest.raises(OSError, match=r"set metrics\.port to a free port"):
        other.serve(served_metrics.port)


def test_closed_endpoint_stops_answering(served_metrics: TrainerMetrics) -> None:
    port = served_metrics.port
    assert port is not None
    served_metrics.close()

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


# --- naming conventions and promtool --------------------------------------------------------
NON_BASE_UNITS = re.compile(
    r"(milli|micro|nano)?(seconds?|secs)?_?(minutes?|hours?|percent|kilobytes|megabytes|"
    r"gigabytes|bits|celsius|ms)$"
)


def test_metric_names_follow_prometheus_naming_conventions() -> None:
    metrics = make_metrics()
    record_steps(metrics, [(0.1, 1, 1)])

    families = list(text_string_to_metric_families(scrape(metrics)))
    # The standard collectors' series come along, under their own well-known names.
    standard = {f.name for f in families if f.name.startswith(("process_", "python_"))}
    assert {"process_resident_memory_bytes", "process_cpu_seconds", "python_info"} <= standard
    for family in families:
        name = family.name
        if name in standard:
            continue
        assert re.fullmatch(r"acceltrain_[a-z][a-z0-9_]*", name), name
        assert family.documentation, f"{name} has no HELP text"
        assert not NON_BASE_UNITS.search(name), f"{name} is not in base units"
        sample_names = {sample.name for sample in family.samples}
        if family.type == "counter":
            assert f"{name}_total" in sample_names, f"counter {name} lacks _total"
        else:
            assert not name.endswith("_total"), f"{family.type} {name} ends in _total"
        if name.endswith("_seconds"):
            assert family.type in {"histogram", "gauge"}, name
        if "memory" in name:
            assert name.endswith("_bytes"), f"{name} should carry its unit, _bytes"
        if any(word in name for word in ("mfu", "sparsity")):
            assert name.endswith("_ratio"), f"{name} is a fraction and should end in _ratio"


def promtool_or_skip() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = (
            "promtool not found: install Debian's prometheus package (apt-get install prometheus)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must provide it")
        pytest.skip(message)
    return promtool


def promtool_check(promtool: str, exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_promtool_finds_the_scraped_metrics_clean(served_metrics: TrainerMetrics) -> None:
    promtool = promtool_or_skip()
    _, body = http_scrape(served_metrics)

    result = promtool_check(promtool, body)

    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_promtool_would_flag_a_badly_named_counter() -> None:
    promtool = promtool_or_skip()
    bad = "# HELP acceltrain_requests Requests.\n# TYPE acceltrain_requests counter\n"
    bad += "acceltrain_requests 1\n"

    result = promtool_check(promtool, bad)

    assert result.returncode != 0
    assert "_total" in result.stdout + result.stderr

"""The trainer's metrics contract: every series a rank exports, with its type, help and labels.

The trainer's exporter (:class:`accel_trainer.metrics.TrainerMetrics`) is built from
:data:`SERIES`; the operator reads some of them for ``status.progress`` and the straggler check
(:mod:`accel_operator.scrape`); the README's metrics table lists them, and the tests check the
exposition and the README against this table (docs/design.md#the-metrics-contract).

Every series is labelled ``acceltrain_job`` (the AccelTrainJob's name), ``node_rank`` and
``rank``: none of them is a label Prometheus gives its targets (``job``, ``namespace``, ``pod``),
so no scrape configuration renames them to ``exported_*``; the namespace is the target's.
"""

from __future__ import annotations

import dataclasses
from typing import Final, Literal

PREFIX: Final = "acceltrain"
JOB_LABEL: Final = "acceltrain_job"
RANK_LABELS: Final = (JOB_LABEL, "node_rank", "rank")

# Steps range from milliseconds (a tiny model on a GPU) to minutes (a large ZeRO-3 model with
# offload on CPU); checkpoints from a fraction of a second to the better part of an hour.
STEP_SECONDS_BUCKETS: Final = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
CHECKPOINT_SECONDS_BUCKETS: Final = (
    *(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    *(30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)


@dataclasses.dataclass(frozen=True)
class Series:
    """One metric family of a trainer rank."""

    short_name: str
    """The name after ``acceltrain_`` (counters without ``_total``)."""
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    extra_labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        """The family's name, as Prometheus' text parser reports it."""
        return f"{PREFIX}_{self.short_name}"

    @property
    def sample(self) -> str:
        """The name of its samples (a counter's carry ``_total``)."""
        return f"{self.name}_total" if self.kind == "counter" else self.name


TRAIN_SAMPLES = Series(
    "train_samples", "counter", "Training samples this rank has processed in optimizer steps."
)
TRAIN_TOKENS = Series(
    "train_tokens",
    "counter",
    "Real (non-padding) training tokens this rank has processed in optimizer steps.",
)
PROCESSED_TOKENS = Series(
    "train_processed_tokens",
    "counter",
    "Token positions this rank's model ran over in optimizer steps, padding included.",
)
OPTIMIZER_STEPS = Series(
    "optimizer_steps", "counter", "Optimizer steps this rank has completed in this process."
)
STEP = Series("step", "gauge", "Current optimizer step of the run.")
LAST_CHECKPOINT_STEP = Series(
    "last_checkpoint_step",
    "gauge",
    "Optimizer step of the latest complete checkpoint (-1 before the first).",
)
SAMPLES_PER_SECOND = Series(
    "samples_per_second", "gauge", "Samples per second of this rank over the last optimizer steps."
)
TOKENS_PER_SECOND = Series(
    "tokens_per_second",
    "gauge",
    "Real (non-padding) tokens per second of this rank over the last optimizer steps.",
)
PADDING_EFFICIENCY = Series(
    "padding_efficiency_ratio",
    "gauge",
    "Real tokens over processed token positions of this rank over the last optimizer steps "
    "(1: no padding; 0 before the first step).",
)
TFLOPS_PER_DEVICE = Series(
    "tflops_per_device",
    "gauge",
    "Model TFLOP/s of this rank's device: (6 * params + attention) FLOPs per token times tokens "
    "per second, divided by 1e12.",
)
MFU = Series(
    "mfu_ratio",
    "gauge",
    "Model FLOPs utilisation: tflops_per_device divided by the device's peak TFLOP/s at the "
    "training precision.",
)
LOSS = Series("loss", "gauge", "Training loss of the last optimizer step.")
LEARNING_RATE = Series("learning_rate", "gauge", "Learning rate of the last optimizer step.")
SPARSITY = Series(
    "sparsity_ratio", "gauge", "Fraction of prunable weights that are zero, measured on weights."
)
LOSS_SCALE = Series(
    "loss_scale", "gauge", "Loss scale of mixed-precision training (1 when not scaling)."
)
DEVICE_MEMORY = Series(
    "device_memory_bytes",
    "gauge",
    "Memory of this rank's device: allocated, reserved, max_allocated on CUDA; process rss on CPU.",
    extra_labels=("kind",),
)
ESTIMATED_MEMORY = Series(
    "estimated_memory_bytes",
    "gauge",
    "Memory the start-up preflight estimates this rank needs for model states and activations: "
    "device (all of it on a CPU trainer) and host (offloaded optimizer state and parameters); "
    "0 until estimated.",
    extra_labels=("kind",),
)
MEMORY_BUDGET = Series(
    "memory_budget_bytes",
    "gauge",
    "Memory this rank has as the preflight sees it: its GPU, or on a CPU trainer the "
    "container's memory limit over the pod's local ranks; 0 when not known.",
)
STEP_SECONDS = Series(
    "step_seconds",
    "histogram",
    "Wall-clock seconds of one optimizer step.",
    buckets=STEP_SECONDS_BUCKETS,
)
STEP_OWN_SECONDS = Series(
    "step_own_seconds",
    "gauge",
    "Seconds per optimizer step this rank spent on work that waits for no other rank (loading "
    "its micro-batches, their forward passes), over the last steps; 0 before the first. Every "
    "rank's step takes as long as the slowest rank's, so this is what tells a straggler apart.",
)
CHECKPOINT_SECONDS = Series(
    "checkpoint_seconds",
    "histogram",
    "Wall-clock seconds of one checkpoint save.",
    buckets=CHECKPOINT_SECONDS_BUCKETS,
)

SERIES: Final = (
    TRAIN_SAMPLES,
    TRAIN_TOKENS,
    PROCESSED_TOKENS,
    OPTIMIZER_STEPS,
    STEP,
    LAST_CHECKPOINT_STEP,
    SAMPLES_PER_SECOND,
    TOKENS_PER_SECOND,
    PADDING_EFFICIENCY,
    TFLOPS_PER_DEVICE,
    MFU,
    LOSS,
    LEARNING_RATE,
    SPARSITY,
    LOSS_SCALE,
    DEVICE_MEMORY,
    ESTIMATED_MEMORY,
    MEMORY_BUDGET,
    STEP_SECONDS,
    STEP_OWN_SECONDS,
    CHECKPOINT_SECONDS,
)
"""Every series of the contract, in the README's order."""

INFO_HELP: Final = "Device, precision and where the MFU denominator comes from."
"""``acceltrain_info``: the device, its precision and the MFU denominator's source."""

"""The trainer's Prometheus exporter and the throughput arithmetic behind it.

Exports the per-rank series of the metrics contract (:mod:`accel_contract.metrics`, the README's
metrics table; docs/design.md#the-metrics-contract), labelled ``acceltrain_job``, ``node_rank``
and ``rank``. The operator scrapes rank 0's exporter for ``status.progress``; Prometheus and the
Grafana dashboard read all ranks. The training loop drives it::

    metrics = TrainerMetrics(job="bert", node_rank=0, rank=0)
    metrics.serve(9400)
    metrics.set_model_flops(num_params=count_matmul_params(model), num_layers=2,
                            hidden_size=128, seq_length=64, device_name=detect_device_name(),
                            precision="bf16", peak_tflops=None)
    for each optimizer step:
        metrics.record_step(step=s, samples=micro_batch * accumulation, tokens=real,
                            padded_tokens=real_plus_padding,
                            step_seconds=wall_clock_of_the_whole_iteration, loss=l,
                            learning_rate=lr)

How the numbers are computed:

- Tokens are real tokens: padding positions are not counted in ``train_tokens_total``,
  tokens/s, TFLOP/s or MFU. ``train_processed_tokens_total`` counts every position the model
  ran over, padding included, and ``padding_efficiency_ratio`` is real / processed over the rate
  window (1.0: no padding; 0 before the first step).
- Samples/s and tokens/s are this rank's own, over a sliding window of the last
  ``rate_window_steps`` optimizer steps: the samples of those steps divided by the sum of their
  ``step_seconds``. Process uptime, start-up and pauses between steps (evaluation, checkpoints)
  do not dilute the figure, so it shows the current training throughput.
- FLOPs per token follow the usual estimate (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022,
  appendix B; Megatron-LM; nanoGPT's ``estimate_mfu``): ``6 * N + 12 * n_layers * hidden *
  seq_len`` for forward plus backward. ``N`` counts the parameters that multiply activations:
  embedding lookups are excluded because a lookup does no arithmetic, while an embedding matrix
  tied to the language-model head is counted once, since the head's matmul is real work
  (:func:`count_matmul_params`). Recomputation by activation checkpointing is not counted, so the
  ratio is model FLOPs utilisation (MFU), not hardware FLOPs utilisation.
- TFLOP/s per device = FLOPs per token * this rank's tokens/s / 1e12 (one rank drives one device).
  MFU = that / the device's peak TFLOP/s at the training precision.
- The peak comes from the ``peak_tflops`` argument (``metrics.peakTflops`` in the job spec) when
  given; else from :data:`DEVICE_PEAKS`, dense (no 2:4 sparsity) datasheet figures matched by
  device name; else, for a CPU, from a short timed matmul at the training precision with the
  rank's own thread budget, measured once per process (:func:`measure_cpu_peak_tflops`). The CPU
  figure is a measurement on this machine, not a datasheet number, so a CPU MFU says how close
  the training matmuls come to the best matmul this rank can run.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import os
import re
import resource
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Final, cast
from wsgiref.simple_server import WSGIServer

import prometheus_client

from accel_contract import metrics as contract

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

METRIC_PREFIX: Final = contract.PREFIX
JOB_LABEL: Final = contract.JOB_LABEL
LABEL_NAMES: Final = contract.RANK_LABELS
DEFAULT_RATE_WINDOW_STEPS: Final = 20
# The kind label of acceltrain_estimated_memory_bytes: where the estimated bytes live.
MEMORY_ESTIMATE_KINDS: Final = ("device", "host")

# Accepted spellings of the training precision, mapped to the table's column names.
_PRECISION_ALIASES: Final = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "tf32": "tf32",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
}
PRECISIONS: Final = ("bf16", "fp16", "tf32", "fp32")


@dataclasses.dataclass(frozen=True)
class DevicePeak:
    """Dense peak TFLOP/s of one device per precision; None where the device lacks the format.

    ``fp32`` is the plain FP32 rate (PyTorch does not use TF32 for matmuls unless
    ``torch.backends.cuda.matmul.allow_tf32`` is set); pass precision ``tf32`` when it is set.
    """

    model: str
    bf16: float | None
    fp16: float | None
    tf32: float | None
    fp32: float

    def for_precision(self, precision: str) -> float | None:
        value: float | None = getattr(self, precision)
        return value


# Matched in order against the device name (torch.cuda.get_device_name), so the more specific
# patterns come first ("H100 NVL" before "H100", "V100S" before "V100"). Figures are the dense
# (without 2:4 sparsity) tensor-core rates from the vendors' datasheets: NVIDIA H100/H200 Tensor
# Core GPU, GH200, A100, A10, AWS A10G (G5 instances), L4, L40S, Tesla V100, Tesla T4; AMD
# Instinct MI300X/MI325X (matrix-core rates). Datasheets quote BF16/FP16/TF32 with sparsity and
# mark it with an asterisk; those figures are halved here.
DEVICE_PEAKS: Final[tuple[tuple[re.Pattern[str], DevicePeak], ...]] = tuple(
    (re.compile(pattern, re.IGNORECASE), peak)
    for pattern, peak in (
        (r"\bGH200\b", DevicePeak("GH200", 989.5, 989.5, 494.5, 67.0)),
        (r"\bH200\b.*\bNVL\b", DevicePeak("H200 NVL", 835.5, 835.5, 417.5, 60.0)),
        (r"\bH200\b", DevicePeak("H200 SXM", 989.5, 989.5, 494.5, 67.0)),
        (r"\bH100\b.*\bNVL\b", DevicePeak("H100 NVL", 835.5, 835.5, 417.5, 60.0)),
        (r"\bH100\b.*\bPCIe\b", DevicePeak("H100 PCIe", 756.5, 756.5, 378.0, 51.0)),
        (r"\bH100\b", DevicePeak("H100 SXM", 989.5, 989.5, 494.5, 67.0)),
        (r"\bA100\b", DevicePeak("A100", 312.0, 312.0, 156.0, 19.5)),
        (r"\bA10G\b", DevicePeak("A10G", 70.0, 70.0, 35.0, 35.0)),
        (r"\bA10\b", DevicePeak("A10", 125.0, 125.0, 62.5, 31.2)),
        (r"\bL40S\b", DevicePeak("L40S", 362.05, 362.05, 183.0, 91.6)),
        (r"\bL4\b", DevicePeak("L4", 121.0, 121.0, 60.0, 30.3)),
        (r"\bV100S\b", DevicePeak("V100S PCIe", None, 130.0, None, 16.4)),
        (r"\bV100\b.*\bPCIE\b", DevicePeak("V100 PCIe", None, 112.0, None, 14.0)),
        (r"\bV100\b", DevicePeak("V100 SXM", None, 125.0, None, 15.7)),
        (r"\bT4\b", DevicePeak("T4", None, 65.0, None, 8.1)),
        (r"\bMI3(00|25)X\b", DevicePeak("MI300X/MI325X", 1307.4, 1307.4, 653.7, 163.4)),
    )
)

CPU_DEVICE_NAME: Final = "cpu"


def normalize_precision(precision: str) -> str:
    """The table's name for a precision spelling ("bfloat16" -> "bf16"); ValueError if unknown."""
    normalized = _PRECISION_ALIASES.get(precision.strip().lower())
    if normalized is None:
        raise ValueError(
            f"precision {precision!r} is not one of {', '.join(PRECISIONS)}: pass the "
            "deepspeed.precision of the job (tf32 when TF32 matmuls are enabled)"
        )
    return normalized


def lookup_device_peak(device_name: str) -> DevicePeak | None:
    """The table entry whose pattern matches the device name, or None."""
    for pattern, peak in DEVICE_PEAKS:
        if pattern.search(device_name):
            return peak
    return None


def is_cpu_device(device_name: str) -> bool:
    return device_name.strip().lower().startswith(CPU_DEVICE_NAME)


def device_peak_tflops(device_name: str, precision: str) -> float | None:
    """Peak dense TFLOP/s of one device at a precision, or None when it is not known.

    GPUs come from :data:`DEVICE_PEAKS` (None for a precision the device lacks, e.g. bf16 on a
    V100, or for a device not in the table). A device named "cpu" gets a measured peak.
    """
    normalized = normalize_precision(precision)
    peak = lookup_device_peak(device_name)
    if peak is not None:
        return peak.for_precision(normalized)
    if is_cpu_device(device_name):
        return measure_cpu_peak_tflops(normalized)
    return None


def detect_device_name() -> str:
    """The current accelerator's name as the peak table expects it, or "cpu" without one."""
    torch_module = sys.modules.get("torch")
    if torch_module is not None and torch_module.cuda.is_available():
        name: str = torch_module.cuda.get_device_name()
        return name
    return CPU_DEVICE_NAME


# Big enough that the matmul runs at the blocked kernel's full rate, small enough that one
# product takes milliseconds; the budget bounds start-up cost on slow formats (bf16 without
# native CPU support runs several times slower than fp32).
_CPU_PEAK_MIN_MATRIX_SIZE: Final = 128
_CPU_PEAK_MAX_MATRIX_SIZE: Final = 1024
# A matmul this long is big enough to reach the kernel's steady rate; CPUs without native bf16
# run bf16 matmuls two orders of magnitude slower than fp32, and a fixed 1024x1024 probe then
# costs tens of seconds at every trainer start.
_CPU_PEAK_SIZING_SECONDS: Final = 0.05
_CPU_PEAK_TIME_BUDGET_SECONDS: Final = 0.3
_CPU_PEAK_MIN_REPEATS: Final = 3
_CPU_PEAK_MAX_REPEATS: Final = 20


def measure_cpu_peak_tflops(precision: str) -> float:
    """TFLOP/s of the fastest of a few square matmuls on the CPU at the training precision.

    The matrix grows from 128 until one product takes about 50 ms (at most 1024), so the probe
    stays short where the precision has no fast kernel; for bf16 and fp16 the peak is at least
    the fp32 rate, which is what a CPU without half-precision units runs those layers at.

    Runs with torch's current thread count, i.e. the share of cores this rank was given, and is
    measured once per process for each (precision, thread count). The best repetition is kept
    so that a moment of contention from other processes does not lower the peak.
    """
    import torch

    normalized = normalize_precision(precision)
    threads = torch.get_num_threads()
    peak = _measure_cpu_peak_tflops(normalized, threads)
    if normalized in ("bf16", "fp16"):
        # A CPU without native half-precision units runs those layers through fp32 kernels
        # (oneDNN converts and multiplies in fp32), so the fp32 rate is what it can attain.
        peak = max(peak, _measure_cpu_peak_tflops("fp32", threads))
    return peak


@functools.cache
def _measure_cpu_peak_tflops(precision: str, threads: int) -> float:
    import torch

    # TF32 is a GPU tensor-core format; on the CPU it is ordinary fp32 arithmetic.
    dtype = {
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "tf32": torch.float32,
        "fp32": torch.float32,
    }[precision]
    generator = torch.Generator().manual_seed(0)
    best_tflops = 0.0
    with torch.no_grad():
        # Grow the product until one takes long enough to time well, keeping the best rate of
        # any size: without a native kernel the rate can fall as the matrices outgrow the caches.
        size = _CPU_PEAK_MIN_MATRIX_SIZE
        while True:
            left = torch.randn(size, size, generator=generator).to(dtype)
            right = torch.randn(size, size, generator=generator).to(dtype)
            torch.mm(left, right)  # warm-up: kernel selection and page faults
            seconds = _timed_matmuls(left, right)
            best_tflops = max(best_tflops, 2.0 * size**3 / seconds / 1e12)
            if seconds >= _CPU_PEAK_SIZING_SECONDS or size >= _CPU_PEAK_MAX_MATRIX_SIZE:
                break
            size *= 2
    logger.info(
        "measured CPU peak %.4f TFLOP/s at %s with %d threads (square matmuls up to %d)",
        best_tflops,
        precision,
        threads,
        size,
    )
    return best_tflops


def _timed_matmuls(left: torch.Tensor, right: torch.Tensor) -> float:
    """The fastest of a few products of ``left`` and ``right``, in seconds: at least
    ``_CPU_PEAK_MIN_REPEATS`` of them, more while the time budget lasts."""
    import torch

    best_seconds = math.inf
    started = time.perf_counter()
    repeats = 0
    while repeats < _CPU_PEAK_MAX_REPEATS:
        elapsed = time.perf_counter() - started
        # A slow product (no native kernel) gets fewer repeats rather than seconds of probing.
        if elapsed >= _CPU_PEAK_TIME_BUDGET_SECONDS and (
            repeats >= _CPU_PEAK_MIN_REPEATS or elapsed >= 3 * _CPU_PEAK_TIME_BUDGET_SECONDS
        ):
            break
        tick = time.perf_counter()
        torch.mm(left, right)
        best_seconds = min(best_seconds, time.perf_counter() - tick)
        repeats += 1
    return best_seconds


def estimate_flops_per_token(
    *, num_params: int, num_layers: int, hidden_size: int, seq_length: int
) -> float:
    """Training FLOPs (forward + backward) per token: ``6 * N + 12 * L * H * S``.

    ``6 * N``: each parameter does one multiply-add (2 FLOPs) per token forward and twice that
    backward. ``12 * L * H * S``: the attention score and value products, which no parameter
    count captures (PaLM appendix B). ``num_params`` should exclude embedding lookups; see
    :func:`count_matmul_params`.
    """
    for name, value, minimum in (
        ("num_params", num_params, 1),
        ("num_layers", num_layers, 0),
        ("hidden_size", hidden_size, 1),
        ("seq_length", seq_length, 1),
    ):
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum} to estimate FLOPs, got {value}")
    return 6.0 * num_params + 12.0 * num_layers * hidden_size * seq_length


def count_matmul_params(model: torch.nn.Module) -> int:
    """Parameters that multiply activations: all but embedding tables used only for lookups.

    A weight shared by an embedding and a linear layer (a tied language-model head) is counted
    once. Works under ZeRO-3, where parameters are partitioned and report their full size in
    ``ds_numel``.
    """
    import torch

    lookup_tables: set[int] = set()
    multiplied: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter):
            continue
        if isinstance(module, torch.nn.Embedding | torch.nn.EmbeddingBag):
            lookup_tables.add(id(weight))
        else:
            multiplied.add(id(weight))
    total = 0
    for parameter in model.parameters():  # yields a shared parameter once
        if id(parameter) in lookup_tables and id(parameter) not in multiplied:
            continue
        total += int(getattr(parameter, "ds_numel", parameter.numel()))
    return total


def process_rss_bytes() -> tuple[str, int]:
    """This process's memory as (kind, bytes): current RSS from /proc, else the peak RSS."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
        return "rss", resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        # Without /proc (macOS laptops) only the peak is available: kilobytes on Linux, bytes
        # on macOS.
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024
        return "max_rss", max_rss * scale


@dataclasses.dataclass(frozen=True)
class _StepSample:
    seconds: float
    samples: int
    tokens: int
    processed_tokens: int
    own_seconds: float | None


def _family(
    series: contract.Series, registry: prometheus_client.CollectorRegistry
) -> prometheus_client.Counter | prometheus_client.Gauge | prometheus_client.Histogram:
    """The Prometheus family of one contract series (counters gain "_total" on exposition)."""
    labels = (*LABEL_NAMES, *series.extra_labels)
    if series.kind == "counter":
        return prometheus_client.Counter(series.name, series.help, labels, registry=registry)
    if series.kind == "gauge":
        return prometheus_client.Gauge(series.name, series.help, labels, registry=registry)
    return prometheus_client.Histogram(
        series.name, series.help, labels, buckets=series.buckets, registry=registry
    )


def _check_step(
    samples: int,
    tokens: int,
    processed: int,
    step_seconds: float,
    sparsity: float | None,
    own_seconds: float | None,
) -> None:
    """The figures of one step make sense, or a ValueError says which does not."""
    if samples < 0 or tokens < 0:
        raise ValueError(f"samples and tokens must be >= 0, got {samples} and {tokens}")
    if processed < tokens:
        raise ValueError(
            f"padded_tokens ({processed}) counts padding too and cannot be below tokens ({tokens})"
        )
    if not (step_seconds > 0 and math.isfinite(step_seconds)):
        raise ValueError(
            f"step_seconds must be a positive duration, got {step_seconds}: time the "
            "iteration with time.perf_counter()"
        )
    if sparsity is not None and not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1], got {sparsity}")
    if own_seconds is not None and not (own_seconds >= 0 and math.isfinite(own_seconds)):
        raise ValueError(f"own_seconds must be a duration >= 0, got {own_seconds}")


def _check_identity(job: str, node_rank: int, rank: int, rate_window_steps: int) -> None:
    if not job:
        raise ValueError("job must be a non-empty name (the AccelTrainJob's metadata.name)")
    if node_rank < 0 or rank < 0:
        raise ValueError(f"node_rank and rank must be >= 0, got {node_rank} and {rank}")
    if rate_window_steps < 1:
        raise ValueError(f"rate_window_steps must be >= 1, got {rate_window_steps}")


def _process_registry() -> prometheus_client.CollectorRegistry:
    """A private registry with what the default one has: process_* (CPU seconds, resident
    memory, open fds), python_gc_* and python_info."""
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    return registry


class TrainerMetrics:
    """One rank's metrics: Prometheus series in a private registry plus the rate window.

    Every contract series exists from construction, so the first scrape already shows all of
    them: counters and rates at 0, ``loss_scale`` at 1 (no scaling until the loop reports the
    engine's dynamic scale), ``sparsity_ratio`` at 0 until the loop reports a measured
    sparsity, ``tflops_per_device`` and ``mfu_ratio`` at 0 until :meth:`set_model_flops` has
    been called and a step recorded (MFU stays 0 when no peak is known for the device).
    Not thread-safe for writers: the training loop is the only caller; the HTTP thread reads
    the registry, which prometheus_client guards itself.
    """

    def __init__(
        self,
        *,
        job: str,
        node_rank: int,
        rank: int,
        registry: prometheus_client.CollectorRegistry | None = None,
        rate_window_steps: int = DEFAULT_RATE_WINDOW_STEPS,
    ) -> None:
        _check_identity(job, node_rank, rank, rate_window_steps)
        self.registry = registry if registry is not None else _process_registry()
        self.labels: dict[str, str] = {
            JOB_LABEL: job,
            "node_rank": str(node_rank),
            "rank": str(rank),
        }
        self._window: collections.deque[_StepSample] = collections.deque(maxlen=rate_window_steps)
        self._flops_per_token: float | None = None
        self._peak_tflops: float | None = None
        self._memory_kinds: set[str] = set()
        self._server: WSGIServer | None = None
        self._server_thread: threading.Thread | None = None
        self._latest: dict[str, float] = {}

        self._bind_series(
            {series.short_name: _family(series, self.registry) for series in contract.SERIES}
        )
        self.record_device_memory()

    def _bind_series(self, family: dict[str, Any]) -> None:
        """This rank's series of every contract family, as attributes the recorders set."""

        def rank_series(series: contract.Series) -> Any:
            return family[series.short_name].labels(**self.labels)

        self._samples_total = rank_series(contract.TRAIN_SAMPLES)
        self._tokens_total = rank_series(contract.TRAIN_TOKENS)
        self._processed_tokens_total = rank_series(contract.PROCESSED_TOKENS)
        self._steps_total = rank_series(contract.OPTIMIZER_STEPS)
        self._step = rank_series(contract.STEP)
        self._checkpoint_step = rank_series(contract.LAST_CHECKPOINT_STEP)
        self._checkpoint_step.set(-1)
        self._samples_per_second = rank_series(contract.SAMPLES_PER_SECOND)
        self._tokens_per_second = rank_series(contract.TOKENS_PER_SECOND)
        self._padding_efficiency = rank_series(contract.PADDING_EFFICIENCY)
        self._tflops_per_device = rank_series(contract.TFLOPS_PER_DEVICE)
        self._mfu = rank_series(contract.MFU)
        self._loss = rank_series(contract.LOSS)
        self._learning_rate = rank_series(contract.LEARNING_RATE)
        self._sparsity = rank_series(contract.SPARSITY)
        self._loss_scale = rank_series(contract.LOSS_SCALE)
        self._loss_scale.set(1.0)
        # The per-kind series: labelled when a kind is reported (estimates: both from the start).
        self._device_memory = cast(
            prometheus_client.Gauge, family[contract.DEVICE_MEMORY.short_name]
        )
        self._estimated_memory = cast(
            prometheus_client.Gauge, family[contract.ESTIMATED_MEMORY.short_name]
        )
        for kind in MEMORY_ESTIMATE_KINDS:
            self._estimated_memory.labels(**self.labels, kind=kind)
        self._memory_budget = rank_series(contract.MEMORY_BUDGET)
        self._step_seconds = rank_series(contract.STEP_SECONDS)
        self._step_own_seconds = rank_series(contract.STEP_OWN_SECONDS)
        self._checkpoint_seconds = rank_series(contract.CHECKPOINT_SECONDS)
        # prometheus_client appends "_info", giving acceltrain_info.
        self._info = prometheus_client.Info(
            METRIC_PREFIX, contract.INFO_HELP, LABEL_NAMES, registry=self.registry
        ).labels(**self.labels)

    # --- exporter ----------------------------------------------------------------------------
    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve the registry in the Prometheus text format on ``addr:port`` (daemon thread).

        Port 0 picks a free port; :attr:`port` tells which.
        """
        if self._server is not None:
            raise RuntimeError(f"the metrics exporter already serves on port {self.port}")
        try:
            self._server, self._server_thread = prometheus_client.start_http_server(
                port, addr=addr, registry=self.registry
            )
        except OSError as error:
            raise OSError(
                error.errno,
                f"cannot serve metrics on {addr}:{port} ({error.strerror}): another process or "
                "rank holds the port; set metrics.port to a free port",
            ) from error

    @property
    def address(self) -> tuple[str, int] | None:
        """The (host, port) the exporter listens on, or None before :meth:`serve`."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def port(self) -> int | None:
        """The port the exporter listens on, or None before :meth:`serve`."""
        address = self.address
        return None if address is None else address[1]

    def close(self) -> None:
        """Stop the exporter, if serving; the metrics themselves stay readable."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._server_thread is not None:
            self._server_thread.join(timeout=5)
        self._server = None
        self._server_thread = None

    # --- what the training loop reports ------------------------------------------------------
    def set_model_flops(
        self,
        *,
        num_params: int,
        num_layers: int,
        hidden_size: int,
        seq_length: int,
        device_name: str,
        precision: str,
        peak_tflops: float | None,
    ) -> None:
        """Fix FLOPs per token and the device's peak; called once after the model is built.

        ``peak_tflops`` (the job's ``metrics.peakTflops``) overrides the table and the CPU
        measurement.
        """
        normalized = normalize_precision(precision)
        self._flops_per_token = estimate_flops_per_token(
            num_params=num_params,
            num_layers=num_layers,
            hidden_size=hidden_size,
            seq_length=seq_length,
        )
        if peak_tflops is not None:
            if not (peak_tflops > 0 and math.isfinite(peak_tflops)):
                raise ValueError(
                    f"peak_tflops must be a positive number (metrics.peakTflops), got {peak_tflops}"
                )
            self._peak_tflops, source = float(peak_tflops), "config"
        else:
            self._peak_tflops = device_peak_tflops(device_name, normalized)
            if self._peak_tflops is None:
                source = "unknown"
                logger.warning(
                    "no peak TFLOP/s known for device %r at %s: acceltrain_mfu_ratio stays 0; "
                    "set metrics.peakTflops in the job spec",
                    device_name,
                    normalized,
                )
            elif lookup_device_peak(device_name) is not None:
                source = "datasheet"
            else:
                source = "measured"
        self._info.info(
            {
                "device": device_name,
                "precision": normalized,
                "peak_source": source,
            }
        )
        self._update_rates()

    def record_step(
        self,
        *,
        step: int,
        samples: int,
        tokens: int,
        step_seconds: float,
        padded_tokens: int | None = None,
        loss: float,
        learning_rate: float,
        loss_scale: float | None = None,
        sparsity: float | None = None,
        own_seconds: float | None = None,
    ) -> None:
        """Account for one optimizer step of this rank.

        ``samples``/``tokens`` are this rank's (micro-batch x accumulation), ``tokens`` the real
        ones and ``padded_tokens`` all positions processed (``tokens`` when not given);
        ``step_seconds`` is the wall-clock of the whole iteration, data loading included, and
        ``own_seconds`` the part of it that waited for no other rank (None: not measured).
        ``loss`` may be non-finite (an fp16 overflow step); it is exported as is.
        """
        processed = tokens if padded_tokens is None else padded_tokens
        _check_step(samples, tokens, processed, step_seconds, sparsity, own_seconds)
        self._samples_total.inc(samples)
        self._tokens_total.inc(tokens)
        self._processed_tokens_total.inc(processed)
        self._steps_total.inc()
        self._step.set(step)
        self._step_seconds.observe(step_seconds)
        self._loss.set(loss)
        self._learning_rate.set(learning_rate)
        self._latest.update(
            step=float(step),
            loss=float(loss),
            learning_rate=float(learning_rate),
            train_samples_total=self._latest.get("train_samples_total", 0.0) + samples,
            train_tokens_total=self._latest.get("train_tokens_total", 0.0) + tokens,
            optimizer_steps_total=self._latest.get("optimizer_steps_total", 0.0) + 1,
        )
        if loss_scale is not None:
            self._loss_scale.set(loss_scale)
            self._latest["loss_scale"] = float(loss_scale)
        if sparsity is not None:
            self._sparsity.set(sparsity)
            self._latest["sparsity_ratio"] = float(sparsity)
        self._window.append(_StepSample(step_seconds, samples, tokens, processed, own_seconds))
        self._update_rates()

    def record_checkpoint(self, seconds: float, step: int | None = None) -> None:
        """Account for one checkpoint save that took ``seconds`` and holds optimizer ``step``.

        The operator reads the step back into ``status.lastCheckpoint``.
        """
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"checkpoint seconds must be a duration >= 0, got {seconds}")
        self._checkpoint_seconds.observe(seconds)
        if step is not None:
            self._checkpoint_step.set(step)

    def record_device_memory(self) -> None:
        """Sample device memory: CUDA allocator figures on a GPU, process RSS on a CPU.

        CUDA is read only when the process already initialised it; torch is never imported
        here, so a CPU process pays nothing for it.
        """
        torch_module = sys.modules.get("torch")
        readings: dict[str, int]
        if (
            torch_module is not None
            and torch_module.cuda.is_available()
            and torch_module.cuda.is_initialized()
        ):
            cuda = torch_module.cuda
            readings = {
                "allocated": int(cuda.memory_allocated()),
                "reserved": int(cuda.memory_reserved()),
                "max_allocated": int(cuda.max_memory_allocated()),
            }
        else:
            kind, value = process_rss_bytes()
            readings = {kind: value}
        for kind, value in readings.items():
            self._device_memory.labels(**self.labels, kind=kind).set(value)
            self._latest[f"device_memory_bytes_{kind}"] = float(value)
        # A series whose kind no longer applies (CUDA initialised after the first sample)
        # would otherwise go on reporting its stale value.
        for stale in self._memory_kinds - readings.keys():
            self._device_memory.remove(*self.labels.values(), stale)
            self._latest.pop(f"device_memory_bytes_{stale}", None)
        self._memory_kinds = set(readings)

    def record_memory_estimate(
        self, *, device_bytes: int, host_bytes: int, budget_bytes: int | None
    ) -> None:
        """Export the preflight's per-rank estimate and budget (None: no budget known, 0)."""
        if device_bytes < 0 or host_bytes < 0 or (budget_bytes is not None and budget_bytes < 0):
            raise ValueError(
                f"memory figures must be bytes >= 0, got device {device_bytes}, host "
                f"{host_bytes}, budget {budget_bytes}"
            )
        for kind, value in zip(MEMORY_ESTIMATE_KINDS, (device_bytes, host_bytes), strict=True):
            self._estimated_memory.labels(**self.labels, kind=kind).set(value)
            self._latest[f"estimated_memory_bytes_{kind}"] = float(value)
        self._memory_budget.set(budget_bytes or 0)
        self._latest["memory_budget_bytes"] = float(budget_bytes or 0)

    def snapshot(self) -> dict[str, float]:
        """Current values for a log line, keyed by metric name without the prefix."""
        values = {
            "samples_per_second": 0.0,
            "tokens_per_second": 0.0,
            "padding_efficiency_ratio": 0.0,
            "tflops_per_device": 0.0,
            "mfu_ratio": 0.0,
            "loss_scale": 1.0,
            "sparsity_ratio": 0.0,
            "train_samples_total": 0.0,
            "train_tokens_total": 0.0,
            "optimizer_steps_total": 0.0,
            **self._latest,
        }
        return values

    @property
    def flops_per_token(self) -> float | None:
        return self._flops_per_token

    @property
    def peak_tflops(self) -> float | None:
        return self._peak_tflops

    def _update_rates(self) -> None:
        window_seconds = sum(sample.seconds for sample in self._window)
        if window_seconds <= 0:
            return
        owned = [sample.own_seconds for sample in self._window if sample.own_seconds is not None]
        if owned:
            own_seconds = sum(owned) / len(owned)
            self._step_own_seconds.set(own_seconds)
            self._latest["step_own_seconds"] = own_seconds
        samples_per_second = sum(sample.samples for sample in self._window) / window_seconds
        tokens = sum(sample.tokens for sample in self._window)
        tokens_per_second = tokens / window_seconds
        processed = sum(sample.processed_tokens for sample in self._window)
        efficiency = tokens / processed if processed else 0.0
        self._padding_efficiency.set(efficiency)
        self._latest["padding_efficiency_ratio"] = efficiency
        self._samples_per_second.set(samples_per_second)
        self._tokens_per_second.set(tokens_per_second)
        self._latest.update(
            samples_per_second=samples_per_second, tokens_per_second=tokens_per_second
        )
        if self._flops_per_token is None:
            return
        tflops = self._flops_per_token * tokens_per_second / 1e12
        self._tflops_per_device.set(tflops)
        self._latest["tflops_per_device"] = tflops
        if self._peak_tflops is not None:
            mfu = tflops / self._peak_tflops
            self._mfu.set(mfu)
            self._latest["mfu_ratio"] = mfu

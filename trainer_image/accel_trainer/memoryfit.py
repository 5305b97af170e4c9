"""The memory preflight: does one rank's training state fit the memory that rank has?

Owns the estimate the :class:`~accel_trainer.train.Recipe` checks before the model is built and
DeepSpeed allocates anything: the parameter count (the model built on the meta device, so no
weights are loaded or allocated), the per-rank bytes of the model states and activations, the
rank's budget (its GPU, or the container's memory limit split over the pod's local ranks), and
the one-line verdict that names the spec fields which would make the run fit. Everything except
:func:`count_parameters` and :func:`memory_budget` is arithmetic on a :class:`TrainingSetup`.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward
Training Trillion Parameter Models", section 3.1). For Ψ parameters:

- mixed precision (bf16, fp16): 2Ψ parameters + 2Ψ gradients + KΨ optimizer state, with K = 12
  for Adam, AdamW and LAMB (fp32 master copy, momentum, variance), 8 for SGD with momentum
  (master copy, momentum) and 4 for SGD without;
- fp32: 4Ψ + 4Ψ + the optimizer state without a master copy: 8Ψ for the Adam family, 4Ψ for SGD
  with momentum, nothing for SGD without.

Over N data-parallel ranks, stage 1 divides the optimizer state by N, stage 2 the gradients as
well, stage 3 the parameters as well. ``offload_optimizer`` moves the optimizer state (master copy
included) to host memory and ``offload_param`` (stage 3) the parameters. On a CPU trainer the
device is the host: offloading moves nothing, and every byte counts against the one budget.

Activations follow Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", section 4.1: a transformer layer keeps 34·s·b·h bytes with 16-bit activations
(16 two-byte values and two one-byte dropout masks per token and hidden unit), leaving out the
attention-score term 5·a·s²·b that fused attention kernels do not store. Here that is 17 values
per token and hidden unit, times 2 bytes in bf16/fp16 or 4 in fp32. With activation checkpointing
(full recomputation, section 4) a layer keeps only its input, one value per token and hidden unit,
and one layer's full activations exist at a time while it is recomputed.

Not counted: the interpreter, libraries and CUDA context, DeepSpeed's communication buckets,
temporary buffers, the embedding and output layers' activations (the logits of a large
vocabulary) and the attention scores. The estimate is therefore a lower bound, and a run is
refused only when even that exceeds :data:`FIT_MARGIN` of the budget.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accel_contract.config import ENV_MEMORY_LIMIT_BYTES, TrainerConfig
from accel_trainer.errors import ConfigError
from accel_trainer.models import ModelShape, empty_model, model_shape
from accel_trainer.runconfig import micro_batch_of, precision_of, zero_stage_of

# A run fits when the estimate is at most this share of the budget; the rest is left for what
# the estimate does not count (module docstring), so only runs that clearly cannot fit fail.
FIT_MARGIN = 0.9
# Values a transformer layer keeps per token and hidden unit (Korthikanti et al. 2022: 34 bytes
# in 16-bit, module docstring); with activation checkpointing, only its input.
ACTIVATION_VALUES_PER_LAYER = 17
CHECKPOINTED_VALUES_PER_LAYER = 1
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
# The smallest data.maxLength the API accepts.
MIN_MAX_LENGTH = 8
MIXED_PRECISIONS = ("bf16", "fp16")
# The most ranks the failure message looks at when it tells how many would fit.
_MAX_SUGGESTED_RANKS = 4096


@dataclass(frozen=True)
class TrainingSetup:
    """What the accounting needs to know about a run."""

    num_params: int
    num_layers: int
    hidden_size: int
    world_size: int
    zero_stage: int
    precision: str
    optimizer: str
    sgd_momentum: bool
    offload_optimizer: bool
    offload_params: bool
    micro_batch: int
    seq_length: int
    activation_checkpointing: bool
    on_gpu: bool


@dataclass(frozen=True)
class Budget:
    """The memory one rank has, and where the figure comes from (for the log line)."""

    bytes: int
    source: str
    # Local ranks that share the container limit (0 on a GPU, where a rank has its device).
    shared_by: int = 0


@dataclass(frozen=True)
class MemoryEstimate:
    """One rank's memory: model states and activations in bytes, and the verdict."""

    setup: TrainingSetup
    params: int
    grads: int
    optimizer: int
    activations: int
    device_total: int
    host_total: int
    budget: Budget | None

    @property
    def usable(self) -> int | None:
        """The share of the budget the estimate may take (:data:`FIT_MARGIN`)."""
        return None if self.budget is None else int(self.budget.bytes * FIT_MARGIN)

    @property
    def fits(self) -> bool:
        """True when no budget is known (the check is skipped) or the estimate is within it."""
        return self.usable is None or self.device_total <= self.usable

    def describe(self) -> str:
        """The estimate as one log line."""
        setup = self.setup
        line = (
            f"memory estimate per rank: {self._parts()}; {format_bytes(self.device_total)} on "
            f"the device and {format_bytes(self.host_total)} on the host, for "
            f"{setup.num_params:,} parameters at ZeRO stage {setup.zero_stage} with "
            f"{setup.precision} over {setup.world_size} rank(s)"
        )
        if self.budget is None:
            return (
                f"{line}; memory check skipped: no budget known (no {ENV_MEMORY_LIMIT_BYTES} "
                f"and no limit in {CGROUP_MEMORY_MAX})"
            )
        verdict = "fits" if self.fits else "does not fit"
        return (
            f"{line}; budget {format_bytes(self.budget.bytes)} ({self.budget.source}), "
            f"{verdict} within {FIT_MARGIN:.0%} of it"
        )

    def failure_message(self) -> str:
        """The one-line reason a run that does not fit is refused, with what would fix it."""
        assert self.budget is not None
        setup = self.setup
        fixes = suggestions(self)
        advice = _join_or(fixes) if fixes else "use a device with more memory or a smaller model"
        return (
            f"memory: training needs {format_bytes(self.device_total)} per rank at ZeRO stage "
            f"{setup.zero_stage} with {setup.precision} over {setup.world_size} rank(s) "
            f"({self._parts()}), but a rank has {format_bytes(self.budget.bytes)} "
            f"({self.budget.source}), {FIT_MARGIN:.0%} of which is usable; {advice}"
        )

    def _parts(self) -> str:
        on_host = {
            "optimizer": self.setup.on_gpu and self.setup.offload_optimizer,
            "params": self.setup.on_gpu and self.setup.offload_params,
        }
        parts = []
        for name in ("params", "grads", "optimizer", "activations"):
            where = " on the host" if on_host.get(name) else ""
            parts.append(f"{name} {format_bytes(getattr(self, name))}{where}")
        return ", ".join(parts)


# --- the accounting ------------------------------------------------------------------------------
def optimizer_state_factor(optimizer: str, precision: str, sgd_momentum: bool) -> int:
    """Bytes of optimizer state per parameter (K in the ZeRO paper; module docstring).

    An optimizer outside the table counts like Adam, the largest of the common ones.
    """
    master_copy = 4 if precision in MIXED_PRECISIONS else 0
    if optimizer.lower() == "sgd":
        return master_copy + (4 if sgd_momentum else 0)
    return master_copy + 8  # momentum and variance, 4 bytes each


def activation_bytes(setup: TrainingSetup) -> int:
    """Activations one micro-batch keeps for the backward pass (module docstring)."""
    value_bytes = 2 if setup.precision in MIXED_PRECISIONS else 4
    per_layer = setup.micro_batch * setup.seq_length * setup.hidden_size * value_bytes
    if setup.activation_checkpointing:
        kept = CHECKPOINTED_VALUES_PER_LAYER * setup.num_layers + ACTIVATION_VALUES_PER_LAYER
        return per_layer * kept
    return per_layer * ACTIVATION_VALUES_PER_LAYER * setup.num_layers


def estimate(setup: TrainingSetup, budget: Budget | None) -> MemoryEstimate:
    """One rank's bytes for ``setup`` by the ZeRO accounting, and ``budget`` to judge them."""
    value_bytes = 2 if setup.precision in MIXED_PRECISIONS else 4
    psi, ranks = setup.num_params, max(1, setup.world_size)
    params = value_bytes * psi
    grads = value_bytes * psi
    optimizer = optimizer_state_factor(setup.optimizer, setup.precision, setup.sgd_momentum) * psi
    if setup.zero_stage >= 1:
        optimizer = math.ceil(optimizer / ranks)
    if setup.zero_stage >= 2:
        grads = math.ceil(grads / ranks)
    if setup.zero_stage >= 3:
        params = math.ceil(params / ranks)
    activations = activation_bytes(setup)
    host = 0
    if setup.on_gpu and setup.offload_optimizer:
        host += optimizer
    if setup.on_gpu and setup.offload_params:
        host += params
    return MemoryEstimate(
        setup=setup,
        params=params,
        grads=grads,
        optimizer=optimizer,
        activations=activations,
        device_total=params + grads + optimizer + activations - host,
        host_total=host,
        budget=budget,
    )


# --- what would make it fit ----------------------------------------------------------------------
def suggestions(result: MemoryEstimate) -> list[str]:
    """Spec changes that lower this rank's need, each on its own, in the user's field names."""
    setup, budget = result.setup, result.budget
    ranks = "devicesPerWorker/workers" if setup.on_gpu else "workers"
    found: list[str] = []
    if setup.zero_stage >= 1 and _lowers(setup, world_size=2 * setup.world_size):
        more_ranks = _first_fitting(
            result,
            (dataclasses.replace(setup, world_size=n) for n in _more_ranks(setup.world_size)),
        )
        fit = f", fits on {more_ranks.world_size} ranks" if more_ranks else ""
        found.append(f"raise {ranks} (ZeRO shards over more ranks{fit})")
    if setup.zero_stage < 3 and _lowers(setup, zero_stage=3):
        found.append("set deepspeed.zero.stage: 3")
    elif setup.zero_stage < 3 and _lowers(setup, zero_stage=3, world_size=2 * setup.world_size):
        found.append(f"set deepspeed.zero.stage: 3 and raise {ranks}")
    # Offloading needs a stage: does it help beyond what that stage alone does?
    least_stage = dataclasses.replace(setup, zero_stage=max(1, setup.zero_stage))
    if not setup.offload_optimizer and _lowers(least_stage, offload_optimizer=True):
        stage = " (with deepspeed.zero.stage >= 1)" if setup.zero_stage == 0 else ""
        found.append(f"set deepspeed.zero.offloadOptimizer: cpu{stage}")
    stage_3 = dataclasses.replace(setup, zero_stage=3)
    if not setup.offload_params and _lowers(stage_3, offload_params=True):
        stage = " (with deepspeed.zero.stage: 3)" if setup.zero_stage < 3 else ""
        found.append(f"set deepspeed.zero.offloadParams: cpu{stage}")
    if setup.micro_batch > 1:
        fitting = _largest_fitting(result, setup.micro_batch)
        to = f" to {fitting}" if fitting else ""
        found.append(
            f"lower training.microBatchSize{to} (now {setup.micro_batch}; raise "
            "training.gradientAccumulation to keep the batch)"
        )
    if setup.seq_length > MIN_MAX_LENGTH:
        fitting = _largest_fitting(result, setup.seq_length)
        to = f" to {fitting}" if fitting and fitting >= MIN_MAX_LENGTH else ""
        found.append(f"lower data.maxLength{to} (now {setup.seq_length})")
    if not setup.activation_checkpointing and _lowers(setup, activation_checkpointing=True):
        found.append("turn on deepspeed.activationCheckpointing")
    if budget is not None and budget.shared_by:
        needed = math.ceil(result.device_total / FIT_MARGIN) * budget.shared_by
        found.append(f"raise resources.limits.memory to {format_bytes(needed)} or more")
    return found


def _lowers(base: TrainingSetup, **changes: Any) -> bool:
    """Whether ``changes`` to ``base`` lower the bytes a rank needs on its device."""
    changed = dataclasses.replace(base, **changes)
    return estimate(changed, None).device_total < estimate(base, None).device_total


def _first_fitting(
    result: MemoryEstimate, candidates: Iterable[TrainingSetup]
) -> TrainingSetup | None:
    for candidate in candidates:
        if estimate(candidate, result.budget).fits:
            return candidate
    return None


def _largest_fitting(result: MemoryEstimate, current: int) -> int | None:
    """The largest value below ``current`` of a size the activations grow linearly with (the
    micro-batch, the sequence length) at which the run fits, or None."""
    if result.usable is None or result.activations <= 0:
        return None
    room = result.usable - (result.device_total - result.activations)
    largest = math.floor(current * room / result.activations)
    return min(largest, current - 1) if largest >= 1 else None


def _more_ranks(world_size: int) -> Iterable[int]:
    count = max(1, world_size) * 2
    while count <= _MAX_SUGGESTED_RANKS:
        yield count
        count *= 2


def _join_or(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + ", or " + items[-1]


# --- inputs: the run, the model and the budget ---------------------------------------------------
def setup_for(
    config: TrainerConfig,
    ds_config: dict[str, Any],
    shape: ModelShape,
    *,
    world_size: int,
    seq_length: int,
) -> TrainingSetup:
    """The accounting's view of a run, from trainer.json, ds_config.json and the model's shape."""
    optimizer = ds_config.get("optimizer") or {}
    params = optimizer.get("params") or {}
    zero = ds_config.get("zero_optimization") or {}
    return TrainingSetup(
        num_params=shape.num_params,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        world_size=world_size,
        zero_stage=zero_stage_of(ds_config),
        precision=precision_of(ds_config),
        optimizer=str(optimizer.get("type", "adamw")).lower(),
        sgd_momentum=float(params.get("momentum", 0.0) or 0.0) > 0.0,
        offload_optimizer=_offloaded(zero, "offload_optimizer"),
        offload_params=_offloaded(zero, "offload_param"),
        micro_batch=micro_batch_of(ds_config, config)[0],
        seq_length=seq_length,
        activation_checkpointing=config.activation_checkpointing,
        on_gpu=config.device == "cuda",
    )


def _offloaded(zero: Any, key: str) -> bool:
    section = zero.get(key) if isinstance(zero, dict) else None
    return isinstance(section, dict) and str(section.get("device", "none")) != "none"


def count_parameters(config: TrainerConfig, tokenizer: Any, label_names: list[str]) -> ModelShape:
    """Parameters, depth and width of the model to train, built on the meta device."""
    return model_shape(empty_model(config.model, tokenizer, label_names))


def memory_budget(
    device: str,
    *,
    local_rank: int,
    local_world_size: int,
    env: Mapping[str, str] = os.environ,
    cgroup_file: Path = CGROUP_MEMORY_MAX,
) -> Budget | None:
    """One rank's memory: its GPU, or the container's limit over the pod's local ranks.

    None when no limit is known (a CPU trainer outside a container with a memory limit).
    """
    if device == "cuda":
        import torch

        properties = torch.cuda.get_device_properties(local_rank)
        return Budget(int(properties.total_memory), f"GPU {local_rank}, {properties.name}")
    limit = container_memory_limit(env, cgroup_file)
    if limit is None:
        return None
    total, source = limit
    ranks = max(1, local_world_size)
    return Budget(
        total // ranks,
        f"container memory limit {format_bytes(total)} from {source}, over {ranks} local rank(s)",
        shared_by=ranks,
    )


def container_memory_limit(
    env: Mapping[str, str] = os.environ, cgroup_file: Path = CGROUP_MEMORY_MAX
) -> tuple[int, str] | None:
    """(bytes, where from): the env the operator sets, else cgroup v2's memory.max, else None."""
    raw = env.get(ENV_MEMORY_LIMIT_BYTES, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(
                f"env {ENV_MEMORY_LIMIT_BYTES}={raw!r} is not a positive number of bytes: the "
                "operator sets it from the container's limits.memory; check the pod spec"
            )
        return int(raw), ENV_MEMORY_LIMIT_BYTES
    try:
        text = cgroup_file.read_text().strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) < 1:  # "max": no limit
        return None
    return int(text), str(cgroup_file)


def format_bytes(count: int | float) -> str:
    """``count`` in the largest binary unit that keeps it >= 1 ("1.5 GiB", "512.0 MiB")."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")

"""Gradual magnitude pruning (Zhu & Gupta, 2017) that works under every ZeRO stage.

Schedule: pruning rounds run after optimizer steps ``startStep, startStep + frequency, ...`` and
at ``endStep``; the round at step ``t`` prunes to the cubic ramp

    s(t) = s_f * (1 - (1 - (t - startStep) / (endStep - startStep)) ** 3)

of ``targetSparsity`` ``s_f``. A round gathers each selected weight matrix's fp32 master once
and zeroes the smallest magnitudes, over all selected matrices together (``global``) or per
matrix (``per-layer``); weights pruned earlier stay pruned.

Masks are kept for the rest of the run: after every optimizer step the masks multiply this rank's
fp32 master fragments and the low-precision copy the model reads (see :mod:`weights`), so the
optimizer's momentum cannot regrow pruned weights. That is one elementwise multiply over local
data with no communication; gathering and re-scattering whole parameters each step, the obvious
alternative, cost a third of the throughput at ZeRO-1/2. The achieved sparsity is counted on the
fp32 masters themselves, not on the masks.

The masks live in memory as one bool per selected weight on every rank (a quarter of the fp32
size of those weights); a round needs the selected weights' magnitudes in fp32 at once, for the
global ranking.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from typing import Any

import torch

from accel_contract.config import PruningScope, PruningSpec
from accel_trainer.errors import ConfigError
from accel_trainer.weights import MasterWeights, full_numel, full_shape


def cubic_sparsity(spec: PruningSpec, step: int) -> float:
    """The sparsity the schedule asks for after optimizer step ``step`` (latest round's value)."""
    if step < spec.start_step:
        return 0.0
    if step >= spec.end_step:
        return spec.target_sparsity
    last_round = spec.start_step + ((step - spec.start_step) // spec.frequency) * spec.frequency
    progress = (last_round - spec.start_step) / (spec.end_step - spec.start_step)
    return spec.target_sparsity * (1.0 - (1.0 - progress) ** 3)


def is_pruning_round(spec: PruningSpec, step: int) -> bool:
    if step < spec.start_step or step > spec.end_step:
        return False
    return step == spec.end_step or (step - spec.start_step) % spec.frequency == 0


def select_parameters(
    named_parameters: list[tuple[str, torch.nn.Parameter]], spec: PruningSpec
) -> list[tuple[str, torch.nn.Parameter]]:
    """The 2-D weight matrices whose names match ``include`` and none of ``exclude``."""
    selected = []
    for name, param in named_parameters:
        if not param.requires_grad or len(full_shape(param)) != 2:
            continue
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in spec.include):
            continue
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in spec.exclude):
            continue
        selected.append((name, param))
    if not selected:
        raise ConfigError(
            f"pruning.include {spec.include} and pruning.exclude {spec.exclude} leave no 2-D "
            "weight matrix to prune: widen include or narrow exclude"
        )
    return selected


@dataclass
class PruningReport:
    target: float
    """The sparsity the schedule asks for now."""
    measured: float
    """Share of the selected weights that are exactly zero in the fp32 masters."""


class Pruner:
    """Applies the schedule to a DeepSpeed engine's weights; one instance per rank."""

    def __init__(self, spec: PruningSpec, engine: Any, weights: MasterWeights) -> None:
        self.spec = spec
        self.weights = weights
        self.selected = select_parameters(list(engine.module.named_parameters()), spec)
        self.params = [param for _, param in self.selected]
        self.masks: list[torch.Tensor | None] = [None] * len(self.params)
        self.target = 0.0
        self.mask_seconds = 0.0
        self._targets: list[torch.Tensor] = []
        self._factors: list[torch.Tensor] = []
        self._write_backs: list[tuple[torch.nn.Parameter, Any, torch.Tensor]] = []
        self._low_precision: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.selected]

    # --- the per-step work ----------------------------------------------------------------------
    def after_optimizer_step(self, step: int) -> None:
        """Keep pruned weights at zero; run a pruning round when the schedule says so."""
        if is_pruning_round(self.spec, step):
            wanted = cubic_sparsity(self.spec, step)
            if wanted > self.target:
                self.prune_to(wanted)
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        if not self._targets and not self._write_backs and not self._low_precision:
            return
        started = time.perf_counter()
        targets = list(self._targets)
        factors = list(self._factors)
        # The low-precision copies are looked up each time: DeepSpeed may re-point param.data.
        for param, factor in self._low_precision:
            low = self.weights.low_precision(param)
            if low is not None:
                targets.append(low.tensor)
                factors.append(factor)
        if targets:
            torch._foreach_mul_(targets, factors)
        for param, fragment, factor in self._write_backs:
            fragment.tensor.mul_(factor)
            self.weights.write_back(param, fragment)
        self.mask_seconds += time.perf_counter() - started

    # --- rounds ---------------------------------------------------------------------------------
    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Zero the smallest-magnitude weights so that ``sparsity`` of the selection is zero."""
        magnitudes: list[torch.Tensor] = []

        def keep_magnitude(index: int, full: torch.Tensor) -> None:
            # Ranked on the CPU, where the masks live: rounds are rare, device memory is not.
            magnitude = full.abs().view(-1).cpu()
            previous = self.masks[index]
            if previous is not None:
                # Already-pruned weights rank below everything, so they stay pruned.
                magnitude = magnitude.masked_fill(~previous, -1.0)
            magnitudes.append(magnitude)

        self.weights.for_each_full(self.params, keep_magnitude)
        if self.spec.scope is PruningScope.GLOBAL:
            flat = torch.cat(magnitudes)
            pruned = _smallest(flat, round(sparsity * flat.numel()))
            keep_all = torch.ones(flat.numel(), dtype=torch.bool)
            keep_all[pruned] = False
            new_masks = list(torch.split(keep_all, [m.numel() for m in magnitudes]))
        else:
            new_masks = []
            for magnitude in magnitudes:
                keep = torch.ones(magnitude.numel(), dtype=torch.bool)
                keep[_smallest(magnitude, round(sparsity * magnitude.numel()))] = False
                new_masks.append(keep)
        self.masks = [mask.clone() for mask in new_masks]
        self.target = sparsity
        self._cache_local_masks()
        self.apply_masks()

    def _cache_local_masks(self) -> None:
        """Slice each full mask to this rank's fragments once, in each fragment's dtype."""
        self._targets, self._factors, self._write_backs = [], [], []
        self._low_precision = []
        for param, mask in zip(self.params, self.masks, strict=True):
            if mask is None:
                continue
            views = self.weights.fragments_are_views(param)
            for fragment in self.weights.fragments(param):
                factor = mask.narrow(0, fragment.start, fragment.numel).to(
                    device=fragment.tensor.device, dtype=fragment.tensor.dtype
                )
                if views:
                    self._targets.append(fragment.tensor)
                    self._factors.append(factor)
                else:
                    self._write_backs.append((param, fragment, factor))
            low = self.weights.low_precision(param)
            if low is not None:
                factor = mask.narrow(0, low.start, low.numel)
                self._low_precision.append(
                    (param, factor.to(device=low.tensor.device, dtype=low.tensor.dtype))
                )

    # --- measuring and saving -------------------------------------------------------------------
    def report(self) -> PruningReport:
        """Target and measured sparsity (collective when the masters are partitioned)."""
        zeros, total = self.weights.count_zeros(self.params)
        return PruningReport(target=self.target, measured=zeros / total if total else 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "names": self.names,
            "masks": [None if mask is None else mask.clone() for mask in self.masks],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ConfigError(
                "pruning: the checkpoint's pruned weights differ from this run's selection: keep "
                "pruning.include/exclude as they were, or start from a new checkpoint.dir"
            )
        self.target = float(state["target"])
        self.masks = list(state["masks"])
        for param, mask in zip(self.params, self.masks, strict=True):
            if mask is not None and mask.numel() != full_numel(param):
                raise ConfigError("pruning: a saved mask does not match its weight's size")
        self._cache_local_masks()
        self.apply_masks()

    def fold(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """``full`` with its mask applied (the export writes exact zeros)."""
        for selected_name, mask in zip(self.names, self.masks, strict=True):
            if selected_name == name and mask is not None:
                return full * mask.view_as(full).to(device=full.device, dtype=full.dtype)
        return full


def _smallest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` smallest entries; stable, so every rank picks the same ones."""
    if count <= 0:
        return torch.empty(0, dtype=torch.long)
    return torch.argsort(values, stable=True)[:count]

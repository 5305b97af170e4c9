"""Where each parameter's fp32 master copy lives under each DeepSpeed mode, and how to reach it.

Pruning must zero weights where the optimizer keeps them, or the next step regrows them; the
export must read them in full. DeepSpeed keeps them in four different places:

========================  ======================================  ===============================
mode                      fp32 master (what the optimizer steps)  low-precision copy the model uses
========================  ======================================  ===============================
ZeRO-3                    this rank's partition of a flat buffer   ``param.ds_tensor`` (partition)
ZeRO-1/2, bf16 at ZeRO-0  this rank's fragment (``_hp_mapping``)  ``param`` (full on every rank)
fp16 at ZeRO-0            a view into ``fp32_groups_flat``        ``param``
fp32 at ZeRO-0            ``param`` itself                        (the same tensor)
========================  ======================================  ===============================

:class:`MasterWeights` hides this: for each parameter it gives the local fp32 *fragments* (views,
with their offset in the flattened parameter) and the low-precision view to mask, without any
communication, plus a collective ``full()`` for the rare moments that need a whole parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist


@dataclass
class Fragment:
    """A slice of one parameter held on this rank: ``tensor`` covers flat ``[start, start+n)``."""

    tensor: torch.Tensor
    start: int

    @property
    def numel(self) -> int:
        return int(self.tensor.numel())


def full_shape(param: torch.nn.Parameter) -> torch.Size:
    """The parameter's logical shape (ZeRO-3 replaces ``param.shape`` with an empty placeholder)."""
    shape = getattr(param, "ds_shape", None)
    return torch.Size(shape) if shape is not None else param.shape


def full_numel(param: torch.nn.Parameter) -> int:
    numel = getattr(param, "ds_numel", None)
    return int(numel) if numel is not None else int(param.numel())


class MasterWeights:
    """Access to the fp32 masters and low-precision copies of an engine's parameters."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        optimizer = engine.optimizer
        self._fp16_views: dict[int, torch.Tensor] = {}
        # The fused fp16 optimizer at ZeRO-0 (GPU only) keeps one flat fp32 buffer per group.
        fp16_groups = getattr(optimizer, "fp16_groups", None)
        fp32_flat = getattr(optimizer, "fp32_groups_flat", None)
        if fp16_groups is not None and fp32_flat is not None:
            for group, flat in zip(fp16_groups, fp32_flat, strict=True):
                offset = 0
                for param in group:
                    count = param.numel()
                    self._fp16_views[id(param)] = flat.narrow(0, offset, count)
                    offset += count
        # Per-parameter fp32 copies of the unfused fp16 optimizer (LAMB with fp16).
        fp32_groups = getattr(optimizer, "fp32_groups", None)
        if fp16_groups is not None and fp32_groups is not None and not self._fp16_views:
            for group, masters in zip(fp16_groups, fp32_groups, strict=True):
                for param, master in zip(group, masters, strict=True):
                    self._fp16_views[id(param)] = master.view(-1)

    def is_partitioned(self, param: torch.nn.Parameter) -> bool:
        """True when each rank holds only part of the master, so counts must be summed."""
        return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")

    def fragments(self, param: torch.nn.Parameter) -> list[Fragment]:
        """This rank's pieces of the fp32 master of ``param`` (views: writes reach the
        optimizer)."""
        if hasattr(param, "ds_id"):
            from deepspeed.utils import safe_get_local_fp32_param

            local = safe_get_local_fp32_param(param)
            if local is None:
                return []
            partition = int(_zero3(param).ds_tensor.ds_numel)
            start = _partition_rank(param) * partition
            valid = max(0, min(local.numel(), full_numel(param) - start))
            return [Fragment(local.view(-1).narrow(0, 0, valid), start)] if valid else []
        if hasattr(param, "_hp_mapping"):
            mapping = param._hp_mapping
            if mapping is None:
                return []
            return [Fragment(mapping.hp_fragment.view(-1), int(mapping.lp_fragment_address.start))]
        view = self._fp16_views.get(id(param))
        if view is not None:
            return [Fragment(view, 0)]
        return [Fragment(param.data.view(-1), 0)]

    def fragments_are_views(self, param: torch.nn.Parameter) -> bool:
        """False only for ZeRO-3 with the master on another device than the compute (GPU with
        optimizer offload): there :meth:`fragments` returns copies and writes need
        :meth:`write_back`."""
        if not hasattr(param, "ds_id"):
            return True
        from deepspeed.accelerator import get_accelerator

        flat = _zero3(param)._z3_optimizer.fp32_partitioned_groups_flat
        compute = torch.device(get_accelerator().current_device_name())
        return bool(flat) and flat[0].device.type == compute.type

    def write_back(self, param: torch.nn.Parameter, fragment: Fragment) -> None:
        """Store a modified copy returned by :meth:`fragments` (ZeRO-3 with offload on GPU)."""
        from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param

        local = safe_get_local_fp32_param(param).clone()
        local.view(-1).narrow(0, 0, fragment.numel).copy_(fragment.tensor)
        safe_set_local_fp32_param(param, local)

    def low_precision(self, param: torch.nn.Parameter) -> Fragment | None:
        """The copy the forward pass reads, when it is not the master itself."""
        if hasattr(param, "ds_id"):
            partition = int(_zero3(param).ds_tensor.ds_numel)
            start = _partition_rank(param) * partition
            valid = max(0, min(partition, full_numel(param) - start))
            flat = _zero3(param).ds_tensor.data.view(-1)
            return Fragment(flat.narrow(0, 0, valid), start) if valid else None
        if hasattr(param, "_hp_mapping") or id(param) in self._fp16_views:
            return Fragment(param.data.view(-1), 0)
        return None

    @torch.no_grad()
    def full(self, param: torch.nn.Parameter) -> torch.Tensor:
        """The whole fp32 master, shaped like the parameter. Collective when partitioned:
        every rank must call it for the same parameters in the same order."""
        if self.is_partitioned(param):
            from deepspeed.utils import safe_get_full_fp32_param

            value = safe_get_full_fp32_param(param)
            if value is None:
                raise RuntimeError(
                    f"DeepSpeed has no fp32 copy of a parameter of {full_shape(param)}"
                )
            gathered: torch.Tensor = value.detach().float()
            return gathered.reshape(full_shape(param))
        fragment = self.fragments(param)[0]
        return fragment.tensor.detach().float().reshape(full_shape(param)).clone()

    @torch.no_grad()
    def count_zeros(self, params: list[torch.nn.Parameter]) -> tuple[int, int]:
        """(zeros, total) over the fp32 masters of ``params``, summed over ranks."""
        partitioned = torch.zeros(2, dtype=torch.float64)
        replicated = torch.zeros(2, dtype=torch.float64)
        # Whether to reduce must be decided the same way on every rank: a rank whose partition
        # holds no fragment of these parameters still has to join the all_reduce.
        any_partitioned = any(self.is_partitioned(param) for param in params)
        for param in params:
            target = partitioned if self.is_partitioned(param) else replicated
            for fragment in self.fragments(param):
                target[0] += float(fragment.numel - int(torch.count_nonzero(fragment.tensor)))
                target[1] += float(fragment.numel)
        if torch_dist.is_available() and torch_dist.is_initialized() and any_partitioned:
            device = collective_device()
            summed = partitioned.to(device)
            torch_dist.all_reduce(summed)
            partitioned = summed.cpu()
        total = partitioned + replicated
        return int(total[0]), int(total[1])

    def for_each_full(
        self, params: list[torch.nn.Parameter], visit: Callable[[int, torch.Tensor], None]
    ) -> None:
        """Call ``visit(index, full_fp32)`` for each parameter, gathering one at a time."""
        for index, param in enumerate(params):
            visit(index, self.full(param))


def _zero3(param: torch.nn.Parameter) -> Any:
    """``param`` with the attributes ZeRO-3 adds (ds_tensor, _z3_optimizer) visible to typing."""
    return param


def _partition_rank(param: torch.nn.Parameter) -> int:
    group = getattr(param, "ds_process_group", None)
    if torch_dist.is_available() and torch_dist.is_initialized():
        return int(torch_dist.get_rank(group=group))
    return 0


def collective_device() -> torch.device:
    """Where a tensor must live for a collective of the default process group: the current GPU
    under NCCL, else the CPU (gloo, DeepSpeed's shared-memory CPU collectives)."""
    if torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

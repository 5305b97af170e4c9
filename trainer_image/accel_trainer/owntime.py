"""How long a rank works on its own in an optimizer step.

In data-parallel training every rank's step lasts as long as the slowest rank's: the others wait
for it in the gradient reduction. What tells the slow rank apart is the work that waits for no
other rank: loading its micro-batches and running their forward passes. Under ZeRO-3 the forward
also gathers parameters from the other ranks, so there a straggler stands out less.

On a GPU the forward runs asynchronously to the host, so it is timed with CUDA events, read once
the step has synchronised; the host never waits for them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch


class OwnWorkClock:
    """Adds up a rank's own work until :meth:`take`."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._host_seconds = 0.0
        self._device_spans: list[tuple[Any, Any]] = []

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """Host work: reading, collating and moving a micro-batch."""
        started = time.perf_counter()
        yield
        self._host_seconds += time.perf_counter() - started

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        """The forward pass: device time on a GPU, wall-clock time on the CPU."""
        if not self._cuda:
            with self.loading():
                yield
            return
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        yield
        end.record()
        self._device_spans.append((start, end))

    def take(self) -> float:
        """Seconds of own work since the last call. Call it after the step synchronised with the
        device (reading the loss does), or it waits for the recorded forward passes."""
        device_ms = float(sum(start.elapsed_time(end) for start, end in self._device_spans))
        seconds = self._host_seconds + device_ms / 1000.0
        self._host_seconds, self._device_spans = 0.0, []
        return seconds

"""Reading the trainers' Prometheus exporters: rank 0's for ``status.progress``, every rank's
own work per step for the straggler check (:mod:`accel_operator.straggler`).

:func:`parse_metrics` and :func:`parse_own_seconds` are pure: the Prometheus text format in,
what the operator uses out. :class:`ProgressScraper` does the plain
HTTP GET of ``http://<pod IP>:<metrics port>/metrics``, with a short timeout so that a trainer
that does not answer yet never holds up a reconcile, and only for pod addresses inside the
networks the operator was told it may reach (``--scrape-network``; everything by default).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from accel_contract import metrics as contract
from accel_operator.lifecycle import ProgressSample

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Samples of the trainer's metrics contract that status.progress and the straggler check use.
STEP = contract.STEP.sample
STEPS_THIS_PROCESS = contract.OPTIMIZER_STEPS.sample
SAMPLES_PER_SECOND = contract.SAMPLES_PER_SECOND.sample
TOKENS_PER_SECOND = contract.TOKENS_PER_SECOND.sample
TFLOPS_PER_DEVICE = contract.TFLOPS_PER_DEVICE.sample
MFU = contract.MFU.sample
PADDING_EFFICIENCY = contract.PADDING_EFFICIENCY.sample
LOSS = contract.LOSS.sample
SPARSITY = contract.SPARSITY.sample
CHECKPOINT_STEP = contract.LAST_CHECKPOINT_STEP.sample
OWN_SECONDS = contract.STEP_OWN_SECONDS.sample
# The memory preflight's estimate for one rank (kind="device") and the memory the rank has.
ESTIMATED_MEMORY = contract.ESTIMATED_MEMORY.sample
MEMORY_BUDGET = contract.MEMORY_BUDGET.sample

MAX_RESPONSE_BYTES = 4 * 1024 * 1024
T = TypeVar("T")


def _rank_values(text: str, rank: str) -> dict[str, float]:
    """Sample name -> value for the samples of ``rank`` (or without a rank label)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels: Mapping[str, str] = sample.labels
            if "rank" in labels and labels["rank"] != rank:
                continue
            if "kind" in labels:
                values[f"{sample.name}:{labels['kind']}"] = float(sample.value)
            # One value per name: the rank's own series, not the per-kind breakdowns.
            if sample.name in values and "kind" in labels:
                continue
            values[sample.name] = float(sample.value)
    return values


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value


def parse_metrics(text: str, *, rank: str = "0") -> ProgressSample | None:
    """The progress in one scrape of the exporter; None when it has no step gauge yet.

    Raises ValueError for text that is not the Prometheus exposition format.
    """
    values = _rank_values(text, rank)
    step = _finite(values.get(STEP))
    if step is None:
        return None

    def optional_int(name: str) -> int | None:
        value = _finite(values.get(name))
        return int(value) if value is not None and value >= 0 else None

    return ProgressSample(
        step=max(0, int(step)),
        steps_this_process=optional_int(STEPS_THIS_PROCESS),
        samples_per_second=_finite(values.get(SAMPLES_PER_SECOND)) or 0.0,
        tokens_per_second=_finite(values.get(TOKENS_PER_SECOND)) or 0.0,
        tflops_per_device=_finite(values.get(TFLOPS_PER_DEVICE)) or 0.0,
        mfu=_finite(values.get(MFU)) or 0.0,
        # 0 before the trainer's first step.
        padding_efficiency=_finite(values.get(PADDING_EFFICIENCY)) or None,
        loss=_finite(values.get(LOSS)),
        sparsity=_finite(values.get(SPARSITY)),
        # -1 before the first checkpoint of the run.
        checkpoint_step=optional_int(CHECKPOINT_STEP),
        # 0 until the preflight has run, or when the budget is unknown.
        estimated_memory_bytes=optional_int(f"{ESTIMATED_MEMORY}:device") or None,
        memory_budget_bytes=optional_int(MEMORY_BUDGET) or None,
    )


def parse_own_seconds(text: str) -> dict[int, float]:
    """Global rank -> its own work per step, for the ranks of this exporter that measured some.

    Raises ValueError for text that is not the Prometheus exposition format.
    """
    found: dict[int, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != OWN_SECONDS or not sample.labels.get("rank", "").isdigit():
                continue
            value = _finite(float(sample.value))
            if value is not None and value > 0:
                found[int(sample.labels["rank"])] = value
    return found


def parse_networks(values: Iterable[str]) -> list[Network]:
    """CIDRs of ``--scrape-network``; ValueError names the bad value."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"--scrape-network {value!r} is not a network in CIDR notation such as "
                "10.244.0.0/16"
            ) from None
    return networks


class ProgressScraper:
    """Fetches and parses rank 0's metrics; only from addresses in ``networks`` when given."""

    def __init__(self, networks: Sequence[Network] = (), *, timeout: float = 2.0) -> None:
        self.networks = list(networks)
        self.timeout = timeout

    def allowed(self, address: str) -> bool:
        """Whether the operator may connect to this pod address."""
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def scrape(self, address: str, port: int) -> ProgressSample | None:
        """Rank 0's progress, or None when the exporter does not answer (yet) or has no step."""
        return self._read(address, port, parse_metrics, None)

    def own_seconds(self, address: str, port: int) -> dict[int, float]:
        """The own work per step of the rank serving on this port ({} when unknown)."""
        return self._read(address, port, parse_own_seconds, {})

    def _read(self, address: str, port: int, parse: Callable[[str], T], unknown: T) -> T:
        text = self.fetch(address, port)
        if text is None:
            return unknown
        try:
            return parse(text)
        except ValueError as error:
            logger.warning(
                "metrics of %s:%s are not in the Prometheus text format: %s", address, port, error
            )
            return unknown

    def fetch(self, address: str, port: int) -> str | None:
        """The exposition text, or None when not allowed or the exporter does not answer."""
        if not self.allowed(address):
            return None
        host = f"[{address}]" if ":" in address else address
        url = f"http://{host}:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                data: bytes = response.read(MAX_RESPONSE_BYTES)
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            logger.debug("metrics of %s not available: %s", url, error)
            return None
        return data.decode("utf-8", errors="replace")

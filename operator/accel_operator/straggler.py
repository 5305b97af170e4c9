"""Naming a straggler: the rank whose own work per step stays far above the other ranks'.

In data-parallel training every rank's step lasts as long as the slowest rank's, since the others
wait for it in the gradient reduction; step times cannot tell the slow rank apart. Each rank
exports the work it does without waiting for anyone (``acceltrain_step_own_seconds``: loading its
micro-batches and their forward passes). :func:`judge` compares the slowest rank's with the median
of the others' and counts the checks in a row it stays above ``runPolicy.stragglerThreshold``;
after ``runPolicy.stragglerChecks`` of them the job's Straggler condition names the rank, its pod
and its node. Pure: the reconciler reads the exporters, the lifecycle applies the verdict.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

from accel_operator import api

# Seconds between two comparisons of a running job's ranks. Each reads every rank's exporter
# (workers x local ranks requests), so it runs less often than the progress scrape of rank 0.
CHECK_SECONDS = 10.0
REASON_SLOW_RANK = "SlowRank"
REASON_RECOVERED = "StragglerRecovered"
REASON_EVEN = "RanksEven"


@dataclasses.dataclass(frozen=True)
class RankTime:
    """One rank's own work per step, as its exporter reported it."""

    rank: int
    pod: str
    node: str | None
    own_seconds: float


@dataclasses.dataclass(frozen=True)
class Verdict:
    spread: api.RankSpread
    straggling: bool
    """The slowest rank has been above the threshold for the checks the job asks for."""


def judge(
    previous: api.RankSpread | None,
    ranks: Sequence[RankTime],
    policy: api.RunPolicy,
    now: str,
) -> Verdict | None:
    """Compare the ranks; None when fewer than two have measured any own work yet."""
    measured = [rank for rank in ranks if rank.own_seconds > 0]
    if len(measured) < 2:
        return None
    slowest = max(measured, key=lambda rank: (rank.own_seconds, -rank.rank))
    median = statistics.median(rank.own_seconds for rank in measured if rank is not slowest)
    above = slowest.own_seconds > policy.straggler_threshold * median
    checks = 0
    if above:
        same = previous is not None and previous.rank == slowest.rank
        checks = previous.checks_above + 1 if same and previous else 1
    spread = api.RankSpread(
        rank=slowest.rank,
        pod=slowest.pod,
        node=slowest.node,
        own_seconds=slowest.own_seconds,
        others_median_seconds=median,
        checks_above=checks,
        time=now,
    )
    return Verdict(spread=spread, straggling=checks >= policy.straggler_checks)


def straggler_message(spread: api.RankSpread, policy: api.RunPolicy) -> str:
    ratio = spread.own_seconds / spread.others_median_seconds
    return (
        f"rank {spread.rank} (pod {spread.pod} on node {spread.node or 'unknown'}) spends "
        f"{spread.own_seconds:.3g} s per step on its own work, {ratio:.1f}x the other ranks' "
        f"median of {spread.others_median_seconds:.3g} s, for {spread.checks_above} checks in a "
        f"row (runPolicy.stragglerThreshold {policy.straggler_threshold}): every rank waits for "
        "it. Look at that node (CPU throttling, a slow or shared device, its data reads)."
    )


def even_message(policy: api.RunPolicy) -> str:
    return (
        "no rank's own work per step stays above runPolicy.stragglerThreshold "
        f"({policy.straggler_threshold}) times the other ranks' median"
    )

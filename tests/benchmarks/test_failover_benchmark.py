"""The failover benchmark end to end, small: one SIGKILL and one SIGTERM of the leader of two
replicas on the session's cluster, with a 4 s lease, and the verdict its table gives.

The chart's settings (15 s lease, ten kills each way) are the full benchmark's
(``make bench-failover``); here the rows must hold what a user reads: both ways of stopping, the
Lease taken over within its bound, the new leader's first write after that.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from tests.benchmarks.scripts import load_benchmark

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

failover = load_benchmark("failover", "failover_benchmark")


def test_the_verdict_follows_the_slowest_failover_against_its_bound() -> None:
    within = failover.row("SIGKILL", [(4.1, 4.5), (5.0, 5.9)], bound=5.2)
    assert (within["lease max s"], within["max / bound"], within["within bound"]) == (
        5.0,
        0.96,
        "met",
    )
    beyond = failover.row("SIGKILL", [(4.1, 4.5), (6.0, 6.2)], bound=5.2)
    assert (beyond["max / bound"], beyond["within bound"]) == (1.15, "missed")


def test_one_crash_and_one_handover_are_taken_over_within_their_bounds(crd: Any) -> None:
    args = argparse.Namespace(kills=1, lease=4.0, renew=3.0, retry=0.5)
    rows = failover.run(crd, args)
    assert [row["stop"] for row in rows] == ["SIGKILL", "SIGTERM"]
    crash, handover = rows
    assert crash["within bound"] == "met", crash
    assert handover["within bound"] == "met", handover
    # A crash waits out the lease; a handover does not.
    assert crash["lease max s"] >= args.lease - 2 * args.retry
    assert handover["lease max s"] < crash["lease max s"]
    for row in rows:
        assert row["first write max s"] >= row["lease max s"]

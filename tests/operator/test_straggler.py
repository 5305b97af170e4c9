"""Naming a straggler from every rank's own work per step (accel_operator.straggler), and the
Straggler condition and events the lifecycle makes of it."""

from __future__ import annotations

import prometheus_client

from accel_operator import api, constants, lifecycle, straggler
from accel_operator.lifecycle import Observed
from accel_operator.scrape import parse_own_seconds
from accel_operator.straggler import RankTime
from accel_trainer.metrics import TrainerMetrics
from tests.operator.lifecycle.cases import (
    CREATED,
    at,
    condition,
    job,
    make_spec,
    running_pods,
    sample,
    status_after,
    ts,
)

POLICY = api.RunPolicy(straggler_threshold=1.5, straggler_checks=2)


def ranks(*seconds: float) -> tuple[RankTime, ...]:
    return tuple(
        RankTime(rank, f"bert-a1-{rank}-x", f"node-{rank}", value)
        for rank, value in enumerate(seconds)
    )


def test_the_slowest_rank_is_named_only_after_enough_checks_in_a_row() -> None:
    first = straggler.judge(None, ranks(0.10, 0.11, 0.30, 0.09), POLICY, ts(10))
    assert first is not None
    assert (first.spread.rank, first.spread.pod, first.spread.node) == (2, "bert-a1-2-x", "node-2")
    assert first.spread.others_median_seconds == 0.10
    assert (first.spread.checks_above, first.straggling) == (1, False)

    second = straggler.judge(first.spread, ranks(0.10, 0.11, 0.28, 0.09), POLICY, ts(20))

    assert second is not None
    assert (second.spread.checks_above, second.straggling) == (2, True)


def test_a_different_slow_rank_or_a_rank_back_in_line_starts_the_count_again() -> None:
    first = straggler.judge(None, ranks(0.1, 0.3), POLICY, ts(10))
    assert first is not None

    other = straggler.judge(first.spread, ranks(0.3, 0.1), POLICY, ts(20))
    even = straggler.judge(first.spread, ranks(0.1, 0.14), POLICY, ts(20))

    assert other is not None and (other.spread.rank, other.spread.checks_above) == (0, 1)
    assert even is not None and (even.spread.checks_above, even.straggling) == (0, False)


def test_ranks_are_not_compared_before_two_of_them_measured_their_own_work() -> None:
    assert straggler.judge(None, ranks(0.2), POLICY, ts(10)) is None
    assert straggler.judge(None, ranks(0.2, 0.0), POLICY, ts(10)) is None


def _decide(status: api.AccelTrainJobStatus, seconds: tuple[float, ...]) -> lifecycle.Decision:
    spec = make_spec(stragglerThreshold=1.5, stragglerChecks=2)
    observed = Observed(
        created=CREATED,
        attempts=(job(),),
        pods=running_pods(),
        progress=sample(40),
        rank_times=ranks(*seconds),
    )
    return lifecycle.decide(spec, status, observed, at(60))


def test_a_rank_that_stays_slow_becomes_a_straggler_condition_and_a_warning_naming_it() -> None:
    running = status_after(
        api.Phase.RUNNING, conditions=[(constants.CONDITION_RUNNING, "True", "Running", 5)]
    )

    first = _decide(running, (0.1, 0.4))
    second = _decide(first.status, (0.1, 0.4))

    assert condition(first, constants.CONDITION_STRAGGLER).status == "False"
    assert not [event for event in first.events if event.reason == straggler.REASON_SLOW_RANK]
    slow = condition(second, constants.CONDITION_STRAGGLER)
    assert (slow.status, slow.reason) == ("True", straggler.REASON_SLOW_RANK)
    assert "rank 1 (pod bert-a1-1-x on node node-1)" in slow.message
    assert "4.0x the other ranks' median" in slow.message
    warnings = [e for e in second.events if e.reason == straggler.REASON_SLOW_RANK]
    assert [e.type for e in warnings] == ["Warning"]
    assert second.status.rank_spread is not None
    assert second.status.rank_spread.checks_above == 2

    recovered = _decide(second.status, (0.1, 0.11))

    back = condition(recovered, constants.CONDITION_STRAGGLER)
    assert (back.status, back.reason) == ("False", straggler.REASON_RECOVERED)
    assert [e.type for e in recovered.events if e.reason == straggler.REASON_RECOVERED] == [
        "Normal"
    ]


def test_the_next_attempt_starts_without_the_last_attempts_straggler() -> None:
    running = status_after(
        api.Phase.RUNNING, conditions=[(constants.CONDITION_RUNNING, "True", "Running", 5)]
    )
    straggling = _decide(_decide(running, (0.1, 0.4)).status, (0.1, 0.4)).status
    restarting = straggling.model_copy(
        update={"phase": api.Phase.RESTARTING, "restarts": 1, "next_attempt_time": ts(40)}
    )

    next_attempt = lifecycle.decide(make_spec(), restarting, Observed(created=CREATED), at(70))

    assert next_attempt.actions == (lifecycle.CreateAttempt(2),)
    assert next_attempt.status.rank_spread is None
    assert condition(next_attempt, constants.CONDITION_STRAGGLER).status == "False"


def test_the_operator_reads_the_own_work_each_trainer_rank_exports() -> None:
    exporter = TrainerMetrics(job="bert", node_rank=1, rank=3)
    before = prometheus_client.generate_latest(exporter.registry).decode()
    exporter.record_step(
        step=1,
        samples=8,
        tokens=100,
        step_seconds=0.5,
        loss=1.0,
        learning_rate=1e-4,
        own_seconds=0.125,
    )

    after = prometheus_client.generate_latest(exporter.registry).decode()

    assert parse_own_seconds(before) == {}  # nothing measured yet: not compared
    assert parse_own_seconds(after) == {3: 0.125}

"""Leader election on a Lease: who may write, when a standby takes over, and the write fence.

The candidates share an in-memory Lease store that behaves like the API server (a
resourceVersion that must match on replace, 409 as None) and a clock the tests move.
"""

from __future__ import annotations

import copy
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

import pytest

from accel_operator.__main__ import main
from accel_operator.kube import KubeClient
from accel_operator.leader import (
    Action,
    ElectionTiming,
    LeaderElector,
    LeaseRecord,
    NotLeaderError,
    StandbyHealth,
    decide,
)
from accel_operator.metrics import OperatorMetrics

TIMING = ElectionTiming(lease_duration=15, renew_deadline=10, retry_period=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LeaseServer:
    """One namespace's Leases with the API server's optimistic concurrency."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str]] = []
        self.version = 0
        self.reachable = True

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        if not self.reachable:
            raise ConnectionError("API server unreachable")
        lease = self.leases.get(name)
        return copy.deepcopy(lease) if lease else None

    def write_lease(
        self, namespace: str, name: str, spec: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any] | None:
        if not self.reachable:
            raise ConnectionError("API server unreachable")
        current = self.leases.get(name)
        if (current is None) != (resource_version is None):
            return None
        if current is not None and current["metadata"]["resourceVersion"] != resource_version:
            return None
        self.version += 1
        self.leases[name] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": str(self.version),
            },
            "spec": dict(spec),
        }
        return copy.deepcopy(self.leases[name])

    def post_event(
        self, about: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        self.events.append((reason, message))

    def holder(self) -> str:
        return str(self.leases["operator"]["spec"]["holderIdentity"])


def candidate(
    server: LeaseServer, identity: str, clock: Clock, timing: ElectionTiming = TIMING
) -> LeaderElector:
    return LeaderElector(
        server,
        namespace="acceltrain-system",
        name="operator",
        identity=identity,
        timing=timing,
        metrics=OperatorMetrics(),
        clock=clock,
    )


def gauge(elector: LeaderElector, name: str) -> float:
    value = elector._metrics.registry.get_sample_value(name)
    assert value is not None
    return value


def record(holder: str, duration: int = 15, version: str = "1") -> LeaseRecord:
    return LeaseRecord(holder, duration, None, None, 0, version)


# --- the decision ---------------------------------------------------------------------------


def test_a_missing_lease_is_created_and_an_own_lease_is_renewed() -> None:
    assert decide(None, "a", unchanged_for=0, lease_duration=15) is Action.CREATE
    assert decide(record("a"), "a", unchanged_for=99, lease_duration=15) is Action.RENEW


def test_a_live_lease_of_another_holder_is_waited_out_until_it_expires() -> None:
    assert decide(record("b"), "a", unchanged_for=14.9, lease_duration=15) is Action.WAIT
    assert decide(record("b"), "a", unchanged_for=15.0, lease_duration=15) is Action.TAKE


def test_a_released_lease_is_taken_at_once() -> None:
    assert decide(record(""), "a", unchanged_for=0, lease_duration=15) is Action.TAKE


def test_a_holder_with_a_longer_lease_is_not_cut_short() -> None:
    assert decide(record("b", 60), "a", unchanged_for=30, lease_duration=15) is Action.WAIT


def test_timings_that_let_two_leaders_overlap_are_refused() -> None:
    assert ElectionTiming().problems() == []
    overlapping = ElectionTiming(lease_duration=10, renew_deadline=10, retry_period=2)
    assert any("--leader-election-lease-duration" in p for p in overlapping.problems())
    too_tight = ElectionTiming(lease_duration=15, renew_deadline=2, retry_period=2)
    assert any("--leader-election-renew-deadline" in p for p in too_tight.problems())


# --- two candidates -------------------------------------------------------------------------


def test_exactly_one_of_two_candidates_leads() -> None:
    server, clock = LeaseServer(), Clock()
    first, second = candidate(server, "pod-a", clock), candidate(server, "pod-b", clock)
    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew()
    assert (first.is_leading(), second.is_leading()) == (True, False)
    assert server.holder() == "pod-a"
    assert second.leader == "pod-a"
    assert gauge(first, "acceltrain_operator_leader") == 1
    assert gauge(second, "acceltrain_operator_leader") == 0
    assert server.events == [("LeaderElection", "pod-a became leader")]


def test_a_standby_takes_over_only_after_the_lease_went_unrenewed_for_its_duration() -> None:
    server, clock = LeaseServer(), Clock()
    first, second = candidate(server, "pod-a", clock), candidate(server, "pod-b", clock)
    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew()  # starts the standby's own count
    clock.now += 10
    assert first.try_acquire_or_renew()  # a renewal, seen by the standby, restarts its count
    assert not second.try_acquire_or_renew()
    clock.now += 14  # pod-a stopped renewing; its renew deadline passed 4 s ago
    assert not first.is_leading()
    assert not second.try_acquire_or_renew()
    clock.now += 1  # the standby saw the same record for the lease's 15 s
    assert second.try_acquire_or_renew()
    lease = server.leases["operator"]["spec"]
    assert (lease["holderIdentity"], lease["leaseTransitions"]) == ("pod-b", 1)
    assert server.events[-1] == ("LeaderElection", "pod-b became leader")
    assert gauge(second, "acceltrain_operator_leader_transitions_total") == 2


def test_a_standby_tries_again_when_the_lease_it_waits_on_expires_not_a_period_later() -> None:
    server, clock = LeaseServer(), Clock()
    leader, standby = candidate(server, "pod-a", clock), candidate(server, "pod-b", clock)
    assert leader.try_acquire_or_renew()
    assert not standby.try_acquire_or_renew()
    assert TIMING.retry_period <= standby._until_next_try() <= TIMING.retry_period * 1.2
    clock.now += TIMING.lease_duration - 0.5
    assert standby._until_next_try() == pytest.approx(0.5)


def test_the_leader_stops_leading_at_its_renew_deadline_before_a_standby_may_start() -> None:
    server, clock = LeaseServer(), Clock()
    leader, standby = candidate(server, "pod-a", clock), candidate(server, "pod-b", clock)
    assert leader.try_acquire_or_renew()
    assert not standby.try_acquire_or_renew()
    server.reachable = False
    clock.now += TIMING.renew_deadline
    assert not leader.try_acquire_or_renew()
    assert not leader.is_leading()
    with pytest.raises(NotLeaderError, match="pod-a does not hold the Lease"):
        leader.check_leading()
    server.reachable = True
    assert not standby.try_acquire_or_renew()  # still inside the lease duration
    clock.now += TIMING.lease_duration - TIMING.renew_deadline
    assert standby.try_acquire_or_renew()


def test_a_candidate_that_loses_the_write_race_does_not_lead() -> None:
    server, clock = LeaseServer(), Clock()
    first, second = candidate(server, "pod-a", clock), candidate(server, "pod-b", clock)
    stale = server.get_lease("acceltrain-system", "operator")
    assert stale is None
    assert first.try_acquire_or_renew()
    # pod-b read "no Lease" before pod-a created it: its create conflicts.
    assert (
        server.write_lease("acceltrain-system", "operator", {"holderIdentity": "x"}, None) is None
    )
    assert not second.try_acquire_or_renew()
    assert server.holder() == "pod-a"


def test_a_released_lease_goes_to_the_standby_at_its_next_try() -> None:
    server, clock = LeaseServer(), Clock()
    first, second = candidate(server, "pod-a", clock), candidate(server, "pod-b", clock)
    assert first.try_acquire_or_renew()
    first.release()
    assert not first.is_leading()
    assert server.holder() == ""
    assert second.try_acquire_or_renew()
    assert server.holder() == "pod-b"


def test_a_release_racing_a_renewal_still_hands_the_lease_back() -> None:
    server, clock = LeaseServer(), Clock()
    first, second = candidate(server, "pod-a", clock), candidate(server, "pod-b", clock)
    assert first.try_acquire_or_renew()
    lease = server.leases["operator"]
    # A renewal that landed after the leader last read the Lease: its version moved on.
    renewed = server.write_lease(
        "acceltrain-system", "operator", lease["spec"], lease["metadata"]["resourceVersion"]
    )
    assert renewed is not None
    first.release()
    assert server.holder() == ""
    assert second.try_acquire_or_renew()


def test_the_watchdog_reports_a_lapsed_lease_at_once() -> None:
    server, clock = LeaseServer(), Clock()
    leader = candidate(server, "pod-a", clock, ElectionTiming(15, 10, 60))
    assert leader.try_acquire_or_renew()
    lost: list[str] = []
    done = threading.Event()
    leader.keep_leading(on_lost=lambda reason: (lost.append(reason), done.set()))
    time.sleep(0.2)
    assert lost == []
    clock.now += 10  # frozen past the deadline; the renewal thread sleeps for a minute
    assert done.wait(2)
    assert lost == ["pod-a could not renew the Lease acceltrain-system/operator within 10 s"]
    leader.stop()


# --- the fence ------------------------------------------------------------------------------


class UnreachableApi:
    """An ApiClient that fails the test if anything reaches its transport."""

    configuration = None

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the request was sent ({name})")


def test_a_replica_that_does_not_lead_sends_no_write() -> None:
    server, clock = LeaseServer(), Clock()
    elector = candidate(server, "pod-a", clock)
    kube = KubeClient(UnreachableApi())
    kube.write_fence = elector.check_leading
    with pytest.raises(NotLeaderError):
        kube.patch_status("team-a", "llm", {"phase": "Running"})
    with pytest.raises(NotLeaderError):
        kube.delete_pod("team-a", "llm-worker-0")


# --- the command line and the standby's health ----------------------------------------------


def test_leader_election_outside_a_pod_asks_for_the_lease_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    with pytest.raises(SystemExit, match="--leader-election-namespace"):
        main(["run", "--leader-elect", "--leader-election-namespace", ""])


def test_leader_election_timings_that_overlap_stop_the_operator() -> None:
    with pytest.raises(SystemExit, match="must exceed --leader-election-renew-deadline"):
        main(
            [
                "run",
                "--leader-elect",
                "--leader-election-namespace",
                "ops",
                "--leader-election-lease-duration",
                "5",
                "--leader-election-renew-deadline",
                "5",
            ]
        )


def test_leader_election_and_kopf_peering_exclude_each_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--leader-elect", "--peering", "acceltrain"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_standby_answers_its_liveness_probe() -> None:
    health = StandbyHealth(0, addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health.port}/healthz", timeout=5) as answer:
            assert (answer.status, answer.read()) == (200, b"standby\n")
    finally:
        health.close()

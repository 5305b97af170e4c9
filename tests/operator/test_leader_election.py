"""Two operator replicas on the local cluster, started as the Helm chart starts them: exactly one
(the holder of the Lease) reconciles, the other takes over when the leader is SIGKILLed at the
worst moments (mid-launch, mid-restart, inside a gang timeout), and a leader frozen past its
renew deadline writes nothing once it wakes (the API server's audit log is the witness).

Each replica authenticates with a certificate of its own, so every write in the audit log names
the replica that sent it. The lease here is short (4 s, renew deadline 3 s, retry 0.5 s) so that
each failover takes seconds; the chart's defaults (15/10/2) are measured by
``benchmarks/failover.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accel_operator import constants, leader
from accel_operator.kube import ApiError
from tests.operator_harness import (
    Api,
    OperatorProcess,
    condition,
    fail_worker,
    gpu_spec,
    own_gpu_pool,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ELECTION = (4.0, 3.0, 0.5)
LEASE_SECONDS, _, RETRY_SECONDS = ELECTION
# The standby's takeover: the lease runs out, then its next try (with jitter), plus the API
# round trips of a busy machine.
FAILOVER_LIMIT = LEASE_SECONDS + RETRY_SECONDS * (1 + leader.RETRY_JITTER) + 3.0
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
KWOK_RUN_DURATION = "KWOK_RUN_DURATION"


@dataclasses.dataclass
class Replicas:
    """Two replicas of the operator watching ``namespace``, the Lease in the same namespace."""

    kube: Api
    namespace: str
    members: dict[str, OperatorProcess]

    def lease(self) -> dict[str, Any]:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        try:
            found: dict[str, Any] = self.kube._request("GET", f"{path}/{leader.DEFAULT_LEASE_NAME}")
        except ApiError:
            return {}
        return found.get("spec") or {}

    def holder(self) -> str:
        return str(self.lease().get("holderIdentity") or "")

    def leader(self) -> OperatorProcess:
        name = wait_for("a leader", self.holder, timeout=30, interval=0.1)
        return self.members[name]

    def standby(self) -> OperatorProcess:
        current = self.leader()
        return next(member for member in self.members.values() if member is not current)

    def kill_leader(self) -> tuple[OperatorProcess, float]:
        """SIGKILL the leader; returns it and the seconds until the other replica held the
        Lease."""
        old = self.leader()
        assert old.process is not None
        old.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        old.process.wait(timeout=10)
        successor = next(name for name, m in self.members.items() if m is not old)
        wait_for(
            f"{successor} to take the Lease",
            lambda: self.holder() == successor,
            timeout=FAILOVER_LIMIT + 5,
            interval=0.05,
        )
        seconds = time.monotonic() - killed
        print(f"failover after SIGKILL of {old.replica}: {seconds:.2f} s")
        assert seconds <= FAILOVER_LIMIT, f"the standby took {seconds:.1f} s to take over"
        return old, seconds


@pytest.fixture
def replicas(crd: Any, kube: Api, namespace: str, tmp_path: Path) -> Iterator[Replicas]:
    members = {
        name: OperatorProcess(
            crd,
            namespace,
            tmp_path,
            crd.kubeconfig_for(f"{namespace}-{name}", groups=["system:masters"]),
            replica=name,
            election=ELECTION,
        )
        for name in ("replica-a", "replica-b")
    }
    try:
        for member in members.values():
            member.start()
        yield Replicas(kube, namespace, members)
    finally:
        for name, member in members.items():
            member.stop()
            print(f"----- {name} log (last lines) -----\n{member.log_tail()}")


def leader_gauge(member: OperatorProcess) -> float:
    for line in member.metrics().splitlines():
        if line.startswith("acceltrain_operator_leader "):
            return float(line.split()[1])
    raise AssertionError("no acceltrain_operator_leader in the operator's metrics")


def audited_writes(cluster: Any, user: str, since: dt.datetime | None = None) -> list[str]:
    """``verb resource name (code)`` of each write ``user`` sent, as the API server logged it."""
    found = []
    for line in Path(cluster.audit_log_path).read_text().splitlines():
        event = json.loads(line)
        if event["user"]["username"] != user or event["verb"] not in WRITE_VERBS:
            continue
        received = parse_time(event["requestReceivedTimestamp"])
        if since is not None and received < since:
            continue
        ref = event.get("objectRef") or {}
        code = (event.get("responseStatus") or {}).get("code")
        found.append(f"{event['verb']} {ref.get('resource')} {ref.get('name', '')} ({code})")
    return found


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def outcome(kube: Api, namespace: str, name: str) -> tuple[str, int, int]:
    status = kube.status(namespace, name)
    return status.get("phase", ""), status.get("attempt", 0), status.get("restarts", 0)


def wait_phase(kube: Api, namespace: str, name: str, phase: str, timeout: float = 120) -> None:
    wait_for(
        f"{name} to be {phase}",
        lambda: kube.status(namespace, name).get("phase") == phase,
        timeout=timeout,
        interval=0.2,
    )


def assert_children_of_one_attempt(kube: Api, namespace: str, name: str, attempt: int) -> None:
    children = kube.children(namespace, name)
    assert [job["metadata"]["name"] for job in children["jobs"]] == [f"{name}-a{attempt}"]
    assert [cm["metadata"]["name"] for cm in children["configmaps"]] == [
        f"{name}-a{attempt}-config"
    ]
    assert [svc["metadata"]["name"] for svc in children["services"]] == [name]


# --- one leader ------------------------------------------------------------------------------


def test_exactly_one_of_two_replicas_reconciles_and_jobs_before_and_after_a_failover_succeed(
    crd: Any, replicas: Replicas, kube: Api, namespace: str
) -> None:
    # A CPU job trains under two elected replicas in test_real_node.py (the chart's user path).
    ns = namespace
    leading, standing_by = replicas.leader(), replicas.standby()
    assert (leader_gauge(leading), leader_gauge(standing_by)) == (1.0, 0.0)
    kube.create_job(ns, "gpu-before", gpu_spec(workers=2, devices=4))
    wait_phase(kube, ns, "gpu-before", "Succeeded")
    assert outcome(kube, ns, "gpu-before") == ("Succeeded", 1, 0)
    # The standby read, and wrote nothing: not even the Lease.
    assert audited_writes(crd, f"{ns}-{standing_by.replica}") == []
    assert any(" acceltrainjobs " in w for w in audited_writes(crd, f"{ns}-{leading.replica}"))

    old, _ = replicas.kill_leader()
    kube.create_job(ns, "gpu-after", gpu_spec(workers=2, devices=4))
    wait_phase(kube, ns, "gpu-after", "Succeeded")
    assert outcome(kube, ns, "gpu-after") == ("Succeeded", 1, 0)
    assert leader_gauge(replicas.leader()) == 1.0
    lease = replicas.lease()
    assert lease["leaseTransitions"] >= 1
    messages = [
        event["message"]
        for event in kube.items(f"/api/v1/namespaces/{ns}/events")
        if event["reason"] == "LeaderElection"
    ]
    assert f"{replicas.holder()} became leader" in messages
    old.start()  # as the kubelet restarts a container: it rejoins as a standby
    assert leader_gauge(old) == 0.0


# --- failover drills: SIGKILL of the leader at the worst moments --------------------------


def test_a_leader_killed_mid_launch_leaves_one_attempt_that_the_standby_completes(
    replicas: Replicas, kube: Api, namespace: str
) -> None:
    replicas.leader()
    kube.create_job(namespace, "launch", gpu_spec(workers=3, devices=2))
    wait_for(
        "the first child of the launch",
        lambda: any(kube.children(namespace, "launch").values()),
        timeout=30,
        interval=0.02,
    )
    replicas.kill_leader()
    wait_phase(kube, namespace, "launch", "Succeeded")
    assert outcome(kube, namespace, "launch") == ("Succeeded", 1, 0)
    assert_children_of_one_attempt(kube, namespace, "launch", 1)


def test_a_leader_killed_while_a_job_restarts_costs_no_extra_restart(
    replicas: Replicas, kube: Api, namespace: str
) -> None:
    spec = gpu_spec(workers=2, devices=2, backoffSeconds=5, maxRestarts=3)
    spec["env"] = [{"name": KWOK_RUN_DURATION, "value": "4s"}]
    kube.create_job(namespace, "restart", spec)
    wait_phase(kube, namespace, "restart", "Running")
    worker = kube.children(namespace, "restart")["pods"][0]
    fail_worker(kube, namespace, worker)
    wait_phase(kube, namespace, "restart", "Restarting", timeout=30)
    replicas.kill_leader()
    wait_phase(kube, namespace, "restart", "Succeeded")
    assert outcome(kube, namespace, "restart") == ("Succeeded", 2, 1)
    assert_children_of_one_attempt(kube, namespace, "restart", 2)


def test_a_leader_killed_inside_a_gang_timeout_neither_restarts_nor_forgets_the_wait(
    crd: Any, replicas: Replicas, kube: Api, namespace: str
) -> None:
    with own_gpu_pool(crd, nodes=4, gpus=8) as pool:
        gang_timeout_through_a_failover(replicas, kube, namespace, pool)


def gang_timeout_through_a_failover(
    replicas: Replicas, kube: Api, namespace: str, pool: dict[str, str]
) -> None:
    # Three 8-GPU workers hold three of the pool's four 8-GPU nodes for a while; the gang of
    # two 8-GPU workers binds one and waits for the second inside its 40 s timeout.
    blocker = gpu_spec(workers=3, devices=8)
    blocker["nodePool"] = {"nodeSelector": pool}
    blocker["env"] = [{"name": KWOK_RUN_DURATION, "value": "8s"}]
    kube.create_job(namespace, "blocker", blocker)
    wait_phase(kube, namespace, "blocker", "Running")
    waiting = gpu_spec(workers=2, devices=8, gangTimeoutSeconds=40)
    waiting["runPolicy"]["gangPolicy"] = "Timeout"
    waiting["nodePool"] = {"nodeSelector": pool}
    # A placed worker holds its node until the whole gang has run.
    waiting["env"] = [{"name": KWOK_RUN_DURATION, "value": "3s"}]
    kube.create_job(namespace, "gang", waiting)

    def half_placed() -> bool:
        pods = kube.children(namespace, "gang")["pods"]
        bound = [pod for pod in pods if pod["spec"].get("nodeName")]
        return len(pods) == 2 and len(bound) == 1

    wait_for("one of the gang's two workers placed", half_placed, timeout=30, interval=0.2)
    replicas.kill_leader()
    for name in ("blocker", "gang"):
        wait_phase(kube, namespace, name, "Succeeded", timeout=90)
    assert outcome(kube, namespace, "gang") == ("Succeeded", 1, 0)
    status = kube.status(namespace, "gang")
    assert status.get("gangRetries", 0) == 0
    assert condition(status, constants.CONDITION_SCHEDULED).get("status") == "True"
    assert_children_of_one_attempt(kube, namespace, "gang", 1)


# --- a frozen leader -------------------------------------------------------------------------


def test_a_leader_frozen_past_its_renew_deadline_writes_nothing_after_the_takeover(
    crd: Any, replicas: Replicas, kube: Api, namespace: str
) -> None:
    frozen = replicas.leader()
    kube.create_job(namespace, "before", gpu_spec(workers=1, devices=1))
    wait_phase(kube, namespace, "before", "Succeeded")
    assert frozen.process is not None
    os.kill(frozen.process.pid, signal.SIGSTOP)
    try:
        successor = next(m for m in replicas.members.values() if m is not frozen)
        wait_for(
            "the other replica to take the Lease",
            lambda: replicas.holder() == successor.replica,
            timeout=FAILOVER_LIMIT + 5,
            interval=0.05,
        )
        taken_over = parse_time(replicas.lease()["acquireTime"])
        # Work for the new leader that the frozen one will see in its watch streams on waking.
        kube.create_job(namespace, "during", gpu_spec(workers=2, devices=2))
        kube.patch_spec(namespace, "before", {"ttlSecondsAfterFinished": 600})
        wait_phase(kube, namespace, "during", "Succeeded")
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
    code = frozen.process.wait(timeout=10)
    assert code == 75, frozen.log_tail()
    assert "could not renew the Lease" in frozen.log_tail()
    time.sleep(1)  # anything it might still have sent has reached the audit log
    user = f"{namespace}-{frozen.replica}"
    assert audited_writes(crd, user), "the audit log has no write of the old leader at all"
    assert audited_writes(crd, user, since=taken_over) == []
    assert outcome(kube, namespace, "during") == ("Succeeded", 1, 0)

"""AccelTrainJobs admitted by a real Kueue (built from its Go module, run by the local cluster).

The operator creates each attempt's Job suspended with ``kueue.x-k8s.io/queue-name``; Kueue makes
a Workload of it, admits it against a ClusterQueue of 8 kwok GPUs and unsuspends it. What a user
sees: a job over the quota waits Pending with Kueue's own reason in its Scheduled condition, spends
no restart and no gang timeout, and starts once quota frees. A whole-group restart deletes the
attempt's Job, which releases its quota at once; the next attempt is a new Job, hence a new
Workload, which a StrictFIFO queue admits after the Workloads already waiting (README, "Queues and
gangs").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from accel_operator import constants
from localcluster import Cluster, kwok
from localcluster.kueue import queue_fixture, start_kueue, stop_kueue
from tests.operator_harness import Api, OperatorProcess, condition, gpu_spec, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

QUEUE = "team-queue"
QUOTA_GPUS = 8
NOT_ENOUGH = "insufficient unused quota for nvidia.com/gpu"


@pytest.fixture(scope="module")
def kueue(crd: Cluster) -> Iterator[Cluster]:
    """Kueue on the session's cluster for this module; stopped (webhooks removed) after it, so
    that the other modules' Jobs never meet it."""
    start_kueue(crd)
    try:
        yield crd
    finally:
        stop_kueue(crd)


@pytest.fixture
def queue(kueue: Cluster, namespace: str) -> str:
    # StrictFIFO: the oldest Workload is admitted first. Under Kueue's default, BestEffortFIFO, a
    # Workload that did not fit is retried only on later events, so a newer one that fits once
    # quota frees (a restarted attempt, say) can go first: seen with Kueue 0.17.1 here.
    queue_fixture(
        kueue.admin_api(),
        namespace,
        local_queue=QUEUE,
        gpus=QUOTA_GPUS,
        queueing_strategy="StrictFIFO",
    )
    return QUEUE


def queued_spec(workers: int, run_seconds: int) -> dict[str, Any]:
    spec = gpu_spec(workers=workers, devices=2, queueName=QUEUE, gangTimeoutSeconds=5)
    spec["env"] = [{"name": kwok.RUN_DURATION_ENV, "value": f"{run_seconds}s"}]
    return spec


def _phase(kube: Api, namespace: str, name: str) -> str:
    return str(kube.status(namespace, name).get("phase", ""))


def _waiting_message(kube: Api, namespace: str, name: str) -> str:
    status = kube.status(namespace, name)
    scheduled = condition(status, constants.CONDITION_SCHEDULED)
    if status.get("phase") != "Pending" or scheduled.get("reason") != "WaitingForAdmission":
        return ""
    return str(scheduled.get("message", ""))


def test_a_job_over_the_queues_quota_waits_with_kueues_reason_and_starts_when_quota_frees(
    kube: Api, namespace: str, queue: str, operator: OperatorProcess
) -> None:
    kube.create_job(namespace, "first", queued_spec(workers=3, run_seconds=15))  # 6 of 8 GPUs
    wait_for("first running", lambda: _phase(kube, namespace, "first") == "Running", timeout=60)
    kube.create_job(namespace, "second", queued_spec(workers=2, run_seconds=1))  # 4 more

    message = wait_for(
        "second waiting with Kueue's reason",
        lambda: NOT_ENOUGH in (m := _waiting_message(kube, namespace, "second")) and m,
        timeout=30,
    )
    assert message.startswith(f"the Job second-a1 waits for admission by Kueue (queue {queue}): ")
    assert "2 more needed" in message, message
    job = next(iter(kube.children(namespace, "second")["jobs"]))
    assert job["spec"]["suspend"] is True
    assert kube.children(namespace, "second")["pods"] == []
    status = kube.status(namespace, "second")
    assert status["restarts"] == 0 and status.get("gangRetries", 0) == 0

    wait_for("first Succeeded", lambda: _phase(kube, namespace, "first") == "Succeeded", timeout=90)
    wait_for(
        "second Succeeded", lambda: _phase(kube, namespace, "second") == "Succeeded", timeout=90
    )
    assert kube.status(namespace, "second")["restarts"] == 0


def test_a_restarted_job_is_queued_again_behind_the_jobs_that_waited(
    kube: Api, namespace: str, queue: str, operator: OperatorProcess
) -> None:
    kube.create_job(namespace, "long", queued_spec(workers=3, run_seconds=600))  # 6 of 8 GPUs
    wait_for("long running", lambda: _phase(kube, namespace, "long") == "Running", timeout=60)
    kube.create_job(namespace, "waiting", queued_spec(workers=2, run_seconds=20))  # 4 more
    wait_for(
        "waiting queued", lambda: NOT_ENOUGH in _waiting_message(kube, namespace, "waiting"), 30
    )

    # What a whole-group restart does to the first attempt: its Job goes, with its quota.
    kube.client.request(
        "DELETE",
        f"/apis/batch/v1/namespaces/{namespace}/jobs/long-a1",
        verb="delete",
        resource="jobs",
        body={"propagationPolicy": "Foreground"},
    )

    wait_for("waiting admitted", lambda: _phase(kube, namespace, "waiting") == "Running", 60)
    message = wait_for(
        "long's next attempt queued behind it",
        lambda: NOT_ENOUGH in (m := _waiting_message(kube, namespace, "long")) and m,
        timeout=60,
    )
    assert message.startswith("the Job long-a2 waits for admission by Kueue"), message
    status = kube.status(namespace, "long")
    assert (status["attempt"], status["restarts"]) == (2, 1)
    # Once the job that waited is done, the restarted one is admitted in its turn.
    wait_for("waiting Succeeded", lambda: _phase(kube, namespace, "waiting") == "Succeeded", 90)
    wait_for("long running again", lambda: _phase(kube, namespace, "long") == "Running", 60)

"""What makes the operator reconcile an AccelTrainJob: every trigger marks it in the work queue
(one entry path). A job the informer sees for the first time and a job whose spec changed are
queued; the operator's own status writes are not."""

from __future__ import annotations

import copy
from typing import Any

from accel_operator import api, constants, handlers, informer
from accel_operator.reconcile import Reconciler


class MarkedJobs:
    """A work queue that only records what was marked."""

    def __init__(self) -> None:
        self.marked: list[tuple[str, str]] = []

    def add(self, namespace: str, name: str) -> None:
        self.marked.append((namespace, name))


def accel_job(generation: int, phase: str | None = None) -> dict[str, Any]:
    job: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"namespace": "team-a", "name": "bert", "uid": "u1", "generation": generation},
        "spec": {"workers": 2},
    }
    if phase is not None:
        job["status"] = {"phase": phase}
    return job


def listener() -> tuple[informer.Listener, MarkedJobs]:
    work = MarkedJobs()
    reconciler = Reconciler(kube=None)  # type: ignore[arg-type]  # the listener sends nothing
    return handlers._cache_listener(reconciler, work), work  # type: ignore[arg-type]


def test_a_new_job_is_queued_at_once() -> None:
    changed, work = listener()
    changed(api.KIND, "ADDED", accel_job(1), None)
    assert work.marked == [("team-a", "bert")]


def test_the_operators_own_status_write_queues_nothing_but_a_spec_change_does() -> None:
    changed, work = listener()
    first = accel_job(1)
    changed(api.KIND, "MODIFIED", accel_job(1, phase="Running"), copy.deepcopy(first))
    assert work.marked == []

    changed(api.KIND, "MODIFIED", accel_job(2, phase="Running"), accel_job(1, phase="Running"))
    assert work.marked == [("team-a", "bert")]


def test_a_deleted_job_is_not_queued() -> None:
    changed, work = listener()
    changed(api.KIND, "DELETED", accel_job(1), accel_job(1))
    assert work.marked == []


def test_a_worker_pods_change_queues_its_owner_once_per_relevant_change() -> None:
    changed, work = listener()
    pod: dict[str, Any] = {
        "kind": "Pod",
        "metadata": {
            "namespace": "team-a",
            "name": "bert-a1-0-x",
            "uid": "p1",
            "labels": {constants.LABEL_JOB_NAME: "bert", constants.LABEL_ATTEMPT: "1"},
        },
        "status": {"phase": "Pending"},
    }
    changed("Pod", "ADDED", pod, None)
    changed("Pod", "MODIFIED", copy.deepcopy(pod), pod)  # nothing the lifecycle reads changed
    running = copy.deepcopy(pod)
    running["status"]["phase"] = "Running"
    changed("Pod", "MODIFIED", running, pod)
    assert work.marked == [("team-a", "bert"), ("team-a", "bert")]


def test_each_reconcile_says_when_its_job_needs_the_next_look() -> None:
    from accel_operator.kube import ApiError

    reconciler = Reconciler(kube=None, reconcile_interval=2.0)  # type: ignore[arg-type]
    answers: list[Any] = [7.0, None, ApiError("PATCH", "/x", 500, "down"), RuntimeError("bug")]

    def reconcile_once(namespace: str, name: str) -> float | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    reconciler.reconcile_once = reconcile_once  # type: ignore[method-assign]

    running = handlers._reconcile_queued(reconciler, "team-a", "bert")
    finished = handlers._reconcile_queued(reconciler, "team-a", "bert")
    refused = handlers._reconcile_queued(reconciler, "team-a", "bert")
    crashed = handlers._reconcile_queued(reconciler, "team-a", "bert")

    assert running is not None and 6.5 < running <= 7.0  # a progress scrape, a deadline
    assert finished is None  # nothing time-based left: never looked at again unasked
    # Failures are retried after a delay that doubles from the progress interval.
    assert refused is not None and 1.5 < refused <= 2.0
    assert crashed is not None and 3.5 < crashed <= 4.0
    reconciler.forget("team-a", "bert")
    assert reconciler.due_in("team-a", "bert") is None


def test_kopf_runs_no_timer_so_it_puts_no_finalizer_on_jobs() -> None:
    reconciler = Reconciler(kube=None)  # type: ignore[arg-type]
    reconciler.cache = informer.Informer(None, [])  # type: ignore[arg-type]

    registry = handlers.build_registry(reconciler, handlers.OperatorOptions())

    spawning = list(registry._spawning.get_all_handlers())
    changing = list(registry._changing.get_all_handlers())
    assert spawning == [] and changing == []  # no timer or daemon, no on.create/update/delete

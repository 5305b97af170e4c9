"""The reconcile work queue: a job marked many times is reconciled once, a change during a
reconcile is not lost, a failing reconcile does not stop the workers, and a job is reconciled
again when its last reconcile said it would need a look."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from accel_operator.workqueue import QueueObserver, WorkQueue

TIMEOUT = 10.0


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Recorder:
    """A reconcile that records its calls and can be held inside a call."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.inside = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail: set[tuple[str, str]] = set()
        self.again: dict[tuple[str, str], list[float]] = {}
        """Per job, what its reconciles return in turn (seconds to the next look)."""
        self.times: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def __call__(self, namespace: str, name: str) -> float | None:
        with self._lock:
            self.calls[(namespace, name)] += 1
            self.times.setdefault((namespace, name), []).append(time.monotonic())
            planned = self.again.get((namespace, name))
            again = planned.pop(0) if planned else None
        self.inside.set()
        self.release.wait(TIMEOUT)
        if (namespace, name) in self.fail:
            raise RuntimeError("API server unavailable")
        return again

    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())


def hold_a_reconcile(recorder: Recorder, work: WorkQueue, name: str) -> None:
    """Start a reconcile of ``name`` and keep it inside until ``recorder.release`` is set."""
    recorder.release.clear()
    work.add("team", name)
    wait_for(recorder.inside.is_set)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def started(recorder: Recorder) -> Iterator[tuple[WorkQueue, list[int]]]:
    depths: list[int] = []
    work = WorkQueue(recorder, workers=1, observer=QueueObserver(depth=depths.append))
    work.start()
    yield work, depths
    recorder.release.set()
    work.stop()


def test_a_burst_of_events_for_one_job_waiting_in_the_queue_costs_one_reconcile(
    recorder: Recorder, started: tuple[WorkQueue, list[int]]
) -> None:
    work, depths = started
    hold_a_reconcile(recorder, work, "blocker")

    for _ in range(50):
        work.add("team", "bert")
    assert work.depth() == 1
    recorder.release.set()

    wait_for(lambda: recorder.calls[("team", "bert")] == 1)
    wait_for(lambda: work.depth() == 0)
    time.sleep(0.1)
    assert recorder.calls == Counter({("team", "blocker"): 1, ("team", "bert"): 1})
    assert max(depths) == 1 and depths[-1] == 0


def test_an_event_during_a_reconcile_queues_the_job_again(
    recorder: Recorder, started: tuple[WorkQueue, list[int]]
) -> None:
    work, _ = started
    hold_a_reconcile(recorder, work, "bert")

    work.add("team", "bert")  # the pod changed after the reconcile read it
    recorder.release.set()

    wait_for(lambda: recorder.calls[("team", "bert")] == 2)


def test_two_workers_never_reconcile_one_job_at_once(recorder: Recorder) -> None:
    work = WorkQueue(recorder, workers=2)
    work.start()
    try:
        hold_a_reconcile(recorder, work, "bert")
        for _ in range(5):
            work.add("team", "bert")  # pod events while the first reconcile runs
        time.sleep(0.2)
        # The idle worker did not take bert: it waits for the running reconcile to end.
        assert recorder.calls[("team", "bert")] == 1
        assert work.depth() == 1
        recorder.release.set()
        wait_for(lambda: recorder.calls[("team", "bert")] == 2)
        wait_for(lambda: work.depth() == 0)
        time.sleep(0.1)
        assert recorder.calls[("team", "bert")] == 2
    finally:
        recorder.release.set()
        work.stop()


def test_a_failing_reconcile_leaves_the_workers_serving_other_jobs(
    recorder: Recorder, started: tuple[WorkQueue, list[int]]
) -> None:
    work, _ = started
    recorder.fail.add(("team", "broken"))

    work.add("team", "broken")
    work.add("team", "bert")

    wait_for(lambda: recorder.calls[("team", "bert")] == 1)
    assert recorder.calls[("team", "broken")] == 1


def test_several_workers_reconcile_different_jobs_at_the_same_time(recorder: Recorder) -> None:
    recorder.release.clear()
    work = WorkQueue(recorder, workers=3)
    work.start()
    try:
        for name in ("a", "b", "c"):
            work.add("team", name)
        wait_for(lambda: recorder.total() == 3)  # all three inside before any returned
    finally:
        recorder.release.set()
        work.stop()


def test_stop_ends_every_worker_thread(recorder: Recorder) -> None:
    work = WorkQueue(recorder, workers=4)
    work.start()
    work.add("team", "bert")
    wait_for(lambda: recorder.total() == 1)

    work.stop()

    assert not [thread for thread in threading.enumerate() if thread.name.startswith("reconcile-")]


def test_a_queue_without_workers_is_refused(recorder: Recorder) -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        WorkQueue(recorder, workers=0)


def test_the_queue_reports_adds_waiting_and_working_time_as_controller_runtime_does(
    recorder: Recorder,
) -> None:
    adds: list[None] = []
    waited: list[float] = []
    worked: list[float] = []
    observer = QueueObserver(
        added=lambda: adds.append(None), waited=waited.append, worked=worked.append
    )
    work = WorkQueue(recorder, workers=1, observer=observer)
    work.start()
    try:
        hold_a_reconcile(recorder, work, "blocker")
        for _ in range(20):
            work.add("team", "bert")  # marked once while it waits behind the blocker
        time.sleep(0.2)
        recorder.release.set()
        wait_for(lambda: len(worked) == 2)
    finally:
        recorder.release.set()
        work.stop()
    assert len(adds) == 2
    # bert waited for the blocker's reconcile to end; the blocker was taken at once.
    assert waited[1] >= 0.2 > waited[0]
    assert worked[0] >= 0.2


def test_a_job_whose_reconcile_asks_for_a_look_later_is_reconciled_again_then(
    recorder: Recorder, started: tuple[WorkQueue, list[int]]
) -> None:
    work, _ = started
    recorder.again[("team", "bert")] = [0.3, None]

    work.add("team", "bert")

    wait_for(lambda: recorder.calls[("team", "bert")] == 2)
    first, second = recorder.times[("team", "bert")]
    assert second - first >= 0.3
    # The second reconcile planned nothing: no third one comes.
    time.sleep(0.5)
    assert recorder.calls[("team", "bert")] == 2 and work.planned() == {}


def test_a_new_plan_replaces_the_old_one_and_none_cancels_it(
    recorder: Recorder, started: tuple[WorkQueue, list[int]]
) -> None:
    work, _ = started

    work.add_after("team", "bert", 0.2)
    work.add_after("team", "bert", 30.0)  # the reconcile of a change planned a later look
    work.add_after("team", "gpt", 0.2)
    work.add_after("team", "gpt", None)  # deleted

    time.sleep(0.6)
    assert recorder.total() == 0
    assert list(work.planned()) == [("team", "bert")]
    assert 29.0 < work.planned()[("team", "bert")] <= 30.0


def test_a_plan_of_no_delay_marks_the_job_at_once(
    recorder: Recorder, started: tuple[WorkQueue, list[int]]
) -> None:
    work, _ = started

    work.add_after("team", "bert", 0.0)

    wait_for(lambda: recorder.calls[("team", "bert")] == 1)


def test_stopping_ends_the_wait_for_a_planned_job(recorder: Recorder) -> None:
    work = WorkQueue(recorder, workers=1)
    work.start()
    work.add_after("team", "bert", 3600.0)

    started = time.monotonic()
    work.stop()

    assert time.monotonic() - started < 2.0
    assert recorder.total() == 0

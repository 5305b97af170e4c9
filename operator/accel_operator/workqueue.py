"""A deduplicating queue of AccelTrainJobs to reconcile, drained by a fixed pool of threads.

The pattern of controller-runtime's workqueue: watch events only *mark* a job as needing a
reconcile; a job marked many times before a worker takes it is reconciled once. A watch
therefore never waits for a reconcile (several API round trips): a burst of pod events under load
neither piles up in memory nor holds up the news of new jobs.

Every trigger goes through it (a new or changed AccelTrainJob, a child's change, a Kueue
Workload, a time-based step falling due), and it alone guarantees that two workers never
reconcile the same job at once, with client-go's two sets: a key is taken off the *dirty* set
and put in the *processing* set when a worker takes it; a job marked while it is processed stays
dirty and goes back on the queue when that reconcile ends, so no change is missed and the next
reconcile sees it.

Time-based steps (a progress scrape, a backoff, a deadline, the TTL, a retry) are client-go's
delaying queue: a reconcile returns when its job next wants a look, and the queue marks the job
then (:meth:`WorkQueue.add_after`). Nothing polls: a finished job costs nothing, and no timer
object lives on the API server's side (kopf's timers need a finalizer on every job).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

JobKey = tuple[str, str]
"""(namespace, name) of an AccelTrainJob."""

_STOP = ("", "")


def _ignore(*_: object) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class QueueObserver:
    """What the queue reports, for controller-runtime's workqueue metrics."""

    depth: Callable[[int], None] = _ignore
    """Jobs waiting after each change."""
    added: Callable[[], None] = _ignore
    """A job was marked while not already waiting."""
    waited: Callable[[float], None] = _ignore
    """Seconds a job waited from being marked until a worker took it."""
    worked: Callable[[float], None] = _ignore
    """Seconds a worker spent on one job."""


Reconcile = Callable[[str, str], float | None]
"""Reconciles one job; returns the seconds until the job wants its next look without any
cluster change (0: at once), or None when nothing time-based is pending."""


class WorkQueue:
    """Jobs waiting for a reconcile, each at most once, handed to ``workers`` threads; and jobs
    planned for a later reconcile, each at one time."""

    def __init__(
        self,
        reconcile: Reconcile,
        *,
        workers: int,
        observer: QueueObserver | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._reconcile = reconcile
        self._observer = observer or QueueObserver()
        self._queue: queue.SimpleQueue[JobKey] = queue.SimpleQueue()
        self._dirty: dict[JobKey, float] = {}
        """Jobs marked for a reconcile that no worker has taken yet, and when each was marked."""
        self._processing: set[JobKey] = set()
        """Jobs a worker is reconciling."""
        self._lock = threading.Lock()
        self._planned: dict[JobKey, float] = {}
        """Jobs planned for a later reconcile, and the monotonic time each is due."""
        self._due: list[tuple[float, JobKey]] = []
        """A heap of (time, job): every plan made, the replaced ones too (skipped when due)."""
        self._plans_changed = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"reconcile-{index}", daemon=True)
            for index in range(workers)
        ]
        self._release_thread = threading.Thread(target=self._release_due, name="due", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()
            self._release_thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Let the workers finish the reconcile they are in and exit; queued jobs are dropped
        (the next operator finds them again when it lists the jobs)."""
        if not self._started:
            return
        with self._plans_changed:
            self._stopping = True
            self._plans_changed.notify()
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in (*self._threads, self._release_thread):
            thread.join(timeout)
        self._started = False

    def add(self, namespace: str, name: str) -> None:
        """Mark a job as needing a reconcile; a no-op when it is already waiting."""
        key = (namespace, name)
        with self._lock:
            if key in self._dirty:
                return
            self._dirty[key] = time.monotonic()
            depth = len(self._dirty)
            # A job being reconciled goes back on the queue when its worker is done with it.
            if key not in self._processing:
                self._queue.put(key)
        self._observer.added()
        self._observer.depth(depth)

    def add_after(self, namespace: str, name: str, delay: float | None) -> None:
        """Plan a reconcile of a job in ``delay`` seconds, replacing the plan it had; None
        cancels that plan, and 0 or less marks the job now."""
        key = (namespace, name)
        with self._plans_changed:
            self._planned.pop(key, None)
            if delay is not None and delay > 0:
                due = time.monotonic() + delay
                self._planned[key] = due
                heapq.heappush(self._due, (due, key))
                self._plans_changed.notify()
        if delay is not None and delay <= 0:
            self.add(namespace, name)

    def planned(self) -> dict[JobKey, float]:
        """Seconds until each planned job is due."""
        now = time.monotonic()
        with self._plans_changed:
            return {key: due - now for key, due in self._planned.items()}

    def _release_due(self) -> None:
        """Mark each planned job when it falls due."""
        while True:
            with self._plans_changed:
                key = self._next_due()
                if key is None:
                    return
            self.add(*key)

    def _next_due(self) -> JobKey | None:
        """Wait (holding ``_plans_changed``) for the next job due; None once stopping."""
        while not self._stopping:
            while self._due and self._planned.get(self._due[0][1]) != self._due[0][0]:
                heapq.heappop(self._due)  # replaced or cancelled since
            if not self._due:
                self._plans_changed.wait()
                continue
            due, key = self._due[0]
            wait = due - time.monotonic()
            if wait <= 0:
                heapq.heappop(self._due)
                del self._planned[key]
                return key
            self._plans_changed.wait(wait)
        return None

    def depth(self) -> int:
        """Jobs waiting for a worker."""
        with self._lock:
            return len(self._dirty)

    def _work(self) -> None:
        while True:
            key = self._queue.get()
            if key == _STOP:
                return
            taken = time.monotonic()
            with self._lock:
                marked = self._dirty.pop(key, taken)
                self._processing.add(key)
                depth = len(self._dirty)
            self._observer.depth(depth)
            self._observer.waited(taken - marked)
            again: float | None = None
            try:
                again = self._reconcile(*key)
            except Exception:
                logger.exception("reconcile of %s/%s failed", *key)
            finally:
                self._done(key)
                self._observer.worked(time.monotonic() - taken)
            self.add_after(*key, again)

    def _done(self, key: JobKey) -> None:
        with self._lock:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.put(key)

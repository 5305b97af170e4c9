"""A deduplicating queue of AccelTrainJobs to reconcile, drained by a fixed pool of threads.

The pattern of controller-runtime's workqueue: watch events only *mark* a job as needing a
reconcile; a job marked many times before a worker takes it is reconciled once. kopf's handlers
for pod and Job events therefore return at once instead of holding one of kopf's threads for a
whole reconcile (several API round trips). Without that, a burst of pod events under load waits
in kopf's per-object queues, each waiting event holding its object's full body in memory, and
the create handlers of new jobs wait behind them.

A key is taken off the pending set *before* it is reconciled, so an event that arrives during a
reconcile queues the job again: no change is missed. Two workers never reconcile the same job at
once because :meth:`~accel_operator.reconcile.Reconciler.reconcile` serialises per job.
"""

from __future__ import annotations

import dataclasses
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


class WorkQueue:
    """Jobs waiting for a reconcile, each at most once, handed to ``workers`` threads."""

    def __init__(
        self,
        reconcile: Callable[[str, str], None],
        *,
        workers: int,
        observer: QueueObserver | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._reconcile = reconcile
        self._observer = observer or QueueObserver()
        self._queue: queue.SimpleQueue[JobKey] = queue.SimpleQueue()
        self._pending: dict[JobKey, float] = {}
        """Waiting jobs and when each was marked."""
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"reconcile-{index}", daemon=True)
            for index in range(workers)
        ]
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Let the workers finish the reconcile they are in and exit; queued jobs are dropped
        (the next operator finds them again when it lists the jobs)."""
        if not self._started:
            return
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)
        self._started = False

    def add(self, namespace: str, name: str) -> None:
        """Mark a job as needing a reconcile; a no-op when it is already waiting."""
        key = (namespace, name)
        with self._lock:
            if key in self._pending:
                return
            self._pending[key] = time.monotonic()
            depth = len(self._pending)
        self._queue.put(key)
        self._observer.added()
        self._observer.depth(depth)

    def depth(self) -> int:
        """Jobs waiting for a worker."""
        with self._lock:
            return len(self._pending)

    def _work(self) -> None:
        while True:
            key = self._queue.get()
            if key == _STOP:
                return
            taken = time.monotonic()
            with self._lock:
                marked = self._pending.pop(key, taken)
                depth = len(self._pending)
            self._observer.depth(depth)
            self._observer.waited(taken - marked)
            try:
                self._reconcile(*key)
            except Exception:
                logger.exception("reconcile of %s/%s failed; it is retried", *key)
            finally:
                self._observer.worked(time.monotonic() - taken)

"""A deduplicating queue of AccelTrainJobs to reconcile, drained by a fixed pool of threads.

The pattern of controller-runtime's workqueue: watch events only *mark* a job as needing a
reconcile; a job marked many times before a worker takes it is reconciled once. A watch
therefore never waits for a reconcile (several API round trips): a burst of pod events under load
neither piles up in memory nor holds up the news of new jobs.

Every trigger goes through it (a new or changed AccelTrainJob, a child's change, a timer, a
Kueue Workload), and it alone guarantees that two workers never reconcile the same job at once,
with client-go's two sets: a key is taken off the *dirty* set and put in the *processing* set
when a worker takes it; a job marked while it is processed stays dirty and goes back on the
queue when that reconcile ends, so no change is missed and the next reconcile sees it.
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
        self._dirty: dict[JobKey, float] = {}
        """Jobs marked for a reconcile that no worker has taken yet, and when each was marked."""
        self._processing: set[JobKey] = set()
        """Jobs a worker is reconciling."""
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
            if key in self._dirty:
                return
            self._dirty[key] = time.monotonic()
            depth = len(self._dirty)
            # A job being reconciled goes back on the queue when its worker is done with it.
            if key not in self._processing:
                self._queue.put(key)
        self._observer.added()
        self._observer.depth(depth)

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
            try:
                self._reconcile(*key)
            except Exception:
                logger.exception("reconcile of %s/%s failed; it is retried", *key)
            finally:
                self._done(key)
                self._observer.worked(time.monotonic() - taken)

    def _done(self, key: JobKey) -> None:
        with self._lock:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.put(key)

"""Leader election on a ``coordination.k8s.io/v1`` Lease: which replica of the operator writes.

The semantics are client-go's ``leaderelection`` package:

- A candidate takes the Lease when nobody holds it, when the holder released it (empty
  ``holderIdentity``), or when the record has not changed for ``leaseDuration`` seconds as seen
  on the candidate's own monotonic clock (clocks of different machines are never compared).
- The leader renews every ``retryPeriod``. If no renewal succeeded within ``renewDeadline`` of
  the last good one, it stops leading: :meth:`LeaderElector.is_leading` turns false at that
  instant on the local monotonic clock, whatever the threads are doing, so a leader that was
  frozen (SIGSTOP, a long GC pause, a partition) refuses its own writes on waking before any
  renewal attempt. ``renewDeadline < leaseDuration`` is the margin that makes the old leader stop
  before another replica may start.
- Each change of holder increments ``leaseTransitions``; the new leader posts an Event on the
  Lease naming itself (``kubectl describe lease``) and logs it.
- On a clean shutdown the leader releases the Lease so that a standby takes over at its next
  retry instead of waiting out the lease.

Built on the operator's own client (:mod:`accel_operator.kube`) rather than the ``kubernetes``
package's ``leaderelection`` module: that module reads the global default configuration, judges
expiry by wall-clock time, does not count transitions, and gives no way to fence writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import http.server
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from accel_operator.metrics import OperatorMetrics

logger = logging.getLogger(__name__)

DEFAULT_LEASE_NAME = "acceltrain-operator"
RETRY_JITTER = 0.2
RELEASE_ATTEMPTS = 3
"""Retries wait ``retryPeriod * (1 + up to this)`` so that candidates do not move in lockstep."""


class NotLeaderError(RuntimeError):
    """A write was attempted by a replica that does not (or no longer) hold the Lease."""


@dataclasses.dataclass(frozen=True)
class ElectionTiming:
    """client-go's three durations, in seconds (its defaults: 15, 10, 2)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problems(self) -> list[str]:
        """What is wrong with these durations, as CLI flag messages (empty when usable)."""
        found = []
        if self.retry_period <= 0:
            found.append("--leader-election-retry-period must be > 0")
        if self.renew_deadline <= self.retry_period * (1 + RETRY_JITTER):
            found.append(
                "--leader-election-renew-deadline must exceed the retry period by more than "
                f"{RETRY_JITTER:.0%} (several renewals fit before the leader gives up)"
            )
        if self.lease_duration <= self.renew_deadline:
            found.append(
                "--leader-election-lease-duration must exceed --leader-election-renew-deadline "
                "(the old leader stops before a standby may take over)"
            )
        return found


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says about its holder."""

    holder: str
    duration_seconds: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str(lease["metadata"].get("resourceVersion", "")),
        )


class Action(enum.Enum):
    CREATE = "create"
    """No Lease exists: create it, held by us."""
    TAKE = "take"
    """Free, released or expired: write ourselves in as the holder (a transition)."""
    RENEW = "renew"
    """We hold it: write a new renewTime."""
    WAIT = "wait"
    """Someone else holds a live lease."""


def decide(
    record: LeaseRecord | None,
    identity: str,
    *,
    unchanged_for: float,
    lease_duration: float,
) -> Action:
    """What a candidate does with the Lease it just read. ``unchanged_for``: seconds, on the
    candidate's monotonic clock, since it first saw this exact record."""
    if record is None:
        return Action.CREATE
    if record.holder == identity:
        return Action.RENEW
    if not record.holder:
        return Action.TAKE
    # The holder's own duration when it wrote one: a holder configured with a longer lease than
    # ours must not be cut short.
    duration = max(float(record.duration_seconds), lease_duration)
    return Action.TAKE if unchanged_for >= duration else Action.WAIT


def micro_time(now: dt.datetime | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    moment = now or dt.datetime.now(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(
    record: LeaseRecord | None, identity: str, action: Action, timing: ElectionTiming
) -> dict[str, Any]:
    """The Lease spec that ``action`` writes over ``record``."""
    now = micro_time()
    transitions = record.transitions if record is not None else 0
    acquired = now
    if action is Action.RENEW and record is not None and record.acquire_time:
        acquired = record.acquire_time
    elif action is Action.TAKE:
        transitions += 1
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(timing.lease_duration)),
        "acquireTime": acquired,
        "renewTime": now,
        "leaseTransitions": transitions,
    }


class LeaseStore(Protocol):
    """The Lease calls :class:`~accel_operator.kube.KubeClient` provides."""

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def write_lease(
        self, namespace: str, name: str, spec: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any] | None: ...

    def post_event(
        self, about: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None: ...


class LeaderElector:
    """One replica's candidacy for the Lease ``namespace/name`` under ``identity``."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        namespace: str,
        name: str,
        identity: str,
        timing: ElectionTiming,
        metrics: OperatorMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self.leader = ""
        """The holder this replica saw last ("" before the first read or when released)."""
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._leading_until = float("-inf")
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        metrics.leader.set_function(lambda: 1.0 if self.is_leading() else 0.0)

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    def is_leading(self) -> bool:
        """True until ``renewDeadline`` after the last successful renewal (local clock)."""
        return self._clock() < self._leading_until

    def check_leading(self) -> None:
        """The write fence: raises :class:`NotLeaderError` unless this replica leads now."""
        if not self.is_leading():
            raise NotLeaderError(
                f"{self.identity} does not hold the Lease {self.lease}; the write was not sent"
            )

    # --- one round ------------------------------------------------------------------------------
    def try_acquire_or_renew(self) -> bool:
        """Read the Lease and take or renew it when allowed; True when this replica leads."""
        started = self._clock()
        try:
            lease = self._store.get_lease(self.namespace, self.name)
        except Exception as error:  # the API server may be unreachable: retry next period
            logger.warning("cannot read the Lease %s: %s", self.lease, error)
            return False
        record = LeaseRecord.from_lease(lease) if lease else None
        self._observe(record, started)
        action = decide(
            record,
            self.identity,
            unchanged_for=started - self._observed_at,
            lease_duration=self.timing.lease_duration,
        )
        if action is Action.WAIT:
            return False
        spec = lease_spec(record, self.identity, action, self.timing)
        version = record.resource_version if record is not None else None
        try:
            written = self._store.write_lease(self.namespace, self.name, spec, version)
        except Exception as error:
            logger.warning("cannot write the Lease %s: %s", self.lease, error)
            return False
        if written is None:  # another candidate wrote first (a conflict)
            return False
        with self._lock:
            if self._stop.is_set():
                return False
            self._leading_until = started + self.timing.renew_deadline
        self._observe(LeaseRecord.from_lease(written), started)
        if action is not Action.RENEW:
            self._announce(written)
        return True

    def _observe(self, record: LeaseRecord | None, now: float) -> None:
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder = record.holder if record is not None else ""
        if holder and holder != self.leader:
            logger.info("the operator leader is now %s (Lease %s)", holder, self.lease)
            self._metrics.leader_transitions.inc()
        self.leader = holder

    def _announce(self, lease: Mapping[str, Any]) -> None:
        message = f"{self.identity} became leader"
        try:
            self._store.post_event(lease, "Normal", "LeaderElection", message)
        except Exception as error:  # the Event is a courtesy; leading does not depend on it
            logger.warning("cannot post the LeaderElection event: %s", error)

    # --- loops ----------------------------------------------------------------------------------
    def _pause(self) -> float:
        return self.timing.retry_period * (1 + random.uniform(0, RETRY_JITTER))

    def _until_next_try(self) -> float:
        """A retry period, or less when the Lease we wait on expires sooner: the standby tries
        at the moment of expiry instead of up to a period later."""
        pause = self._pause()
        record = self._observed
        if record is None or not record.holder or record.holder == self.identity:
            return pause
        duration = max(float(record.duration_seconds), self.timing.lease_duration)
        expires_in = self._observed_at + duration - self._clock()
        return max(0.01, min(pause, expires_in))

    def acquire(self) -> bool:
        """Block as a standby until this replica leads (True) or :meth:`stop` (False)."""
        logger.info("%s is a standby until it acquires the Lease %s", self.identity, self.lease)
        while not self._stop.is_set():
            if self.try_acquire_or_renew():
                logger.info("%s acquired the Lease %s", self.identity, self.lease)
                return True
            self._stop.wait(self._until_next_try())
        return False

    def keep_leading(self, on_lost: Callable[[str], None]) -> None:
        """Renew every retry period in one thread; in another, call ``on_lost`` (with the
        reason) the moment leadership lapses, at most a few tens of milliseconds late."""
        threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True).start()
        threading.Thread(
            target=self._watchdog, args=(on_lost,), name="lease-watchdog", daemon=True
        ).start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.timing.retry_period):
            if not self.is_leading():
                return
            self.try_acquire_or_renew()

    def _watchdog(self, on_lost: Callable[[str], None]) -> None:
        interval = min(0.05, self.timing.retry_period / 10)
        while not self._stop.wait(interval):
            with self._lock:
                if self._stop.is_set() or self.is_leading():
                    continue
            on_lost(
                f"{self.identity} could not renew the Lease {self.lease} within "
                f"{self.timing.renew_deadline:g} s"
            )
            return

    def stop(self) -> None:
        """End the loops without touching the Lease."""
        with self._lock:
            self._stop.set()

    def release(self) -> None:
        """Stop leading and hand the Lease back so that a standby takes over at once."""
        with self._lock:
            self._stop.set()
            was_leading = self.is_leading()
            self._leading_until = float("-inf")
        if not was_leading:
            return
        # A renewal still in flight may have moved the Lease's version on: read it afresh.
        for _ in range(RELEASE_ATTEMPTS):
            try:
                lease = self._store.get_lease(self.namespace, self.name)
                record = LeaseRecord.from_lease(lease) if lease else None
                if record is None or record.holder != self.identity:
                    return
                version, spec = record.resource_version, released_spec(record)
                if self._store.write_lease(self.namespace, self.name, spec, version):
                    logger.info("%s released the Lease %s", self.identity, self.lease)
                    return
            except Exception as error:
                logger.warning("cannot release the Lease %s: %s", self.lease, error)
                return
        logger.warning(
            "could not release the Lease %s; a standby takes over when it expires", self.lease
        )


def released_spec(record: LeaseRecord) -> dict[str, Any]:
    """What client-go writes to hand a Lease back: no holder, a one-second lease."""
    now = micro_time()
    return {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": now,
        "renewTime": now,
        "leaseTransitions": record.transitions,
    }


class StandbyHealth:
    """``/healthz`` of a standby replica (200, "standby") on the liveness port, until the replica
    leads and kopf's own liveness endpoint takes the port over."""

    def __init__(self, port: int, addr: str = "0.0.0.0") -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = self.path.split("?")[0] == "/healthz"
                body = b"standby\n" if found else b"not found\n"
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # probes every few seconds: not worth a line
                return

        self._server = http.server.ThreadingHTTPServer((addr, port), Handler)
        threading.Thread(
            target=self._server.serve_forever, name="standby-health", daemon=True
        ).start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

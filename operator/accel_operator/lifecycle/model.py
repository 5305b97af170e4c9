"""What the lifecycle reads and returns: the views of the observed cluster (:class:`Observed`,
its attempt Jobs, worker pods, failed workers and rank 0's progress), the actions and events of a
:class:`Decision`, and the :class:`Plan` the policies fill in while one decision is made."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Literal

from accel_operator import api, straggler

FINISHED_PHASES = frozenset({api.Phase.SUCCEEDED, api.Phase.FAILED})
# How often a job that waits on nothing in particular is looked at again, as a safety net for
# missed watch events.
SAFETY_REQUEUE_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class PodView:
    """One worker pod, as far as the lifecycle cares."""

    name: str
    attempt: int
    index: int | None
    phase: str
    """Pending, Running, Succeeded, Failed or Unknown."""
    node_name: str | None = None
    ready: bool = False
    deleting: bool = False
    pod_ip: str | None = None
    running_since: dt.datetime | None = None
    exit_code: int | None = None
    termination_message: str = ""
    termination_reason: str = ""
    """The kubelet's reason for the trainer's end (Error, OOMKilled) or the pod's (Evicted)."""
    unschedulable_message: str = ""
    """The scheduler's reason while the pod cannot be placed (PodScheduled=False or the latest
    FailedScheduling event)."""
    waiting_reason: str = ""
    """Why the trainer container does not run yet (ErrImagePull, InvalidImageName, ...)."""
    waiting_message: str = ""
    disruption: str = ""
    """The reason of a True ``DisruptionTarget`` condition: the pod was evicted, preempted or
    drained away (EvictionByEvictionAPI, PreemptionByScheduler, DeletionByTaintManager,
    TerminationByKubelet), not failed by its own doing."""
    deletion_deadline: dt.datetime | None = None
    """While the pod is being deleted: when its grace period ends (``deletionTimestamp``)."""
    created: dt.datetime | None = None

    @property
    def waiting(self) -> str:
        """The waiting reason and the kubelet's message, as one line ("" when not waiting)."""
        if not self.waiting_message:
            return self.waiting_reason
        return f"{self.waiting_reason}: {self.waiting_message}"

    @property
    def started(self) -> bool:
        """Whether the pod got as far as running its container (and maybe finished)."""
        return self.phase in ("Running", "Succeeded") or (
            self.phase == "Failed" and self.exit_code is not None
        )

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclasses.dataclass(frozen=True)
class AttemptView:
    """The batch/v1 Job of one attempt."""

    attempt: int
    name: str
    created: dt.datetime
    started: dt.datetime | None = None
    """The Job's status.startTime: unset while it is suspended, reset when it is resumed."""
    suspended: bool = False
    deleting: bool = False
    complete: bool = False
    failed: bool = False
    failure_reason: str = ""
    failure_message: str = ""
    create_failure: str = ""
    """The Job controller's latest FailedCreate message while pods are missing."""
    uid: str = ""
    admission_message: str = ""
    """Why Kueue has not admitted the suspended Job yet (its Workload's condition)."""

    @property
    def live(self) -> bool:
        """Whether the Job still runs its pods: neither finished, failed, suspended nor being
        deleted."""
        return not (self.complete or self.failed or self.suspended or self.deleting)


@dataclasses.dataclass(frozen=True)
class FailureView:
    """A failed worker of an attempt: its exit code, the kubelet's reason and its log tail."""

    pod: str
    exit_code: int | None
    log_tail: str = ""
    index: int | None = None
    node: str | None = None
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class ProgressSample:
    """Rank 0's metrics, scraped once."""

    step: int
    steps_this_process: int | None = None
    """Optimizer steps this trainer process has done; > 0 proves this attempt trains."""
    samples_per_second: float = 0.0
    """Rank 0's own rate; the job's is this times the world size."""
    tokens_per_second: float = 0.0
    """Rank 0's real (non-padding) tokens per second."""
    tflops_per_device: float = 0.0
    mfu: float = 0.0
    padding_efficiency: float | None = None
    """Rank 0's real tokens over processed token positions (None before its first step)."""
    loss: float | None = None
    sparsity: float | None = None
    checkpoint_step: int | None = None
    """Step of the latest complete checkpoint the trainer wrote."""
    estimated_memory_bytes: int | None = None
    """The trainer's start-up estimate of one rank's memory need (model states, activations)."""
    memory_budget_bytes: int | None = None
    """The memory one rank has, as the trainer's preflight saw it."""

    @property
    def first_step_reported(self) -> bool:
        if self.steps_this_process is not None:
            return self.steps_this_process > 0
        return self.step > 0


@dataclasses.dataclass(frozen=True)
class Observed:
    """Everything :func:`decide` needs to know about the cluster."""

    created: dt.datetime
    """The AccelTrainJob's creationTimestamp."""
    generation: int = 0
    native_gang: bool = False
    """Whether the API server serves Workloads (native gang scheduling)."""
    attempts: tuple[AttemptView, ...] = ()
    pods: tuple[PodView, ...] = ()
    """Worker pods of every attempt that still has some."""
    failed_workers: tuple[FailureView, ...] = ()
    """Every failed worker of the current attempt when its Job failed, the one that best
    explains the failure first (:attr:`failure`)."""
    progress: ProgressSample | None = None
    rank_times: tuple[straggler.RankTime, ...] | None = None
    """Every rank's own work per step, when the ranks were compared in this reconcile."""
    progress_visible: bool = True
    """False when rank 0's address is outside the networks the operator may scrape: the phase
    then follows the pods alone, and stalls cannot be detected."""
    missing_children: tuple[str, ...] = ()
    """Kinds of the current attempt's ConfigMap and Service that the cluster does not hold
    (deleted out of band); only observed while that attempt's Job is live."""
    changed_children: tuple[str, ...] = ()
    """Kinds of the current attempt's ConfigMap and Service whose content was changed out of
    band; only observed while that attempt's Job is live."""
    recheck_after: float | None = None
    """Seconds after which a look at the cluster may see more than this one did (an Event read
    the reconciler put off); the decision looks again by then."""

    @property
    def failure(self) -> FailureView | None:
        return self.failed_workers[0] if self.failed_workers else None

    def attempt(self, number: int) -> AttemptView | None:
        return next(
            (attempt_job for attempt_job in self.attempts if attempt_job.attempt == number), None
        )

    def pods_of(self, number: int) -> list[PodView]:
        return sorted(
            (pod for pod in self.pods if pod.attempt == number),
            key=lambda pod: (pod.index is None, pod.index or 0, pod.name),
        )

    @property
    def highest_attempt(self) -> int:
        return max((attempt_job.attempt for attempt_job in self.attempts), default=0)


@dataclasses.dataclass(frozen=True)
class CreateAttempt:
    """Apply the ConfigMap, Service and Job of this attempt (before the status names it)."""

    attempt: int


@dataclasses.dataclass(frozen=True)
class DeleteAttempt:
    """Delete this attempt's Job with its pods, and its ConfigMap (after the status is written).
    ``grace_seconds``: delete its unfinished pods with this grace period instead of their own."""

    attempt: int
    grace_seconds: int | None = None


@dataclasses.dataclass(frozen=True)
class DeleteJob:
    """Delete the AccelTrainJob itself; its children go by garbage collection (TTL)."""


@dataclasses.dataclass(frozen=True)
class ForceDeletePod:
    """Delete a pod of a torn-down attempt without waiting for its kubelet (grace period 0):
    its node stopped answering, so nothing else would ever finish the deletion."""

    pod: str


@dataclasses.dataclass(frozen=True)
class RestoreChildren:
    """Apply these children (kinds) of the live attempt again: they were deleted out of band."""

    attempt: int
    kinds: tuple[str, ...]


Action = CreateAttempt | DeleteAttempt | DeleteJob | RestoreChildren | ForceDeletePod


@dataclasses.dataclass(frozen=True)
class Event:
    """A core/v1 Event to post on the AccelTrainJob."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Decision:
    status: api.AccelTrainJobStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    """Seconds until something time-based is due (backoff, gang timeout, deadline, TTL, the
    next progress scrape); None when only a change in the cluster can move the job on."""
    restart_reason: str | None = None
    """Set when this decision starts a restart (for the restarts-by-reason metric)."""
    launch_seconds: float | None = None
    """Set when the first attempt's pods all run for the first time: seconds since creation."""

    @property
    def creates(self) -> list[CreateAttempt]:
        return [action for action in self.actions if isinstance(action, CreateAttempt)]

    @property
    def deletes(self) -> list[DeleteAttempt | DeleteJob]:
        return [a for a in self.actions if isinstance(a, DeleteAttempt | DeleteJob)]

    @property
    def restores(self) -> list[RestoreChildren]:
        return [action for action in self.actions if isinstance(action, RestoreChildren)]

    @property
    def force_deletes(self) -> list[ForceDeletePod]:
        return [action for action in self.actions if isinstance(action, ForceDeletePod)]


@dataclasses.dataclass
class Plan:
    """What the policies decided so far in one :func:`~accel_operator.lifecycle.decide`: the
    actions and events, and the delays after which something is due."""

    actions: list[Action] = dataclasses.field(default_factory=list)
    events: list[Event] = dataclasses.field(default_factory=list)
    """Events of this reconcile that no status transition explains."""
    due: list[float] = dataclasses.field(default_factory=list)
    restart_reason: str | None = None
    launch_seconds: float | None = None

    def delete(self, attempt: int, grace_seconds: int | None = None) -> None:
        planned = (a for a in self.actions if isinstance(a, DeleteAttempt))
        if all(action.attempt != attempt for action in planned):
            self.actions.append(DeleteAttempt(attempt, grace_seconds))

    def requeue(self, seconds: float) -> None:
        self.due.append(max(0.0, seconds))

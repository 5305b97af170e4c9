"""The AccelTrainJob state machine: observed children in, new status and actions out
(docs/design.md#the-lifecycle).

Pure: no I/O, no clock, no kopf, no Kubernetes client. :func:`decide` takes the parsed spec, the
current status, what the reconciler observed (the attempt Jobs, their pods, the failed worker's
exit code and log tail, rank 0's scraped metrics) and the time, and returns a :class:`Decision`:
the new status, the actions to execute (create attempt k, delete attempt k, delete the job,
restore a live attempt's deleted or changed ConfigMap, Service or gang Workload) and the events
to post. Calling it again with the status it returned and the same observation returns the same
status and no actions or events, which is what makes a reconcile safe to repeat.

Phases::

    Pending ──> Starting ──> Running ──> Succeeded
                   │  ▲          │
                   ▼  │          ▼
                 Restarting <────┘            (any phase) ──> Failed | Suspended

- Pending: the attempt's Job waits for admission (Kueue, ``runPolicy.queueName``).
- Starting: the attempt exists and its pods are scheduling, or every rank runs but the first
  optimizer step has not been reported yet.
- Running: every worker pod runs and rank 0 has reported a step in this attempt. When the
  operator is configured not to scrape the pod's address (:attr:`Observed.progress_visible`),
  pods alone decide.
- Restarting: a retryable failure, a gang timeout or a stall ended the attempt; the next attempt
  is created at ``status.nextAttemptTime`` (``backoffSeconds * 2**restarts``, at most 600 s) once
  no pod of the old one remains.
- Suspended: ``runPolicy.suspend`` is true; the attempt is deleted (the trainer checkpoints on
  SIGTERM). Resuming creates a new attempt that is not counted as a restart.

Ordering guarantees the reconciler relies on: children of a new attempt are created before the
status that names the attempt is written, and the status that explains a teardown is written
before the attempt is deleted (see :attr:`Decision.actions`). The current attempt is therefore
``max(status.attempt, highest attempt among existing Jobs)``, and a reconcile interrupted at any
point neither duplicates an attempt nor loses a failure.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Iterable, Sequence
from typing import Literal

from accel_operator import api, constants, gang, straggler

# The cap of the exponential restart backoff (runPolicy.backoffSeconds doubles up to it).
MAX_BACKOFF_SECONDS = 600
# How often a job that waits on nothing in particular is looked at again, as a safety net for
# missed watch events.
SAFETY_REQUEUE_SECONDS = 60.0
LOG_TAIL_CHARACTERS = 1500
# The grace period of the surviving pods of an attempt in which a worker failed. Their ranks wait
# in a collective for the lost one and can neither finish a step nor save a checkpoint (saving
# needs every rank), so their own grace (render.TERMINATION_GRACE_SECONDS, for the SIGTERM
# checkpoint of an eviction or a suspend) would only hold the GPUs and delay the next attempt.
FAILED_ATTEMPT_GRACE_SECONDS = 5

# Failed reasons of the permanent exit codes; "PermanentFailure" when the pod failure policy
# fired without an exit code the operator could read.
PERMANENT_REASONS = {
    int(constants.ExitCode.CONFIG_ERROR): "ConfigError",
    int(constants.ExitCode.DATA_ERROR): "DataError",
    int(constants.ExitCode.MISSING_INPUT): "MissingInput",
    int(constants.ExitCode.OUT_OF_MEMORY): "OutOfMemory",
}
EXIT_CODE_MEANINGS = {
    0: "success",
    int(constants.ExitCode.CONFIG_ERROR): "configuration error, permanent",
    int(constants.ExitCode.DATA_ERROR): "data error, permanent",
    int(constants.ExitCode.MISSING_INPUT): "missing input, permanent",
    int(constants.ExitCode.OUT_OF_MEMORY): "out of memory, permanent",
    int(constants.ExitCode.COMMUNICATION_LOST): "lost a peer or the rendezvous, retryable",
    int(constants.ExitCode.PREEMPTED): "stopped by SIGTERM after a checkpoint, retryable",
}

# Reasons of restarts and failures; they are condition reasons, event reasons and metric labels.
REASON_WORKER_FAILED = "WorkerFailed"
REASON_EVICTED = "Evicted"
REASON_PREEMPTED = "Preempted"
REASON_GANG_TIMEOUT = "GangTimeout"
REASON_WAITING_FOR_CAPACITY = "WaitingForCapacity"
REASON_STALLED = "Stalled"
REASON_ATTEMPT_LOST = "AttemptDeleted"
REASON_DEADLINE = "DeadlineExceeded"
REASON_RESTART_LIMIT = "RestartLimitExceeded"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_FAILED_CREATE = "FailedCreate"
REASON_INVALID_IMAGE = "InvalidImage"
REASON_CHILDREN_RESTORED = "ChildrenRestored"
REASON_POD_FORCE_DELETED = "WorkerForceDeleted"
# The reasons a whole-group restart is counted under (acceltrain_operator_restarts_total).
RESTART_REASONS = (
    REASON_WORKER_FAILED,
    REASON_EVICTED,
    REASON_PREEMPTED,
    REASON_GANG_TIMEOUT,
    REASON_STALLED,
    REASON_ATTEMPT_LOST,
)
STUCK_TERMINATION_SECONDS = 30
"""A deleted pod still there this long after its grace period ended has a kubelet that does
not answer (a healthy one ends it within the grace period)."""
# FailedCreate messages of causes that waiting cannot cure: an invalid pod, a pod security
# violation, an admission webhook's denial. Quota and missing ServiceAccounts can be cured.
_PERMANENT_CREATE_FAILURES = ("is invalid", "violates podsecurity", "denied the request")
# Container waiting reasons that mean the image reference itself is wrong.
_PERMANENT_WAITING_REASONS = ("InvalidImageName",)
# Container waiting reasons of a normal start.
_NORMAL_WAITING_REASONS = ("", "ContainerCreating", "PodInitializing")

FINISHED_PHASES = frozenset({api.Phase.SUCCEEDED, api.Phase.FAILED})


# --- what the reconciler observed ---------------------------------------------------------------
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

    @property
    def failure(self) -> FailureView | None:
        return self.failed_workers[0] if self.failed_workers else None

    def attempt(self, number: int) -> AttemptView | None:
        return next((job for job in self.attempts if job.attempt == number), None)

    def pods_of(self, number: int) -> list[PodView]:
        return sorted(
            (pod for pod in self.pods if pod.attempt == number),
            key=lambda pod: (pod.index is None, pod.index or 0, pod.name),
        )

    @property
    def highest_attempt(self) -> int:
        return max((job.attempt for job in self.attempts), default=0)


# --- what to do ---------------------------------------------------------------------------------
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


# --- time ---------------------------------------------------------------------------------------
def format_time(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment


def format_duration(seconds: float) -> str:
    """A short human duration: 45s, 3m20s, 1h02m, 2d03h."""
    total = max(0, math.ceil(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def backoff_seconds(spec: api.AccelTrainJobSpec, restarts_so_far: int) -> int:
    """Delay before the restart that follows ``restarts_so_far`` earlier restarts."""
    base = spec.run_policy.backoff_seconds
    if base == 0:
        return 0
    # Beyond 2**10 the cap has long been reached; keep the integer small.
    return int(min(base * 2 ** min(restarts_so_far, 10), MAX_BACKOFF_SECONDS))


def _significant(value: float, digits: int = 3) -> float:
    """Round to a few significant digits so that scrape noise does not rewrite the status."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    return float(round(value, digits - 1 - math.floor(math.log10(abs(value)))))


def exit_code_text(code: int | None) -> str:
    if code is None:
        return "no exit code"
    meaning = EXIT_CODE_MEANINGS.get(code)
    if meaning is None and code > 128:
        meaning = f"killed by signal {code - 128}, retryable"
    return f"exit code {code} ({meaning})" if meaning else f"exit code {code}"


def failure_summary(failure: FailureView | None, job: AttemptView) -> str:
    """One message naming the worker, its exit code and the trainer's last log lines."""
    if failure is None:
        detail = job.failure_message or job.failure_reason or "the Job failed"
        return f"attempt {job.attempt} failed: {detail}"
    text = f"worker {failure.pod} failed with {exit_code_text(failure.exit_code)}"
    tail = failure.log_tail.strip()
    if tail:
        if len(tail) > LOG_TAIL_CHARACTERS:
            tail = "..." + tail[-LOG_TAIL_CHARACTERS:]
        text += f"; last log lines:\n{tail}"
    return text


def _failed_worker(worker: FailureView) -> api.FailedWorker:
    lines = worker.log_tail.strip().splitlines()
    last = lines[-1] if lines else ""
    if len(last) > api.LAST_LINE_CHARACTERS:
        last = "..." + last[-(api.LAST_LINE_CHARACTERS - 3) :]
    return api.FailedWorker(
        pod=worker.pod,
        index=worker.index,
        node=worker.node,
        exit_code=worker.exit_code,
        reason=worker.reason,
        last_line=last,
    )


def _others_failed(workers: tuple[FailureView, ...], first: FailureView | None) -> str:
    """A line naming the other failed workers (status.failedWorkers has the details)."""
    others = [worker for worker in workers if first is None or worker.pod != first.pod]
    if not others:
        return ""
    named = [
        f"{worker.pod} ({exit_code_text(worker.exit_code)}"
        + (f", {worker.reason}" if worker.reason else "")
        + (f", node {worker.node}" if worker.node else "")
        + ")"
        for worker in others[:3]
    ]
    more = f" and {len(others) - 3} more" if len(others) > 3 else ""
    return f"\nalso failed: {'; '.join(named)}{more} (status.failedWorkers)"


# --- progress -----------------------------------------------------------------------------------
def update_progress(
    spec: api.AccelTrainJobSpec,
    previous: api.Progress,
    sample: ProgressSample,
    now: dt.datetime,
) -> api.Progress:
    """status.progress from rank 0's sample: job-wide rates, ETA, and when the step last moved."""
    world = spec.world_size
    samples_per_second = _significant(sample.samples_per_second * world)
    tokens_per_second = _significant(sample.tokens_per_second * world)
    total_steps = spec.training.max_steps
    moved = sample.step != previous.step or previous.last_step_time is None
    last_step_time = format_time(now) if moved else previous.last_step_time
    eta = None
    samples_per_step = spec.training.micro_batch_size * spec.training.gradient_accumulation
    if total_steps is not None and sample.samples_per_second > 0:
        steps_per_second = sample.samples_per_second / samples_per_step
        eta = format_duration(max(0, total_steps - sample.step) / steps_per_second)
    return api.Progress(
        step=max(0, sample.step),
        total_steps=total_steps,
        samples_per_second=max(0.0, samples_per_second),
        tokens_per_second=max(0.0, tokens_per_second),
        tflops_per_device=max(0.0, _significant(sample.tflops_per_device)),
        mfu=max(0.0, _significant(sample.mfu)),
        padding_efficiency=(
            min(1.0, _significant(sample.padding_efficiency))
            if sample.padding_efficiency is not None
            else None
        ),
        loss=_significant(sample.loss, 4) if sample.loss is not None else None,
        # The trainer exports 0 when nothing is pruned; only pruning jobs show a sparsity.
        sparsity=(
            min(1.0, max(0.0, _significant(sample.sparsity)))
            if sample.sparsity is not None and spec.pruning is not None
            else None
        ),
        eta=eta,
        last_step_time=last_step_time,
        estimated_memory_bytes=sample.estimated_memory_bytes,
        memory_budget_bytes=sample.memory_budget_bytes,
    )


# --- conditions ---------------------------------------------------------------------------------
# Which condition changes are worth an Event: (type, status) -> event type; for False statuses
# only the listed reasons are.
_EVENTFUL_TRUE = {
    constants.CONDITION_CREATED: "Normal",
    constants.CONDITION_RUNNING: "Normal",
    constants.CONDITION_PROGRESSING: "Normal",
    constants.CONDITION_STRAGGLER: "Warning",
    constants.CONDITION_RESTARTING: "Warning",
    constants.CONDITION_SUSPENDED: "Normal",
    constants.CONDITION_SUCCEEDED: "Normal",
    constants.CONDITION_FAILED: "Warning",
}
_EVENTFUL_FALSE = {
    (constants.CONDITION_SCHEDULED, REASON_GANG_TIMEOUT): "Warning",
    (constants.CONDITION_SCHEDULED, REASON_FAILED_CREATE): "Warning",
    (constants.CONDITION_PROGRESSING, REASON_STALLED): "Warning",
    (constants.CONDITION_SUSPENDED, "Resumed"): "Normal",
    (constants.CONDITION_STRAGGLER, straggler.REASON_RECOVERED): "Normal",
}


class _Status:
    """The status being decided (:attr:`status`, a mutable copy of the one observed) with
    condition helpers that keep transition times honest."""

    def __init__(
        self,
        status: api.AccelTrainJobStatus,
        now: dt.datetime,
        generation: int,
        native_gang: bool = False,
    ):
        self.status = status.model_copy(deep=True)
        self.now = now
        self.generation = generation
        self.native_gang = native_gang
        """Whether the cluster serves Workloads (the Auto gang policy is then Native)."""

    def condition(self, kind: str) -> api.Condition | None:
        return next((c for c in self.status.conditions if c.type == kind), None)

    def is_true(self, kind: str) -> bool:
        found = self.condition(kind)
        return found is not None and found.status == "True"

    def set(self, kind: str, status: bool, reason: str, message: str = "") -> None:
        """Set a condition; lastTransitionTime moves only when the status flips."""
        text = "True" if status else "False"
        existing = self.condition(kind)
        transition = format_time(self.now)
        if existing is not None and existing.status == text:
            transition = existing.last_transition_time
        updated = api.Condition(
            type=kind,
            status=text,
            reason=reason,
            message=message[:32768],
            last_transition_time=transition,
            observed_generation=self.generation,
        )
        others = [c for c in self.status.conditions if c.type != kind]
        self.status.conditions = _ordered([*others, updated])

    def lower(self, kind: str, reason: str, message: str = "") -> None:
        """Set a condition False only if it is present (absent conditions stay absent)."""
        if self.condition(kind) is not None:
            self.set(kind, False, reason, message)


_CONDITION_ORDER = (
    constants.CONDITION_CREATED,
    constants.CONDITION_SCHEDULED,
    constants.CONDITION_RUNNING,
    constants.CONDITION_PROGRESSING,
    constants.CONDITION_STRAGGLER,
    constants.CONDITION_RESTARTING,
    constants.CONDITION_SUSPENDED,
    constants.CONDITION_SUCCEEDED,
    constants.CONDITION_FAILED,
)


def _ordered(conditions: Iterable[api.Condition]) -> list[api.Condition]:
    rank = {kind: index for index, kind in enumerate(_CONDITION_ORDER)}
    return sorted(conditions, key=lambda c: (rank.get(c.type, len(rank)), c.type))


def transition_events(
    before: api.AccelTrainJobStatus, after: api.AccelTrainJobStatus
) -> list[Event]:
    """Events for the condition changes between two statuses that a user should see."""
    old = {c.type: c for c in before.conditions}
    events: list[Event] = []
    for condition in after.conditions:
        previous = old.get(condition.type)
        changed = (
            previous is None
            or previous.status != condition.status
            or previous.reason != condition.reason
            # A new attempt says so even though Created was already True.
            or (
                condition.type == constants.CONDITION_CREATED
                and previous.message != condition.message
            )
        )
        if not changed:
            continue
        if condition.status == "True":
            kind = _EVENTFUL_TRUE.get(condition.type)
        else:
            kind = _EVENTFUL_FALSE.get((condition.type, condition.reason))
        if kind == "Normal":
            events.append(Event("Normal", condition.reason, condition.message))
        elif kind == "Warning":
            events.append(Event("Warning", condition.reason, condition.message))
    return events


# --- the state machine --------------------------------------------------------------------------
@dataclasses.dataclass
class _Plan:
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


def decide(
    spec: api.AccelTrainJobSpec,
    status: api.AccelTrainJobStatus,
    observed: Observed,
    now: dt.datetime,
    *,
    reconcile_interval: float = constants.DEFAULT_RECONCILE_INTERVAL_SECONDS,
) -> Decision:
    """The next status, actions and events for one AccelTrainJob (see the module docstring)."""
    state = _Status(status, now, observed.generation, observed.native_gang)
    plan = _Plan()
    state.status.observed_generation = observed.generation
    _advance_by_phase(spec, state, observed, plan, reconcile_interval)
    if state.condition(constants.CONDITION_RECONCILED) is not None:
        state.set(constants.CONDITION_RECONCILED, True, "Reconciled", "the API server answers")
    new_status = state.status
    requeue = min(plan.due) if plan.due else None
    if new_status.phase not in FINISHED_PHASES:
        requeue = (
            min(requeue, SAFETY_REQUEUE_SECONDS) if requeue is not None else SAFETY_REQUEUE_SECONDS
        )
    return Decision(
        status=new_status,
        actions=tuple(plan.actions),
        events=(*transition_events(status, new_status), *plan.events),
        requeue_after=requeue,
        restart_reason=plan.restart_reason,
        launch_seconds=plan.launch_seconds,
    )


def api_retrying(
    status: api.AccelTrainJobStatus, message: str, now: dt.datetime, generation: int
) -> Decision:
    """The decision while the API server refuses the operator for a reason retrying may cure:
    the job keeps its phase, and a condition says why nothing moves and when it is retried."""
    state = _Status(status, now, generation)
    state.set(constants.CONDITION_RECONCILED, False, "ApiRetrying", message)
    return Decision(status=state.status, events=())


def invalid_spec(
    status: api.AccelTrainJobStatus, message: str, now: dt.datetime, generation: int
) -> Decision:
    """The decision for a spec that cannot work: Failed with reason InvalidSpec, no children."""
    state = _Status(status, now, generation)
    state.status.observed_generation = generation
    if state.status.phase not in FINISHED_PHASES or not state.is_true(constants.CONDITION_FAILED):
        _fail(state, REASON_INVALID_SPEC, message)
    return Decision(status=state.status, events=tuple(transition_events(status, state.status)))


def _advance_by_phase(
    spec: api.AccelTrainJobSpec,
    state: _Status,
    observed: Observed,
    plan: _Plan,
    reconcile_interval: float,
) -> None:
    """Move the job on from where it is: a finished job waits for its TTL, the deadline, an
    attempt a crashed reconcile left unrecorded, suspension, a restart's backoff, the first
    attempt, a lost attempt Job, then the live attempt is supervised."""
    current = max(state.status.attempt, observed.highest_attempt)

    if state.status.phase in FINISHED_PHASES:
        _after_finish(spec, state, observed, plan)
        return

    if _deadline_passed(spec, state, observed, plan, current):
        return
    # An attempt created by an earlier reconcile that stopped before writing the status.
    if current > state.status.attempt:
        _record_new_attempt(spec, state, current)

    if spec.run_policy.suspend:
        _suspend(spec, state, observed, plan, current)
        return
    if state.status.phase is api.Phase.SUSPENDED:
        _resume(spec, state, observed, plan, current)
        return
    if state.status.phase is api.Phase.RESTARTING:
        _await_restart(spec, state, observed, plan, current)
        return
    if current == 0:
        _create_attempt(spec, state, plan, 1)
        return
    job = observed.attempt(current)
    if job is None or job.deleting:
        _restart_or_fail(
            spec,
            state,
            observed,
            plan,
            current,
            REASON_ATTEMPT_LOST,
            f"the Job of attempt {current} was deleted while the attempt ran",
        )
        return
    if (observed.missing_children or observed.changed_children) and not (
        job.complete or job.failed
    ):
        _restore_children(plan, job.attempt, observed.missing_children, observed.changed_children)
    _supervise(spec, state, observed, plan, job, reconcile_interval)


def _deadline_passed(
    spec: api.AccelTrainJobSpec, state: _Status, observed: Observed, plan: _Plan, current: int
) -> bool:
    """runPolicy.activeDeadlineSeconds: fail the job once it has run that long (and look again
    when it will have)."""
    deadline = spec.run_policy.active_deadline_seconds
    started = parse_time(state.status.start_time)
    if deadline is None or started is None:
        return False
    left = (started + dt.timedelta(seconds=deadline) - state.now).total_seconds()
    if left > 0:
        plan.requeue(left)
        return False
    _fail(
        state,
        REASON_DEADLINE,
        f"the job ran longer than runPolicy.activeDeadlineSeconds ({deadline} s); "
        f"attempt {current} was stopped",
    )
    _tear_down_all(observed, plan)
    return True


def _restore_children(
    plan: _Plan, attempt: int, missing: tuple[str, ...], changed: tuple[str, ...]
) -> None:
    """A live attempt's pods resolve each other through its headless Service, mount its
    ConfigMap, and a re-created pod waits for its gang Workload: one deleted or changed out of
    band is applied again, and the attempt goes on."""
    plan.actions.append(RestoreChildren(attempt, (*missing, *changed)))
    what = []
    if missing:
        verb = "were" if len(missing) > 1 else "was"
        what.append(f"the {' and '.join(missing)} of attempt {attempt} {verb} deleted")
    if changed:
        verb = "were" if len(changed) > 1 else "was"
        what.append(f"the {' and '.join(changed)} of attempt {attempt} {verb} changed out of band")
    plan.events.append(
        Event(
            "Warning",
            REASON_CHILDREN_RESTORED,
            f"{' and '.join(what)} while the attempt ran; applied again as rendered",
        )
    )


def _after_finish(
    spec: api.AccelTrainJobSpec, state: _Status, observed: Observed, plan: _Plan
) -> None:
    failed = state.condition(constants.CONDITION_FAILED)
    # A failure that stopped running pods (deadline, stall, gang) keeps them stopped.
    holds_pods = any(not pod.finished and not pod.deleting for pod in observed.pods)
    if failed is not None and failed.status == "True" and holds_pods:
        _tear_down_all(observed, plan)
    ttl = spec.run_policy.ttl_seconds_after_finished
    finished = parse_time(state.status.completion_time)
    if ttl is None or finished is None:
        return
    left = (finished + dt.timedelta(seconds=ttl) - state.now).total_seconds()
    if left <= 0:
        plan.actions.append(DeleteJob())
    else:
        plan.requeue(left)


def _tear_down_all(observed: Observed, plan: _Plan) -> None:
    for job in observed.attempts:
        if not job.deleting:
            plan.delete(job.attempt)
    for pod in observed.pods:
        # Pods whose Job is already gone or going: deleting the attempt again removes them.
        if not pod.deleting and not pod.finished and observed.attempt(pod.attempt) is None:
            plan.delete(pod.attempt)


def _record_new_attempt(spec: api.AccelTrainJobSpec, state: _Status, attempt: int) -> None:
    value = state.status
    value.attempt = attempt
    value.phase = api.Phase.PENDING if spec.run_policy.queue_name else api.Phase.STARTING
    value.next_attempt_time = None
    if value.start_time is None:
        value.start_time = format_time(state.now)
    placement = gang.in_force(spec, state.native_gang)
    value.gang_policy = placement.policy
    state.set(
        constants.CONDITION_CREATED,
        True,
        "AttemptCreated",
        f"attempt {attempt} created: {spec.workers} worker pod(s), world size "
        f"{spec.world_size}; gang {placement.note}",
    )
    state.lower(constants.CONDITION_RESTARTING, "AttemptStarted", f"attempt {attempt} started")
    if state.is_true(constants.CONDITION_SUSPENDED):
        state.set(constants.CONDITION_SUSPENDED, False, "Resumed", f"resumed as attempt {attempt}")
    state.lower(constants.CONDITION_RUNNING, "WorkersStarting", f"attempt {attempt} is starting")
    state.lower(constants.CONDITION_SCHEDULED, "WaitingForPods", f"attempt {attempt} is starting")
    state.lower(
        constants.CONDITION_PROGRESSING, "WorkersStarting", f"attempt {attempt} is starting"
    )
    state.lower(constants.CONDITION_STRAGGLER, "WorkersStarting", f"attempt {attempt} is starting")
    value.rank_spread = None
    value.workers = api.WorkerCounts(total=spec.workers, summary=f"0/{spec.workers}")
    value.message = f"attempt {attempt} created"


def _create_attempt(spec: api.AccelTrainJobSpec, state: _Status, plan: _Plan, attempt: int) -> None:
    plan.actions.append(CreateAttempt(attempt))
    _record_new_attempt(spec, state, attempt)
    plan.requeue(spec.run_policy.gang_timeout_seconds)


def _old_attempt_remains(observed: Observed, up_to: int) -> list[str]:
    """Names of Jobs and pods of attempts up to ``up_to`` that still exist."""
    left = [job.name for job in observed.attempts if job.attempt <= up_to]
    left += [pod.name for pod in observed.pods if pod.attempt <= up_to]
    return left


def _delete_attempts_up_to(observed: Observed, plan: _Plan, up_to: int) -> None:
    """Delete every attempt up to ``up_to`` that still has a Job or pods not being deleted."""
    for job in observed.attempts:
        if job.attempt <= up_to and not job.deleting:
            plan.delete(job.attempt)
    for pod in observed.pods:
        # A pod whose Job is gone is not garbage-collected with it: delete it by itself.
        if pod.attempt <= up_to and not pod.deleting and observed.attempt(pod.attempt) is None:
            plan.delete(pod.attempt)


def _suspend(
    spec: api.AccelTrainJobSpec, state: _Status, observed: Observed, plan: _Plan, current: int
) -> None:
    _delete_attempts_up_to(observed, plan, current)
    remaining = _old_attempt_remains(observed, current)
    if remaining:
        message = (
            f"suspending: waiting for the pods of attempt {current} to checkpoint and stop "
            f"({len(remaining)} object(s) left)"
        )
    elif current:
        message = f"suspended; attempt {current} stopped, resuming starts a new attempt"
    else:
        message = "suspended before the first attempt"
    value = state.status
    value.phase = api.Phase.SUSPENDED
    value.next_attempt_time = None
    state.set(constants.CONDITION_SUSPENDED, True, "Suspended", message)
    state.lower(constants.CONDITION_RUNNING, "Suspended", "the job is suspended")
    state.lower(constants.CONDITION_SCHEDULED, "Suspended", "the job is suspended")
    state.lower(constants.CONDITION_PROGRESSING, "Suspended", "the job is suspended")
    state.lower(constants.CONDITION_RESTARTING, "Suspended", "the job is suspended")
    value.workers = _worker_counts(observed.pods_of(current), spec.workers)
    value.message = message


def _resume(
    spec: api.AccelTrainJobSpec, state: _Status, observed: Observed, plan: _Plan, current: int
) -> None:
    _delete_attempts_up_to(observed, plan, current)
    remaining = _old_attempt_remains(observed, current)
    if remaining:
        message = f"resuming: waiting for attempt {current} to stop ({', '.join(remaining[:5])})"
        state.set(constants.CONDITION_SUSPENDED, True, "Suspended", message)
        state.status.message = message
        return
    _create_attempt(spec, state, plan, current + 1)


def _await_restart(
    spec: api.AccelTrainJobSpec, state: _Status, observed: Observed, plan: _Plan, current: int
) -> None:
    _delete_attempts_up_to(observed, plan, current)
    _force_pods_of_lost_nodes(state, observed, plan, current)
    remaining = _old_attempt_remains(observed, current)
    due = parse_time(state.status.next_attempt_time) or state.now
    left = (due - state.now).total_seconds()
    if left > 0:
        plan.requeue(left)
        return
    if remaining:
        # Pod and Job deletions arrive as watch events; the requeue is a safety net.
        plan.requeue(SAFETY_REQUEUE_SECONDS)
        return
    _create_attempt(spec, state, plan, current + 1)


def _force_pods_of_lost_nodes(state: _Status, observed: Observed, plan: _Plan, up_to: int) -> None:
    """Pods of torn-down attempts whose kubelet will never confirm their end: evicted by the
    taint manager from a node that is unreachable or not ready, or still there
    STUCK_TERMINATION_SECONDS after their grace period ended. The next attempt waits for every
    old pod to be gone, so without this a lost node would hold the group back for good."""
    for pod in observed.pods:
        if pod.attempt > up_to or not pod.deleting or pod.finished:
            continue
        lost = pod.disruption == constants.DISRUPTION_BY_TAINT and not pod.ready
        overdue = None
        if pod.deletion_deadline is not None:
            since = (state.now - pod.deletion_deadline).total_seconds()
            overdue = since >= STUCK_TERMINATION_SECONDS
            if not overdue and not lost:
                plan.requeue(STUCK_TERMINATION_SECONDS - since)
        if not (lost or overdue):
            continue
        plan.actions.append(ForceDeletePod(pod.name))
        why = "its node is unreachable or not ready" if lost else "its kubelet never finished it"
        where = f" on {pod.node_name}" if pod.node_name else ""
        plan.events.append(
            Event(
                "Warning",
                REASON_POD_FORCE_DELETED,
                f"worker {pod.name}{where} of attempt {pod.attempt} was deleted without "
                f"waiting for its kubelet: {why}",
            )
        )


def _fail(state: _Status, reason: str, message: str) -> None:
    value = state.status
    value.phase = api.Phase.FAILED
    value.completion_time = format_time(state.now)
    value.next_attempt_time = None
    value.message = message
    state.set(constants.CONDITION_FAILED, True, reason, message)
    state.lower(constants.CONDITION_RUNNING, "Failed", "the job failed")
    state.lower(constants.CONDITION_RESTARTING, "Failed", "the job failed")
    if state.is_true(constants.CONDITION_PROGRESSING):
        state.set(constants.CONDITION_PROGRESSING, False, "Failed", "the job failed")


def _restart_after_disruption(
    spec: api.AccelTrainJobSpec, state: _Status, plan: _Plan, attempt: int, pod: PodView
) -> None:
    """An eviction, preemption or drain is the cluster's doing, not the job's: the group restarts
    from its checkpoint without spending ``runPolicy.maxRestarts``."""
    preempted = "Preemption" in pod.disruption
    reason = REASON_PREEMPTED if preempted else REASON_EVICTED
    where = f" on {pod.node_name}" if pod.node_name else ""
    cause = pod.disruption
    if pod.disruption == constants.DISRUPTION_BY_TAINT and not pod.ready:
        cause += ": its node is unreachable or not ready past runPolicy.nodeLossSeconds"
    message = (
        f"worker {pod.name}{where} was {'preempted' if preempted else 'evicted'} "
        f"({cause}); attempt {attempt + 1} resumes from the last checkpoint in "
        f"{spec.run_policy.backoff_seconds} s (a disruption spends no runPolicy.maxRestarts)"
    )
    _replace_attempt(state, plan, attempt, spec.run_policy.backoff_seconds, reason, message)


def _restart_or_fail(
    spec: api.AccelTrainJobSpec,
    state: _Status,
    observed: Observed,
    plan: _Plan,
    attempt: int,
    reason: str,
    message: str,
) -> None:
    value = state.status
    budget = spec.run_policy.max_restarts
    if value.restarts >= budget:
        _fail(
            state,
            REASON_RESTART_LIMIT if budget else reason,
            f"{message}; no restarts left (runPolicy.maxRestarts: {budget})",
        )
        if any(not pod.finished and not pod.deleting for pod in observed.pods):
            _tear_down_all(observed, plan)
        return
    delay = backoff_seconds(spec, value.restarts)
    value.restarts += 1
    _replace_attempt(
        state,
        plan,
        attempt,
        delay,
        reason,
        f"restart {value.restarts}/{budget}: attempt {attempt + 1} starts in {delay} s "
        f"(after the pods of attempt {attempt} are gone); {message}",
    )


def _replace_attempt(
    state: _Status, plan: _Plan, attempt: int, delay: int, reason: str, message: str
) -> None:
    """Tear ``attempt`` down; the next one is created ``delay`` seconds later."""
    value = state.status
    value.phase = api.Phase.RESTARTING
    value.next_attempt_time = format_time(state.now + dt.timedelta(seconds=delay))
    value.message = message
    state.set(constants.CONDITION_RESTARTING, True, reason, message)
    state.lower(constants.CONDITION_RUNNING, "Restarting", f"attempt {attempt} is being replaced")
    plan.delete(attempt, FAILED_ATTEMPT_GRACE_SECONDS if reason == REASON_WORKER_FAILED else None)
    plan.restart_reason = reason
    plan.requeue(delay)


def _worker_counts(pods: Sequence[PodView], total: int) -> api.WorkerCounts:
    live = [pod for pod in pods if not pod.deleting]
    ready = sum(1 for pod in live if pod.phase == "Running" and pod.ready)
    return api.WorkerCounts(
        total=total,
        ready=ready,
        active=sum(1 for pod in live if not pod.finished),
        succeeded=sum(1 for pod in live if pod.phase == "Succeeded"),
        failed=sum(1 for pod in live if pod.phase == "Failed"),
        summary=f"{ready}/{total}",
    )


def _pending_description(spec: api.AccelTrainJobSpec, job: AttemptView, pods: list[PodView]) -> str:
    """'<pod> (<scheduler reason>)' for every worker that does not run, including uncreated ones."""
    by_index = {pod.index: pod for pod in pods if pod.index is not None}
    parts = []
    for index in range(spec.workers):
        pod = by_index.get(index)
        if pod is None:
            parts.append(f"{job.name}-{index} (not created)")
        elif not pod.started:
            why = pod.unschedulable_message or (
                f"bound to {pod.node_name}, not running yet" if pod.node_name else "not scheduled"
            )
            if pod.waiting_reason:
                why = pod.waiting
            parts.append(f"{pod.name} ({why})")
    return "; ".join(parts)


def _cannot_start(
    spec: api.AccelTrainJobSpec,
    state: _Status,
    observed: Observed,
    plan: _Plan,
    job: AttemptView,
    pods: list[PodView],
) -> bool:
    """Fail at once when the workers can never start (an image reference the runtime refuses,
    pods Kubernetes will never admit); True when the job was failed."""
    bad_image = next(
        (pod for pod in pods if pod.waiting_reason in _PERMANENT_WAITING_REASONS), None
    )
    if bad_image is not None:
        message = (
            f"spec.image: the container runtime refuses the image of {bad_image.name} "
            f"({bad_image.waiting}); fix spec.image and "
            "recreate the AccelTrainJob"
        )
        _fail(state, REASON_INVALID_IMAGE, message)
        _tear_down_all(observed, plan)
        return True
    if not job.create_failure or len(pods) >= spec.workers:
        return False
    message = (
        f"the Job controller cannot create the worker pods of attempt {job.attempt}: "
        f"{job.create_failure}"
    )
    if any(marker in job.create_failure.lower() for marker in _PERMANENT_CREATE_FAILURES):
        _fail(state, REASON_FAILED_CREATE, message)
        _tear_down_all(observed, plan)
        return True
    # Quota, a ServiceAccount still to be created: the gang timeout bounds the wait.
    state.set(constants.CONDITION_SCHEDULED, False, REASON_FAILED_CREATE, message)
    state.status.message = message
    return False


def _gang_timeout(
    spec: api.AccelTrainJobSpec,
    state: _Status,
    observed: Observed,
    plan: _Plan,
    job: AttemptView,
    pods: list[PodView],
    reconcile_interval: float,
) -> None:
    """Not every worker runs after runPolicy.gangTimeoutSeconds. An attempt with no worker
    placed holds nothing: it keeps waiting for room. One the cluster placed only in part holds
    nodes others could use: it is torn down and retried after the backoff, without spending a
    restart (waiting for capacity is not a failure; activeDeadlineSeconds bounds the wait).
    Anything else (workers placed but not starting) is a failure and spends a restart."""
    limit = spec.run_policy.gang_timeout_seconds
    pending = _pending_description(spec, job, pods)
    waiting = [pod for pod in pods if not pod.started]
    capacity = not job.create_failure and all(not pod.node_name for pod in waiting)
    if capacity and not any(pod.node_name for pod in pods):
        message = (
            f"all {spec.workers} worker(s) of attempt {job.attempt} wait for room together; "
            f"no node is held. Pending: {pending}"
        )
        state.set(constants.CONDITION_SCHEDULED, False, REASON_WAITING_FOR_CAPACITY, message)
        state.status.message = message
        plan.requeue(reconcile_interval)
        return
    message = (
        f"not every worker of attempt {job.attempt} was running within "
        f"runPolicy.gangTimeoutSeconds ({limit} s); the attempt was torn down so that no "
        f"node resources stay held. Pending: {pending}"
    )
    state.set(constants.CONDITION_SCHEDULED, False, REASON_GANG_TIMEOUT, message)
    if capacity:
        _retry_for_capacity(spec, state, plan, job.attempt, message)
        return
    _restart_or_fail(spec, state, observed, plan, job.attempt, REASON_GANG_TIMEOUT, message)


def _retry_for_capacity(
    spec: api.AccelTrainJobSpec, state: _Status, plan: _Plan, attempt: int, message: str
) -> None:
    """Tear a partly placed attempt down and retry it; no restart is spent."""
    delay = spec.run_policy.backoff_seconds
    state.status.gang_retries += 1
    _replace_attempt(
        state,
        plan,
        attempt,
        delay,
        REASON_GANG_TIMEOUT,
        f"capacity retry {state.status.gang_retries} (spends no restart): attempt {attempt + 1} "
        f"starts in {delay} s; {message}",
    )


def _report_waiting_containers(state: _Status, pods: list[PodView]) -> None:
    """Say which workers' containers cannot start yet and why (an image pull, a missing
    Secret key): the gang timeout would otherwise be the first a user hears of it."""
    stuck = [
        f"{pod.name} ({pod.waiting})"
        for pod in pods
        if not pod.started and pod.waiting_reason not in _NORMAL_WAITING_REASONS
    ]
    if stuck:
        message = "worker containers cannot start yet: " + "; ".join(stuck)
        state.set(constants.CONDITION_RUNNING, False, "ContainersWaiting", message)
        state.status.message = message


def _supervise(
    spec: api.AccelTrainJobSpec,
    state: _Status,
    observed: Observed,
    plan: _Plan,
    job: AttemptView,
    reconcile_interval: float,
) -> None:
    """A live attempt, top to bottom: finished, failed, disrupted, queued, unable to start;
    else its scheduling, its start (against the gang clock) and its run."""
    pods = [pod for pod in observed.pods_of(job.attempt) if not pod.deleting]
    state.status.workers = _worker_counts(pods, spec.workers)
    if observed.progress is not None and observed.progress.first_step_reported:
        _record_progress(spec, state, observed.progress)
    if job.complete:
        _succeed(spec, state, observed, plan, job)
        return
    if job.failed:
        _handle_failure(spec, state, observed, plan, job)
        return
    if _restarted_after_disruption(spec, state, observed, plan, job):
        return
    if job.suspended:
        _wait_for_admission(spec, state, job)
        return
    if _cannot_start(spec, state, observed, plan, job, pods):
        return
    _report_scheduling(spec, state, job, pods)
    started = [pod for pod in pods if pod.started]
    if len(started) < spec.workers:
        _await_start(spec, state, observed, plan, job, pods, reconcile_interval)
        return
    _supervise_running(spec, state, observed, plan, job, started, reconcile_interval)


def _succeed(
    spec: api.AccelTrainJobSpec, state: _Status, observed: Observed, plan: _Plan, job: AttemptView
) -> None:
    value = state.status
    value.phase = api.Phase.SUCCEEDED
    value.completion_time = format_time(state.now)
    value.next_attempt_time = None
    if spec.training.max_steps is not None:
        value.progress.step = spec.training.max_steps
    value.progress.eta = None
    step = value.progress.step
    message = f"training finished in attempt {job.attempt}" + (f" at step {step}" if step else "")
    value.message = message
    state.set(constants.CONDITION_SUCCEEDED, True, "Completed", message)
    state.lower(constants.CONDITION_RUNNING, "Completed", "every worker finished")
    state.lower(constants.CONDITION_PROGRESSING, "Completed", "training finished")
    _after_finish(spec, state, observed, plan)


def _restarted_after_disruption(
    spec: api.AccelTrainJobSpec, state: _Status, observed: Observed, plan: _Plan, job: AttemptView
) -> bool:
    """Evicted or preempted and not yet gone: on a lost node it never will be, and the Job does
    not fail until it is. The group restarts now rather than wait for that."""
    disrupted = [
        pod
        for pod in observed.pods_of(job.attempt)
        if pod.disruption and pod.deleting and not pod.finished
    ]
    if disrupted:
        _restart_after_disruption(spec, state, plan, job.attempt, disrupted[0])
    return bool(disrupted)


def _wait_for_admission(spec: api.AccelTrainJobSpec, state: _Status, job: AttemptView) -> None:
    state.status.phase = api.Phase.PENDING
    queue = spec.run_policy.queue_name
    message = (
        f"the Job {job.name} waits for admission by Kueue (queue {queue})"
        if queue
        else f"the Job {job.name} is suspended"
    )
    if job.admission_message:
        message += f": {job.admission_message}"
    state.set(constants.CONDITION_SCHEDULED, False, "WaitingForAdmission", message)
    state.status.message = message


def _report_scheduling(
    spec: api.AccelTrainJobSpec, state: _Status, job: AttemptView, pods: list[PodView]
) -> None:
    bound = sum(1 for pod in pods if pod.node_name)
    if bound >= spec.workers:
        state.set(
            constants.CONDITION_SCHEDULED,
            True,
            "AllWorkersScheduled",
            f"all {spec.workers} worker(s) are bound to nodes",
        )
    elif not (job.create_failure and len(pods) < spec.workers):
        state.set(
            constants.CONDITION_SCHEDULED,
            False,
            "WaitingForPods",
            f"{bound}/{spec.workers} worker(s) scheduled; waiting: "
            + _pending_description(spec, job, pods),
        )


def _await_start(
    spec: api.AccelTrainJobSpec,
    state: _Status,
    observed: Observed,
    plan: _Plan,
    job: AttemptView,
    pods: list[PodView],
    reconcile_interval: float,
) -> None:
    """Not every worker has started: Starting, until the gang timeout."""
    state.status.phase = api.Phase.STARTING
    _report_waiting_containers(state, pods)
    # The gang clock runs from the Job's start. A Job created suspended for Kueue gets its
    # startTime only when the Job controller has seen it admitted: until then, wait.
    gang_start = job.started or (None if spec.run_policy.queue_name else job.created)
    if gang_start is None:
        plan.requeue(reconcile_interval)
        return
    limit = spec.run_policy.gang_timeout_seconds
    left = (gang_start + dt.timedelta(seconds=limit) - state.now).total_seconds()
    if left > 0:
        plan.requeue(left)
        return
    _gang_timeout(spec, state, observed, plan, job, pods, reconcile_interval)


def _supervise_running(
    spec: api.AccelTrainJobSpec,
    state: _Status,
    observed: Observed,
    plan: _Plan,
    job: AttemptView,
    started: list[PodView],
    reconcile_interval: float,
) -> None:
    """Every worker runs: Running once training is seen, the stall and straggler checks."""
    value = state.status
    running_since = max(
        (pod.running_since for pod in started if pod.running_since), default=state.now
    )
    if not state.is_true(constants.CONDITION_RUNNING):
        nodes = sorted({pod.node_name for pod in started if pod.node_name})
        state.set(
            constants.CONDITION_RUNNING,
            True,
            "AllWorkersRunning",
            f"all {spec.workers} worker(s) of attempt {job.attempt} run on "
            f"{', '.join(nodes) or 'their nodes'}",
        )
        if job.attempt == 1 and value.restarts == 0:
            plan.launch_seconds = max(0.0, (running_since - observed.created).total_seconds())

    sample = observed.progress
    # Once this attempt has reported a step, a scrape that fails (a busy or frozen exporter)
    # does not make it Starting again; the stall check watches it instead.
    trains = (sample is not None and sample.first_step_reported) or (
        value.phase is api.Phase.RUNNING and observed.progress_visible
    )
    if trains or not observed.progress_visible:
        value.phase = api.Phase.RUNNING
    else:
        value.phase = api.Phase.STARTING
        value.message = f"all workers of attempt {job.attempt} run; waiting for the first step"
    if observed.progress_visible:
        plan.requeue(reconcile_interval)
        _check_stall(spec, state, observed, plan, job, trains)
    if observed.rank_times is not None:
        _check_stragglers(spec, state, observed.rank_times)


def _check_stragglers(
    spec: api.AccelTrainJobSpec, state: _Status, ranks: tuple[straggler.RankTime, ...]
) -> None:
    """Straggler: True once one rank's own work per step stays far above the others'."""
    policy, value = spec.run_policy, state.status
    verdict = straggler.judge(value.rank_spread, ranks, policy, format_time(state.now))
    if verdict is None:
        return
    value.rank_spread = verdict.spread
    if verdict.straggling:
        message = straggler.straggler_message(verdict.spread, policy)
        state.set(constants.CONDITION_STRAGGLER, True, straggler.REASON_SLOW_RANK, message)
    elif state.is_true(constants.CONDITION_STRAGGLER):
        state.set(
            constants.CONDITION_STRAGGLER,
            False,
            straggler.REASON_RECOVERED,
            f"rank {verdict.spread.rank} caught up: {straggler.even_message(policy)}",
        )
    elif state.condition(constants.CONDITION_STRAGGLER) is None:
        state.set(
            constants.CONDITION_STRAGGLER,
            False,
            straggler.REASON_EVEN,
            straggler.even_message(policy),
        )


def _record_progress(spec: api.AccelTrainJobSpec, state: _Status, sample: ProgressSample) -> None:
    value = state.status
    before = value.progress
    value.progress = update_progress(spec, before, sample, state.now)
    if sample.checkpoint_step is not None and sample.checkpoint_step > 0:
        previous = value.last_checkpoint
        if previous is None or previous.step != sample.checkpoint_step:
            value.last_checkpoint = api.CheckpointStatus(
                step=sample.checkpoint_step,
                path=checkpoint_path(spec, sample.checkpoint_step),
                time=format_time(state.now),
            )


def checkpoint_path(spec: api.AccelTrainJobSpec, step: int) -> str:
    """The directory the trainer saves step ``step`` in (its ``step-<8 digits>`` layout)."""
    return f"{spec.checkpoint.path.rstrip('/')}/step-{step:08d}"


def _check_stall(
    spec: api.AccelTrainJobSpec,
    state: _Status,
    observed: Observed,
    plan: _Plan,
    job: AttemptView,
    trains: bool,
) -> None:
    """Progressing: True while the step advances; False (Stalled) after the progress deadline.

    The clock starts when every worker runs, so a trainer that hangs before its first step is
    caught too, and restarts from the later of that and the last step seen.
    """
    value = state.status
    running = state.condition(constants.CONDITION_RUNNING)
    since = parse_time(running.last_transition_time) if running else None
    last_step = parse_time(value.progress.last_step_time) if trains else None
    reference = max((t for t in (since, last_step) if t is not None), default=state.now)
    limit = spec.run_policy.progress_deadline_seconds
    stalled = False
    if limit is not None:
        left = (reference + dt.timedelta(seconds=limit) - state.now).total_seconds()
        stalled = left <= 0
        if not stalled:
            plan.requeue(left)
    if not stalled:
        if trains:
            state.set(
                constants.CONDITION_PROGRESSING,
                True,
                "StepAdvancing",
                f"attempt {job.attempt} trains",
            )
            total = value.progress.total_steps
            value.message = f"training: step {value.progress.step}" + (f"/{total}" if total else "")
        return
    message = (
        f"the step has not advanced for runPolicy.progressDeadlineSeconds ({limit} s) in "
        f"attempt {job.attempt} (last step {value.progress.step})"
    )
    state.set(constants.CONDITION_PROGRESSING, False, REASON_STALLED, message)
    value.message = message
    if spec.run_policy.restart_on_stall:
        _restart_or_fail(spec, state, observed, plan, job.attempt, REASON_STALLED, message)


def _handle_failure(
    spec: api.AccelTrainJobSpec,
    state: _Status,
    observed: Observed,
    plan: _Plan,
    job: AttemptView,
) -> None:
    failure = observed.failure
    code = failure.exit_code if failure else None
    state.status.last_exit_code = code
    state.status.failed_workers = [
        _failed_worker(worker) for worker in observed.failed_workers[: api.MAX_FAILED_WORKERS]
    ]
    summary = failure_summary(failure, job) + _others_failed(observed.failed_workers, failure)
    permanent = code is not None and code in constants.PERMANENT_EXIT_CODES
    disrupted = [pod for pod in observed.pods if pod.attempt == job.attempt and pod.disruption]
    if disrupted and job.failure_reason != "PodFailurePolicy":
        _restart_after_disruption(spec, state, plan, job.attempt, disrupted[0])
        return
    if job.failure_reason == "PodFailurePolicy" or permanent:
        reason = PERMANENT_REASONS.get(code if code is not None else -1, "PermanentFailure")
        _fail(
            state,
            reason,
            f"{summary}\n(a permanent exit code: restarting cannot help; fix the spec or data)",
        )
        return
    _restart_or_fail(spec, state, observed, plan, job.attempt, REASON_WORKER_FAILED, summary)

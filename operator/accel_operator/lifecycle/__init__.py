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

One module per policy, jobset-style; :func:`decide` (``machine``) reads top to bottom and hands
each phase to its policy:

- ``model``: the observed views, the actions, :class:`Decision`, the plan being filled in.
- ``conditions``: the status draft, condition transitions and the Events they make.
- ``attempts``: creating, recording, deleting and waiting out attempts; restoring children.
- ``scheduling``: Kueue admission, the Scheduled condition, the gang timeout.
- ``failure``: permanent failures, restarts with backoff, disruptions.
- ``suspend``: suspend and resume.
- ``progress``: Running, status.progress, checkpoints, stalls, stragglers.
- ``finish``: success, the active deadline, the TTL after finishing.
- ``reasons``, ``times``: reasons and time formats shared by all of them.
"""

from __future__ import annotations

from accel_operator.lifecycle.attempts import (
    STUCK_TERMINATION_SECONDS,
)
from accel_operator.lifecycle.conditions import (
    transition_events,
)
from accel_operator.lifecycle.failure import (
    FAILED_ATTEMPT_GRACE_SECONDS,
    backoff_seconds,
    exit_code_text,
    failure_summary,
)
from accel_operator.lifecycle.machine import (
    api_retrying,
    decide,
    invalid_spec,
)
from accel_operator.lifecycle.model import (
    FINISHED_PHASES,
    SAFETY_REQUEUE_SECONDS,
    Action,
    AttemptView,
    CreateAttempt,
    Decision,
    DeleteAttempt,
    DeleteJob,
    Event,
    FailureView,
    ForceDeletePod,
    Observed,
    PodView,
    ProgressSample,
    RestoreChildren,
)
from accel_operator.lifecycle.progress import (
    checkpoint_path,
    update_progress,
)
from accel_operator.lifecycle.reasons import (
    REASON_ATTEMPT_LOST,
    REASON_CHILDREN_RESTORED,
    REASON_DEADLINE,
    REASON_EVICTED,
    REASON_FAILED_CREATE,
    REASON_GANG_TIMEOUT,
    REASON_INVALID_IMAGE,
    REASON_INVALID_SPEC,
    REASON_POD_FORCE_DELETED,
    REASON_PREEMPTED,
    REASON_RESTART_LIMIT,
    REASON_STALLED,
    REASON_WAITING_FOR_CAPACITY,
    REASON_WORKER_FAILED,
    RESTART_REASONS,
)
from accel_operator.lifecycle.times import (
    format_duration,
    format_time,
    parse_time,
)

__all__ = [
    "FAILED_ATTEMPT_GRACE_SECONDS",
    "FINISHED_PHASES",
    "REASON_ATTEMPT_LOST",
    "REASON_CHILDREN_RESTORED",
    "REASON_DEADLINE",
    "REASON_EVICTED",
    "REASON_FAILED_CREATE",
    "REASON_GANG_TIMEOUT",
    "REASON_INVALID_IMAGE",
    "REASON_INVALID_SPEC",
    "REASON_POD_FORCE_DELETED",
    "REASON_PREEMPTED",
    "REASON_RESTART_LIMIT",
    "REASON_STALLED",
    "REASON_WAITING_FOR_CAPACITY",
    "REASON_WORKER_FAILED",
    "RESTART_REASONS",
    "SAFETY_REQUEUE_SECONDS",
    "STUCK_TERMINATION_SECONDS",
    "Action",
    "AttemptView",
    "CreateAttempt",
    "Decision",
    "DeleteAttempt",
    "DeleteJob",
    "Event",
    "FailureView",
    "ForceDeletePod",
    "Observed",
    "PodView",
    "ProgressSample",
    "RestoreChildren",
    "api_retrying",
    "backoff_seconds",
    "checkpoint_path",
    "decide",
    "exit_code_text",
    "failure_summary",
    "format_duration",
    "format_time",
    "invalid_spec",
    "parse_time",
    "transition_events",
    "update_progress",
]

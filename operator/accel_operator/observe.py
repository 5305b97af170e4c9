"""Reading an AccelTrainJob's children: Kubernetes objects (plain dicts) in, lifecycle views out.

Pure: no I/O. The reconciler lists the attempt Jobs and worker pods through
:mod:`accel_operator.kube` and hands the raw objects to these functions, which keep only what
:func:`accel_operator.lifecycle.decide` needs: which attempt a Job or pod belongs to, whether it
runs, finished or failed, why the scheduler cannot place a pod, and which worker's exit code
explains a failed attempt.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from accel_operator import constants
from accel_operator.lifecycle import AttemptView, PodView, parse_time

JOB_FAILED_CONDITIONS = ("Failed", "FailureTarget")
JOB_COMPLETE_CONDITIONS = ("Complete", "SuccessCriteriaMet")
EVENT_READ_GRACE_SECONDS = 5.0
"""How long a pod may wait for the scheduler, and a Job for its pods, before the reconciler
reads the Events that would say why."""


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata: Mapping[str, Any] = obj.get("metadata") or {}
    return metadata


def attempt_of(obj: Mapping[str, Any]) -> int | None:
    """The attempt number in the ``acceltrain.io/attempt`` label, or None if absent or not one."""
    value = (_metadata(obj).get("labels") or {}).get(constants.LABEL_ATTEMPT)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 1 else None


def _true_condition(obj: Mapping[str, Any], types: Iterable[str]) -> Mapping[str, Any] | None:
    wanted = tuple(types)
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") in wanted and condition.get("status") == "True":
            found: Mapping[str, Any] = condition
            return found
    return None


def attempt_view(attempt_job: Mapping[str, Any]) -> AttemptView | None:
    """The view of one attempt's batch/v1 Job; None for a Job without an attempt label."""
    attempt = attempt_of(attempt_job)
    if attempt is None:
        return None
    metadata = _metadata(attempt_job)
    status = attempt_job.get("status") or {}
    failed = _true_condition(attempt_job, JOB_FAILED_CONDITIONS)
    return AttemptView(
        attempt=attempt,
        name=str(metadata.get("name", "")),
        uid=str(metadata.get("uid", "")),
        created=parse_time(metadata.get("creationTimestamp")) or dt.datetime.now(dt.UTC),
        started=parse_time(status.get("startTime")),
        suspended=bool((attempt_job.get("spec") or {}).get("suspend")),
        deleting=metadata.get("deletionTimestamp") is not None,
        complete=_true_condition(attempt_job, JOB_COMPLETE_CONDITIONS) is not None,
        failed=failed is not None,
        failure_reason=str(failed.get("reason") or "") if failed else "",
        failure_message=str(failed.get("message") or "") if failed else "",
    )


def kueue_admission_message(workloads: Iterable[Mapping[str, Any]]) -> str:
    """Why Kueue holds a Job back: its Workload's QuotaReserved (else Admitted) condition when
    False, e.g. "couldn't assign flavors to pod set main: insufficient unused quota for
    nvidia.com/gpu in flavor kwok-gpu, 2 more needed"; empty when there is none yet."""
    for workload in workloads:
        for kind in ("QuotaReserved", "Admitted"):
            for condition in (workload.get("status") or {}).get("conditions") or []:
                if condition.get("type") == kind and condition.get("status") == "False":
                    return str(condition.get("message") or condition.get("reason") or "")
    return ""


def _trainer_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == constants.TRAINER_CONTAINER:
            found: Mapping[str, Any] = status
            return found
    return statuses[0] if statuses else {}


def _completion_index(pod: Mapping[str, Any]) -> int | None:
    metadata = _metadata(pod)
    for source in (metadata.get("annotations") or {}, metadata.get("labels") or {}):
        value = source.get(constants.LABEL_JOB_COMPLETION_INDEX)
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def pod_view(
    pod: Mapping[str, Any], scheduler_messages: Mapping[str, str] | None = None
) -> PodView:
    """The view of one worker pod; ``scheduler_messages`` fills in FailedScheduling reasons."""
    metadata = _metadata(pod)
    status = pod.get("status") or {}
    name = str(metadata.get("name", ""))
    container = _trainer_status(pod)
    state = container.get("state") or {}
    terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated")
    running = state.get("running")
    ready = _true_condition(pod, ("Ready",))
    running_since = None
    if running and running.get("startedAt"):
        running_since = parse_time(running["startedAt"])
    elif terminated and terminated.get("startedAt"):
        running_since = parse_time(terminated["startedAt"])
    elif ready is not None:
        running_since = parse_time(ready.get("lastTransitionTime"))
    unschedulable = ""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            unschedulable = str(condition.get("message") or condition.get("reason") or "")
    if not unschedulable and not (pod.get("spec") or {}).get("nodeName") and scheduler_messages:
        unschedulable = scheduler_messages.get(name, "")
    exit_code = terminated.get("exitCode") if terminated else None
    waiting = state.get("waiting") or {}
    disruption = _true_condition(pod, ("DisruptionTarget",))
    return PodView(
        name=name,
        attempt=attempt_of(pod) or 0,
        index=_completion_index(pod),
        phase=str(status.get("phase") or "Pending"),
        node_name=(pod.get("spec") or {}).get("nodeName") or None,
        ready=ready is not None,
        deleting=metadata.get("deletionTimestamp") is not None,
        pod_ip=status.get("podIP") or None,
        running_since=running_since,
        exit_code=int(exit_code) if exit_code is not None else None,
        termination_message=str((terminated or {}).get("message") or ""),
        termination_reason=str((terminated or {}).get("reason") or status.get("reason") or ""),
        unschedulable_message=unschedulable,
        waiting_reason=str(waiting.get("reason") or ""),
        waiting_message=str(waiting.get("message") or ""),
        disruption=str((disruption or {}).get("reason") or "DisruptionTarget")
        if disruption
        else "",
        deletion_deadline=parse_time(metadata.get("deletionTimestamp")),
        created=parse_time(metadata.get("creationTimestamp")),
    )


def scheduler_messages(events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The latest FailedScheduling message per pod name, from core/v1 Events."""
    latest: dict[str, tuple[str, str]] = {}
    for event in events:
        if event.get("reason") != "FailedScheduling":
            continue
        involved = event.get("involvedObject") or {}
        if involved.get("kind") != "Pod":
            continue
        when = str(
            event.get("lastTimestamp")
            or event.get("eventTime")
            or _metadata(event).get("creationTimestamp")
            or ""
        )
        pod = str(involved.get("name", ""))
        if pod not in latest or when >= latest[pod][0]:
            latest[pod] = (when, str(event.get("message") or ""))
    return {pod: message for pod, (_, message) in latest.items()}


def latest_message(events: Iterable[Mapping[str, Any]]) -> str:
    """The message of the most recent of ``events`` ("" when there are none)."""
    latest = ("", "")
    for event in events:
        when = str(
            event.get("lastTimestamp")
            or event.get("eventTime")
            or _metadata(event).get("creationTimestamp")
            or ""
        )
        if when >= latest[0]:
            latest = (when, str(event.get("message") or ""))
    return latest[1]


def scheduler_events_due_in(pods: Iterable[PodView], now: dt.datetime) -> float | None:
    """Seconds until the FailedScheduling Events are worth a read: some unbound pod lacks a
    scheduler message although the scheduler had EVENT_READ_GRACE_SECONDS to place it (0: now;
    None: no pod waits without a message)."""
    waits = [
        _grace_left(pod.created, now)
        for pod in pods
        if not pod.node_name and not pod.unschedulable_message and not pod.deleting
    ]
    return min(waits, default=None)


def create_failures_due_in(
    attempt_job: AttemptView, pods: Iterable[PodView], workers: int, now: dt.datetime
) -> float | None:
    """Seconds until the Job controller's FailedCreate Events are worth a read: the live
    attempt still misses pods EVENT_READ_GRACE_SECONDS after its Job was created (0: now;
    None: no pod is missing)."""
    if not attempt_job.live:
        return None
    present = sum(1 for pod in pods if pod.attempt == attempt_job.attempt)
    return _grace_left(attempt_job.created, now) if present < workers else None


def _grace_left(created: dt.datetime | None, now: dt.datetime) -> float:
    # A pod or Job younger than this is normally placed or given its pods by then: reading
    # Events for it would cost every launch a LIST or two and tell nothing.
    if created is None:
        return 0.0
    return max(0.0, EVENT_READ_GRACE_SECONDS - (now - created).total_seconds())


def holds_desired(live: Any, desired: Any) -> bool:
    """Whether ``live`` still has every value ``desired`` sets: fields the API server or others
    added (a Service's clusterIPs, a port's protocol) do not count, changed or removed ones do."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and holds_desired(live[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(holds_desired(have, want) for have, want in zip(live, desired, strict=True))
        )
    return bool(live == desired)


def fingerprint(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a child Job or pod the lifecycle reacts to; other changes need no reconcile.

    Pods and Jobs change often (conditions, counters, addresses, resource versions); only a
    change of this tuple can change a decision.
    """
    metadata = _metadata(obj)
    deleting = metadata.get("deletionTimestamp") is not None
    if obj.get("kind") == "Job" or "completions" in (obj.get("spec") or {}):
        view = attempt_view(obj)
        if view is None:
            return ("job", deleting)
        return ("job", deleting, view.complete, view.failed, view.suspended, view.started)
    pod = pod_view(obj)
    return (
        "pod",
        deleting,
        pod.phase,
        pod.node_name,
        pod.ready,
        pod.pod_ip,
        pod.exit_code,
        pod.unschedulable_message,
    )


_CONSEQUENCES = (int(constants.ExitCode.COMMUNICATION_LOST), int(constants.ExitCode.PREEMPTED))
"""Exit codes that follow another rank's failure (a lost peer) or a stop from outside."""


def _failure_rank(pod: PodView) -> tuple[int, int]:
    """Lower is more telling: a permanent code; then a cause (an error, a kill such as the
    OOM killer's 137); then a consequence (75: the rank lost a peer that failed first; 76:
    stopped from outside); then a failed pod without an exit code."""
    code = pod.exit_code
    if code is not None and code in constants.PERMANENT_EXIT_CODES:
        kind = 0
    elif code is not None and code != 0 and code not in _CONSEQUENCES:
        kind = 1
    elif code is not None and code != 0:
        kind = 2
    elif pod.phase == "Failed":
        kind = 3
    else:
        kind = 4
    return kind, pod.index if pod.index is not None else 1 << 30


def failed_workers(pods: Iterable[PodView]) -> list[PodView]:
    """Every failed worker of an attempt, the one whose exit best explains the failure first."""
    candidates = [
        pod
        for pod in pods
        if pod.phase == "Failed" or (pod.exit_code is not None and pod.exit_code != 0)
    ]
    return sorted(candidates, key=_failure_rank)

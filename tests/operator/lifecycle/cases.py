"""What the lifecycle tests share: a minimal spec with run-policy overrides, builders of the
observed attempt Jobs, pods and statuses, and :class:`Case`, one row of a policy's table: the spec,
the status the job had, what the reconciler observed, the time, and what a user would then see."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

from accel_operator import api, constants, lifecycle
from accel_operator.lifecycle import (
    AttemptView,
    Observed,
    PodView,
    ProgressSample,
)
from tests.specs import MINIMAL_SPEC

CREATED = dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return CREATED + dt.timedelta(seconds=seconds)


def ts(seconds: float) -> str:
    return lifecycle.format_time(at(seconds))


def make_spec(**run_policy: Any) -> api.AccelTrainJobSpec:
    document = copy.deepcopy(MINIMAL_SPEC)
    document["runPolicy"] = {"backoffSeconds": 10, "gangTimeoutSeconds": 60, **run_policy}
    return api.parse_spec(document, name="bert")


def job(attempt: int = 1, created: float = 1, **fields: Any) -> AttemptView:
    fields.setdefault("started", at(created))
    return AttemptView(attempt=attempt, name=f"bert-a{attempt}", created=at(created), **fields)


def pod(index: int, phase: str = "Running", attempt: int = 1, **fields: Any) -> PodView:
    defaults: dict[str, Any] = {
        "node_name": "acceltrain-cpu-0" if phase != "Pending" else None,
        "ready": phase == "Running",
        "pod_ip": f"10.77.0.{10 + index}" if phase == "Running" else None,
        "running_since": at(5) if phase in ("Running", "Succeeded") else None,
    }
    defaults.update(fields)
    return PodView(
        name=f"bert-a{attempt}-{index}-x{index}",
        attempt=attempt,
        index=index,
        phase=phase,
        **defaults,
    )


def running_pods(attempt: int = 1) -> tuple[PodView, ...]:
    return (pod(0, attempt=attempt), pod(1, attempt=attempt))


def status_after(
    phase: api.Phase, attempt: int = 1, restarts: int = 0, **fields: Any
) -> api.AccelTrainJobStatus:
    conditions = fields.pop("conditions", [])
    status = api.AccelTrainJobStatus(
        phase=phase,
        attempt=attempt,
        restarts=restarts,
        start_time=ts(1),
        conditions=[
            api.Condition(
                type=kind, status=value, reason=reason, message="", last_transition_time=ts(t)
            )
            for kind, value, reason, t in conditions
        ],
        **fields,
    )
    return status


def sample(step: int, **fields: Any) -> ProgressSample:
    fields.setdefault("steps_this_process", step)
    fields.setdefault("samples_per_second", 100.0)
    return ProgressSample(step=step, **fields)


def condition(decision: lifecycle.Decision, kind: str) -> api.Condition:
    found = next((c for c in decision.status.conditions if c.type == kind), None)
    assert found is not None, f"no {kind} condition in {decision.status.conditions}"
    return found


def reasons(decision: lifecycle.Decision) -> list[str]:
    return [event.reason for event in decision.events]


@dataclasses.dataclass
class Case:
    name: str
    spec: api.AccelTrainJobSpec
    status: api.AccelTrainJobStatus
    observed: Observed
    now: dt.datetime
    check: Callable[[lifecycle.Decision], None]


def pod_object(
    name: str, index: int, phase: str, exit_code: int | None = None, **status: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": constants.TRAINER_CONTAINER, "state": {}}
    if exit_code is not None:
        container["state"] = {
            "terminated": {"exitCode": exit_code, "startedAt": ts(3), "message": ""}
        }
    return {
        "metadata": {
            "name": name,
            "labels": {constants.LABEL_ATTEMPT: "2", constants.LABEL_JOB_NAME: "bert"},
            "annotations": {constants.LABEL_JOB_COMPLETION_INDEX: str(index)},
        },
        "spec": {"nodeName": "acceltrain-gpu-0"} if phase != "Pending" else {},
        "status": {"phase": phase, "containerStatuses": [container], **status},
    }


def lost_pod(index: int, attempt: int = 1, **fields: Any) -> PodView:
    """A worker the taint manager evicted from a node that stopped answering: still Running as
    far as the API server knows (no kubelet reports otherwise), not ready, being deleted."""
    fields.setdefault("deletion_deadline", at(150))
    return pod(
        index,
        attempt=attempt,
        node_name="gpu-lost",
        ready=False,
        deleting=True,
        disruption=constants.DISRUPTION_BY_TAINT,
        **fields,
    )

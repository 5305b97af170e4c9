"""The status being decided (:class:`StatusDraft`): conditions whose transition time moves only
when they flip, kept in one order, and which condition changes a user hears of as Events."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from accel_operator import api, constants, straggler
from accel_operator.lifecycle.model import Event
from accel_operator.lifecycle.reasons import (
    REASON_FAILED_CREATE,
    REASON_GANG_TIMEOUT,
    REASON_STALLED,
)
from accel_operator.lifecycle.times import format_time

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


class StatusDraft:
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

"""What a refusal of a child by the API server means for the AccelTrainJob it was rendered from.

Before the first child of an attempt exists, the operator server-side dry-runs every child. A
refusal then is either permanent (the spec renders a child Kubernetes will never accept: retrying
cannot help, the job fails with ``InvalidSpec``) or transient (the API server is busy, throttles,
or the operator lacks a permission that an administrator can grant: retry with backoff). A
permanent refusal is reported on the spec field the child's field came from, so that the user
knows what to change.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from accel_operator.kube import ApiError

# 400 Bad Request and 422 Unprocessable Entity: the object itself is wrong.
PERMANENT_STATUSES = frozenset({400, 422})
# Server-side apply answers 500 when the object does not fit the kind's schema at all (a
# string where an integer belongs): as permanent as a 422.
_SSA_SCHEMA_MARKERS = (
    "failed to create typed patch object",
    "failed to create typed live object",
    "conversion",
)

# Fields of the rendered children (pod template first) -> the spec field they come from.
# The first fragment found in the child's field path wins.
_CHILD_TO_SPEC: tuple[tuple[str, str], ...] = (
    (".image", "spec.image"),
    (".resources", "spec.resources"),
    ("nodeSelector", "spec.nodePool.nodeSelector"),
    ("tolerations", "spec.nodePool.tolerations"),
    ("affinity", "spec.nodePool.affinity"),
    ("volumeMounts", "spec.volumes"),
    ("volumes", "spec.volumes"),
    (".ports", "spec.metrics.port"),
    (".env", "spec.env"),
    ("priorityClassName", "spec.priorityClassName"),
    ("serviceAccountName", "spec.serviceAccountName"),
    ("metadata.name", "metadata.name"),
    ("metadata.labels", "metadata.name"),
)


def is_permanent(error: ApiError) -> bool:
    """Whether retrying the same request can never succeed."""
    if error.status in PERMANENT_STATUSES:
        return True
    text = error.message.lower()
    return error.status == 500 and any(marker in text for marker in _SSA_SCHEMA_MARKERS)


def spec_field(child_field: str) -> str:
    """The spec field a field of a rendered child comes from ("spec" when unknown)."""
    for fragment, field in _CHILD_TO_SPEC:
        if fragment in child_field:
            return field
    return "spec"


def fields_of(error: ApiError) -> list[str]:
    """The spec fields a refusal is about, most specific first, without repeats."""
    candidates = error.fields or [error.message]
    fields: list[str] = []
    for candidate in candidates:
        field = spec_field(candidate)
        if field not in fields:
            fields.append(field)
    return fields


def describe(child: Mapping[str, Any], error: ApiError) -> str:
    """The message of a permanent refusal: the spec field first, then the API server's words."""
    kind, name = child.get("kind", "object"), child.get("metadata", {}).get("name", "")
    fields = ", ".join(fields_of(error))
    return (
        f"{fields}: the API server refuses the {kind} {name} rendered from this spec "
        f"(HTTP {error.status}): {error.message[:600]}; fix {fields} and recreate the "
        "AccelTrainJob"
    )

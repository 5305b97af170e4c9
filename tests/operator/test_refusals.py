"""A refusal of a child is permanent or not, and is reported on the spec field it came from."""

from __future__ import annotations

import json

import pytest

from accel_operator import refusals
from accel_operator.kube import ApiError


def _error(status: int, message: str, *fields: str) -> ApiError:
    body = {"message": message, "details": {"causes": [{"field": field} for field in fields]}}
    return ApiError("PATCH", "/apis/batch/v1/namespaces/a/jobs/j-a1", status, json.dumps(body))


@pytest.mark.parametrize(
    ("status", "message", "permanent"),
    [
        (422, 'Job.batch "j-a1" is invalid: spec.template...', True),
        (400, "bad request", True),
        (
            500,
            "failed to create typed patch object (/v1, Kind=Service): .spec.ports: duplicate",
            True,
        ),
        (500, "etcdserver: request timed out", False),
        (503, "the server is currently unable to handle the request", False),
        (429, "too many requests", False),
        (403, 'jobs.batch is forbidden: User "x" cannot patch resource "jobs"', False),
        (409, "the object has been modified", False),
    ],
)
def test_only_refusals_that_retrying_cannot_cure_are_permanent(
    status: int, message: str, permanent: bool
) -> None:
    assert refusals.is_permanent(_error(status, message)) is permanent


@pytest.mark.parametrize(
    ("child_field", "spec_field"),
    [
        ("spec.template.spec.containers[0].image", "spec.image"),
        ("spec.template.spec.containers[0].resources.requests", "spec.resources"),
        ("spec.template.spec.containers[0].env[17].valueFrom.secretKeyRef.key", "spec.env"),
        ("spec.template.spec.volumes[3].persistentVolumeClaim.claimName", "spec.volumes"),
        ("spec.template.spec.containers[0].volumeMounts[2].mountPath", "spec.volumes"),
        ("spec.template.spec.tolerations[0].operator", "spec.nodePool.tolerations"),
        ("spec.template.spec.nodeSelector", "spec.nodePool.nodeSelector"),
        ("spec.template.spec.affinity.nodeAffinity", "spec.nodePool.affinity"),
        ("spec.template.spec.containers[0].ports[1].containerPort", "spec.metrics.port"),
        ("spec.template.spec.priorityClassName", "spec.priorityClassName"),
        ("spec.template.spec.something.new", "spec"),
    ],
)
def test_a_refused_child_field_is_traced_back_to_the_spec_field(
    child_field: str, spec_field: str
) -> None:
    assert refusals.spec_field(child_field) == spec_field


def test_the_message_names_the_spec_fields_first_and_keeps_the_api_servers_words() -> None:
    error = _error(
        422,
        'Job.batch "j-a1" is invalid: spec.template.spec.containers[0].env[0].valueFrom...',
        "spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef.key",
        "spec.template.spec.containers[0].env[1].valueFrom.secretKeyRef.key",
    )
    child = {"kind": "Job", "metadata": {"name": "j-a1"}}
    message = refusals.describe(child, error)
    assert message.startswith("spec.env: the API server refuses the Job j-a1")
    assert "(HTTP 422)" in message
    assert "fix spec.env and recreate the AccelTrainJob" in message

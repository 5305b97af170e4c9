"""All-or-nothing placement of an attempt's workers: which gang policy is in force, and what it
adds to the attempt's children.

- ``Native``: kube-scheduler's own gang scheduling (Kubernetes 1.35, the Workload API
  ``scheduling.k8s.io/v1alpha1`` with the ``GenericWorkload`` and ``GangScheduling`` gates). One
  Workload per attempt with one pod group whose ``gang.minCount`` is the number of workers; the
  pods name it in ``spec.workloadRef``. No pod binds until every one fits, so a waiting attempt
  holds no GPU.
- ``Volcano`` and ``Coscheduling``: a PodGroup for an external gang scheduler (Volcano's
  ``scheduling.volcano.sh/v1beta1``, or scheduler-plugins' ``scheduling.x-k8s.io/v1alpha1``),
  and the pods go to that scheduler.
- ``Timeout``: no gang object; pods bind one by one and the gang timeout tears down an attempt
  that was not fully placed in time, so that it does not hold GPUs for ever.
- ``Auto`` (the default): ``Native`` where the API server serves Workloads, else ``Timeout``.

The gang timeout stays as the safety net under every policy. Pure: no I/O; whether the cluster
serves Workloads is detected once at start-up and passed in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from accel_operator import api

POD_GROUP_NAME = "workers"
WORKLOAD_API_VERSION = "scheduling.k8s.io/v1alpha1"
VOLCANO_API_VERSION = "scheduling.volcano.sh/v1beta1"
COSCHEDULING_API_VERSION = "scheduling.x-k8s.io/v1alpha1"
VOLCANO_SCHEDULER = "volcano"
# How Volcano and scheduler-plugins find a pod's group.
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
COSCHEDULING_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"

# (apiVersion, kind) of each policy's gang object; Timeout has none.
GROUP_KINDS: dict[api.GangPolicy, tuple[str, str]] = {
    api.GangPolicy.NATIVE: (WORKLOAD_API_VERSION, "Workload"),
    api.GangPolicy.VOLCANO: (VOLCANO_API_VERSION, "PodGroup"),
    api.GangPolicy.COSCHEDULING: (COSCHEDULING_API_VERSION, "PodGroup"),
}
# The plural each gang object's apiVersion serves it under.
PLURALS = {
    WORKLOAD_API_VERSION: "workloads",
    VOLCANO_API_VERSION: "podgroups",
    COSCHEDULING_API_VERSION: "podgroups",
}


@dataclasses.dataclass(frozen=True)
class InForce:
    """The gang policy an attempt runs under, and why."""

    policy: api.GangPolicy
    note: str


def in_force(spec: api.AccelTrainJobSpec, native_available: bool) -> InForce:
    """The policy ``spec`` asks for, as far as this cluster can honour it."""
    asked = spec.run_policy.gang_policy
    workers = spec.workers
    if asked in (api.GangPolicy.AUTO, api.GangPolicy.NATIVE):
        if native_available:
            return InForce(
                api.GangPolicy.NATIVE,
                f"Native: kube-scheduler binds no worker until all {workers} fit",
            )
        return InForce(
            api.GangPolicy.TIMEOUT,
            f"Timeout: this cluster does not serve {WORKLOAD_API_VERSION} Workloads (feature "
            "gates GenericWorkload and GangScheduling), so runPolicy.gangTimeoutSeconds tears "
            "down an attempt that was not fully placed in time",
        )
    if asked is api.GangPolicy.TIMEOUT:
        return InForce(
            asked, "Timeout: pods bind one by one; runPolicy.gangTimeoutSeconds guards the rest"
        )
    return InForce(asked, f"{asked.value}: a PodGroup of minMember {workers} for {scheduler(spec)}")


def scheduler(spec: api.AccelTrainJobSpec) -> str | None:
    """The worker pods' schedulerName (None: the cluster's default scheduler)."""
    if spec.run_policy.scheduler_name:
        return spec.run_policy.scheduler_name
    if spec.run_policy.gang_policy is api.GangPolicy.VOLCANO:
        return VOLCANO_SCHEDULER
    return None


def group_object(
    policy: api.GangPolicy,
    spec: api.AccelTrainJobSpec,
    name: str,
    metadata: dict[str, Any],
) -> dict[str, Any] | None:
    """The gang object of one attempt (named like its Job), or None under Timeout."""
    kind = GROUP_KINDS.get(policy)
    if kind is None:
        return None
    workers = spec.workers
    if policy is api.GangPolicy.NATIVE:
        group: dict[str, Any] = {
            "controllerRef": {"apiGroup": "batch", "kind": "Job", "name": name},
            "podGroups": [{"name": POD_GROUP_NAME, "policy": {"gang": {"minCount": workers}}}],
        }
    elif policy is api.GangPolicy.VOLCANO:
        group = {"minMember": workers, **_queue(spec)}
    else:
        group = {
            "minMember": workers,
            "scheduleTimeoutSeconds": spec.run_policy.gang_timeout_seconds,
        }
    return {"apiVersion": kind[0], "kind": kind[1], "metadata": metadata, "spec": group}


def _queue(spec: api.AccelTrainJobSpec) -> dict[str, Any]:
    return {"queue": spec.run_policy.queue_name} if spec.run_policy.queue_name else {}


def pod_additions(policy: api.GangPolicy, spec: api.AccelTrainJobSpec, name: str) -> dict[str, Any]:
    """What the policy adds to the pod template: ``spec`` fields, ``labels``, ``annotations``."""
    pod: dict[str, Any] = {}
    chosen = scheduler(spec)
    if chosen:
        pod["schedulerName"] = chosen
    additions: dict[str, Any] = {"spec": pod, "labels": {}, "annotations": {}}
    if policy is api.GangPolicy.NATIVE:
        pod["workloadRef"] = {"name": name, "podGroup": POD_GROUP_NAME}
    elif policy is api.GangPolicy.VOLCANO:
        additions["annotations"][VOLCANO_GROUP_ANNOTATION] = name
    elif policy is api.GangPolicy.COSCHEDULING:
        additions["labels"][COSCHEDULING_GROUP_LABEL] = name
    return additions

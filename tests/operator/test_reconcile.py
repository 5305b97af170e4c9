"""The reconciler's order of writes, which is what keeps a killed operator from losing a step.

A recording stand-in for the API server checks that a new attempt's children exist before the
status names the attempt, that the status explaining a teardown is written before the attempt
is deleted, and that a reconcile that changes nothing writes nothing.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from typing import Any, cast

import pytest

from accel_operator import api, constants, handlers, informer
from accel_operator.kube import ApiError, KubeClient
from accel_operator.reconcile import InvalidSpecError, Reconciler
from accel_operator.render import ClusterDefaults
from tests.specs import MINIMAL_SPEC

NOW = dt.datetime(2026, 11, 28, 12, 0, 30, tzinfo=dt.UTC)


class RecordingApi:
    """Holds one AccelTrainJob and its children; records every write in order."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.job: dict[str, Any] = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {
                "name": "bert",
                "namespace": "team-a",
                "uid": "uid-1",
                "generation": 1,
                "creationTimestamp": "2026-11-28T12:00:00Z",
            },
            "spec": spec,
        }
        self.jobs: list[dict[str, Any]] = []
        self.pods: list[dict[str, Any]] = []
        self.writes: list[tuple[str, str]] = []
        self.dry_runs: list[str] = []
        self.existing: set[str] = set()
        """``Kind/name`` of every applied child not deleted since."""
        self.lookups: list[str] = []
        self.applied: list[dict[str, Any]] = []
        self.posted: list[str] = []
        self.on_written: Callable[[dict[str, Any]], None] | None = None
        """Told of every object written, as KubeClient tells the informer's cache."""

    def refuse(self, obj: dict[str, Any]) -> None:
        """Raise the API server's refusal of ``obj``, if it has one (none here)."""

    # reads
    def get_accel_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.job)

    def list_attempt_jobs(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.jobs)

    def list_worker_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pods)

    def list_scheduling_events(self, namespace: str) -> list[dict[str, Any]]:
        return []

    def list_create_failures(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return []

    def list_kueue_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        return []

    def child_exists(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self.lookups.append(f"{kind}/{name}")
        return f"{kind}/{name}" in self.existing

    def pod_log_tail(self, namespace: str, pod: str, lines: int = 20) -> str:
        return "accel-trainer: exit 75: rank 1: lost its peer"

    # writes
    def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> None:
        self.refuse(obj)
        if dry_run:
            self.dry_runs.append(f"{obj['kind']}/{obj['metadata']['name']}")
            return
        self.writes.append(("apply", f"{obj['kind']}/{obj['metadata']['name']}"))
        self.applied.append(copy.deepcopy(obj))
        self.existing.add(f"{obj['kind']}/{obj['metadata']['name']}")
        written = copy.deepcopy(obj)
        if obj["kind"] == "Job":
            written["metadata"]["creationTimestamp"] = "2026-11-28T12:00:01Z"
            written["status"] = {"startTime": "2026-11-28T12:00:01Z"}
            self.jobs.append(copy.deepcopy(written))
        if self.on_written is not None:
            self.on_written(written)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.writes.append(("status", str(status["phase"])))
        self.job["status"] = copy.deepcopy(status)
        if self.on_written is not None:
            self.on_written(copy.deepcopy(self.job))

    def delete_attempt(
        self, namespace: str, job: str, attempt: int, group: tuple[str, str] | None = None
    ) -> None:
        self.writes.append(("delete", f"attempt {attempt}"))

    def delete_pod(
        self, namespace: str, pod: str, *, force: bool = False, grace_seconds: int | None = None
    ) -> None:
        grace = f" in {grace_seconds} s" if grace_seconds is not None else ""
        self.writes.append(("delete", f"pod {pod}" + (" now" if force else grace)))

    def delete_accel_job(self, namespace: str, name: str, uid: str) -> None:
        self.writes.append(("delete", name))

    def post_event(self, accel_job: Any, event_type: str, reason: str, message: str) -> None:
        self.writes.append(("event", reason))
        self.posted.append(message)


def _reconciler(recording: RecordingApi, reconcile_interval: float = 3.0) -> Reconciler:
    return Reconciler(
        cast(KubeClient, recording), clock=lambda: NOW, reconcile_interval=reconcile_interval
    )


class ListedCache:
    """An informer that has listed everything: its store, fed by the writes (as KubeClient
    feeds it) and by the watch events a test hands to :meth:`watch_sees`."""

    def __init__(self, recording: RecordingApi, reconciler_of: Callable[[Any], Reconciler]):
        self.store = informer.Store()
        self.synced = True
        self.kinds = {kind.kind: kind for kind in informer.CHILD_KINDS}
        recording.on_written = self.record
        self.record(copy.deepcopy(recording.job))  # listed when the informer started
        self.reconciler = reconciler_of(cast(informer.Informer, self))
        self.queued: list[tuple[str, str]] = []
        self._listener = handlers._cache_listener(self.reconciler, self)  # type: ignore[arg-type]

    def record(self, obj: dict[str, Any]) -> None:
        kind = self.kinds[obj["kind"]]
        owner = informer.owner_of(kind, obj)
        if owner is not None:
            self.store.upsert(kind.kind, owner, obj)

    def add(self, namespace: str, name: str) -> None:
        self.queued.append((namespace, name))

    def watch_sees(self, obj: dict[str, Any]) -> None:
        """A MODIFIED event of ``obj``, as the informer's watch delivers it."""
        _, before = self.store.upsert(obj["kind"], "bert", obj)
        self._listener(obj["kind"], "MODIFIED", obj, before)


def _cached_reconciler(recording: RecordingApi) -> ListedCache:
    return ListedCache(
        recording,
        lambda cache: Reconciler(
            cast(KubeClient, recording), clock=lambda: NOW, reconcile_interval=0.0, cache=cache
        ),
    )


def test_a_new_attempts_children_exist_before_the_status_names_it() -> None:
    recording = RecordingApi(copy.deepcopy(MINIMAL_SPEC))
    _reconciler(recording).reconcile("team-a", "bert")
    assert recording.writes[:4] == [
        ("apply", "ConfigMap/bert-a1-config"),
        ("apply", "Service/bert"),
        ("apply", "Job/bert-a1"),
        ("status", "Starting"),
    ]
    assert ("event", "AttemptCreated") in recording.writes
    assert recording.job["status"]["attempt"] == 1


def test_a_single_worker_job_gets_no_service_and_never_asks_for_one() -> None:
    recording = RecordingApi({**copy.deepcopy(MINIMAL_SPEC), "workers": 1})
    reconciler = _reconciler(recording)
    reconciler.reconcile("team-a", "bert")
    reconciler.reconcile("team-a", "bert")

    applied = [name for verb, name in recording.writes if verb == "apply"]
    assert applied == ["ConfigMap/bert-a1-config", "Job/bert-a1"]
    assert recording.dry_runs == ["ConfigMap/bert-a1-config", "Job/bert-a1"]


def test_a_reconcile_of_an_unchanged_job_writes_nothing() -> None:
    recording = RecordingApi(copy.deepcopy(MINIMAL_SPEC))
    # No holding back of minor status changes: every change is written at once.
    reconciler = _reconciler(recording, reconcile_interval=0.0)
    reconciler.reconcile("team-a", "bert")
    reconciler.reconcile("team-a", "bert")
    assert recording.job["status"]["conditions"][1]["reason"] == "WaitingForPods"
    recording.writes.clear()
    reconciler.reconcile("team-a", "bert")
    assert recording.writes == []


def test_minor_status_changes_wait_for_the_reconcile_interval() -> None:
    recording = RecordingApi(copy.deepcopy(MINIMAL_SPEC))
    reconciler = _reconciler(recording, reconcile_interval=3600.0)
    reconciler.reconcile("team-a", "bert")
    recording.writes.clear()
    # Nothing moved on but the Scheduled condition (no pods yet): a minor change, held back.
    reconciler.reconcile("team-a", "bert")
    assert recording.writes == []


def test_the_status_explaining_a_restart_is_written_before_the_attempt_is_deleted() -> None:
    recording = RecordingApi(copy.deepcopy(MINIMAL_SPEC))
    reconciler = _reconciler(recording)
    reconciler.reconcile("team-a", "bert")
    recording.jobs[0]["status"]["conditions"] = [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
    ]
    recording.pods = [
        {
            "metadata": {
                "name": "bert-a1-1-abcde",
                "labels": {
                    constants.LABEL_JOB_NAME: "bert",
                    constants.LABEL_ATTEMPT: "1",
                },
                "annotations": {constants.LABEL_JOB_COMPLETION_INDEX: "1"},
            },
            "spec": {"nodeName": "acceltrain-cpu-0"},
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {"name": "trainer", "state": {"terminated": {"exitCode": 75}}}
                ],
            },
        }
    ]
    recording.writes.clear()
    reconciler.reconcile("team-a", "bert")
    assert recording.writes.index(("status", "Restarting")) < recording.writes.index(
        ("delete", "attempt 1")
    )
    status = recording.job["status"]
    assert status["restarts"] == 1
    assert status["lastExitCode"] == 75
    assert "lost its peer" in status["message"]


def test_the_survivors_of_a_failed_worker_are_deleted_with_a_short_grace() -> None:
    recording = RecordingApi(copy.deepcopy(MINIMAL_SPEC))
    reconciler = _reconciler(recording)
    reconciler.reconcile("team-a", "bert")
    recording.jobs[0]["status"]["conditions"] = [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
    ]

    def pod(index: int, phase: str, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "metadata": {
                "name": f"bert-a1-{index}-x",
                "labels": {constants.LABEL_JOB_NAME: "bert", constants.LABEL_ATTEMPT: "1"},
                "annotations": {constants.LABEL_JOB_COMPLETION_INDEX: str(index)},
            },
            "spec": {"nodeName": "acceltrain-cpu-0"},
            "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]},
        }

    recording.pods = [
        pod(0, "Running", {"running": {}}),
        pod(1, "Failed", {"terminated": {"exitCode": 137}}),
    ]
    recording.writes.clear()
    reconciler.reconcile("team-a", "bert")
    deletes = [target for verb, target in recording.writes if verb == "delete"]
    assert deletes == ["pod bert-a1-0-x in 5 s", "attempt 1"]


def test_a_deleted_service_and_config_map_of_the_live_attempt_are_recreated() -> None:
    recording = RecordingApi(copy.deepcopy(MINIMAL_SPEC))
    reconciler = _reconciler(recording, reconcile_interval=0.0)
    reconciler.reconcile("team-a", "bert")
    reconciler.reconcile("team-a", "bert")
    # Someone else deletes both children.
    for kind, name in (("Service", "bert"), ("ConfigMap", "bert-a1-config")):
        recording.existing.discard(f"{kind}/{name}")
    recording.writes.clear()
    reconciler.reconcile("team-a", "bert")
    assert recording.writes == [
        ("apply", "ConfigMap/bert-a1-config"),
        ("apply", "Service/bert"),
        ("event", "ChildrenRestored"),
    ]
    status = recording.job["status"]
    assert (status["attempt"], status["restarts"]) == (1, 0)


def _gang_reconciler(policy: str, defaults: ClusterDefaults) -> tuple[RecordingApi, Reconciler]:
    spec = copy.deepcopy(MINIMAL_SPEC)
    spec["runPolicy"] = {"gangPolicy": policy}
    if policy == "Coscheduling":
        spec["runPolicy"]["schedulerName"] = "scheduler-plugins-scheduler"
    recording = RecordingApi(spec)
    reconciler = Reconciler(
        cast(KubeClient, recording), clock=lambda: NOW, reconcile_interval=0.0, defaults=defaults
    )
    reconciler.reconcile("team-a", "bert")
    reconciler.reconcile("team-a", "bert")
    return recording, reconciler


@pytest.mark.parametrize(
    ("policy", "defaults", "kind"),
    [
        ("Auto", ClusterDefaults(native_gang=True), "Workload"),
        (
            "Coscheduling",
            ClusterDefaults(pod_group_apis=("scheduling.x-k8s.io/v1alpha1",)),
            "PodGroup",
        ),
    ],
)
def test_a_deleted_gang_object_of_the_live_attempt_is_recreated(
    policy: str, defaults: ClusterDefaults, kind: str
) -> None:
    recording, reconciler = _gang_reconciler(policy, defaults)
    assert f"{kind}/bert-a1" in recording.existing
    recording.existing.discard(f"{kind}/bert-a1")
    recording.writes.clear()
    reconciler.reconcile("team-a", "bert")
    assert recording.writes == [("apply", f"{kind}/bert-a1"), ("event", "ChildrenRestored")]
    assert f"the {kind} of attempt 1 was deleted" in recording.posted[-1]


def test_a_pod_group_whose_api_was_not_served_at_start_is_neither_looked_up_nor_recreated() -> None:
    recording, reconciler = _gang_reconciler("Volcano", ClusterDefaults())
    recording.existing.discard("PodGroup/bert-a1")
    recording.lookups.clear()
    recording.writes.clear()
    reconciler.reconcile("team-a", "bert")
    assert "PodGroup/bert-a1" not in recording.lookups and recording.writes == []


def test_a_config_map_changed_out_of_band_is_applied_again_and_one_left_alone_is_not() -> None:
    recording = RecordingApi(copy.deepcopy(MINIMAL_SPEC))
    cached = _cached_reconciler(recording)
    cached.reconciler.reconcile("team-a", "bert")
    applied = {f"{c['kind']}/{c['metadata']['name']}": c for c in recording.applied}
    config_map, service = applied["ConfigMap/bert-a1-config"], applied["Service/bert"]
    # As the watches see them: the API server added fields of its own, nobody changed ours.
    served = copy.deepcopy(service)
    served["spec"].update(clusterIPs=["None"], sessionAffinity="None")
    cached.watch_sees(served)
    assert cached.queued == [("team-a", "bert")]
    recording.writes.clear()
    cached.reconciler.reconcile("team-a", "bert")
    assert [w for w in recording.writes if w[0] in ("apply", "event")] == []

    edited = copy.deepcopy(config_map)
    edited["data"] = {key: "{}" for key in config_map["data"]}
    cached.watch_sees(edited)
    cached.reconciler.reconcile("team-a", "bert")

    assert [w for w in recording.writes if w[0] in ("apply", "event")] == [
        ("apply", "ConfigMap/bert-a1-config"),
        ("event", "ChildrenRestored"),
    ]
    assert "ConfigMap of attempt 1 was changed out of band" in recording.posted[-1]
    # The restored ConfigMap is in the store as written: nothing more to restore.
    recording.writes.clear()
    cached.reconciler.reconcile("team-a", "bert")
    assert [w for w in recording.writes if w[0] in ("apply", "event")] == []


def test_children_the_informer_has_listed_cost_no_request_to_the_api_server() -> None:
    recording = RecordingApi(copy.deepcopy(MINIMAL_SPEC))
    cached = _cached_reconciler(recording)
    cached.reconciler.reconcile("team-a", "bert")
    recording.lookups.clear()
    cached.reconciler.reconcile("team-a", "bert")
    assert recording.lookups == []


def test_a_late_event_of_a_deleted_jobs_child_costs_no_request() -> None:
    recording = RecordingApi(copy.deepcopy(MINIMAL_SPEC))
    cached = _cached_reconciler(recording)
    cached.reconciler.reconcile("team-a", "bert")
    cached.store.delete(api.KIND, "team-a", "bert", "uid-1")  # the informer saw it deleted
    recording.get_accel_job = None  # type: ignore[assignment,method-assign]  # must not be asked
    recording.writes.clear()
    cached.reconciler.reconcile("team-a", "bert")  # a pod of it went away meanwhile
    assert recording.writes == []


def test_the_children_of_a_finished_attempt_are_not_recreated() -> None:
    recording = RecordingApi(copy.deepcopy(MINIMAL_SPEC))
    reconciler = _reconciler(recording)
    reconciler.reconcile("team-a", "bert")
    recording.jobs[0]["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    recording.existing.clear()
    recording.writes.clear()
    reconciler.reconcile("team-a", "bert")
    assert not [write for write in recording.writes if write[0] == "apply"]
    assert recording.job["status"]["phase"] == "Succeeded"


def test_a_spec_that_cannot_work_fails_the_job_and_creates_nothing() -> None:
    spec = copy.deepcopy(MINIMAL_SPEC)
    spec["volumes"] = []  # checkpoint.resume needs a persistent volume
    recording = RecordingApi(spec)
    with pytest.raises(InvalidSpecError, match=r"checkpoint\.path"):
        _reconciler(recording).reconcile("team-a", "bert")
    assert recording.writes == [("status", "Failed"), ("event", "InvalidSpec")]


class InvalidJobApi(RecordingApi):
    """An API server that finds the attempt's Job invalid, as it does a bad pod template."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.event_messages: list[str] = []

    def refuse(self, obj: dict[str, Any]) -> None:
        if obj["kind"] == "Job":
            body = {
                "message": 'Job.batch "bert-a1" is invalid: spec.template.spec.priorityClassName: '
                'Invalid value: "Not_A_Name": a lowercase RFC 1123 subdomain must consist of',
                "details": {"causes": [{"field": "spec.template.spec.priorityClassName"}]},
            }
            raise ApiError(
                "PATCH", "/apis/batch/v1/namespaces/team-a/jobs/bert-a1", 422, json.dumps(body)
            )

    def post_event(self, accel_job: Any, event_type: str, reason: str, message: str) -> None:
        super().post_event(accel_job, event_type, reason, message)
        self.event_messages.append(f"{event_type} {reason}: {message}")


def test_a_child_the_api_server_refuses_fails_the_job_naming_the_field_before_any_exists() -> None:
    recording = InvalidJobApi(copy.deepcopy(MINIMAL_SPEC))
    reconciler = _reconciler(recording)
    with pytest.raises(InvalidSpecError, match=r"spec\.priorityClassName"):
        reconciler.reconcile("team-a", "bert")
    # Nothing created: not the ConfigMap or Service the Job would have needed.
    assert recording.writes == [("status", "Failed"), ("event", "InvalidSpec")]
    assert recording.dry_runs == ["ConfigMap/bert-a1-config", "Service/bert"]
    status = recording.job["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.priorityClassName: the API server refuses the Job")
    assert "Not_A_Name" in failed["message"]
    # No retry: the job is not due again, however long one waits.
    assert reconciler.due_in("team-a", "bert") is None


class ForbiddenJobsApi(RecordingApi):
    """An API server that refuses to create the attempt's Job, as RBAC without the verb does."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.event_messages: list[str] = []

    def refuse(self, obj: dict[str, Any]) -> None:
        if obj["kind"] == "Job":
            raise ApiError(
                "PATCH",
                f"/apis/batch/v1/namespaces/team-a/jobs/{obj['metadata']['name']}",
                403,
                '{"message": "jobs.batch is forbidden: cannot create resource \\"jobs\\""}',
            )

    def post_event(self, accel_job: Any, event_type: str, reason: str, message: str) -> None:
        super().post_event(accel_job, event_type, reason, message)
        self.event_messages.append(f"{event_type} {reason}: {message}")


def test_a_refused_request_is_reported_once_on_the_job_and_nothing_claims_to_start() -> None:
    recording = ForbiddenJobsApi(copy.deepcopy(MINIMAL_SPEC))
    reconciler = _reconciler(recording)
    for _ in range(3):
        with pytest.raises(ApiError, match="HTTP 403"):
            reconciler.reconcile("team-a", "bert")
    # The same error, three times: one event.
    assert len(recording.event_messages) == 1
    assert recording.event_messages[0].startswith("Warning ApiError: PATCH /apis/batch/v1/")
    assert "forbidden" in recording.event_messages[0]
    assert "ServiceAccount lacks this permission" in recording.event_messages[0]
    # The status says the operator retries, and nothing claims the attempt started.
    assert {write for write in recording.writes if write[0] == "status"} == {("status", "Pending")}
    reconciled = next(c for c in recording.job["status"]["conditions"] if c["type"] == "Reconciled")
    assert (reconciled["status"], reconciled["reason"]) == ("False", "ApiRetrying")
    assert "HTTP 403" in reconciled["message"]
    assert "retrying in" in reconciled["message"]
    assert recording.job["status"]["attempt"] == 0

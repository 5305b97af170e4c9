"""One reconcile of one AccelTrainJob: observe, decide, act, write status, post events.

The JobSet-style loop (observe, decide, act; docs/design.md#the-reconcile-loop):

1. observe: the AccelTrainJob, its attempt Jobs and worker pods (from the informer's cache,
   :mod:`accel_operator.informer`; from the API server until it has listed them), the
   scheduler's FailedScheduling events when a pod cannot be placed, the failed worker's log tail
   when an attempt failed, and rank 0's metrics while the attempt runs;
2. :func:`accel_operator.lifecycle.decide` (pure) computes the new status and the actions;
3. act in the order the lifecycle relies on: create the new attempt's children (server-side
   apply), then patch the status (only when it changed), then delete torn-down attempts or the
   job itself (TTL), then post the Events of the transitions.

When the API server refuses a request (a permission the operator's ServiceAccount lacks, for
instance), the job gets one Warning event ``ApiError`` per distinct error, so that
``kubectl describe atj`` says why nothing happens; the reconcile is retried.

Every trigger reaches :meth:`Reconciler.reconcile` through the work queue
(:mod:`accel_operator.workqueue`), which never hands one job to two workers at once and
coalesces a burst of triggers into one reconcile. Everything is idempotent anyway.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from pydantic import ValidationError

from accel_operator import (
    api,
    constants,
    gang,
    informer,
    inventory,
    lifecycle,
    observe,
    refusals,
    render,
    straggler,
)
from accel_operator.kube import ApiError, KubeClient
from accel_operator.metrics import OperatorMetrics
from accel_operator.scrape import ProgressScraper

logger = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]

REASON_API_ERROR = "ApiError"
# The longest wait between retries of a job whose reconciles keep failing.
MAX_RETRY_SECONDS = 300.0
# Requests of concurrent launches in flight at once (dry runs and children but the Job).
FAN_OUT_THREADS = 16


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class InvalidSpecError(Exception):
    """The spec cannot work; the message names the field and the fix."""


@dataclasses.dataclass
class _Schedule:
    """When a job needs its next reconcile although nothing in the cluster changed."""

    next_due: float = 0.0
    """Monotonic time when the job needs looking at again without any cluster change."""
    failures: int = 0
    """Reconciles in a row that failed; the retry delay doubles with each."""


class Reconciler:
    """Reconciles AccelTrainJobs; different jobs from any number of threads at once, one job by
    one caller at a time (the work queue's guarantee)."""

    def __init__(
        self,
        kube: KubeClient,
        *,
        scraper: ProgressScraper | None = None,
        metrics: OperatorMetrics | None = None,
        reconcile_interval: float = constants.DEFAULT_RECONCILE_INTERVAL_SECONDS,
        read_pod_logs: bool = True,
        defaults: render.ClusterDefaults | None = None,
        clock: Clock = utc_now,
        cache: informer.Informer | None = None,
    ) -> None:
        self.kube = kube
        self.cache = cache
        """Where reconciles read the jobs and their children once it has listed them all; the
        API server before that, and always without one."""
        self.changed_children = inventory.ChangedChildren()
        """Restorable children whose content the informer saw change (handlers)."""
        self.defaults = defaults or render.ClusterDefaults()
        self.read_pod_logs = read_pod_logs
        self.scraper = scraper or ProgressScraper()
        self.metrics = metrics or OperatorMetrics()
        self.reconcile_interval = reconcile_interval
        self.clock = clock
        self._schedules: dict[tuple[str, str], _Schedule] = {}
        self._lock = threading.Lock()
        self._last_status_write: dict[tuple[str, str], float] = {}
        self._last_api_error: dict[tuple[str, str], str] = {}
        self._last_rank_check: dict[tuple[str, str], float] = {}
        self._fan_out = concurrent.futures.ThreadPoolExecutor(
            max_workers=FAN_OUT_THREADS, thread_name_prefix="children"
        )
        """Sends a launch's dry runs, and its children but the Job, at once: a launch then waits
        for two or three round trips to the API server instead of eight."""

    # --- triggering --------------------------------------------------------------------------
    def _schedule(self, namespace: str, name: str) -> _Schedule:
        with self._lock:
            return self._schedules.setdefault((namespace, name), _Schedule())

    def due_in(self, namespace: str, name: str) -> float | None:
        """Seconds until a time-based step (scrape, backoff, deadline, TTL, a retry) of this job
        is due, 0 when it is; None when none is pending or the job was forgotten."""
        with self._lock:
            schedule = self._schedules.get((namespace, name))
        if schedule is None or math.isinf(schedule.next_due):
            return None
        return max(0.0, schedule.next_due - time.monotonic())

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is remembered about a deleted job."""
        with self._lock:
            self._schedules.pop((namespace, name), None)
            self._last_status_write.pop((namespace, name), None)
            self._last_api_error.pop((namespace, name), None)
            self._last_rank_check.pop((namespace, name), None)
        self.metrics.record_phase(namespace, name, None)

    def reconcile(self, namespace: str, name: str) -> None:
        """Reconcile one job and schedule its next time-based look (see :meth:`due_in`)."""
        schedule = self._schedule(namespace, name)
        started = time.monotonic()
        try:
            requeue = self.reconcile_once(namespace, name)
        except InvalidSpecError:
            schedule.next_due = math.inf
            self.metrics.count_reconcile("error")
            raise
        except Exception:
            self.metrics.reconcile_errors.inc()
            self.metrics.count_reconcile("error")
            # Retry at a planned time rather than wait for the next cluster change; a busy or
            # refusing API server is asked less and less often.
            schedule.next_due = time.monotonic() + self._retry_delay(schedule)
            schedule.failures += 1
            raise
        finally:
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
        schedule.failures = 0
        schedule.next_due = math.inf if requeue is None else time.monotonic() + requeue
        self.metrics.count_reconcile("success" if requeue is None else "requeue_after")

    def _retry_delay(self, schedule: _Schedule) -> float:
        """Seconds before the next retry of a job whose reconciles keep failing: doubling from
        the progress interval, up to :data:`MAX_RETRY_SECONDS`."""
        return float(min(MAX_RETRY_SECONDS, self.reconcile_interval * 2**schedule.failures))

    # --- one pass ----------------------------------------------------------------------------
    def reconcile_once(self, namespace: str, name: str) -> float | None:
        """Observe, decide, act; returns seconds until a time-based step is due (None: never)."""
        body = self._read_accel_job(namespace, name)
        if body is None:
            # Deleted: a late event of one of its pods brought us here.
            self.forget(namespace, name)
            return None
        if body["metadata"].get("deletionTimestamp"):
            # Being deleted: the garbage collector takes the children.
            self.metrics.record_phase(namespace, name, None)
            return None
        metadata = body["metadata"]
        status = _status_of(body)
        now = self.clock()
        try:
            labels = metadata.get("labels") or {}
            spec = api.with_kueue_labels(api.parse_spec(body.get("spec") or {}, name=name), labels)
            render.trainer_image(spec, self.defaults)
        except (api.SpecError, render.MissingImageError) as error:
            self._fail_invalid_spec(body, status, str(error), now)

        try:
            requeue = self._reconcile_spec(body, spec, status, now)
        except ApiError as error:
            self._report_api_error(body, error)
            self._mark_retrying(body, status, error, now)
            raise
        self._last_api_error.pop((namespace, name), None)
        return requeue

    def _reconcile_spec(
        self,
        body: dict[str, Any],
        spec: api.AccelTrainJobSpec,
        status: api.AccelTrainJobStatus,
        now: dt.datetime,
    ) -> float | None:
        metadata = body["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        observed = self.observe(body, spec, status)
        decision = lifecycle.decide(
            spec, status, observed, now, reconcile_interval=self.reconcile_interval
        )
        ref = _job_ref(metadata)
        for create in decision.creates:
            children = render.render_attempt(spec, ref, create.attempt, self.defaults)
            self._preflight(body, status, children, now)
            self._create_children(children)
        for restore in decision.restores:
            for child in render.render_attempt(spec, ref, restore.attempt, self.defaults):
                if child["kind"] in restore.kinds:
                    self.kube.apply(child)
        deferred = self._write_status_and_events(body, status, decision)
        for action in decision.deletes:
            if isinstance(action, lifecycle.DeleteJob):
                logger.info("deleting %s/%s: ttlSecondsAfterFinished has passed", namespace, name)
                self.kube.delete_accel_job(namespace, name, ref.uid)
                self.forget(namespace, name)
                return None
            self._delete_attempt(namespace, name, action, observed, spec)
        for force in decision.force_deletes:
            self.kube.delete_pod(namespace, force.pod, force=True)
        if decision.restart_reason:
            self.metrics.restarts.labels(reason=decision.restart_reason).inc()
        if decision.launch_seconds is not None:
            self.metrics.launch_seconds.observe(decision.launch_seconds)
        self.metrics.record_phase(namespace, name, decision.status.phase.value)
        if deferred is not None:
            return min(deferred, decision.requeue_after or deferred)
        return decision.requeue_after

    def _preflight(
        self,
        body: dict[str, Any],
        status: api.AccelTrainJobStatus,
        children: list[dict[str, Any]],
        now: dt.datetime,
    ) -> None:
        """Dry-run every child before the first is created: a child the API server refuses for
        good fails the job (InvalidSpec, naming the spec field) with nothing left behind."""
        refused = list(self._fan_out.map(self._dry_run, children))
        for child, error in zip(children, refused, strict=True):
            if error is None:
                continue
            if not refusals.is_permanent(error):
                raise error
            self._fail_invalid_spec(body, status, refusals.describe(child, error), now)

    def _dry_run(self, child: dict[str, Any]) -> ApiError | None:
        """What the API server says of creating the child: None when it would admit it."""
        try:
            self.kube.apply(child, dry_run=True)
        except ApiError as error:
            return error
        return None

    def _create_children(self, children: list[dict[str, Any]]) -> None:
        """An attempt's children: all but the Job at once, then the Job, whose pods need the
        others (their ConfigMap, their peers' DNS names, their gang object)."""
        *first, attempt_job = children
        for _ in self._fan_out.map(self.kube.apply, first):
            pass
        self.kube.apply(attempt_job)

    def _fail_invalid_spec(
        self,
        body: dict[str, Any],
        status: api.AccelTrainJobStatus,
        message: str,
        now: dt.datetime,
    ) -> NoReturn:
        """Fail the job for a spec that cannot work (Failed/InvalidSpec, one event); nothing
        retries it."""
        metadata = body["metadata"]
        generation = int(metadata.get("generation") or 0)
        decision = lifecycle.invalid_spec(status, message, now, generation)
        self._write_status_and_events(body, status, decision, force=True)
        self.metrics.record_phase(
            metadata["namespace"], metadata["name"], decision.status.phase.value
        )
        raise InvalidSpecError(message) from None

    def _mark_retrying(
        self,
        body: dict[str, Any],
        status: api.AccelTrainJobStatus,
        error: ApiError,
        now: dt.datetime,
    ) -> None:
        """Say on the job's status that the operator retries (best effort: the API server that
        refused the last request may refuse this one too)."""
        delay = self._retry_delay(
            self._schedule(body["metadata"]["namespace"], body["metadata"]["name"])
        )
        message = f"{error}; retrying in {delay:.0f} s"
        generation = int(body["metadata"].get("generation") or 0)
        decision = lifecycle.api_retrying(status, message, now, generation)
        try:
            self._write_status_and_events(body, status, decision, force=True)
        except Exception as writing:
            logger.debug("could not mark %s as retrying: %s", body["metadata"]["name"], writing)

    def _report_api_error(self, body: dict[str, Any], error: ApiError) -> None:
        """A Warning event on the job when the API server refuses the operator (once per
        distinct error): `kubectl describe atj` then shows why nothing happens, for example
        the verb its ServiceAccount lacks."""
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        message = str(error)
        if self._last_api_error.get(key) == message:
            return
        self._last_api_error[key] = message
        if error.status == 403:
            message += (
                "\n(the operator's ServiceAccount lacks this permission: grant it in the "
                "operator's ClusterRole or Role, as the Helm chart's RBAC does)"
            )
        try:
            self.kube.post_event(body, "Warning", REASON_API_ERROR, message)
        except Exception as posting:
            logger.warning("could not post event %s: %s", REASON_API_ERROR, posting)

    def _delete_attempt(
        self,
        namespace: str,
        name: str,
        action: lifecycle.DeleteAttempt,
        observed: lifecycle.Observed,
        spec: api.AccelTrainJobSpec,
    ) -> None:
        pods = observed.pods_of(action.attempt)
        if action.grace_seconds is not None:
            # Before the Job: its garbage collection would stop them with their own grace, and
            # a later delete only shortens the grace where the kubelet honours it. The Job has
            # failed, so its controller creates no pod in their place.
            for pod in pods:
                if not pod.finished:
                    self.kube.delete_pod(namespace, pod.name, grace_seconds=action.grace_seconds)
        policy = gang.in_force(spec, self.defaults.native_gang).policy
        self.kube.delete_attempt(namespace, name, action.attempt, gang.GROUP_KINDS.get(policy))
        if observed.attempt(action.attempt) is None and action.grace_seconds is None:
            # The Job is gone already, so its garbage collection will not take these pods.
            for pod in pods:
                if not pod.deleting:
                    self.kube.delete_pod(namespace, pod.name)

    def _write_status_and_events(
        self,
        body: dict[str, Any],
        before: api.AccelTrainJobStatus,
        decision: lifecycle.Decision,
        *,
        force: bool = False,
    ) -> float | None:
        """Patch the status if it changed and post the events; returns the seconds after which
        a withheld minor change is due to be written, or None."""
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        new = _dump(decision.status)
        deferred = None
        # Both sides went through the model, so defaults and formatting compare equal.
        if new != _dump(before):
            after = decision.status
            transition = (
                force
                or bool(decision.events or decision.actions)
                or (after.phase, after.attempt, after.restarts)
                != (before.phase, before.attempt, before.restarts)
            )
            since = time.monotonic() - self._last_status_write.get(key, -math.inf)
            # Worker counts, scheduling messages and progress numbers change in bursts; they
            # are written at most once per progress interval, transitions at once.
            if transition or since >= self.reconcile_interval:
                self.kube.patch_status(key[0], key[1], new)
                self._last_status_write[key] = time.monotonic()
            else:
                deferred = self.reconcile_interval - since
        for event in decision.events:
            first_line = event.message.splitlines()[0] if event.message else ""
            logger.info(
                "%s/%s: %s: %s", metadata["namespace"], metadata["name"], event.reason, first_line
            )
            try:
                self.kube.post_event(body, event.type, event.reason, event.message)
            except Exception as error:
                # An event is worth less than the reconcile that produced it.
                logger.warning("could not post event %s: %s", event.reason, error)
        return deferred

    # --- reading -----------------------------------------------------------------------------
    def _synced_cache(self) -> informer.Store | None:
        """The informer's store once it has listed every kind; None: ask the API server."""
        return self.cache.store if self.cache is not None and self.cache.synced else None

    def _read_accel_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The AccelTrainJob from the cache once it has listed them (None: deleted, or created a
        moment ago: the informer queues it again when it sees it), else from the API server.
        Without that, every late event of a deleted job's children would cost a GET."""
        store = self._synced_cache()
        if store is not None:
            cached = store.get(api.KIND, namespace, name)
            return copy.deepcopy(cached) if cached is not None else None
        body = self.kube.get_accel_job(namespace, name)
        if body is not None and self.cache is not None:
            self.cache.record(body)
        return body

    def _attempt_jobs(self, namespace: str, name: str) -> list[dict[str, Any]]:
        store = self._synced_cache()
        if store is None:
            return self.kube.list_attempt_jobs(namespace, name)
        return store.owned("Job", namespace, name)

    def _worker_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        store = self._synced_cache()
        if store is None:
            return self.kube.list_worker_pods(namespace, name)
        role, worker = constants.LABEL_ROLE, constants.ROLE_WORKER
        pods = store.owned("Pod", namespace, name)
        return [p for p in pods if (p["metadata"].get("labels") or {}).get(role) == worker]

    def _child_exists(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Whether a restorable child exists: the cache knows (it holds the operator's own
        creations at once), else the API server."""
        store = self._synced_cache()
        if store is not None and self.cache is not None and kind in self.cache.kinds:
            return store.get(kind, namespace, name) is not None
        return self.kube.child_exists(api_version, kind, namespace, name)

    # --- observing ---------------------------------------------------------------------------
    def observe(
        self, body: dict[str, Any], spec: api.AccelTrainJobSpec, status: api.AccelTrainJobStatus
    ) -> lifecycle.Observed:
        metadata = body["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        views = (observe.attempt_view(attempt) for attempt in self._attempt_jobs(namespace, name))
        attempts = tuple(view for view in views if view is not None)
        raw_pods = self._worker_pods(namespace, name)
        pods = [observe.pod_view(pod) for pod in raw_pods]
        now = self.clock()
        scheduling_due = observe.scheduler_events_due_in(pods, now)
        if scheduling_due == 0:
            messages = observe.scheduler_messages(self.kube.list_scheduling_events(namespace))
            pods = [observe.pod_view(pod, messages) for pod in raw_pods]
        current = max([status.attempt, *(view.attempt for view in attempts)])
        current_job = next((view for view in attempts if view.attempt == current), None)
        creation_due = None
        if current_job is not None:
            creation_due = observe.create_failures_due_in(current_job, pods, spec.workers, now)
            current_job = self._why_waiting(namespace, spec, current_job, creation_due == 0)
            attempts = tuple(current_job if v.attempt == current else v for v in attempts)
        # An Event read put off: look again when it is due, in case nothing else changes.
        recheck = min((d for d in (scheduling_due, creation_due) if d), default=None)
        failures: tuple[lifecycle.FailureView, ...] = ()
        if (
            current_job is not None
            and current_job.failed
            and status.phase not in lifecycle.FINISHED_PHASES
        ):
            failures = self._failures(namespace, [pod for pod in pods if pod.attempt == current])
        progress, visible = None, True
        missing: tuple[str, ...] = ()
        changed: tuple[str, ...] = ()
        rank_times = None
        if status.phase not in lifecycle.FINISHED_PHASES and current_job is not None:
            progress, visible = self._progress(spec, pods, current)
            missing, changed = self._children_to_restore(spec, _job_ref(metadata), current_job)
        if status.phase is api.Phase.RUNNING and visible and self._rank_check_due(namespace, name):
            rank_times = self._rank_times(spec, pods, current)
        return lifecycle.Observed(
            native_gang=self.defaults.native_gang,
            created=lifecycle.parse_time(metadata.get("creationTimestamp")) or now,
            generation=int(metadata.get("generation") or 0),
            attempts=attempts,
            pods=tuple(pods),
            failed_workers=failures,
            progress=progress,
            rank_times=rank_times,
            progress_visible=visible,
            missing_children=missing,
            changed_children=changed,
            recheck_after=recheck,
        )

    def _why_waiting(
        self,
        namespace: str,
        spec: api.AccelTrainJobSpec,
        current_job: lifecycle.AttemptView,
        pods_missing: bool,
    ) -> lifecycle.AttemptView:
        """The current attempt with what its Events and Kueue say about why it waits: the Job
        controller's FailedCreate message while pods are missing, Kueue's while it queues."""
        if pods_missing:
            events = self.kube.list_create_failures(namespace, current_job.name)
            message = observe.latest_message(events)
            current_job = dataclasses.replace(current_job, create_failure=message)
        if current_job.suspended and spec.run_policy.queue_name:
            workloads = self.kube.list_kueue_workloads(namespace, current_job.uid)
            waiting = observe.kueue_admission_message(workloads)
            current_job = dataclasses.replace(current_job, admission_message=waiting)
        return current_job

    def _rank_check_due(self, namespace: str, name: str) -> bool:
        """At most one comparison of a job's ranks per straggler.CHECK_SECONDS."""
        now = time.monotonic()
        with self._lock:
            last = self._last_rank_check.get((namespace, name))
            if last is not None and now - last < straggler.CHECK_SECONDS:
                return False
            self._last_rank_check[(namespace, name)] = now
        return True

    def _rank_times(
        self, spec: api.AccelTrainJobSpec, pods: list[lifecycle.PodView], attempt: int
    ) -> tuple[straggler.RankTime, ...] | None:
        """Every rank's own work per step: each local rank of each running worker serves its
        exporter on metrics.port + local rank. None for a job of one rank."""
        if spec.world_size < 2:
            return None
        found = []
        for pod in pods:
            if pod.attempt != attempt or pod.deleting or pod.phase != "Running" or not pod.pod_ip:
                continue
            for local_rank in range(spec.procs):
                measured = self.scraper.own_seconds(pod.pod_ip, spec.metrics.port + local_rank)
                found += [
                    straggler.RankTime(rank, pod.name, pod.node_name, seconds)
                    for rank, seconds in measured.items()
                ]
        return tuple(found)

    def _children_to_restore(
        self, spec: api.AccelTrainJobSpec, ref: render.JobRef, attempt_job: lifecycle.AttemptView
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The live attempt's ConfigMap, Service and watched gang object that do not exist,
        and those whose content (a ConfigMap's data, the others' spec) no longer holds what the
        operator renders. The informer's store answers once it has listed them, the API server
        before; a child is rendered and compared only after the informer saw its content
        change."""
        if not attempt_job.live:
            return (), ()
        # kind -> (apiVersion, name, the renderer, called only for a child to compare).
        renderers: dict[str, tuple[str, str, Callable[[], dict[str, Any] | None]]] = {
            "ConfigMap": (
                "v1",
                render.config_map_name(ref.name, attempt_job.attempt),
                lambda: render.render_config_map(spec, ref, attempt_job.attempt),
            ),
        }
        if render.needs_service(spec):
            renderers["Service"] = (
                "v1",
                render.service_name(ref.name),
                lambda: render.render_service(spec, ref),
            )
        group = gang.GROUP_KINDS.get(gang.in_force(spec, self.defaults.native_gang).policy)
        if group is not None and inventory.watched_gang_object(
            *group, self.defaults.pod_group_apis
        ):
            renderers[group[1]] = (
                group[0],
                render.attempt_job_name(ref.name, attempt_job.attempt),
                lambda: render.render_gang_object(spec, ref, attempt_job.attempt, self.defaults),
            )
        missing, changed = [], []
        store = self._synced_cache()
        for kind in inventory.RESTORABLE_KINDS:
            if kind not in renderers:
                continue
            api_version, child_name, rendered = renderers[kind]
            if not self._child_exists(api_version, kind, ref.namespace, child_name):
                missing.append(kind)
                continue
            if store is None or not self.changed_children.marked(kind, ref.namespace, child_name):
                continue
            live = inventory.owned_content(store.get(kind, ref.namespace, child_name) or {})
            if observe.holds_desired(live, inventory.owned_content(rendered() or {})):
                self.changed_children.checked(kind, ref.namespace, child_name)
            else:
                changed.append(kind)
        return tuple(missing), tuple(changed)

    def _failures(
        self, namespace: str, pods: list[lifecycle.PodView]
    ) -> tuple[lifecycle.FailureView, ...]:
        """Every failed worker, the most telling first. The termination message is the log tail
        the kubelet kept (FallbackToLogsOnError); only the first worker's log is read when it
        has none, since reading a log goes through the API server to the node's kubelet."""
        views = []
        for position, worker in enumerate(observe.failed_workers(pods)):
            tail = worker.termination_message
            if not tail and position == 0 and self.read_pod_logs:
                tail = self.kube.pod_log_tail(namespace, worker.name)
            reason = worker.disruption or worker.termination_reason
            views.append(
                lifecycle.FailureView(
                    pod=worker.name,
                    exit_code=worker.exit_code,
                    log_tail=tail,
                    index=worker.index,
                    node=worker.node_name,
                    reason=reason,
                )
            )
        return tuple(views)

    def _progress(
        self, spec: api.AccelTrainJobSpec, pods: list[lifecycle.PodView], attempt: int
    ) -> tuple[lifecycle.ProgressSample | None, bool]:
        rank0 = next(
            (pod for pod in pods if pod.attempt == attempt and pod.index == 0 and not pod.deleting),
            None,
        )
        if rank0 is None or not rank0.pod_ip:
            return None, True
        if not self.scraper.allowed(rank0.pod_ip):
            return None, False
        if rank0.phase != "Running":
            return None, True
        return self.scraper.scrape(rank0.pod_ip, spec.metrics.port), True


def _job_ref(metadata: Mapping[str, Any]) -> render.JobRef:
    kueue = tuple(
        sorted(
            (key, str(value))
            for key, value in (metadata.get("labels") or {}).items()
            if key.startswith(constants.KUEUE_LABEL_PREFIX)
        )
    )
    return render.JobRef(
        name=metadata["name"],
        namespace=metadata["namespace"],
        uid=str(metadata.get("uid", "")),
        kueue_labels=kueue,
    )


def _status_of(body: dict[str, Any]) -> api.AccelTrainJobStatus:
    try:
        return api.AccelTrainJobStatus.model_validate(body.get("status") or {})
    except ValidationError as error:
        # A status this operator cannot read is rebuilt from the observed children.
        logger.warning(
            "status of %s/%s is unreadable, rebuilding it: %s",
            body["metadata"]["namespace"],
            body["metadata"]["name"],
            error,
        )
        return api.AccelTrainJobStatus()


def _dump(status: api.AccelTrainJobStatus) -> dict[str, Any]:
    dumped: dict[str, Any] = status.model_dump(mode="json", by_alias=True)
    return dumped

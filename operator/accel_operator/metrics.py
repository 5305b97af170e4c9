"""The operator's own Prometheus metrics, served on their own port (``--metrics-port``).

- ``acceltrain_operator_jobs{phase}``: AccelTrainJobs this operator reconciles, by phase.
- ``acceltrain_operator_launch_seconds``: histogram of CR created -> every worker pod running,
  for first attempts.
- ``acceltrain_operator_restarts_total{reason}``: whole-group restarts (WorkerFailed, Evicted,
  Preempted, GangTimeout, Stalled, AttemptDeleted), each reason exported at 0 from the start.
- controller-runtime's names where the two overlap, so that alerts and dashboards written for Go
  controllers apply: ``controller_runtime_reconcile_total{controller,result}`` (success, error,
  requeue_after), ``controller_runtime_reconcile_errors_total{controller}``,
  ``controller_runtime_reconcile_time_seconds{controller}``; ``workqueue_depth{name}`` (jobs
  marked for a reconcile that no worker has taken yet: a lasting high value means the API server
  or the workers cannot keep up), ``workqueue_adds_total{name}``,
  ``workqueue_queue_duration_seconds{name}`` (marked until a worker takes it) and
  ``workqueue_work_duration_seconds{name}``. ``controller`` and ``name`` are ``acceltrainjob``.
- ``acceltrain_operator_api_requests_total{verb,resource}``: every request
  :mod:`accel_operator.kube` sends (writes are apply/create/patch/delete), which is how the
  launch benchmark counts API writes.
- ``acceltrain_operator_leader``: 1 on the replica that holds the leader Lease (and may write),
  0 on standbys; ``acceltrain_operator_leader_transitions_total``: changes of leader this replica
  has seen (its own acquisitions included).

Each :class:`OperatorMetrics` has its own registry, so tests can create several.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Final

import prometheus_client

from accel_operator import api, lifecycle

LAUNCH_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
RECONCILE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WRITE_VERBS: Final = frozenset({"apply", "create", "patch", "delete"})
CONTROLLER: Final = "acceltrainjob"
"""The ``controller`` and ``name`` label of the controller-runtime-named series."""
RECONCILE_RESULTS: Final = ("success", "error", "requeue_after")


class OperatorMetrics:
    """The operator's metrics and the job-phase bookkeeping behind the phase gauge."""

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = prometheus_client.CollectorRegistry()
            # What the default registry has and a private one lacks: process_* (CPU seconds,
            # resident memory, open fds), python_gc_* and python_info.
            prometheus_client.ProcessCollector(registry=registry)
            prometheus_client.PlatformCollector(registry=registry)
            prometheus_client.GCCollector(registry=registry)
        self.registry = registry
        self.jobs = prometheus_client.Gauge(
            "acceltrain_operator_jobs",
            "AccelTrainJobs reconciled by this operator, by phase.",
            ["phase"],
            registry=self.registry,
        )
        self.launch_seconds = prometheus_client.Histogram(
            "acceltrain_operator_launch_seconds",
            "Seconds from AccelTrainJob creation until every worker pod of the first attempt ran.",
            buckets=LAUNCH_BUCKETS,
            registry=self.registry,
        )
        self.restarts = prometheus_client.Counter(
            "acceltrain_operator_restarts",
            "Whole-group restarts of AccelTrainJobs, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.build_info = prometheus_client.Gauge(
            "acceltrain_operator_build_info",
            "Always 1: the operator's version and the Kubernetes version it talks to.",
            ["version", "kubernetes_version"],
            registry=self.registry,
        )
        self._add_controller_runtime_metrics()
        self.api_requests = prometheus_client.Counter(
            "acceltrain_operator_api_requests",
            "Requests the operator sent to the API server, by verb and resource.",
            ["verb", "resource"],
            registry=self.registry,
        )
        self.leader = prometheus_client.Gauge(
            "acceltrain_operator_leader",
            "1 when this replica holds the leader Lease and reconciles, else 0.",
            registry=self.registry,
        )
        self.leader_transitions = prometheus_client.Counter(
            "acceltrain_operator_leader_transitions",
            "Changes of the leader Lease's holder seen by this replica.",
            registry=self.registry,
        )
        for phase in api.Phase:
            self.jobs.labels(phase=phase.value).set(0)
        # Every reason from the start, so a dashboard shows zeros rather than "No data".
        for reason in lifecycle.RESTART_REASONS:
            self.restarts.labels(reason=reason)
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def _add_controller_runtime_metrics(self) -> None:
        controller = {"controller": CONTROLLER}
        self.reconcile_total = prometheus_client.Counter(
            "controller_runtime_reconcile",
            "Reconciles of AccelTrainJobs by result (success, error, requeue_after).",
            ["controller", "result"],
            registry=self.registry,
        )
        self.reconcile_errors = prometheus_client.Counter(
            "controller_runtime_reconcile_errors",
            "Reconciles that ended in an error (they are retried).",
            ["controller"],
            registry=self.registry,
        ).labels(**controller)
        self.reconcile_seconds = prometheus_client.Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Wall-clock seconds of one reconcile of one AccelTrainJob.",
            ["controller"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        ).labels(**controller)
        queue = {"name": CONTROLLER}
        self.work_queue_depth = prometheus_client.Gauge(
            "workqueue_depth",
            "AccelTrainJobs waiting for a reconcile that no worker has taken yet.",
            ["name"],
            registry=self.registry,
        ).labels(**queue)
        self.work_queue_adds = prometheus_client.Counter(
            "workqueue_adds",
            "AccelTrainJobs marked for a reconcile while not already waiting.",
            ["name"],
            registry=self.registry,
        ).labels(**queue)
        self.work_queue_wait_seconds = prometheus_client.Histogram(
            "workqueue_queue_duration_seconds",
            "Seconds a job waited between being marked and a worker taking it.",
            ["name"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        ).labels(**queue)
        self.work_seconds = prometheus_client.Histogram(
            "workqueue_work_duration_seconds",
            "Seconds a worker spent on one job it took from the queue.",
            ["name"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        ).labels(**queue)
        for result in RECONCILE_RESULTS:
            self.reconcile_total.labels(result=result, **controller)

    def count_reconcile(self, result: str) -> None:
        """One reconcile ended with ``result`` (one of :data:`RECONCILE_RESULTS`)."""
        self.reconcile_total.labels(controller=CONTROLLER, result=result).inc()

    def record_build(self, version: str, kubernetes_version: str) -> None:
        self.build_info.clear()
        self.build_info.labels(version=version, kubernetes_version=kubernetes_version).set(1)

    def record_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Remember a job's phase (None: the job is gone) and refresh the gauge."""
        key = (namespace, name)
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts = {p.value: 0 for p in api.Phase}
            for value in self._phases.values():
                counts[value] = counts.get(value, 0) + 1
        for value, count in counts.items():
            self.jobs.labels(phase=value).set(count)

    def count_request(self, verb: str, resource: str) -> None:
        self.api_requests.labels(verb=verb, resource=resource).inc()

    def requests(self, verbs: Collection[str]) -> float:
        """API requests sent so far with one of these verbs."""
        total = 0.0
        for metric in self.api_requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels.get("verb") in verbs:
                    total += sample.value
        return total

    def writes(self) -> float:
        """API writes sent so far (apply, create, patch, delete)."""
        return self.requests(WRITE_VERBS)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve the registry in the Prometheus text format (daemon thread)."""
        prometheus_client.start_http_server(port, addr=addr, registry=self.registry)

"""kopf handlers: thin adapters from kopf's callbacks to the reconciler.

Registered on a registry of their own by :func:`build_registry` (the CLI passes it to
``kopf.run``):

- AccelTrainJobs as the informer (:mod:`accel_operator.informer`) sees them: queue a job it sees
  for the first time (created, or listed when this operator starts or becomes the leader) and a
  job whose spec changed (a new ``metadata.generation``).
- changes of the attempt Jobs and worker pods, also from the informer: queue a reconcile of the
  owning AccelTrainJob when something the lifecycle reacts to changed, so pod and Job changes
  are acted on at once.
- changes of the jobs' Services, ConfigMaps and gang objects (native Workloads, PodGroups where
  their API is served), also from the informer: mark those whose content changed for the
  reconciler to compare, and queue the owner when one is deleted or changed, so a live attempt
  gets it back within a second.
- time: each reconcile says when its job next needs a look without any cluster change (progress
  scrape, backoff, gang timeout, deadlines, TTL, the retry of a failed reconcile), and the work
  queue marks the job then; finished jobs cost nothing.
- ``on.event`` of Kueue's Workloads, where Kueue is installed: queue the AccelTrainJob whose
  attempt Job owns the Workload, so a queued job's status quotes why Kueue waits as it changes.

One entry path: the informer's listener, kopf's event handlers and the planned times only mark
the job in a :class:`~accel_operator.workqueue.WorkQueue`, whose own threads reconcile, never two
on one job: no watch ever waits on the API server. A spec that cannot work is reported on the
job's status (Failed/InvalidSpec) and not retried; other failures are retried after a doubling
delay (:meth:`~accel_operator.reconcile.Reconciler.due_in`).

kopf watches only AccelTrainJobs (their deletion: forget the job) and Kueue's Workloads: it
filters labels on the client side, so the children are the informer's, selected by the server.
No kopf timer or ``on.delete`` handler, so kopf adds no finalizer and writes nothing: owner
references and the garbage collector remove the children. A job that still carries the
finalizer ``acceltrain.io/finalizer`` of an earlier release (whose kopf timer needed it) has it
taken off by kopf when it sees the job, as no handler requires it any more.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from accel_operator import api, constants, informer, inventory, observe, render
from accel_operator.kube import UNREACHABLE_ERRORS, ApiError
from accel_operator.reconcile import FAN_OUT_THREADS, InvalidSpecError, Reconciler
from accel_operator.workqueue import QueueObserver, WorkQueue

logger = logging.getLogger(__name__)

KOPF_THREADS = 2


@dataclasses.dataclass(frozen=True)
class OperatorOptions:
    """Settings of the handlers and of kopf (see ``python -m accel_operator run --help``)."""

    reconcile_interval: float = constants.DEFAULT_RECONCILE_INTERVAL_SECONDS
    """Seconds between looks at a running job (the progress scrape interval)."""
    server_timeout: int = 300
    """How long the API server keeps a watch open before closing it."""
    client_timeout: float = 330.0
    """How long the client waits on a watch request before giving up."""
    inactivity_timeout: float = 600.0
    """Restart a watch stream that has been silent this long (lost without an error)."""
    max_workers: int = 32
    """Threads that reconcile queued jobs: the jobs reconciled at once."""
    kueue: bool = False
    """Whether Kueue is installed: its Workloads are watched, so that a queued job's status says
    at once why Kueue does not admit it yet."""

    @property
    def api_connections(self) -> int:
        """Connections to the API server: one per thread that may send a request (the work
        queue's, and the reconciles' fan-out of a launch's requests)."""
        return self.max_workers + FAN_OUT_THREADS


def configure_settings(settings: kopf.OperatorSettings, options: OperatorOptions) -> None:
    """kopf's settings: our prefixes for its bookkeeping, watch timeouts, quiet event posting."""
    settings.persistence.finalizer = constants.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=constants.DOMAIN, v1=False
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=constants.DOMAIN, key="last-handled-configuration", v1=False
    )
    settings.watching.server_timeout = options.server_timeout
    settings.watching.client_timeout = options.client_timeout
    settings.watching.inactivity_timeout = options.inactivity_timeout
    # The reconciler posts the events users need; kopf's own only when something is wrong.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = constants.FIELD_MANAGER
    # kopf's own threads run only its sync startup, login and cleanup handlers.
    settings.execution.max_workers = KOPF_THREADS


def build_registry(
    reconciler: Reconciler,
    options: OperatorOptions,
    on_drained: Callable[[], None] | None = None,
) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers bound to ``reconciler``; its informer cache
    is started with it and its changes queue reconciles. ``on_drained`` runs at shutdown once
    kopf's watchers and handlers and the work queue have stopped: nothing of this process
    writes after it (the leader hands its Lease back there)."""
    cache = _informer_of(reconciler)
    registry = kopf.OperatorRegistry()
    resource = (api.GROUP, api.VERSION, api.PLURAL)

    work = _work_queue(reconciler, options)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings, options)
        work.start()
        cache.start()

    @kopf.on.cleanup(registry=registry)
    def drain(**_: Any) -> None:
        cache.stop()
        work.stop()
        if on_drained is not None:
            on_drained()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same in-cluster or kubeconfig credentials as accel_operator.kube uses.
        return kopf.login_via_client(**kwargs)

    @kopf.on.event(*resource, registry=registry)
    async def job_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
        if type == "DELETED" and namespace is not None:
            work.add_after(namespace, name, None)
            reconciler.forget(namespace, name)

    cache.listener = _cache_listener(reconciler, work)
    if options.kueue:
        _watch_kueue_workloads(registry, work)
    return registry


def _informer_of(reconciler: Reconciler) -> informer.Informer:
    if reconciler.cache is None:
        raise ValueError("the operator's reconciler reads an informer cache; give it one")
    return reconciler.cache


def _work_queue(reconciler: Reconciler, options: OperatorOptions) -> WorkQueue:
    return WorkQueue(
        lambda namespace, name: _reconcile_queued(reconciler, namespace, name),
        workers=options.max_workers,
        observer=QueueObserver(
            depth=reconciler.metrics.work_queue_depth.set,
            added=reconciler.metrics.work_queue_adds.inc,
            waited=reconciler.metrics.work_queue_wait_seconds.observe,
            worked=reconciler.metrics.work_seconds.observe,
        ),
    )


def _watch_kueue_workloads(registry: kopf.OperatorRegistry, work: WorkQueue) -> None:
    """Queue the AccelTrainJob whose attempt Job owns a Kueue Workload that changed."""

    @kopf.on.event(constants.KUEUE_GROUP, constants.KUEUE_VERSION, "workloads", registry=registry)
    async def kueue_workload_event(namespace: str | None, meta: kopf.Meta, **_: Any) -> None:
        # Kueue's Workload of an attempt names the attempt's Job as its owner.
        for ref in meta.get("ownerReferences") or []:
            owner = render.accel_job_of_attempt(str(ref.get("name", "")))
            if namespace and ref.get("kind") == "Job" and owner:
                work.add(namespace, owner)


def _cache_listener(reconciler: Reconciler, work: WorkQueue) -> informer.Listener:
    """What the cache's changes do: queue a job the cache sees for the first time, queue the
    owning job when something the lifecycle reacts to changed (a Job's or pod's fingerprint),
    and mark restorable children whose content changed (a deleted or changed one is put back by
    the next reconcile)."""
    seen = _Fingerprints()

    def changed(kind: str, event: str, obj: Mapping[str, Any], before: Any) -> None:
        metadata = obj["metadata"]
        namespace, name = metadata.get("namespace"), metadata["name"]
        if kind == api.KIND:
            if namespace and event != "DELETED" and _new_or_respecified(obj, before):
                work.add(namespace, name)
            return
        owner = (metadata.get("labels") or {}).get(constants.LABEL_JOB_NAME)
        if not namespace or not owner:
            return
        deleted = event == "DELETED"
        if kind in ("Job", "Pod"):
            fingerprint = None if deleted else observe.fingerprint(obj)
            if seen.changed(str(metadata.get("uid")), fingerprint):
                work.add(namespace, owner)
        elif kind in inventory.RESTORABLE_KINDS:
            children = reconciler.changed_children
            if deleted:
                children.checked(kind, namespace, name)
                work.add(namespace, owner)
            elif _owned_content_changed(obj, before):
                # A child seen for the first time is compared at its owner's next reconcile;
                # one changed out of band brings its owner back at once.
                children.mark(kind, namespace, name)
                if before is not None:
                    work.add(namespace, owner)

    return changed


def _owned_content_changed(obj: Mapping[str, Any], before: Any) -> bool:
    """Whether a Service's, ConfigMap's or gang object's owned content differs from what the
    store held before (or nothing was held)."""
    if not isinstance(before, Mapping):
        return True
    return inventory.owned_content(before) != inventory.owned_content(obj)


def _new_or_respecified(job: Mapping[str, Any], before: Any) -> bool:
    """Whether an AccelTrainJob is seen for the first time or its spec changed; changes of its
    status (the operator's own writes) and of kopf's bookkeeping need no reconcile."""
    if not isinstance(before, Mapping):
        return True
    generation = job["metadata"].get("generation")
    return bool(generation != (before.get("metadata") or {}).get("generation"))


class _Fingerprints:
    """The last relevant state of each child, so that irrelevant updates cause no reconcile."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Any, ...]] = {}
        self._lock = threading.Lock()

    def changed(self, uid: str, fingerprint: tuple[Any, ...] | None) -> bool:
        with self._lock:
            if fingerprint is None:
                self._seen.pop(uid, None)
                return True
            if self._seen.get(uid) == fingerprint:
                return False
            self._seen[uid] = fingerprint
            return True


def _reconcile_queued(reconciler: Reconciler, namespace: str, name: str) -> float | None:
    """Reconcile a queued job; returns when it next needs a look (the retry of a failed
    reconcile too). Unexpected failures are logged with their traceback and retried alike."""
    try:
        reconciler.reconcile(namespace, name)
    except InvalidSpecError:
        # Reported on the job's status and events; nothing to retry.
        pass
    except ApiError as error:
        # Reported on the job as an event; retried with backoff. One line: the traceback of a
        # refused request says nothing the message does not.
        logger.warning("reconcile of %s/%s: %s; retrying", namespace, name, error)
    except UNREACHABLE_ERRORS as error:
        # An API server restart or a network blip: expected, retried; no traceback.
        logger.warning(
            "reconcile of %s/%s: the API server did not answer (%s); retrying",
            namespace,
            name,
            str(error)[:300] or type(error).__name__,
        )
    except Exception:
        logger.exception("reconcile of %s/%s failed; retrying", namespace, name)
    return reconciler.due_in(namespace, name)

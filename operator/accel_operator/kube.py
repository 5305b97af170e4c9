"""The only module that talks to the Kubernetes API server.

Requests go through the ``kubernetes`` package's :class:`~kubernetes.client.ApiClient` (its
kubeconfig and in-cluster loading, authentication and connection pool) and carry plain dicts both
ways, since the renderers build plain dicts. Children are written with server-side apply under
the field manager ``acceltrain-operator`` with ``force``; the AccelTrainJob status with a JSON
merge patch of the whole status; Events as core/v1 Events. Every request is counted in
:class:`~accel_operator.metrics.OperatorMetrics` by verb and resource.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import kubernetes
import kubernetes.watch
import urllib3
from kubernetes.dynamic import DynamicClient

from accel_operator import api, constants, gang, render
from accel_operator.metrics import OperatorMetrics

logger = logging.getLogger(__name__)

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_PATCH_CONTENT_TYPE = "application/merge-patch+json"
REQUEST_TIMEOUT_SECONDS = 30.0
# How long a watch waits to connect; reading has no limit (the API server ends the stream).
WATCH_CONNECT_TIMEOUT_SECONDS = 5.0
# Lease calls must fail well within a leader's renew deadline, so that the next retry comes.
LEASE_TIMEOUT_SECONDS = 5.0
EVENT_MESSAGE_LIMIT = 1024

# kind -> (API path prefix, plural) of the kinds the operator writes.
_KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    api.KIND: (f"/apis/{api.API_VERSION}", api.PLURAL),
}


UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (OSError, urllib3.exceptions.HTTPError)
"""What a request raises when the API server does not answer at all (restarting, unreachable):
expected and retried, not a bug."""


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        message: Any = body
        causes: list[str] = []
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            decoded = json.loads(body)
            message = decoded.get("message", body)
            details = decoded.get("details") or {}
            causes = [str(c["field"]) for c in details.get("causes", []) if "field" in c]
        super().__init__(f"{method} {path} -> HTTP {status}: {str(message)[:500]}")
        self.status = status
        self.message = str(message)
        self.fields = causes
        """The object fields the API server names in its refusal (``details.causes``)."""


def _object_path(api_version: str, kind: str, namespace: str, name: str) -> tuple[str, str]:
    """(path, plural) of a namespaced object the operator writes."""
    if kind in _KINDS:
        return _path(kind, namespace, name), _KINDS[kind][1]
    plural = gang.PLURALS[api_version]
    path = f"/apis/{api_version}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{path}/{quote(name, safe='')}", plural


def _path(kind: str, namespace: str, name: str | None = None, subresource: str = "") -> str:
    prefix, plural = _KINDS[kind]
    path = f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}"
    if name is not None:
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


def load_api_client(kubeconfig: str | None = None, pool_size: int = 32) -> Any:
    """An ApiClient for the cluster, in client-go's order: the kubeconfig named here, else
    in-cluster credentials, else ``$KUBECONFIG`` or ``~/.kube/config``."""
    configuration = kubernetes.client.Configuration()
    # One connection per concurrent reconcile thread instead of urllib3's default of 4.
    configuration.connection_pool_maxsize = pool_size
    if not kubeconfig:
        with contextlib.suppress(kubernetes.config.ConfigException):
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
            return kubernetes.client.ApiClient(configuration)
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig or os.environ.get("KUBECONFIG") or None,
        client_configuration=configuration,
    )
    return kubernetes.client.ApiClient(configuration)


class _NoDiscovery:
    """The discoverer handed to :class:`~kubernetes.dynamic.DynamicClient`: the operator builds
    its own paths and never asks the client for its resources, so no discovery request is sent
    and no discovery cache file is written (the operator's root filesystem is read-only)."""

    def __init__(self, client: Any, cache_file: Any) -> None:
        del client, cache_file


class KubeClient:
    """Typed-enough access to the objects an AccelTrainJob owns."""

    def __init__(self, api_client: Any, metrics: OperatorMetrics | None = None) -> None:
        # DynamicClient.request is the client's public way to send a request to any path; the
        # client keeps it working across its own transport's generations.
        self._transport = DynamicClient(  # type: ignore[no-untyped-call]
            api_client, discoverer=_NoDiscovery
        )
        self._metrics = metrics or OperatorMetrics()
        self._instance = socket.gethostname()
        self.write_fence: Callable[[], None] | None = None
        """Called before every write except the Lease's own; raising stops the write (a replica
        that is not the leader, see :mod:`accel_operator.leader`)."""
        self.on_written: Callable[[Mapping[str, Any]], None] | None = None
        """Called with the object a child's apply or a status patch answered (the object as
        stored), so that the informer's cache is never older than the operator's own writes."""

    # --- transport ---------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        verb: str,
        resource: str,
        query: Mapping[str, str] | None = None,
        body: object | None = None,
        content_type: str | None = None,
        timeout: float | tuple[float, float] = REQUEST_TIMEOUT_SECONDS,
        fenced: bool = True,
    ) -> Any:
        """Send one request; returns the decoded JSON body, or raises :class:`ApiError`.
        Writes pass the write fence first unless ``fenced`` is False (the Lease's own)."""
        if method != "GET" and fenced and self.write_fence is not None:
            self.write_fence()
        self._metrics.count_request(verb, resource)
        try:
            response = self._transport.request(
                method,
                path,
                body=body,
                query_params=list((query or {}).items()),
                header_params={"Accept": "application/json"},
                content_type=content_type or "application/json",
                _request_timeout=timeout,
                serialize=False,
            )
        except kubernetes.client.ApiException as error:
            raise ApiError(method, path, int(error.status or 0), str(error.body or "")) from None
        data = response.data
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text

    def watch(
        self,
        path: str,
        *,
        resource: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int | None = None,
        bookmarks: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """The events (``type``, ``object`` as a dict) of a watch on a collection path, through
        :class:`kubernetes.watch.Watch`: when the API server ends the stream it resumes from the
        last resourceVersion seen (bookmarks keep it fresh and are not yielded). When that
        version is too old the server answers 410 and this raises :class:`ApiError` 410: list
        again and watch from the list's version. With ``timeout_seconds`` the server ends the
        watch after that long and it is not resumed. Each stream opened counts as one request."""

        def open_stream(**params: Any) -> Any:
            self._metrics.count_request("watch", resource)
            read_timeout = None if timeout_seconds is None else timeout_seconds + 15.0
            return self._transport.request(
                "GET",
                path,
                header_params={"Accept": "application/json"},
                _request_timeout=(WATCH_CONNECT_TIMEOUT_SECONDS, read_timeout),
                serialize=False,
                **params,
            )

        # return_type "object": events keep their objects as dicts, and the watcher still reads
        # their resourceVersion to resume.
        watcher = kubernetes.watch.Watch(return_type="object")  # type: ignore[no-untyped-call]
        stream = watcher.stream(  # type: ignore[no-untyped-call]
            open_stream,
            label_selector=label_selector,
            field_selector=field_selector,
            allow_watch_bookmarks=True,
            **({} if resource_version is None else {"resource_version": resource_version}),
            **({} if timeout_seconds is None else {"timeout_seconds": timeout_seconds}),
        )
        try:
            for event in stream:
                if bookmarks or event["type"] != "BOOKMARK":
                    yield {"type": event["type"], "object": event["raw_object"]}
        except kubernetes.client.ApiException as error:
            body = str(error.body or error.reason or "")
            raise ApiError("WATCH", path, int(error.status or 0), body) from None
        finally:
            stream.close()

    def list_collection(
        self, path: str, *, resource: str, label_selector: str | None = None
    ) -> dict[str, Any]:
        """A LIST answer (``items`` and ``metadata.resourceVersion``) of a collection path."""
        query = {} if label_selector is None else {"labelSelector": label_selector}
        answer: dict[str, Any] = self.request(
            "GET", path, verb="list", resource=resource, query=query, timeout=60.0
        )
        return answer

    def _written(self, answer: Any) -> None:
        if self.on_written is not None and isinstance(answer, Mapping) and "metadata" in answer:
            self.on_written(answer)

    # --- the AccelTrainJob ---------------------------------------------------------------------
    def get_accel_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request(
                "GET", _path(api.KIND, namespace, name), verb="get", resource=api.PLURAL
            )
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return found

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Replace the status (a merge patch of all of it; None values remove fields)."""
        answer = self.request(
            "PATCH",
            _path(api.KIND, namespace, name, "status"),
            verb="patch",
            resource=f"{api.PLURAL}/status",
            body={"status": dict(status)},
            content_type=MERGE_PATCH_CONTENT_TYPE,
        )
        self._written(answer)

    def delete_accel_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete the AccelTrainJob (only the one with this uid); children go by GC."""
        self._delete(
            api.KIND,
            namespace,
            name,
            resource=api.PLURAL,
            body={"propagationPolicy": "Background", "preconditions": {"uid": uid}},
        )

    # --- children ----------------------------------------------------------------------------
    def _list(self, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        answer = self.request(
            "GET",
            _path(kind, namespace),
            verb="list",
            resource=_KINDS[kind][1],
            query={"labelSelector": label_selector},
        )
        items: list[dict[str, Any]] = (answer or {}).get("items") or []
        return items

    def child_exists(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Whether the child (a ConfigMap, Service or gang object) exists; asked when the watch
        has no record of it."""
        path, plural = _object_path(api_version, kind, namespace, name)
        try:
            self.request("GET", path, verb="get", resource=plural)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    def list_attempt_jobs(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return self._list("Job", namespace, f"{constants.LABEL_JOB_NAME}={job}")

    def list_worker_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return self._list(
            "Pod",
            namespace,
            f"{constants.LABEL_JOB_NAME}={job},{constants.LABEL_ROLE}={constants.ROLE_WORKER}",
        )

    def list_scheduling_events(self, namespace: str) -> list[dict[str, Any]]:
        answer = self.request(
            "GET",
            _path("Event", namespace),
            verb="list",
            resource="events",
            query={"fieldSelector": "involvedObject.kind=Pod,reason=FailedScheduling"},
        )
        items: list[dict[str, Any]] = (answer or {}).get("items") or []
        return items

    def list_create_failures(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The Job controller's FailedCreate events of one attempt's Job (pods it could not
        create: admission, quota, an invalid pod)."""
        selector = f"involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate"
        answer = self.request(
            "GET",
            _path("Event", namespace),
            verb="list",
            resource="events",
            query={"fieldSelector": selector},
        )
        items: list[dict[str, Any]] = (answer or {}).get("items") or []
        return items

    def list_kueue_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        """Kueue's Workloads of one attempt's Job (empty where Kueue is not installed)."""
        try:
            answer = self.request(
                "GET",
                constants.KUEUE_WORKLOADS_PATH.format(namespace=namespace),
                verb="list",
                resource="kueue-workloads",
                query={"labelSelector": f"{constants.LABEL_KUEUE_JOB_UID}={job_uid}"},
            )
        except ApiError as error:
            logger.debug("no Kueue workloads in %s: %s", namespace, error)
            return []
        items: list[dict[str, Any]] = (answer or {}).get("items") or []
        return items

    def server_version(self) -> str:
        """The API server's gitVersion (like v1.35.0), or "unknown" when it does not say."""
        try:
            answer = self.request("GET", "/version", verb="get", resource="version")
        except ApiError:
            return "unknown"
        return str((answer or {}).get("gitVersion") or "unknown")

    def serves_workloads(self) -> bool:
        """Whether the API server serves scheduling.k8s.io/v1alpha1 Workloads (native gang
        scheduling); False on clusters without the GenericWorkload feature."""
        return self._serves("/apis/scheduling.k8s.io/v1alpha1", "workloads")

    def served_pod_group_apis(self) -> tuple[str, ...]:
        """The PodGroup apiVersions (Volcano's, scheduler-plugins') the API server serves."""
        return tuple(
            version
            for version, plural in gang.PLURALS.items()
            if plural == "podgroups" and self._serves(f"/apis/{version}", plural)
        )

    def serves_kueue_workloads(self) -> bool:
        """Whether Kueue is installed (its kueue.x-k8s.io Workloads are served)."""
        return self._serves(constants.KUEUE_API, "workloads")

    def _serves(self, group_version: str, plural: str) -> bool:
        try:
            answer = self.request("GET", group_version, verb="get", resource="discovery")
        except ApiError:
            return False
        resources = (answer or {}).get("resources") or []
        return any(item.get("name") == plural for item in resources)

    def pod_log_tail(self, namespace: str, pod: str, lines: int = 20) -> str:
        """The trainer container's last log lines; empty when the node cannot serve logs."""
        try:
            text = self.request(
                "GET",
                _path("Pod", namespace, pod, "log"),
                verb="get",
                resource="pods/log",
                query={"container": constants.TRAINER_CONTAINER, "tailLines": str(lines)},
                timeout=10.0,
            )
        except ApiError as error:
            logger.debug("no log of pod %s/%s: %s", namespace, pod, error)
            return ""
        except Exception as error:  # the node may not answer at all
            logger.debug("no log of pod %s/%s: %s", namespace, pod, error)
            return ""
        return text if isinstance(text, str) else json.dumps(text)

    def apply(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> None:
        """Server-side apply one rendered object under the operator's field manager; with
        ``dry_run`` the API server validates and admits it without storing anything."""
        metadata = obj["metadata"]
        path, plural = _object_path(
            str(obj["apiVersion"]), str(obj["kind"]), metadata["namespace"], metadata["name"]
        )
        query = {"fieldManager": constants.FIELD_MANAGER, "force": "true"}
        if dry_run:
            query["dryRun"] = "All"
        answer = self.request(
            "PATCH",
            path,
            verb="dry-run" if dry_run else "apply",
            resource=plural,
            query=query,
            body=dict(obj),
            content_type=APPLY_CONTENT_TYPE,
        )
        if not dry_run:
            self._written(answer)

    def _delete(
        self, kind: str, namespace: str, name: str, *, resource: str, body: Mapping[str, Any]
    ) -> bool:
        """Delete an object; False when it was already gone."""
        try:
            self.request(
                "DELETE",
                _path(kind, namespace, name),
                verb="delete",
                resource=resource,
                body=dict(body),
            )
        except ApiError as error:
            if error.status in (404, 409):
                # 409: the uid precondition failed, i.e. a new object took the name.
                return False
            raise
        return True

    def delete_attempt(
        self, namespace: str, job: str, attempt: int, group: tuple[str, str] | None = None
    ) -> None:
        """Delete an attempt's Job in the foreground (it goes after its pods), its ConfigMap,
        and its gang object (``group``: its apiVersion and kind) when it has one."""
        self._delete(
            "Job",
            namespace,
            render.attempt_job_name(job, attempt),
            resource="jobs",
            body={"propagationPolicy": "Foreground"},
        )
        self._delete(
            "ConfigMap",
            namespace,
            render.config_map_name(job, attempt),
            resource="configmaps",
            body={"propagationPolicy": "Background"},
        )
        if group is not None:
            path, plural = _object_path(*group, namespace, render.attempt_job_name(job, attempt))
            with contextlib.suppress(ApiError):
                self.request("DELETE", path, verb="delete", resource=plural, body={})

    def delete_pod(
        self, namespace: str, pod: str, *, force: bool = False, grace_seconds: int | None = None
    ) -> None:
        """Delete a worker pod whose Job is already gone (a leftover of a torn-down attempt), or
        one of a failed attempt with ``grace_seconds``; ``force``: at once (grace period 0), for
        a pod whose kubelet no longer answers."""
        body: dict[str, Any] = {}
        if force or grace_seconds is not None:
            body["gracePeriodSeconds"] = 0 if force else grace_seconds
        self._delete("Pod", namespace, pod, resource="pods", body=body)

    # --- events ------------------------------------------------------------------------------
    def post_event(
        self, about: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        """Post a core/v1 Event about a namespaced object, an AccelTrainJob unless ``about``
        says otherwise (what `kubectl describe` shows)."""
        metadata = about["metadata"]
        namespace = metadata["namespace"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if len(message) > EVENT_MESSAGE_LIMIT:
            message = message[: EVENT_MESSAGE_LIMIT - 3] + "..."
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": about.get("apiVersion", api.API_VERSION),
                "kind": about.get("kind", api.KIND),
                "name": metadata["name"],
                "namespace": namespace,
                "uid": metadata.get("uid"),
            },
            "reason": reason,
            "message": message,
            "type": event_type,
            "source": {"component": constants.FIELD_MANAGER},
            "reportingComponent": constants.FIELD_MANAGER,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        path = _path("Event", namespace)
        self.request("POST", path, verb="create", resource="events", body=event)

    # --- the leader Lease ------------------------------------------------------------------------
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease, or None when it does not exist."""
        try:
            lease = self.request(
                "GET",
                _path("Lease", namespace, name),
                verb="get",
                resource="leases",
                timeout=LEASE_TIMEOUT_SECONDS,
            )
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return dict(lease)

    def write_lease(
        self, namespace: str, name: str, spec: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any] | None:
        """Create the Lease (``resource_version`` None) or replace the version that was read;
        None when another writer got there first (409), which is how candidates race."""
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": dict(spec),
        }
        if resource_version is None:
            method, path, verb = "POST", _path("Lease", namespace), "create"
        else:
            body["metadata"]["resourceVersion"] = resource_version
            method, path, verb = "PUT", _path("Lease", namespace, name), "update"
        try:
            written = self.request(
                method,
                path,
                verb=verb,
                resource="leases",
                body=body,
                timeout=LEASE_TIMEOUT_SECONDS,
                fenced=False,
            )
        except ApiError as error:
            if error.status == 409:
                return None
            raise
        return dict(written)

"""The operator's cache of AccelTrainJobs and the objects they own, fed by watches.

An informer in client-go's sense: for each kind (AccelTrainJobs, attempt Jobs, worker pods,
Services, ConfigMaps, gang objects) one thread lists and then watches, in each watched namespace
or cluster-wide. Children are watched with the server-side label selector
``acceltrain.io/job-name``, so pods and Jobs that are not ours never reach the process. The
:class:`Store` indexes every object by (kind, namespace, owning AccelTrainJob); reconciles read
from it instead of asking the API server, which then sees only the watches and the writes
(docs/design.md#the-reconcile-loop).

Reads are never older than the operator's own writes: what a write answers (the object as
stored) goes into the store when it is newer than what the watch delivered. An object the watch
reported deleted is not brought back by a late write answer. Stored objects lose
``metadata.managedFields``, the bulk of an applied object that nothing here reads.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from accel_operator import api, constants, gang
from accel_operator.kube import UNREACHABLE_ERRORS, ApiError, KubeClient

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
# Deleted objects' uids are remembered this long, so that a write's late answer cannot bring
# one back; longer than any write takes.
TOMBSTONE_SECONDS = 300.0


@dataclasses.dataclass(frozen=True)
class WatchedKind:
    """A kind the informer lists and watches: its API prefix and plural, and whether only
    labelled children (``acceltrain.io/job-name``) are of interest."""

    kind: str
    prefix: str
    plural: str
    owned: bool = True

    def path(self, namespace: str | None) -> str:
        if namespace is None:
            return f"{self.prefix}/{self.plural}"
        return f"{self.prefix}/namespaces/{namespace}/{self.plural}"


ACCEL_JOBS = WatchedKind(api.KIND, f"/apis/{api.API_VERSION}", api.PLURAL, owned=False)
JOBS = WatchedKind("Job", "/apis/batch/v1", "jobs")
PODS = WatchedKind("Pod", "/api/v1", "pods")
SERVICES = WatchedKind("Service", "/api/v1", "services")
CONFIG_MAPS = WatchedKind("ConfigMap", "/api/v1", "configmaps")
CHILD_KINDS = (ACCEL_JOBS, JOBS, PODS, SERVICES, CONFIG_MAPS)
"""The kinds every cluster serves (the AccelTrainJobs themselves included); gang objects' kinds
come from :func:`gang_kinds`."""


def gang_kinds(native_gang: bool, pod_group_apis: Iterable[str]) -> list[WatchedKind]:
    """The gang objects' kinds whose API the cluster serves."""
    versions = [*pod_group_apis, *([gang.WORKLOAD_API_VERSION] if native_gang else [])]
    kind_of = dict(gang.GROUP_KINDS.values())
    return [
        WatchedKind(kind_of[version], f"/apis/{version}", gang.PLURALS[version])
        for version in versions
    ]


def owner_of(kind: WatchedKind, obj: Mapping[str, Any]) -> str | None:
    """The AccelTrainJob an object belongs to: itself, or the one its label names."""
    metadata = obj.get("metadata") or {}
    if not kind.owned:
        return str(metadata.get("name") or "") or None
    return (metadata.get("labels") or {}).get(constants.LABEL_JOB_NAME) or None


def _version(obj: Mapping[str, Any]) -> int | None:
    text = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else None


def _trimmed(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": metadata}


Listener = Callable[[str, str, Mapping[str, Any], Mapping[str, Any] | None], None]
"""Called with (kind, event type, object, the object stored before) for every change."""


class Store:
    """Thread-safe: informer threads and write answers fill it, reconcile threads read it."""

    def __init__(self) -> None:
        self._owned: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
        """(kind, namespace, owner) -> name -> object."""
        self._owner: dict[tuple[str, str, str], str] = {}
        """(kind, namespace, name) -> owner, to find an object again."""
        self._tombstones: collections.OrderedDict[str, float] = collections.OrderedDict()
        """Uids of deleted objects -> when, oldest first."""
        self._lock = threading.Lock()

    def owned(self, kind: str, namespace: str, owner: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._owned.get((kind, namespace, owner), {}).values())

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._stored_locked(kind, namespace, name)

    def keys(self, kind: str, namespace: str | None) -> set[tuple[str, str]]:
        """(namespace, name) of every stored object of a kind, in a namespace or all."""
        with self._lock:
            return {
                (ns, name)
                for (k, ns, name) in self._owner
                if k == kind and (namespace is None or ns == namespace)
            }

    def upsert(
        self, kind: str, owner: str, obj: Mapping[str, Any], *, from_write: bool = False
    ) -> tuple[bool, dict[str, Any] | None]:
        """Store an object unless the stored version of it is newer (or, for a write's answer,
        the object was deleted meanwhile); returns whether it was stored, and what was stored
        before."""
        metadata = obj["metadata"]
        namespace, name = metadata.get("namespace") or "", metadata["name"]
        with self._lock:
            if from_write and str(metadata.get("uid")) in self._tombstones:
                return False, None
            stored = self._stored_locked(kind, namespace, name)
            if stored is not None and _newer(stored, than=obj):
                return False, stored
            self._remove_locked(kind, namespace, name)
            self._owned.setdefault((kind, namespace, owner), {})[name] = _trimmed(obj)
            self._owner[(kind, namespace, name)] = owner
            return True, stored

    def delete(
        self, kind: str, namespace: str, name: str, uid: str | None
    ) -> dict[str, Any] | None:
        """Forget a deleted object; returns what was stored."""
        with self._lock:
            if uid:
                self._bury(uid)
            stored = self._stored_locked(kind, namespace, name)
            self._remove_locked(kind, namespace, name)
            return stored

    def _stored_locked(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        owner = self._owner.get((kind, namespace, name))
        return None if owner is None else self._owned[(kind, namespace, owner)][name]

    def _remove_locked(self, kind: str, namespace: str, name: str) -> None:
        owner = self._owner.pop((kind, namespace, name), None)
        if owner is None:
            return
        objects = self._owned[(kind, namespace, owner)]
        del objects[name]
        if not objects:
            del self._owned[(kind, namespace, owner)]

    def _bury(self, uid: str) -> None:
        """Remember a deleted uid; forget those buried longer than TOMBSTONE_SECONDS ago."""
        now = time.monotonic()
        self._tombstones[uid] = now
        self._tombstones.move_to_end(uid)
        while self._tombstones:
            oldest, since = next(iter(self._tombstones.items()))
            if now - since <= TOMBSTONE_SECONDS:
                break
            del self._tombstones[oldest]


def _newer(stored: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether the stored object is a later version of the same object (same uid)."""
    if stored["metadata"].get("uid") != than["metadata"].get("uid"):
        return False
    old, new = _version(stored), _version(than)
    return old is not None and new is not None and old > new


class Informer:
    """List+watch threads for each kind and scope, filling one :class:`Store`."""

    def __init__(
        self,
        kube: KubeClient,
        kinds: Iterable[WatchedKind],
        namespaces: Iterable[str] = (),
        listener: Listener | None = None,
        watch_seconds: int = 300,
    ) -> None:
        self.kube = kube
        self.store = Store()
        self.kinds = {kind.kind: kind for kind in kinds}
        patterns = list(namespaces)
        exact = bool(patterns) and not any(set("*?[") & set(p) for p in patterns)
        # Namespace globs (team-*) are watched cluster-wide and filtered here.
        self._scopes: list[str | None] = list(patterns) if exact else [None]
        self._patterns = [] if exact else patterns
        self.listener = listener
        """Told of every change the watches bring (set before :meth:`start`)."""
        self._watch_seconds = watch_seconds
        self._unsynced = {(kind, scope) for kind in self.kinds for scope in self._scopes}
        self._synced = threading.Event()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> None:
        for kind in self.kinds.values():
            for scope in self._scopes:
                thread = threading.Thread(
                    target=self._run,
                    args=(kind, scope),
                    name=f"informer-{kind.plural}",
                    daemon=True,
                )
                thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def wait_synced(self, timeout: float) -> bool:
        """Whether every kind has been listed once (within ``timeout`` seconds)."""
        return self._synced.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def record(self, obj: Mapping[str, Any]) -> None:
        """An object as the API server answered a write or a read of it."""
        kind = self.kinds.get(str(obj.get("kind")))
        owner = owner_of(kind, obj) if kind is not None else None
        if kind is not None and owner is not None:
            self.store.upsert(kind.kind, owner, obj, from_write=True)

    # --- the watch threads -----------------------------------------------------------------
    def _run(self, kind: WatchedKind, scope: str | None) -> None:
        selector = constants.LABEL_JOB_NAME if kind.owned else None
        while not self._stopping.is_set():
            try:
                listing = self.kube.list_collection(
                    kind.path(scope), resource=kind.plural, label_selector=selector
                )
                self._replace(kind, scope, listing.get("items") or [])
                self._mark_synced(kind, scope)
                self._follow(kind, scope, selector, listing["metadata"]["resourceVersion"])
            except ApiError as error:
                if error.status != 410:  # 410: the version expired; list again at once
                    logger.warning("watch of %s failed, listing again: %s", kind.plural, error)
                    self._stopping.wait(RETRY_SECONDS)
            except UNREACHABLE_ERRORS as error:
                logger.warning(
                    "watch of %s: the API server did not answer (%s)", kind.plural, error
                )
                self._stopping.wait(RETRY_SECONDS)
            except Exception:  # one bad event must not end the watch
                logger.exception("watch of %s failed, listing again", kind.plural)
                self._stopping.wait(RETRY_SECONDS)

    def _follow(
        self, kind: WatchedKind, scope: str | None, selector: str | None, version: str
    ) -> None:
        """Watch from ``version``, one stream of ``watch_seconds`` after another (a connection
        lost without an error ends with its stream's read timeout)."""
        while not self._stopping.is_set():
            for event in self.kube.watch(
                kind.path(scope),
                resource=kind.plural,
                label_selector=selector,
                resource_version=version,
                timeout_seconds=self._watch_seconds,
                bookmarks=True,
            ):
                obj = event["object"]
                version = str(obj["metadata"].get("resourceVersion") or version)
                if event["type"] != "BOOKMARK" and self._in_scope(obj):
                    self._apply(kind, event["type"], obj)

    def _in_scope(self, obj: Mapping[str, Any]) -> bool:
        namespace = str(obj["metadata"].get("namespace") or "")
        return not self._patterns or any(fnmatch.fnmatch(namespace, p) for p in self._patterns)

    def _apply(self, kind: WatchedKind, event_type: str, obj: Mapping[str, Any]) -> None:
        metadata = obj["metadata"]
        namespace, name = str(metadata.get("namespace") or ""), str(metadata["name"])
        owner = owner_of(kind, obj)
        if event_type == "DELETED" or owner is None:
            before = self.store.delete(kind.kind, namespace, name, metadata.get("uid"))
            event_type = "DELETED"
        else:
            stored, before = self.store.upsert(kind.kind, owner, obj)
            if not stored:
                return  # older than what a write's answer already put there: no news
        if self.listener is not None:
            self.listener(kind.kind, event_type, obj, before)

    def _replace(self, kind: WatchedKind, scope: str | None, items: list[dict[str, Any]]) -> None:
        """A fresh list: store every object, and report those gone since as deleted."""
        listed = {(str(i["metadata"].get("namespace") or ""), i["metadata"]["name"]) for i in items}
        for namespace, name in self.store.keys(kind.kind, scope) - listed:
            stored = self.store.get(kind.kind, namespace, name)
            if stored is not None:
                self._apply(kind, "DELETED", stored)
        for item in items:
            if self._in_scope(item):
                self._apply(kind, "ADDED", item)

    def _mark_synced(self, kind: WatchedKind, scope: str | None) -> None:
        with self._lock:
            self._unsynced.discard((kind.kind, scope))
            if not self._unsynced:
                self._synced.set()

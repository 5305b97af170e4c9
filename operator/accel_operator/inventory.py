"""Which owned Services, ConfigMaps and gang Workloads exist, and what they hold, as the
operator's watches have seen them.

The operator restores the headless Service, the ConfigMap and the native gang Workload of a live
attempt when they are deleted or changed out of band (the pods' DNS names, the DeepSpeed config
and the scheduling of a re-created pod depend on them; docs/design.md#restarts-and-self-healing).
Asking the API server on every reconcile would cost a request per child per job per reconcile;
instead the watch events of these kinds keep this index (presence, and the ``data``/``spec`` the
operator compares with what it renders), and only a child the index does not hold (one deleted,
or one the watch has not listed yet after a start) is checked with a GET before it is
recreated.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any

RESTORABLE_KINDS = ("ConfigMap", "Service", "Workload", "PodGroup")
"""The children restored while their attempt is live: the pods mount the ConfigMap, resolve each
other through the Service, and a pod the Job controller creates again waits for its gang object
(the native Workload, or a PodGroup of Volcano or scheduler-plugins). The Job has its own rule:
a lost Job restarts the group."""


def watched_gang_object(api_version: str, kind: str, pod_group_apis: tuple[str, ...]) -> bool:
    """Whether the operator's watches cover this gang object: the native Workload always (it is
    rendered only where the API is served), a PodGroup when its API was served at start-up."""
    return kind == "Workload" or (kind == "PodGroup" and api_version in pod_group_apis)


Key = tuple[str, str, str]
"""(kind, namespace, name)."""


OWNED_FIELDS = ("data", "spec")
"""The parts of a restorable child the operator writes and compares (a ConfigMap's data, a
Service's spec); metadata and status belong to others too."""


def owned_content(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the owned parts (a watch event's body is the watcher's to reuse)."""
    return {field: copy.deepcopy(obj[field]) for field in OWNED_FIELDS if field in obj}


class ChildInventory:
    """Thread-safe: watch handlers write it, reconcile threads read it."""

    def __init__(self) -> None:
        self._present: set[Key] = set()
        self._content: dict[Key, dict[str, Any]] = {}
        self._unchecked: set[Key] = set()
        """Children whose content arrived or changed since the reconciler last found it as
        rendered: only these are rendered and compared."""
        self._lock = threading.Lock()

    def seen(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        deleted: bool,
        content: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a watch event of an owned child (``deleted`` for a DELETED event) and, when
        given, its :func:`owned_content`. True when content seen before has changed."""
        key = (kind, namespace, name)
        with self._lock:
            if deleted:
                self._present.discard(key)
                self._content.pop(key, None)
                self._unchecked.discard(key)
                return False
            self._present.add(key)
            before = self._content.get(key)
            if content is None or before == content:
                return False
            self._content[key] = dict(content)
            self._unchecked.add(key)
            return before is not None

    def holds(self, kind: str, namespace: str, name: str) -> bool:
        with self._lock:
            return (kind, namespace, name) in self._present

    def to_check(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The child's content when it has not been found as rendered since it last changed."""
        key = (kind, namespace, name)
        with self._lock:
            return self._content.get(key) if key in self._unchecked else None

    def checked(self, kind: str, namespace: str, name: str) -> None:
        """The child holds what the operator renders: no need to compare it until it changes."""
        with self._lock:
            self._unchecked.discard((kind, namespace, name))

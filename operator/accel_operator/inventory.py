"""Which restorable children (an attempt's Service, ConfigMap and gang object) changed since the
reconciler last found them as it renders them.

The operator restores the headless Service, the ConfigMap and the gang object of a live attempt
when they are deleted or changed out of band (the pods' DNS names, the DeepSpeed config and the
scheduling of a re-created pod depend on them; docs/design.md#restarts-and-self-healing). The
informer's store says whether each exists and holds its content; rendering and comparing every
child on every reconcile would cost CPU for nothing, so the informer's listener marks a child
here when its owned content (a ConfigMap's ``data``, the others' ``spec``) arrives or changes,
and only marked children are compared.
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


class ChangedChildren:
    """Thread-safe: the informer's listener marks, reconcile threads check."""

    def __init__(self) -> None:
        self._marked: set[Key] = set()
        self._lock = threading.Lock()

    def mark(self, kind: str, namespace: str, name: str) -> None:
        """The child's owned content arrived or changed: compare it at the next reconcile."""
        with self._lock:
            self._marked.add((kind, namespace, name))

    def marked(self, kind: str, namespace: str, name: str) -> bool:
        with self._lock:
            return (kind, namespace, name) in self._marked

    def checked(self, kind: str, namespace: str, name: str) -> None:
        """The child holds what the operator renders (or is gone): no need to compare it again
        until it changes."""
        with self._lock:
            self._marked.discard((kind, namespace, name))

"""Which owned Services and ConfigMaps exist, as the operator's watches have seen them.

The operator restores the headless Service and the ConfigMap of a live attempt when they are
deleted out of band (the pods' DNS names and the DeepSpeed config depend on them). Asking the API
server on every reconcile would cost two requests per job per resync; instead the watch events
of both kinds keep this index, and only a child the index does not hold (one deleted, or one the
watch has not listed yet after a start) is checked with a GET before it is recreated.
"""

from __future__ import annotations

import threading

RESTORABLE_KINDS = ("ConfigMap", "Service")
"""The children restored while their attempt is live. The Job has its own rule (a lost Job
restarts the group) and the gang objects are read by the scheduler only at placement."""

Key = tuple[str, str, str]
"""(kind, namespace, name)."""


class ChildInventory:
    """Thread-safe: watch handlers write it, reconcile threads read it."""

    def __init__(self) -> None:
        self._present: set[Key] = set()
        self._lock = threading.Lock()

    def seen(self, kind: str, namespace: str, name: str, *, deleted: bool) -> None:
        """Record a watch event of an owned child (``deleted`` for a DELETED event)."""
        with self._lock:
            if deleted:
                self._present.discard((kind, namespace, name))
            else:
                self._present.add((kind, namespace, name))

    def holds(self, kind: str, namespace: str, name: str) -> bool:
        with self._lock:
            return (kind, namespace, name) in self._present

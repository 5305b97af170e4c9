"""The informer's cache: reads by owner, never older than the operator's own writes, deleted
objects stay deleted, and a relist after an expired watch reports what went away meanwhile."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from accel_operator import constants
from accel_operator.informer import PODS, Informer, Store
from accel_operator.kube import ApiError


def pod(name: str, version: int, *, owner: str = "llm", uid: str = "", phase: str = "Pending"):
    labels = {constants.LABEL_JOB_NAME: owner} if owner else {}
    metadata = {
        "name": name,
        "namespace": "team-a",
        "uid": uid or f"uid-{name}",
        "resourceVersion": str(version),
        "labels": labels,
        "managedFields": [{"manager": "kube-scheduler"}],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": {"phase": phase}}


def phases(store: Store, owner: str = "llm") -> dict[str, str]:
    return {
        p["metadata"]["name"]: p["status"]["phase"] for p in store.owned("Pod", "team-a", owner)
    }


def test_the_store_reads_objects_by_owner_without_their_managed_fields() -> None:
    store = Store()
    store.upsert("Pod", "llm", pod("llm-0", 5))
    store.upsert("Pod", "other", pod("other-0", 6, owner="other"))

    owned = store.owned("Pod", "team-a", "llm")
    assert [p["metadata"]["name"] for p in owned] == ["llm-0"]
    assert "managedFields" not in owned[0]["metadata"]
    assert store.get("Pod", "team-a", "other-0") is not None


def test_a_write_answer_is_not_replaced_by_an_older_watch_event() -> None:
    store = Store()
    store.upsert("Pod", "llm", pod("llm-0", 7, phase="Running"), from_write=True)
    store.upsert("Pod", "llm", pod("llm-0", 5, phase="Pending"))  # the watch lags behind
    assert phases(store) == {"llm-0": "Running"}
    store.upsert("Pod", "llm", pod("llm-0", 9, phase="Succeeded"))
    assert phases(store) == {"llm-0": "Succeeded"}


def test_a_new_object_of_the_same_name_replaces_the_old_one_whatever_its_version() -> None:
    store = Store()
    store.upsert("Pod", "llm", pod("llm-0", 9, uid="first", phase="Failed"))
    store.upsert("Pod", "llm", pod("llm-0", 3, uid="second", phase="Pending"))
    assert phases(store) == {"llm-0": "Pending"}


def test_a_late_write_answer_does_not_bring_back_a_deleted_object() -> None:
    store = Store()
    store.upsert("Pod", "llm", pod("llm-0", 5))
    store.delete("Pod", "team-a", "llm-0", "uid-llm-0")
    store.upsert("Pod", "llm", pod("llm-0", 6), from_write=True)
    assert phases(store) == {}


class FakeKube:
    """Answers the informer's LISTs from ``listings`` and feeds its watches from ``events``
    (None ends a stream; an ApiError is raised)."""

    def __init__(self, listings: list[list[dict[str, Any]]]) -> None:
        self.listings = listings
        self.lists = 0
        self.events: queue.Queue[Any] = queue.Queue()
        self.watched_from: list[str | None] = []

    def list_collection(self, path: str, *, resource: str, label_selector: str | None = None):
        assert label_selector == constants.LABEL_JOB_NAME  # selected by the API server
        items = self.listings[min(self.lists, len(self.listings) - 1)]
        self.lists += 1
        return {"items": items, "metadata": {"resourceVersion": str(10 * self.lists)}}

    def watch(self, path: str, **options: Any) -> Iterator[dict[str, Any]]:
        self.watched_from.append(options.get("resource_version"))
        while True:
            event = self.events.get(timeout=10)
            if event is None:
                return
            if isinstance(event, Exception):
                raise event
            yield event


def test_the_informer_lists_follows_the_watch_and_relists_when_the_version_expired() -> None:
    kube = FakeKube([[pod("llm-0", 1), pod("llm-1", 2)], [pod("llm-0", 12, phase="Running")]])
    changes: list[tuple[str, str]] = []
    seen = threading.Event()

    def listener(kind: str, event: str, obj: Any, before: Any) -> None:
        changes.append((event, obj["metadata"]["name"]))
        seen.set()

    cache = Informer(kube, [PODS], namespaces=["team-a"], listener=listener)  # type: ignore[arg-type]
    cache.start()
    assert cache.wait_synced(5)
    assert phases(cache.store) == {"llm-0": "Pending", "llm-1": "Pending"}

    kube.events.put({"type": "MODIFIED", "object": pod("llm-1", 11, phase="Running")})
    kube.events.put({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}})
    kube.events.put(ApiError("WATCH", "/api/v1/pods", 410, "too old"))
    _wait_for(lambda: kube.lists == 2 and ("DELETED", "llm-1") in changes)
    cache.stop()
    kube.events.put(None)

    # The relist shows llm-1 gone and llm-0 running: the cache says so, and so did the listener.
    assert phases(cache.store) == {"llm-0": "Running"}
    assert changes == [
        ("ADDED", "llm-0"),
        ("ADDED", "llm-1"),
        ("MODIFIED", "llm-1"),
        ("DELETED", "llm-1"),
        ("ADDED", "llm-0"),
    ]
    assert kube.watched_from[0] == "10"  # from the list's version


def test_an_object_that_loses_its_job_label_leaves_the_cache() -> None:
    kube = FakeKube([[pod("llm-0", 1)]])
    cache = Informer(kube, [PODS], namespaces=["team-a"])  # type: ignore[arg-type]
    cache.start()
    assert cache.wait_synced(5)
    kube.events.put({"type": "MODIFIED", "object": pod("llm-0", 2, owner="")})
    _wait_for(lambda: not phases(cache.store))
    cache.stop()
    kube.events.put(None)


def _wait_for(condition: Any, timeout: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        done.wait(0.02)
    raise AssertionError("the informer did not get there")


def test_a_watch_event_older_than_a_writes_answer_is_no_news_to_the_listener() -> None:
    kube = FakeKube([[pod("llm-0", 1)]])
    changes: list[tuple[str, str]] = []
    cache = Informer(
        kube,  # type: ignore[arg-type]
        [PODS],
        namespaces=["team-a"],
        listener=lambda kind, event, obj, before: changes.append((event, obj["status"]["phase"])),
    )
    cache.start()
    assert cache.wait_synced(5)
    cache.record(pod("llm-0", 7, phase="Running"))  # the answer of the operator's own write
    kube.events.put({"type": "MODIFIED", "object": pod("llm-0", 5, phase="Pending")})
    kube.events.put({"type": "MODIFIED", "object": pod("llm-0", 9, phase="Succeeded")})
    _wait_for(lambda: len(changes) == 2)
    cache.stop()
    kube.events.put(None)
    # The stale version 5 reached neither the store nor the listener (which would have taken
    # it for an object seen for the first time).
    assert changes == [("ADDED", "Pending"), ("MODIFIED", "Succeeded")]

"""KubeClient.watch against a loopback server speaking the API server's watch protocol: events
arrive as dicts, bookmarks move the resume point without being yielded, a closed stream resumes
from the last version seen, and an expired version ends in ApiError 410."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from accel_operator.kube import ApiError, KubeClient
from accel_operator.metrics import OperatorMetrics


def configmap_event(kind: str, name: str, version: str) -> dict[str, Any]:
    metadata = {"name": name, "namespace": "team-a", "resourceVersion": version}
    return {"type": kind, "object": {"kind": "ConfigMap", "apiVersion": "v1", "metadata": metadata}}


GONE = {
    "type": "ERROR",
    "object": {
        "kind": "Status",
        "code": 410,
        "reason": "Expired",
        "message": "too old resource version",
    },
}

# One list of events per stream the server is asked for, in order; each stream then closes.
STREAMS = [
    [
        configmap_event("ADDED", "a", "5"),
        {
            "type": "BOOKMARK",
            "object": {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "7"},
            },
        },
    ],
    [configmap_event("MODIFIED", "a", "8"), GONE],
    [GONE],
]


class WatchServer(http.server.BaseHTTPRequestHandler):
    queries: list[dict[str, list[str]]] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        index = len(self.queries)
        self.queries.append({"path": [url.path], **urllib.parse.parse_qs(url.query)})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in STREAMS[index] if index < len(STREAMS) else []:
            self.wfile.write(json.dumps(event).encode() + b"\n")
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        del args


@pytest.fixture
def server() -> Iterator[str]:
    WatchServer.queries = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WatchServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def client_for(url: str, metrics: OperatorMetrics) -> KubeClient:
    configuration = kubernetes.client.Configuration()
    configuration.host = url
    return KubeClient(kubernetes.client.ApiClient(configuration), metrics)


def test_a_watch_resumes_from_the_last_version_and_ends_in_410_when_it_expired(
    server: str,
) -> None:
    metrics = OperatorMetrics()
    kube = client_for(server, metrics)
    seen: list[tuple[str, str]] = []
    with pytest.raises(ApiError) as expired:
        for event in kube.watch(
            "/api/v1/namespaces/team-a/configmaps",
            resource="configmaps",
            label_selector="acceltrain.io/job-name=llm",
            resource_version="3",
        ):
            assert isinstance(event["object"], dict)
            seen.append((event["type"], event["object"]["metadata"]["resourceVersion"]))
    assert expired.value.status == 410
    assert seen == [("ADDED", "5"), ("MODIFIED", "8")]  # the bookmark is not an event
    queries = WatchServer.queries
    assert [q["path"][0] for q in queries] == ["/api/v1/namespaces/team-a/configmaps"] * 3
    # The first stream starts where it was asked; the second from the bookmark's version; after
    # one 410 the library retries once from the last object's version, then gives up.
    assert [q["resourceVersion"] for q in queries] == [["3"], ["7"], ["8"]]
    assert all(q["labelSelector"] == ["acceltrain.io/job-name=llm"] for q in queries)
    assert all(q["watch"] == ["true"] and q["allowWatchBookmarks"] == ["true"] for q in queries)
    assert metrics.requests({"watch"}) == 3


def test_a_watch_with_a_timeout_ends_with_its_stream(server: str) -> None:
    kube = client_for(server, OperatorMetrics())
    events = list(kube.watch("/api/v1/pods", resource="pods", timeout_seconds=30))
    assert [e["type"] for e in events] == ["ADDED"]
    assert len(WatchServer.queries) == 1
    assert WatchServer.queries[0]["timeoutSeconds"] == ["30"]

"""Prometheus for the local cluster: its configuration and a PromQL helper.

Prometheus (built by ``make tools``: Debian's package leaves out Kubernetes service discovery)
discovers pods through ``kubernetes_sd_configs`` against the local API server exactly as it would
in a real cluster, and keeps the pods that expose a container port named ``metrics`` or carry the
annotation ``prometheus.io/scrape: "true"``.

Only pods on the process node are scraped: their IPs live in network namespaces this harness
created and are reachable from the host through the node agent's bridge. Pods on kwok nodes have
made-up IPs that belong to nobody, so they are never contacted.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SCRAPE_INTERVAL = "2s"
POD_JOB = "kubernetes-pods"
# What Prometheus's own user may do: discover scrape targets, nothing else.
DISCOVERY_RULES = [
    {
        "apiGroups": [""],
        "resources": ["pods", "services", "endpoints", "nodes"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"],
    },
]
OPERATOR_JOB = "acceltrain-operator"


@dataclass(frozen=True)
class PrometheusSettings:
    """What the configuration refers to: the API server, the client identity, the scrape targets."""

    api_url: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    process_node: str | None
    operator_metrics_port: int
    real_node: str | None = None


def scrape_config(settings: PrometheusSettings) -> dict[str, Any]:
    """The ``prometheus.yml`` content as a dictionary."""
    tls = {
        "ca_file": str(settings.ca_file),
        "cert_file": str(settings.cert_file),
        "key_file": str(settings.key_file),
    }
    # Only nodes whose pod addresses are real; with none nothing may be scraped (a space never
    # occurs in a node name).
    real_nodes = [name for name in (settings.process_node, settings.real_node) if name]
    node_regex = "|".join(map(re.escape, real_nodes)) if real_nodes else "no real node"
    pod_job: dict[str, Any] = {
        "job_name": POD_JOB,
        # Prometheus 3 refuses a response without a metrics Content-Type unless told what to
        # assume; small exporters (and http.server based probes) often send none.
        "fallback_scrape_protocol": "PrometheusText0.0.4",
        "kubernetes_sd_configs": [
            {"role": "pod", "api_server": settings.api_url, "tls_config": tls},
        ],
        "relabel_configs": _pod_relabeling(node_regex),
    }
    operator_job = {
        "job_name": OPERATOR_JOB,
        "fallback_scrape_protocol": "PrometheusText0.0.4",
        "static_configs": [{"targets": [f"127.0.0.1:{settings.operator_metrics_port}"]}],
    }
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [pod_job, operator_job],
    }


def _pod_relabeling(node_regex: str) -> list[dict[str, Any]]:
    """Which pods are scraped, at which address and path, with which target labels: what a
    PodMonitor's relabelings do on a Prometheus Operator install."""
    return [
        {
            "source_labels": ["__meta_kubernetes_pod_node_name"],
            "regex": node_regex,
            "action": "keep",
        },
        {
            "source_labels": [
                "__meta_kubernetes_pod_container_port_name",
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
            ],
            # `metrics` is local rank 0's exporter, `metrics-<n>` local rank n's.
            "regex": "metrics(-[0-9]+)?;.*|.*;true",
            "action": "keep",
        },
        {"source_labels": ["__meta_kubernetes_pod_ip"], "regex": "", "action": "drop"},
        {
            "source_labels": ["__meta_kubernetes_pod_phase"],
            "regex": "Pending|Succeeded|Failed|Unknown",
            "action": "drop",
        },
        # An annotated pod may name its port and path; a `metrics` port needs neither, and
        # keeps its own number: every local rank serves on its own port, and rewriting them
        # all to the annotation's would leave one target per pod (Prometheus drops the
        # duplicates).
        {
            "source_labels": ["__meta_kubernetes_pod_container_port_name"],
            "regex": "metrics(-[0-9]+)?",
            "replacement": "named",
            "target_label": "__tmp_metrics_port",
        },
        {
            "source_labels": [
                "__tmp_metrics_port",
                "__meta_kubernetes_pod_ip",
                "__meta_kubernetes_pod_annotation_prometheus_io_port",
            ],
            "regex": ";(.+);([0-9]+)",
            "replacement": "$1:$2",
            "target_label": "__address__",
        },
        {
            "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
            "regex": "(.+)",
            "target_label": "__metrics_path__",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
        # As a PodMonitor does: no honor_labels, and the trainer's series name their job in
        # `acceltrain_job`, which no target label here shadows.
    ]


def write_config(path: Path, settings: PrometheusSettings) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(scrape_config(settings), sort_keys=False))


def argv(binary: Path, config: Path, data_dir: Path, port: int) -> list[str]:
    return [
        str(binary),
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]


class PrometheusError(RuntimeError):
    """Prometheus answered a query with an error."""


def query(base_url: str, promql: str, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Runs an instant PromQL query; returns the ``data.result`` list of the answer."""
    url = f"{base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        answer = json.loads(response.read().decode())
    if answer.get("status") != "success":
        raise PrometheusError(f"query {promql!r} failed: {answer}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def active_targets(base_url: str, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The active scrape targets with their labels, health and last error."""
    url = f"{base_url}/api/v1/targets?state=active"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        answer = json.loads(response.read().decode())
    targets: list[dict[str, Any]] = answer["data"]["activeTargets"]
    return targets


def query_range(
    base_url: str, promql: str, *, start: float, end: float, step: float, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Runs a range PromQL query (Unix times); returns the ``data.result`` list (matrix)."""
    parameters = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"}
    url = f"{base_url}/api/v1/query_range?{urllib.parse.urlencode(parameters)}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        answer = json.loads(response.read().decode())
    if answer.get("status") != "success":
        raise PrometheusError(f"range query {promql!r} failed: {answer}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def label_values(
    base_url: str, label: str, match: str, *, start: float, end: float, timeout: float = 10.0
) -> list[str]:
    """The values ``label`` takes on the series ``match`` selects between two Unix times (what
    Grafana's ``label_values(match, label)`` asks)."""
    parameters = {"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"}
    url = f"{base_url}/api/v1/label/{label}/values?{urllib.parse.urlencode(parameters)}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        answer = json.loads(response.read().decode())
    if answer.get("status") != "success":
        raise PrometheusError(f"label values of {label!r} for {match!r} failed: {answer}")
    values: list[str] = answer["data"]
    return values


def label_names(base_url: str, *, start: float, end: float, timeout: float = 10.0) -> list[str]:
    """Every label name of every series stored between two Unix times."""
    parameters = {"start": f"{start:.3f}", "end": f"{end:.3f}"}
    url = f"{base_url}/api/v1/labels?{urllib.parse.urlencode(parameters)}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        answer = json.loads(response.read().decode())
    names: list[str] = answer["data"]
    return names

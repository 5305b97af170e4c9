"""The Prometheus Operator on the local cluster, and a Prometheus run on what it generates.

What this module owns:

* the component ``prometheus-operator``: the operator built by ``make tools`` (its Go module,
  pinned in ``hack/tools/versions.env``) as a local process through the cluster's own spawn, so it
  is in ``state.json`` and ``logs/prometheus-operator.log`` and stops with the cluster; it talks
  to the API server with the admin kubeconfig (``KUBECONFIG``) and watches every namespace;
* its CRDs (``monitoring.coreos.com``, from the same module), applied server-side as its docs say;
* a ``Prometheus`` object (:data:`NAMESPACE`/:data:`NAME`) that selects every PodMonitor and
  ServiceMonitor in every namespace, and the component ``prometheus-managed``: the locally built
  Prometheus run on the configuration the operator generated for that object.

How the managed Prometheus runs, and why:

* No container image can be pulled here, so the operator's StatefulSet for the object has zero
  replicas. The operator still renders the object's scrape configuration into the Secret
  ``prometheus-<name>`` (key ``prometheus.yaml.gz``) exactly as for a running one; that file is
  what breaks when a PodMonitor or ServiceMonitor is wrong, and it is what Prometheus runs on.
* In the pod, the config reloader unpacks that file and replaces ``$(VAR)`` with the container's
  environment (the pod name in the replica label, the shard number), and Kubernetes discovery uses
  the pod's ServiceAccount. :func:`managed_config` does the same two things and nothing else: it
  fills in those variables and points each ``kubernetes_sd_configs`` entry at a kubeconfig of the
  harness's Prometheus identity (allowed only to discover targets, as the ServiceAccount would be).
"""

from __future__ import annotations

import base64
import gzip
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from .cluster import Cluster, ClusterError, free_port
from .kubeapi import ApiError, health
from .prometheus import argv as prometheus_argv
from .tools import TOOLS_DIR, MissingToolError, tool_path

OPERATOR_COMPONENT = "prometheus-operator"
PROMETHEUS_COMPONENT = "prometheus-managed"
NAMESPACE = "monitoring"
NAME = "acceltrain"
API = "monitoring.coreos.com/v1"
CONFIG_KEY = "prometheus.yaml.gz"
# What the config reloader substitutes in the pod: the StatefulSet's first pod and its shard.
POD_ENVIRONMENT = {"POD_NAME": f"prometheus-{NAME}-0", "SHARD": "0"}
SCRAPE_INTERVAL = "2s"


def crd_path(tools_dir: Path = TOOLS_DIR) -> Path:
    path = tools_dir / "share" / "prometheus-operator" / "crd"
    if not (path / "monitoring.coreos.com_podmonitors.yaml").exists():
        raise MissingToolError(
            f"{path} has no CRDs: run `make tools` to build the Prometheus Operator"
        )
    return path


def operator_argv(binary: Path, port: int) -> list[str]:
    """The operator's command line; its kubeconfig comes from ``KUBECONFIG`` (it has no flag)."""
    return [str(binary), f"--web.listen-address=127.0.0.1:{port}", "--log-level=info"]


def prometheus_object(version: str) -> dict[str, Any]:
    """Every PodMonitor and ServiceMonitor in every namespace; zero replicas (no image here)."""
    return {
        "apiVersion": API,
        "kind": "Prometheus",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "replicas": 0,
            "version": version,
            "scrapeInterval": SCRAPE_INTERVAL,
            "evaluationInterval": SCRAPE_INTERVAL,
            "podMonitorSelector": {},
            "podMonitorNamespaceSelector": {},
            "serviceMonitorSelector": {},
            "serviceMonitorNamespaceSelector": {},
        },
    }


def managed_config(generated: str, kubeconfig: Path) -> dict[str, Any]:
    """The configuration Prometheus runs on, from the operator's generated text: the reloader's
    ``$(VAR)`` substitution, and discovery through ``kubeconfig`` instead of a ServiceAccount."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in POD_ENVIRONMENT:
            raise ClusterError(f"the generated configuration uses $({name}), unknown here")
        return POD_ENVIRONMENT[name]

    config: dict[str, Any] = yaml.safe_load(re.sub(r"\$\(([A-Z_]+)\)", substitute, generated))
    for scrape in config.get("scrape_configs") or []:
        for discovery in scrape.get("kubernetes_sd_configs") or []:
            if "api_server" in discovery:
                raise ClusterError(f"{scrape['job_name']} names an API server; expected in-cluster")
            discovery["kubeconfig_file"] = str(kubeconfig)
    return config


def generated_config(cluster: Cluster) -> str | None:
    """The operator's current configuration for the Prometheus object; None before it wrote one."""
    try:
        secret = cluster.admin_api().get(
            f"/api/v1/namespaces/{NAMESPACE}/secrets/prometheus-{NAME}"
        )
    except ApiError as error:
        if error.status == 404:
            return None
        raise
    packed = (secret.get("data") or {}).get(CONFIG_KEY)
    return gzip.decompress(base64.b64decode(packed)).decode() if packed else None


def scrape_jobs(generated: str | None) -> list[str]:
    if not generated:
        return []
    return [scrape["job_name"] for scrape in yaml.safe_load(generated).get("scrape_configs") or []]


def start_prometheus_operator(cluster: Cluster, *, timeout: float = 60.0) -> None:
    """Applies the CRDs, starts the operator against ``cluster`` and creates the Prometheus
    object; returns once the operator wrote the object's configuration Secret."""
    binary = tool_path(OPERATOR_COMPONENT, cluster.tools_dir)
    crds = crd_path(cluster.tools_dir)
    deadline = time.monotonic() + timeout
    cluster.kubectl("apply", "--server-side", "-f", str(crds))
    # The files are named <group>_<plural>.yaml (PyYAML cannot load them: they hold `=` values).
    for crd in sorted(crds.glob("*.yaml")):
        group, _, plural = crd.stem.partition("_")
        cluster.wait_crd_established(f"{plural}.{group}", max(1.0, deadline - time.monotonic()))
    port = free_port()
    environment = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    cluster._spawn(OPERATOR_COMPONENT, operator_argv(binary, port), env=environment)
    cluster._wait(
        deadline,
        "the Prometheus Operator's healthz",
        lambda: health(f"http://127.0.0.1:{port}/healthz", None) is not None,
    )
    cluster.kubectl("create", "namespace", NAMESPACE)
    version = f"v{_prometheus_release(cluster)}"
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(prometheus_object(version)))
    cluster._wait(deadline, "the generated configuration", lambda: bool(generated_config(cluster)))


def _prometheus_release(cluster: Cluster) -> str:
    binary = tool_path("prometheus", cluster.tools_dir)
    answer = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"version (\d+\.\d+\.\d+)", answer.stdout + answer.stderr)
    if not found:
        raise ClusterError(f"cannot read the version of {binary}: {answer.stdout}")
    return found.group(1)


def managed_dir(cluster: Cluster) -> Path:
    return cluster.state_dir / PROMETHEUS_COMPONENT


def start_managed_prometheus(cluster: Cluster, *, timeout: float = 30.0) -> str:
    """Runs Prometheus on the operator's configuration of the moment; returns its URL."""
    if PROMETHEUS_COMPONENT in cluster.running_components():
        raise ClusterError(f"{PROMETHEUS_COMPONENT} already runs for {cluster.state_dir}")
    port = free_port()
    _write_managed_config(cluster)
    cluster._spawn(
        PROMETHEUS_COMPONENT,
        prometheus_argv(
            tool_path("prometheus", cluster.tools_dir),
            managed_dir(cluster) / "prometheus.yml",
            managed_dir(cluster) / "data",
            port,
        ),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    cluster._wait(
        deadline, "the managed Prometheus", lambda: health(f"{url}/-/ready", None) is not None
    )
    return url


def reload_managed_prometheus(cluster: Cluster, url: str) -> bool:
    """What the config reloader does when the Secret changes: writes the new configuration and
    asks Prometheus to reload it. Returns whether the configuration had changed."""
    if not _write_managed_config(cluster):
        return False
    request = urllib.request.Request(f"{url}/-/reload", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
    return True


def _write_managed_config(cluster: Cluster) -> bool:
    generated = generated_config(cluster)
    if generated is None:
        raise ClusterError(f"the Prometheus Operator has not written secret prometheus-{NAME}")
    config = managed_config(generated, cluster.pki_dir / "prometheus.kubeconfig")
    path = managed_dir(cluster) / "prometheus.yml"
    text = yaml.safe_dump(config, sort_keys=False)
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


class ConfigReloader:
    """The config reloader's loop beside the managed Prometheus: every ``interval`` seconds the
    operator's Secret is read and a changed configuration reloaded (a context manager)."""

    def __init__(self, cluster: Cluster, url: str, *, interval: float = 1.0) -> None:
        self.cluster = cluster
        self.url = url
        self.interval = interval
        self.reloads = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-reloader", daemon=True)

    def __enter__(self) -> ConfigReloader:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                if reload_managed_prometheus(self.cluster, self.url):
                    self.reloads += 1
            except (ApiError, OSError, ClusterError) as error:
                # As the reloader does: report and try again on the next round.
                print(f"config reloader: {error}", file=sys.stderr)

"""What the operator's integration tests share: the operator as a subprocess, API access, specs.

The tests run ``python -m accel_operator run --standalone --namespace <test namespace>`` against
the local cluster, exactly as a user would, and read the cluster through the same small client
the operator uses (:class:`accel_operator.kube.KubeClient`, plain dicts).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from accel_operator import api, constants
from accel_operator.kube import ApiError, KubeClient, load_api_client
from localcluster import free_port, kwok, operator_argv
from localcluster.cpujobs import build_deepspeed_ops, mount_extensions
from localcluster.cpujobs import tiny_bert_spec as cpu_spec

__all__ = ["build_deepspeed_ops", "cpu_spec"]

REPO_ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = REPO_ROOT / "manifests" / "crd" / "acceltrain.io_acceltrainjobs.yaml"
CPU_SMOKE = REPO_ROOT / "manifests" / "examples" / "cpu-smoke.yaml"
GPU_POOL = {"acceltrain.io/pool": "gpu"}
OPERATOR_LOG_TAIL = 80

T = TypeVar("T")


def cpu_smoke_for_the_process_node(checkpoints: Path) -> tuple[str, dict[str, Any]]:
    """The CPU smoke example's name and spec, as the process node runs it: the checkpoint claim
    becomes a host directory (the process node mounts no claims; the real node does, see
    test_real_node.py) and DeepSpeed's ops come from the host's shared build directory."""
    job = next(
        document
        for document in yaml.safe_load_all(CPU_SMOKE.read_text())
        if document["kind"] == "AccelTrainJob"
    )
    spec = copy.deepcopy(job["spec"])
    spec["volumes"][0] = {
        "name": spec["volumes"][0]["name"],
        "mountPath": spec["volumes"][0]["mountPath"],
        "hostPath": {"path": str(checkpoints)},
    }
    return str(job["metadata"]["name"]), mount_extensions(spec)


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def install_crd(cluster: Any) -> None:
    """Install the CRD and wait until the garbage collector collects children of AccelTrainJobs.

    The garbage collector learns new resource types from discovery every 30 s; before that,
    children of a deleted AccelTrainJob wait in its retry queue with a growing backoff. A probe
    (an AccelTrainJob in ``default`` with one owned ConfigMap, deleted) shows when it is ready.
    """
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.wait_crd_established("acceltrainjobs.acceltrain.io")
    kube = Api(cluster.kubeconfig)
    probe = f"gc-probe-{os.getpid()}"
    owner = kube.create_job("default", probe, gpu_spec())
    config_maps = "/api/v1/namespaces/default/configmaps"
    kube.client.request(
        "POST",
        config_maps,
        verb="create",
        resource="configmaps",
        body={
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": probe,
                "ownerReferences": [
                    {
                        "apiVersion": api.API_VERSION,
                        "kind": api.KIND,
                        "name": probe,
                        "uid": owner["metadata"]["uid"],
                    }
                ],
            },
        },
    )
    kube.delete_job("default", probe)

    def collected() -> bool:
        return not any(cm["metadata"]["name"] == probe for cm in kube.items(config_maps))

    wait_for("the garbage collector to know AccelTrainJobs", collected, timeout=120)


def kubectl_apply(
    cluster: Any, namespace: str, document: dict[str, Any], *flags: str
) -> subprocess.CompletedProcess[str]:
    """``kubectl apply -n namespace [flags] -f -`` of one document, as a user runs it; the
    result is returned whatever the exit code (refusals are what some tests look for)."""
    return subprocess.run(
        [
            str(REPO_ROOT / ".tools" / "bin" / "kubectl"),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "apply",
            "-n",
            namespace,
            *flags,
            "-f",
            "-",
        ],
        input=yaml.safe_dump(document),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


class Api:
    """The reads and writes the tests make, as plain dicts."""

    def __init__(self, kubeconfig: Path) -> None:
        self.client = KubeClient(load_api_client(str(kubeconfig)))

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, verb="test", resource="test", **kwargs)

    def create_job(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        created: dict[str, Any] = self._request(
            "POST", f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.PLURAL}", body=body
        )
        return created

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.client.get_accel_job(namespace, name)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        found = self.job(namespace, name)
        assert found is not None, f"AccelTrainJob {namespace}/{name} does not exist"
        status: dict[str, Any] = found.get("status") or {}
        return status

    def patch_spec(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self._request(
            "PATCH",
            f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}",
            body={"spec": patch},
            content_type="application/merge-patch+json",
        )

    def delete_job(self, namespace: str, name: str) -> None:
        with contextlib.suppress(ApiError):
            self._request(
                "DELETE",
                f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}",
                body={"propagationPolicy": "Foreground"},
            )

    def items(self, path: str, selector: str = "") -> list[dict[str, Any]]:
        query = {"labelSelector": selector} if selector else None
        answer = self._request("GET", path, query=query)
        found: list[dict[str, Any]] = answer.get("items") or []
        return found

    def children(self, namespace: str, job: str) -> dict[str, list[dict[str, Any]]]:
        """Jobs, pods, ConfigMaps and Services labelled as the job's."""
        selector = f"{constants.LABEL_JOB_NAME}={job}"
        return {
            "jobs": self.items(f"/apis/batch/v1/namespaces/{namespace}/jobs", selector),
            "pods": self.items(f"/api/v1/namespaces/{namespace}/pods", selector),
            "configmaps": self.items(f"/api/v1/namespaces/{namespace}/configmaps", selector),
            "services": self.items(f"/api/v1/namespaces/{namespace}/services", selector),
        }

    def workloads(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The job's native gang Workloads (scheduling.k8s.io/v1alpha1)."""
        selector = f"{constants.LABEL_JOB_NAME}={job}"
        return self.items(
            f"/apis/scheduling.k8s.io/v1alpha1/namespaces/{namespace}/workloads", selector
        )

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [
            event
            for event in self.items(f"/api/v1/namespaces/{namespace}/events")
            if (event.get("involvedObject") or {}).get("name") == name
            and (event.get("involvedObject") or {}).get("kind") == api.KIND
        ]

    def event_reasons(self, namespace: str, name: str) -> list[str]:
        return [str(event.get("reason")) for event in self.events(namespace, name)]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for found in status.get("conditions") or []:
        if found.get("type") == kind:
            item: dict[str, Any] = found
            return item
    return {}


class OperatorProcess:
    """``python -m accel_operator run`` for one namespace, with its log in a file.

    It talks to the API server as the cluster's admin, or as whoever ``kubeconfig`` names (a
    ServiceAccount's token, so that RBAC applies to it as to an installed operator).
    """

    def __init__(
        self,
        cluster: Any,
        namespace: str,
        log_dir: Path,
        kubeconfig: Path | None = None,
        *,
        replica: str | None = None,
        election: tuple[float, float, float] | None = None,
    ) -> None:
        """``replica`` and ``election``: one of several replicas electing a leader, named as the
        chart names them (``POD_NAME``), with the Lease in ``namespace``."""
        self.cluster = cluster
        self.namespace = namespace
        self.kubeconfig = kubeconfig or Path(cluster.kubeconfig)
        self.replica = replica
        self.election = election
        self.log_path = log_dir / (f"operator-{replica}.log" if replica else "operator.log")
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        if self.replica is not None:
            env |= {"POD_NAME": self.replica, "POD_NAMESPACE": self.namespace}
        argv = operator_argv(
            leader_election=self.election,
            namespace=self.namespace,
            metrics_port=self.metrics_port,
            liveness_port=self.liveness_port,
            reconcile_interval_seconds=1,
            # Without a process node nothing is scraped; loopback stands in for its network.
            scrape_network=str(self.cluster.bridge_cidr or "127.0.0.0/8"),
        )
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"----- operator start {self.starts} -----\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
            )
        wait_for("the operator's liveness endpoint", self._alive, timeout=60, interval=0.2)

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"the operator exited with {self.process.returncode}:\n{self.log_tail()}"
            )
        try:
            url = f"http://127.0.0.1:{self.liveness_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL: the operator gets no chance to finish what it was doing."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def log_tail(self, lines: int = OPERATOR_LOG_TAIL) -> str:
        if not self.log_path.exists():
            return "(no operator log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_operator(
    cluster: Any, namespace: str, log_dir: Path, kubeconfig: Path | None = None
) -> Iterator[OperatorProcess]:
    """The operator for one test; its log tail is printed when the test fails (pytest shows
    a failing test's captured teardown output)."""
    operator = OperatorProcess(cluster, namespace, log_dir, kubeconfig)
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
        print(f"----- operator log {operator.log_path} (last {OPERATOR_LOG_TAIL} lines) -----")
        print(operator.log_tail())


def fail_worker(
    kube: Api,
    namespace: str,
    pod: dict[str, Any],
    *,
    exit_code: int = 1,
    disruption: str = "",
    reason: str = "Error",
    message: str = "",
) -> None:
    """What the kubelet reports when a trainer exits (``exit_code`` 1: a retryable failure) on a
    kwok node, where nothing else would: the container's ``reason`` and termination
    ``message`` (its last log lines); with ``disruption``, the ``DisruptionTarget`` condition
    an eviction, preemption or drain adds (its reason)."""
    name = pod["metadata"]["name"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    container = pod["spec"]["containers"][0]["name"]
    terminated = {"exitCode": exit_code, "reason": reason, "startedAt": now, "finishedAt": now}
    if message:
        terminated["message"] = message
    conditions = []
    if disruption:
        conditions = [{"type": "DisruptionTarget", "status": "True", "reason": disruption,
                       "lastTransitionTime": now}]  # fmt: skip
    kube._request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{name}/status",
        body={
            "status": {
                "phase": "Failed",
                **({"conditions": conditions} if conditions else {}),
                "containerStatuses": [
                    {
                        "name": container,
                        "image": pod["spec"]["containers"][0]["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                ],
            }
        },
        content_type="application/merge-patch+json",
    )


@contextlib.contextmanager
def own_gpu_pool(cluster: Any, nodes: int, gpus: int) -> Iterator[dict[str, str]]:
    """Kwok GPU nodes in a pool of their own, deleted afterwards; yields the pool's selector.

    For tests whose sums need whole nodes: on the shared cluster, other tests' pods may still
    hold GPUs of the shared pool while they terminate.
    """
    pool = f"own-{secrets.token_hex(3)}"
    names = cluster.add_gpu_nodes(
        [f"{pool}-{index}" for index in range(nodes)], gpus=gpus, pool=pool, timeout=60
    )
    try:
        yield {kwok.POOL_LABEL: pool}
    finally:
        cluster.delete_nodes(names)


# --- specs --------------------------------------------------------------------------------------
def gpu_spec(workers: int = 2, devices: int = 2, **run_policy: Any) -> dict[str, Any]:
    """A job for the kwok GPU nodes: nothing really trains, kwok runs and completes the pods."""
    return {
        "image": "ghcr.io/acceltrain/trainer:0.1.0",
        "workers": workers,
        "devicesPerWorker": devices,
        "nodePool": {"nodeSelector": dict(GPU_POOL)},
        "model": {"config": {"hiddenSize": 64, "numLayers": 2, "numHeads": 2}},
        "data": {"synthetic": {"numSamples": 256}},
        "training": {"maxSteps": 20},
        "checkpoint": {"resume": False},
        "runPolicy": {"backoffSeconds": 1, "gangTimeoutSeconds": 60, **run_policy},
    }


def with_changes(spec: dict[str, Any], **changes: Any) -> dict[str, Any]:
    updated = copy.deepcopy(spec)
    updated.update(changes)
    return updated


# --- processes of pods on the process node ----------------------------------------------------
def pod_processes(pod: str) -> list[int]:
    """Pids of the processes a pod on the process node runs (found by the pod-name env var)."""
    marker = f"{constants.ENV_POD_NAME}={pod}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def signal_processes(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

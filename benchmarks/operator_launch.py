"""How fast the operator launches pod groups, and what a launch costs, on kwok GPU nodes.

Two scenarios against the real control plane (API server, scheduler, Job controller) with
kwok's fake GPU nodes, the operator running as ``python -m accel_operator run``:

- ``8x8``: one job of 8 workers x 8 GPUs at a time, ``--launches`` times;
- ``concurrent``: ``--jobs`` jobs of 1 worker x 1 GPU created back to back.

For every job it measures, from the client's POST of the AccelTrainJob, the time until the
``workers``-th pod exists and until every pod has been seen Running (kwok then completes Job
pods at once), through watch streams on pods in the benchmark's namespace. It counts the API
writes per job from creation to Succeeded: the operator's own (its
``acceltrain_operator_api_requests_total`` counter: server-side applies, status patches, events)
plus any other write to the AccelTrainJob, seen as its modifications that were not status
patches (kopf's bookkeeping: its finalizer and last-handled-configuration annotation in earlier
releases, none now). It reads the
operator's resident memory from /proc at the end of each scenario.

    .venv/bin/python benchmarks/operator_launch.py                  # own cluster, ~2 min
    .venv/bin/python benchmarks/operator_launch.py --kubeconfig .cluster/kubeconfig --jobs 50

Targets (issue 5): p50 <= 1 s to all pods created; <= workers + 6 API writes per launch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "hack"))

from accel_operator import api, constants, render  # noqa: E402
from accel_operator.kube import ApiError, KubeClient, load_api_client  # noqa: E402
from accel_operator.metrics import OperatorMetrics  # noqa: E402
from localcluster import free_port, operator_argv  # noqa: E402

WRITE_VERBS = ("apply", "create", "patch", "delete")
# Plain Jobs carry this label instead of the operator's, so the operator ignores them.
PLAIN_LABEL = "bench.acceltrain.io/job"


def owner_of(obj: dict[str, Any]) -> str:
    labels = obj["metadata"].get("labels") or {}
    return str(labels.get(constants.LABEL_JOB_NAME) or labels.get(PLAIN_LABEL) or "")


@dataclass
class Launch:
    """Timings of one AccelTrainJob, in monotonic seconds."""

    name: str
    workers: int
    plain: bool = False
    """A batch/v1 Job posted directly, without the operator (the control plane's floor)."""
    posted: float = 0.0
    job_created: float | None = None
    """When the attempt's batch/v1 Job (the operator's apply) was first seen."""
    pods_created: dict[str, float] = field(default_factory=dict)
    pods_running: dict[str, float] = field(default_factory=dict)
    succeeded: float | None = None
    restarted: bool = False
    """The status ever showed a second attempt or a restart."""
    job_modifications: int = 0
    running_phase: float | None = None
    modifications_at_running: int = 0
    launch_writes: float | None = None
    """API writes from creation until the status said Running (sequential launches only)."""

    @property
    def all_created(self) -> float | None:
        if len(self.pods_created) < self.workers:
            return None
        return max(self.pods_created.values()) - self.posted

    @property
    def all_running(self) -> float | None:
        if len(self.pods_running) < self.workers:
            return None
        return max(self.pods_running.values()) - self.posted


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[rank]


class Watcher:
    """Watch streams on the namespace's pods, AccelTrainJobs and Jobs, feeding :class:`Launch`.

    The streams go through the operator's access layer (:meth:`KubeClient.watch`), which resumes
    from the last resourceVersion when the API server closes a stream (it closes a watch whose
    reader falls behind, and every watch after its timeout); when that version has expired the
    stream starts again from the current state."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.metrics = OperatorMetrics()
        self.kube = KubeClient(load_api_client(str(kubeconfig)), self.metrics)
        self.namespace = namespace
        self.launches: dict[str, Launch] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.threads = [
            threading.Thread(target=self._pods, daemon=True),
            threading.Thread(target=self._jobs, daemon=True),
            threading.Thread(target=self._batch_jobs, daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def streams_opened(self) -> int:
        """Watch streams opened so far, resumptions included."""
        return int(self.metrics.requests({"watch"}))

    def _stream(self, path: str) -> Iterator[dict[str, Any]]:
        resource = path.rsplit("/", 1)[-1]
        while not self.stopped.is_set():
            try:
                for event in self.kube.watch(path, resource=resource):
                    yield event
                    if self.stopped.is_set():
                        return
            except ApiError as error:
                if error.status != 410:
                    raise

    def _pods(self) -> None:
        with self._ends_with_the_benchmark():
            self._read_pods()

    def _jobs(self) -> None:
        with self._ends_with_the_benchmark():
            self._read_jobs()

    def _batch_jobs(self) -> None:
        with self._ends_with_the_benchmark():
            for event in self._stream(f"/apis/batch/v1/namespaces/{self.namespace}/jobs"):
                now = time.monotonic()
                with self.lock:
                    launch = self.launches.get(owner_of(event["object"]))
                    if launch is None:
                        continue
                    if launch.job_created is None:
                        launch.job_created = now
                    conditions = event["object"].get("status", {}).get("conditions") or []
                    complete = any(
                        c.get("type") == "Complete" and c.get("status") == "True"
                        for c in conditions
                    )
                    if launch.plain and complete and launch.succeeded is None:
                        launch.succeeded = now

    @contextlib.contextmanager
    def _ends_with_the_benchmark(self) -> Iterator[None]:
        try:
            yield
        except Exception:
            # The API server closes the streams when the benchmark's cluster stops.
            if not self.stopped.is_set():
                raise

    def _read_pods(self) -> None:
        for event in self._stream(f"/api/v1/namespaces/{self.namespace}/pods"):
            now = time.monotonic()
            pod = event["object"]
            with self.lock:
                launch = self.launches.get(owner_of(pod))
                if launch is None:
                    continue
                name = pod["metadata"]["name"]
                launch.pods_created.setdefault(name, now)
                if pod.get("status", {}).get("phase") in ("Running", "Succeeded"):
                    launch.pods_running.setdefault(name, now)

    def _read_jobs(self) -> None:
        path = f"/apis/{api.API_VERSION}/namespaces/{self.namespace}/{api.PLURAL}"
        for event in self._stream(path):
            now = time.monotonic()
            job = event["object"]
            with self.lock:
                launch = self.launches.get(job["metadata"]["name"])
                if launch is None:
                    continue
                if event["type"] == "MODIFIED":
                    launch.job_modifications += 1
                status = job.get("status") or {}
                phase = status.get("phase")
                if restarted(status):
                    launch.restarted = True
                if phase == "Running" and launch.running_phase is None:
                    launch.running_phase = now
                    launch.modifications_at_running = launch.job_modifications
                done = phase == "Succeeded"
                if done and launch.succeeded is None:
                    launch.succeeded = now


def restarted(status: dict[str, Any]) -> bool:
    """Whether an AccelTrainJob status shows a second attempt or a restart."""
    return int(status.get("attempt") or 1) > 1 or int(status.get("restarts") or 0) > 0


class Operator:
    """The operator as a subprocess watching the benchmark namespace (None: the cluster)."""

    def __init__(self, kubeconfig: Path, namespace: str | None, log: Path) -> None:
        self.metrics_port = free_port()
        # kwok's pod addresses are made up: nothing to scrape there.
        argv = operator_argv(
            namespace=namespace,
            metrics_port=self.metrics_port,
            liveness_port=free_port(),
            scrape_network="127.0.0.0/8",
        )
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.log = log.open("wb")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.writes()
                return
            time.sleep(0.2)
        raise RuntimeError(f"the operator did not start; see {log}")

    def counters(self) -> dict[tuple[str, str], float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("acceltrain_operator_api_requests_total{"):
                labels, value = line.rsplit(" ", 1)
                parsed = dict(
                    item.split("=", 1) for item in labels[labels.index("{") + 1 : -1].split(",")
                )
                key = (parsed["verb"].strip('"'), parsed["resource"].strip('"'))
                found[key] = float(value)
        return found

    def writes(self) -> dict[tuple[str, str], float]:
        return {key: value for key, value in self.counters().items() if key[0] in WRITE_VERBS}

    def rss_mib(self) -> tuple[float, float]:
        """Current and peak resident memory."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        values = {
            line.split(":")[0]: int(line.split()[1])
            for line in status.splitlines()
            if line.startswith(("VmRSS", "VmHWM"))
        }
        return values["VmRSS"] / 1024, values["VmHWM"] / 1024

    def cpu_seconds(self) -> float:
        """User plus system CPU time the operator has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def job_spec(workers: int, gpus: int) -> dict[str, Any]:
    return {
        "image": "ghcr.io/acceltrain/trainer:0.1.0",
        "workers": workers,
        "devicesPerWorker": gpus,
        "nodePool": {"nodeSelector": {"acceltrain.io/pool": "gpu"}},
        "model": {"config": {"hiddenSize": 64, "numLayers": 2, "numHeads": 2}},
        "data": {"synthetic": {"numSamples": 256}},
        "training": {"maxSteps": 20},
        "checkpoint": {"resume": False},
        "runPolicy": {"gangTimeoutSeconds": 600},
    }


def post_plain_job(kube: KubeClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """The Job the operator would create for attempt 1, posted directly (no owner)."""
    parsed = api.parse_spec(spec, name=name)
    job = render.render_job(parsed, render.JobRef(name, namespace, "none"), 1)
    del job["metadata"]["ownerReferences"]
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        labels[PLAIN_LABEL] = labels.pop(constants.LABEL_JOB_NAME)
    # Without the operator's ConfigMap the pods would wait for their volume forever (a kubelet
    # would not start them); kwok does not care, so the floor is measured without it.
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    kube.request("POST", path, verb="create", resource="jobs", body=job)


def post_job(kube: KubeClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    path = f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.PLURAL}"
    kube.request("POST", path, verb="create", resource=api.PLURAL, body=body)


def wait_until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Result:
    scenario: str
    launches: list[Launch]
    writes: dict[tuple[str, str], float]
    rss_mib: float
    peak_rss_mib: float
    wall_seconds: float
    cpu_seconds: float

    def row(self) -> dict[str, Any]:
        applied = [
            launch.job_created - launch.posted
            for launch in self.launches
            if launch.job_created is not None
        ]
        created = [launch.all_created for launch in self.launches]
        running = [launch.all_running for launch in self.launches]
        created_values = [value for value in created if value is not None]
        running_values = [value for value in running if value is not None]
        jobs = len(self.launches)
        launch_writes = [
            launch.launch_writes for launch in self.launches if launch.launch_writes is not None
        ]
        operator_writes = sum(self.writes.values())
        status_patches = sum(
            value for (verb, resource), value in self.writes.items() if resource.endswith("/status")
        )
        kopf_writes = sum(launch.job_modifications for launch in self.launches) - status_patches
        per_job = (operator_writes + max(0.0, kopf_writes)) / jobs
        return {
            "scenario": self.scenario,
            "jobs": jobs,
            "workers/job": self.launches[0].workers,
            "Job p50 s": statistics.median(applied),
            "Job p99 s": percentile(applied, 0.99),
            "created p50 s": statistics.median(created_values),
            "created p99 s": percentile(created_values, 0.99),
            "running p50 s": statistics.median(running_values),
            "running p99 s": percentile(running_values, 0.99),
            "writes/launch": statistics.median(launch_writes) if launch_writes else math.nan,
            "target": self.launches[0].workers + 6,
            "writes/job": per_job,
            "applies/job": sum(v for (verb, _), v in self.writes.items() if verb == "apply") / jobs,
            "status/job": status_patches / jobs,
            "events/job": self.writes.get(("create", "events"), 0.0) / jobs,
            "kopf/job": max(0.0, kopf_writes) / jobs,
            "operator RSS MiB": self.rss_mib,
            "peak RSS MiB": self.peak_rss_mib,
            "operator CPU s/job": self.cpu_seconds / jobs,
            "posting s": self.launches[-1].posted - self.launches[0].posted,
            "wall s": self.wall_seconds,
        }


def run_scenario(
    name: str,
    kube: KubeClient,
    watcher: Watcher,
    operator: Operator,
    namespace: str,
    jobs: list[tuple[str, int, int]],
    sequential: bool,
    timeout: float,
    plain: bool = False,
) -> Result:
    before = operator.writes()
    cpu_before = operator.cpu_seconds()
    started = time.monotonic()
    launches = []
    for job_name, workers, gpus in jobs:
        launch = Launch(job_name, workers, plain=plain)
        with watcher.lock:
            watcher.launches[job_name] = launch
        launch_before = operator.writes()
        launch.posted = time.monotonic()
        if plain:
            post_plain_job(kube, namespace, job_name, job_spec(workers, gpus))
        else:
            post_job(kube, namespace, job_name, job_spec(workers, gpus))
        launches.append(launch)
        if sequential:
            wait_until(f"{job_name} to run", lambda launch=launch: launch.running_phase, timeout)
            # The Running status patch and its event have landed when the watch saw the phase.
            time.sleep(0.2)
            launch_after = operator.writes()
            delta = {k: v - launch_before.get(k, 0.0) for k, v in launch_after.items()}
            status = sum(v for (_, resource), v in delta.items() if resource.endswith("/status"))
            kopf = max(0.0, launch.modifications_at_running - status)
            launch.launch_writes = sum(delta.values()) + kopf
            wait_until(f"{job_name} to succeed", lambda launch=launch: launch.succeeded, timeout)
    wait_until(
        f"all {len(launches)} jobs of {name} to succeed",
        lambda: all(launch.succeeded for launch in launches),
        timeout,
    )
    wall = time.monotonic() - started
    # Let the last status patches and events of the finished jobs land.
    time.sleep(2)
    after = operator.writes()
    writes = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    rss, peak = operator.rss_mib()
    cpu = operator.cpu_seconds() - cpu_before
    return Result(name, launches, writes, rss, peak, wall, cpu)


def print_table(rows: list[dict[str, Any]]) -> None:
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


def own_cluster(
    stack: contextlib.ExitStack, *, nodes: int, prefix: str, timeout: float = 90.0
) -> Any:
    """A local cluster of its own with ``nodes`` kwok GPU nodes and the CRD; ``stack`` stops it
    and removes its state directory."""
    from localcluster import Cluster

    state = Path(tempfile.mkdtemp(prefix=f"acceltrain-{prefix}-"))
    cluster = Cluster(state, gpu_nodes=nodes, gpus_per_node=8, process_node=False, prometheus=False)
    print(f"starting a local cluster with {nodes} kwok GPU nodes in {state}")
    stack.callback(shutil.rmtree, state, ignore_errors=True)
    cluster.start(timeout=timeout)
    stack.callback(cluster.stop)
    cluster.kubectl(
        "apply",
        "--server-side",
        "-f",
        str(REPO_ROOT / "manifests/crd/acceltrain.io_acceltrainjobs.yaml"),
    )
    cluster.wait_crd_established("acceltrainjobs.acceltrain.io")
    return cluster


def create_namespace(kube: KubeClient, prefix: str) -> str:
    """A new namespace named ``prefix`` and a random suffix."""
    namespace = f"{prefix}-{secrets.token_hex(3)}"
    kube.request(
        "POST",
        "/api/v1/namespaces",
        verb="create",
        resource="namespaces",
        body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    return namespace


def start_session(
    stack: contextlib.ExitStack,
    kubeconfig: Path | None,
    *,
    nodes: int,
    prefix: str,
    watcher_type: type[Watcher] = Watcher,
    start_timeout: float = 90.0,
) -> tuple[KubeClient, str, Operator, Watcher, Path]:
    """A cluster (``kubeconfig``'s, or an own one with ``nodes`` kwok GPU nodes) with the CRD, a
    fresh namespace, the operator watching it and a pod watcher; ``stack`` undoes all of it.
    Returns (client, namespace, operator, watcher, operator log)."""
    if kubeconfig is None:
        cluster = own_cluster(stack, nodes=nodes, prefix=prefix, timeout=start_timeout)
        kubeconfig = cluster.kubeconfig
    kube = KubeClient(load_api_client(str(kubeconfig)))
    namespace = create_namespace(kube, prefix)
    stack.callback(
        lambda: kube.request(
            "DELETE", f"/api/v1/namespaces/{namespace}", verb="delete", resource="namespaces"
        )
    )
    log = Path(tempfile.gettempdir()) / f"{namespace}-operator.log"
    operator = Operator(Path(kubeconfig), namespace, log)
    stack.callback(operator.stop)
    watcher = watcher_type(Path(kubeconfig), namespace)
    watcher.start()
    stack.callback(watcher.stopped.set)
    time.sleep(1)
    return kube, namespace, operator, watcher, log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, help="use this running cluster")
    parser.add_argument("--launches", type=int, default=10, help="8x8 launches (default 10)")
    parser.add_argument("--workers", type=int, default=8, help="workers of the big job")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per worker of the big job")
    parser.add_argument("--jobs", type=int, default=200, help="concurrent 1x1 jobs (default 200)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per scenario, seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    nodes = max(args.workers * args.gpus, args.jobs) // 8 + 1
    with contextlib.ExitStack() as stack:
        kube, namespace, operator, watcher, log = start_session(
            stack, args.kubeconfig, nodes=nodes, prefix="bench"
        )

        results = [
            run_scenario(
                f"{args.workers}x{args.gpus}",
                kube,
                watcher,
                operator,
                namespace,
                [(f"big-{i}", args.workers, args.gpus) for i in range(args.launches)],
                sequential=True,
                timeout=args.timeout,
            ),
            run_scenario(
                f"{args.jobs} concurrent",
                kube,
                watcher,
                operator,
                namespace,
                [(f"many-{i}", 1, 1) for i in range(args.jobs)],
                sequential=False,
                timeout=args.timeout,
            ),
        ]
        results.append(
            run_scenario(
                f"{args.jobs} plain Jobs, no operator",
                kube,
                watcher,
                operator,
                namespace,
                [(f"plain-{i}", 1, 1) for i in range(args.jobs)],
                sequential=False,
                timeout=args.timeout,
                plain=True,
            )
        )
        rows = [result.row() for result in results]
        print(f"operator log: {log}")
        print_table(rows)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

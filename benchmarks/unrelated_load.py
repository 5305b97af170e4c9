"""What pods and Jobs that are not the operator's cost it, on kwok GPU nodes.

A production cluster runs tens of thousands of pods that no AccelTrainJob owns. The operator
watches cluster-wide (as the chart installs it by default) but selects its children on the
server (label ``acceltrain.io/job-name``), so those objects should cost it nothing. Measured in
one run on one local cluster (kwok GPU nodes, no process node):

1. **without**: a fresh operator, cluster-wide; ``--jobs`` AccelTrainJobs of 1 worker x 1 GPU
   posted back to back, run to Succeeded; the operator's resident memory once started (before
   any job) and at its peak, and its CPU seconds; then the jobs' namespace is deleted;
2. the unrelated load: ``--pods`` pods bound to kwok nodes of their own (no GPUs, room for
   1,000 pods each, so the jobs' GPU nodes keep their pod capacity; kwok runs them) and
   ``--unrelated-jobs`` suspended batch Jobs, none labelled for the operator, each kind in a
   namespace of its own;
3. **with**: once kwok runs every unrelated pod (the control plane at rest again), a fresh
   operator, the same ``--jobs`` jobs in a new namespace.

Targets (issue 19): peak RSS grows by at most 20 MB and CPU per job by at most 10 % with the
unrelated objects.

    .venv/bin/python benchmarks/unrelated_load.py                    # 20,000 pods, ~15 min
    .venv/bin/python benchmarks/unrelated_load.py --pods 2000 --unrelated-jobs 200 --jobs 50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS_DIR))
sys.path.insert(0, str(BENCHMARKS_DIR.parent / "hack"))

from operator_launch import (  # noqa: E402
    Operator,
    Watcher,
    create_namespace,
    own_cluster,
    run_scenario,
)

from accel_operator.kube import ApiError, KubeClient, load_api_client  # noqa: E402

RSS_GROWTH_TARGET_MB = 20.0
CPU_GROWTH_TARGET = 0.10
POST_THREADS = 8
PODS_PER_APP_NODE = 1000
IDLE_SECONDS = 15.0


@dataclass
class Phase:
    name: str
    idle_rss_mb: float
    """Resident memory once the operator has listed and watched for a while, before any job:
    what it holds because of the cluster's objects."""
    peak_rss_mb: float
    cpu_seconds_per_job: float
    requests_per_job: float
    launch_p50_s: float


def run_phase(name: str, cluster: Any, kube: KubeClient, jobs: int, timeout: float) -> Phase:
    """A fresh cluster-wide operator, ``jobs`` 1x1 jobs to Succeeded in a new namespace."""
    with contextlib.ExitStack() as stack:
        namespace = create_namespace(kube, f"load-{name}")
        log = Path(tempfile.gettempdir()) / f"{namespace}-operator.log"
        operator = Operator(Path(cluster.kubeconfig), None, log)
        stack.callback(operator.stop)
        time.sleep(IDLE_SECONDS)
        idle_rss_mb = operator.rss_mib()[0] * 1.048576
        watcher = Watcher(Path(cluster.kubeconfig), namespace)
        watcher.start()
        stack.callback(watcher.stopped.set)
        requests_before = sum(operator.counters().values())
        result = run_scenario(
            name,
            kube,
            watcher,
            operator,
            namespace,
            [(f"load-{i}", 1, 1) for i in range(jobs)],
            sequential=False,
            timeout=timeout,
        )
        requests = sum(operator.counters().values()) - requests_before
        row = result.row()
        print(f"{name}: operator log {log}")
        # The next phase's operator must not meet these jobs: they are its own objects. They go
        # while this operator runs, which takes its finalizer off them.
        delete_namespace(kube, namespace, timeout)
        return Phase(
            name,
            idle_rss_mb=idle_rss_mb,
            peak_rss_mb=result.peak_rss_mib * 1.048576,
            cpu_seconds_per_job=result.cpu_seconds / jobs,
            requests_per_job=requests / jobs,
            launch_p50_s=row["created p50 s"],
        )


def delete_namespace(kube: KubeClient, namespace: str, timeout: float) -> None:
    path = f"/api/v1/namespaces/{namespace}"
    kube.request("DELETE", path, verb="delete", resource="namespaces")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kube.request("GET", path, verb="get", resource="namespaces")
        except ApiError as error:
            if error.status == 404:
                return
            raise
        time.sleep(2)
    raise RuntimeError(f"namespace {namespace} still there after {timeout:.0f} s")


def unrelated_pod(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "unrelated"}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
            "tolerations": [{"operator": "Exists"}],
        },
    }


def unrelated_job(name: str) -> dict[str, Any]:
    template = {
        "metadata": {"labels": {"app": "unrelated"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "unrelated"}},
        "spec": {"suspend": True, "template": template},
    }


def create_unrelated(kube: KubeClient, nodes: list[str], pods: int, jobs: int) -> tuple[str, float]:
    """Create the unrelated pods and Jobs, each kind in a namespace of its own (a Job controller
    matching 2,000 Jobs against 20,000 pods of one namespace would slow the control plane, not
    the operator); the pods' namespace and the seconds it took."""
    pod_namespace = create_namespace(kube, "unrelated-pods")
    job_namespace = create_namespace(kube, "unrelated-jobs")
    started = time.monotonic()

    def post(index: int) -> None:
        if index < pods:
            path = f"/api/v1/namespaces/{pod_namespace}/pods"
            body = unrelated_pod(f"app-{index:05d}", nodes[index % len(nodes)])
            kube.request("POST", path, verb="create", resource="pods", body=body)
        else:
            path = f"/apis/batch/v1/namespaces/{job_namespace}/jobs"
            body = unrelated_job(f"batch-{index - pods:05d}")
            kube.request("POST", path, verb="create", resource="jobs", body=body)

    with ThreadPoolExecutor(POST_THREADS) as pool:
        for done, _ in enumerate(pool.map(post, range(pods + jobs)), start=1):
            if done % 2000 == 0:
                print(f"  {done}/{pods + jobs} unrelated objects created", flush=True)
    return pod_namespace, time.monotonic() - started


def wait_until_settled(kube: KubeClient, namespace: str, timeout: float) -> float:
    """Wait until kwok runs every unrelated pod, so that the second phase meets a control plane
    at rest; seconds it took."""
    started = time.monotonic()
    path = f"/api/v1/namespaces/{namespace}/pods"
    query = {"fieldSelector": "status.phase!=Running", "limit": "1"}
    while time.monotonic() - started < timeout:
        answer = kube.request("GET", path, verb="list", resource="pods", query=query)
        if not answer.get("items"):
            return time.monotonic() - started
        time.sleep(5)
    raise RuntimeError(f"the unrelated pods were not all Running after {timeout:.0f} s")


def print_table(without: Phase, with_load: Phase, pods: int, jobs: int) -> bool:
    rss_growth = with_load.peak_rss_mb - without.peak_rss_mb
    cpu_growth = with_load.cpu_seconds_per_job / without.cpu_seconds_per_job - 1.0
    rss_met = rss_growth <= RSS_GROWTH_TARGET_MB
    cpu_met = cpu_growth <= CPU_GROWTH_TARGET
    print(f"\nunrelated objects: {pods} pods, {jobs} suspended Jobs\n")
    print("| | without | with | with / without | target | met |")
    print("|---|---:|---:|---:|---|---|")
    print(
        f"| operator RSS MB, started, no job yet | {without.idle_rss_mb:.1f} | "
        f"{with_load.idle_rss_mb:.1f} | {with_load.idle_rss_mb / without.idle_rss_mb:.3f} "
        f"({with_load.idle_rss_mb - without.idle_rss_mb:+.1f} MB) | - | - |"
    )
    print(
        f"| operator peak RSS MB | {without.peak_rss_mb:.1f} | {with_load.peak_rss_mb:.1f} | "
        f"{with_load.peak_rss_mb / without.peak_rss_mb:.3f} ({rss_growth:+.1f} MB) | "
        f"+{RSS_GROWTH_TARGET_MB:.0f} MB at most | {'yes' if rss_met else 'no'} |"
    )
    print(
        f"| operator CPU s/job | {without.cpu_seconds_per_job:.3f} | "
        f"{with_load.cpu_seconds_per_job:.3f} | {1 + cpu_growth:.3f} | "
        f"+{CPU_GROWTH_TARGET:.0%} at most | {'yes' if cpu_met else 'no'} |"
    )
    print(
        f"| API requests/job | {without.requests_per_job:.1f} | {with_load.requests_per_job:.1f} | "
        f"{with_load.requests_per_job / without.requests_per_job:.3f} | - | - |"
    )
    print(
        f"| pods created p50 s | {without.launch_p50_s:.3f} | {with_load.launch_p50_s:.3f} | "
        f"{with_load.launch_p50_s / without.launch_p50_s:.3f} | - | - |"
    )
    return rss_met and cpu_met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=20000, help="unrelated pods (20000)")
    parser.add_argument("--unrelated-jobs", type=int, default=2000, help="unrelated Jobs (2000)")
    parser.add_argument("--jobs", type=int, default=200, help="AccelTrainJobs per phase (200)")
    parser.add_argument("--nodes", type=int, default=40, help="kwok nodes of 8 GPUs (40)")
    parser.add_argument("--timeout", type=float, default=900.0, help="per phase, seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        cluster = own_cluster(stack, nodes=args.nodes, prefix="load", timeout=180)
        kube = KubeClient(load_api_client(str(cluster.kubeconfig)))
        without = run_phase("without", cluster, kube, args.jobs, args.timeout)
        app_nodes = [f"app-node-{i}" for i in range(-(-args.pods // PODS_PER_APP_NODE))]
        cluster.add_gpu_nodes(app_nodes, gpus=0, pool="apps", pods=PODS_PER_APP_NODE, timeout=120)
        namespace, seconds = create_unrelated(kube, app_nodes, args.pods, args.unrelated_jobs)
        print(f"created {args.pods} pods and {args.unrelated_jobs} Jobs in {seconds:.0f} s")
        settled = wait_until_settled(kube, namespace, args.timeout)
        print(f"every unrelated pod Running {settled:.0f} s later")
        with_load = run_phase("with", cluster, kube, args.jobs, args.timeout)
        met = print_table(without, with_load, args.pods, args.unrelated_jobs)
        if args.json:
            rows = [without.__dict__, with_load.__dict__]
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

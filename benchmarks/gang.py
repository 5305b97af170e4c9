"""Gang policies under contention: 50 eight-worker jobs offered at once to room for 20.

One local cluster (kwok GPU nodes, the real kube-scheduler with native gang scheduling on), the
operator as ``python -m accel_operator run``. For each policy in turn, in a namespace of its
own, ``--jobs`` AccelTrainJobs of 8 workers x 1 GPU are posted back to back; each worker runs
``--run-seconds`` on its kwok node (``KWOK_RUN_DURATION``) and then completes. A watch stream
records, for every worker pod, when it was bound to a node and when it stopped holding it
(finished or deleted). Per policy it reports:

- GPU-seconds held by the pods of attempts that were never fully placed (their GPUs were taken
  from others and did no training): the waste a gang policy exists to avoid;
- jobs completed per minute and the time until the last job Succeeded (the queue drained);
- restarts spent (``status.restarts``) and capacity retries (``status.gangRetries``).

    .venv/bin/python benchmarks/gang.py                         # own cluster, ~6 min
    .venv/bin/python benchmarks/gang.py --jobs 20 --nodes 8     # smaller

The policies: ``Timeout`` (the gang timeout guard alone: the baseline), ``Native``
(kube-scheduler's gang scheduling), and ``Kueue``: a real Kueue (started on the cluster) admits
each attempt's Job against a ClusterQueue of exactly the cluster's GPUs, with the Timeout guard
placing what it admits, so that the row shows what queueing alone does.

Targets: Native and Kueue hold zero GPU-seconds in partial gangs; Timeout is the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from operator_launch import Watcher, post_job, start_session

from accel_operator import constants
from accel_operator.kube import KubeClient
from localcluster import Cluster
from localcluster.kueue import queue_fixture
from localcluster.kwok import RUN_DURATION_ENV

WORKERS = 8
KUEUE_QUEUE = "gang-queue"


@dataclass
class PodSpan:
    job: str
    attempt: str
    bound: float | None = None
    released: float | None = None


class BindingWatcher(Watcher):
    """When each worker pod was bound and when it let go of its node."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        super().__init__(kubeconfig, namespace)
        self.threads = self.threads[:1]  # pods only
        self.spans: dict[str, PodSpan] = {}

    def _read_pods(self) -> None:
        for event in self._stream(f"/api/v1/namespaces/{self.namespace}/pods"):
            now = time.monotonic()
            pod = event["object"]
            labels = pod["metadata"].get("labels") or {}
            job = labels.get(constants.LABEL_JOB_NAME)
            if not job:
                continue
            with self.lock:
                span = self.spans.setdefault(
                    pod["metadata"]["name"], PodSpan(job, labels.get(constants.LABEL_ATTEMPT, ""))
                )
                if pod["spec"].get("nodeName") and span.bound is None:
                    span.bound = now
                finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                leaving = event["type"] == "DELETED" or pod["metadata"].get("deletionTimestamp")
                if span.bound is not None and span.released is None and (finished or leaving):
                    span.released = now


def job_spec(run_seconds: int, policy: str) -> dict[str, Any]:
    """One benchmark job; the Kueue policy is Timeout placement behind Kueue's admission."""
    queued = policy == "Kueue"
    run_policy = {
        "gangPolicy": "Timeout" if queued else policy,
        "gangTimeoutSeconds": 30,
        "backoffSeconds": 5,
        "maxRestarts": 3,
        **({"queueName": KUEUE_QUEUE} if queued else {}),
    }
    return {
        "image": "ghcr.io/acceltrain/trainer:0.1.0",
        "workers": WORKERS,
        "devicesPerWorker": 1,
        "nodePool": {"nodeSelector": {"acceltrain.io/pool": "gpu"}},
        "model": {"config": {"hiddenSize": 64, "numLayers": 2, "numHeads": 2}},
        "data": {"synthetic": {"numSamples": 256}},
        "training": {"maxSteps": 20},
        "checkpoint": {"resume": False},
        "env": [{"name": RUN_DURATION_ENV, "value": f"{run_seconds}s"}],
        "runPolicy": run_policy,
    }


def partial_gpu_seconds(spans: list[PodSpan], end: float) -> float:
    """GPU-seconds of the pods of attempts whose workers were never all bound at once."""
    attempts: dict[tuple[str, str], list[PodSpan]] = {}
    for span in spans:
        if span.bound is not None:
            attempts.setdefault((span.job, span.attempt), []).append(span)
    wasted = 0.0
    for members in attempts.values():
        first_release = min((s.released or end) for s in members)
        whole = len(members) == WORKERS and max(s.bound or 0.0 for s in members) <= first_release
        if not whole:
            wasted += sum((s.released or end) - (s.bound or end) for s in members)
    return wasted


def run_policy(
    kube: KubeClient, namespace: str, watcher: BindingWatcher, policy: str, args: argparse.Namespace
) -> dict[str, Any]:
    names = [f"{policy.lower()}-{index}" for index in range(args.jobs)]
    started = time.monotonic()
    for name in names:
        post_job(kube, namespace, name, job_spec(args.run_seconds, policy))
    done: dict[str, float] = {}
    statuses: dict[str, dict[str, Any]] = {}
    while len(done) < len(names) and time.monotonic() - started < args.timeout:
        time.sleep(1.0)
        for name in names:
            status = (kube.get_accel_job(namespace, name) or {}).get("status") or {}
            statuses[name] = status
            if status.get("phase") in ("Succeeded", "Failed") and name not in done:
                done[name] = time.monotonic() - started
    end = time.monotonic()
    with watcher.lock:
        spans = list(watcher.spans.values())
    succeeded = sum(1 for s in statuses.values() if s.get("phase") == "Succeeded")
    drained = max(done.values()) if len(done) == len(names) else None
    return {
        "policy": policy,
        "jobs Succeeded": f"{succeeded}/{len(names)}",
        "GPU-s in partial gangs": round(partial_gpu_seconds(spans, end), 1),
        "jobs/min": round(succeeded / ((max(done.values()) if done else end - started) / 60), 2)
        if done
        else 0.0,
        "drain s": round(drained, 1) if drained is not None else f"> {args.timeout:.0f}",
        "restarts spent": sum(int(s.get("restarts", 0)) for s in statuses.values()),
        "capacity retries": sum(int(s.get("gangRetries", 0)) for s in statuses.values()),
        "policy in force": sorted({str(s.get("gangPolicy")) for s in statuses.values()}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50, help="jobs offered at once (default 50)")
    parser.add_argument("--nodes", type=int, default=20, help="kwok nodes of 8 GPUs (room for 20)")
    parser.add_argument("--run-seconds", type=int, default=20, help="how long each job runs")
    parser.add_argument("--timeout", type=float, default=600.0, help="per policy, seconds")
    parser.add_argument("--policies", default="Timeout,Native,Kueue", help="comma-separated")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rows = []
    with contextlib.ExitStack() as stack:
        state = Path(tempfile.mkdtemp(prefix="acceltrain-gang-"))
        stack.callback(shutil.rmtree, state, ignore_errors=True)
        kueue = "Kueue" in args.policies.split(",")
        cluster = Cluster(
            state, gpu_nodes=args.nodes, process_node=False, prometheus=False, kueue=kueue
        )
        print(f"starting a local cluster with {args.nodes} kwok GPU nodes in {state}")
        cluster.start(timeout=180)
        stack.callback(cluster.stop)
        crd = (
            Path(__file__).resolve().parents[1] / "manifests/crd/acceltrain.io_acceltrainjobs.yaml"
        )
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
        cluster.wait_crd_established("acceltrainjobs.acceltrain.io")
        for policy in args.policies.split(","):
            with contextlib.ExitStack() as session:
                kube, namespace, _, watcher, log = start_session(
                    session,
                    cluster.kubeconfig,
                    nodes=args.nodes,
                    prefix=f"gang-{policy.lower()}",
                    watcher_type=BindingWatcher,
                )
                assert isinstance(watcher, BindingWatcher)
                if policy == "Kueue":
                    # Quota for exactly the cluster's GPUs; CPU and memory never the limit.
                    queue_fixture(
                        cluster.admin_api(),
                        namespace,
                        local_queue=KUEUE_QUEUE,
                        cluster_queue="gang-benchmark",
                        gpus=args.nodes * 8,
                        cpu="100000",
                        memory="100Ti",
                    )
                print(f"{policy}: {args.jobs} jobs of {WORKERS} workers; operator log {log}")
                rows.append(run_policy(kube, namespace, watcher, policy, args))
                print(json.dumps(rows[-1]))
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    for row in rows:
        print("| " + " | ".join(str(value) for value in row.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

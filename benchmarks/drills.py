"""Fault drills on a training job: time to recover, restarts spent and steps lost.

One local cluster of its own with the process node (CPU trainers as processes), the operator as a
user runs it, and one two-worker CPU job per drill: a tiny BERT that checkpoints every
``--every`` steps. Once it has passed ``--fault-step``, the drill injects its fault and measures

- **recovered s**: seconds from the fault until the job's step is past the step it had reached
  (the lost ground made up; for a fault that needs no restart, until the step moves on);
- **restarts spent**: of ``runPolicy.maxRestarts``;
- **steps lost**: the step reached at the fault minus the step the next attempt resumed from (0
  when no restart was needed); the baseline is the checkpoint interval, the most a restart from
  the last checkpoint may lose. A SIGTERM checkpoint (an eviction with a grace period) loses
  nothing.

Every job must then Succeed. The step at the fault is the later of the operator's last scrape and
rank 0's last log line (every 10 steps), so "steps lost" can read up to 10 steps low.

    .venv/bin/python benchmarks/drills.py                   # own cluster, ~6 min
    .venv/bin/python benchmarks/drills.py --drills service,evict
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "hack"))

from failover import wait  # noqa: E402
from operator_launch import post_job  # noqa: E402

from accel_operator import constants  # noqa: E402
from accel_operator.kube import KubeClient, load_api_client  # noqa: E402
from localcluster import Cluster, free_port, operator_argv  # noqa: E402
from localcluster.cpujobs import build_deepspeed_ops, tiny_bert_spec  # noqa: E402

CRD_FILE = REPO_ROOT / "manifests" / "crd" / "acceltrain.io_acceltrainjobs.yaml"

RESUMED_LINE = re.compile(r"resumed from step-(\d{8})")
STEP_LINE = re.compile(r"accel-trainer: step (\d+)/\d+ loss")


@dataclass(frozen=True)
class Drill:
    name: str
    fault: str
    restarts: bool
    """Whether the fault needs a new attempt."""


DRILLS = (
    Drill("kill", "a worker's trainer process SIGKILLed", restarts=True),
    Drill("service", "the headless Service and ConfigMap deleted", restarts=False),
    Drill("evict", "a worker pod evicted (Eviction API, 30 s grace)", restarts=True),
    Drill("job", "the attempt's Job deleted", restarts=True),
    Drill("operator", "the operator SIGKILLed, started again 5 s later", restarts=False),
)


def job_spec(checkpoints: Path, steps: int, every: int) -> dict[str, Any]:
    """The tests' tiny BERT on the process node, logging every 10 steps, three restarts."""
    return tiny_bert_spec(
        checkpoints, steps=steps, every=every, samples=4096, log_every=10, maxRestarts=3
    )


class Jobs:
    """AccelTrainJob reads and writes of the drills, as plain dicts."""

    def __init__(self, kubeconfig: Path) -> None:
        self.client = KubeClient(load_api_client(str(kubeconfig)))

    def create(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        post_job(self.client, namespace, name, spec)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        found = self.client.get_accel_job(namespace, name) or {}
        status: dict[str, Any] = found.get("status") or {}
        return status


def row(drill: Drill, seconds: float, restarts: int, lost: int, every: int) -> dict[str, Any]:
    return {
        "fault": drill.fault,
        "recovered s": round(seconds, 1),
        "restarts spent": restarts,
        "steps lost": lost,
        "checkpoint every": every,
        "lost / interval": round(lost / every, 2),
        "within a checkpoint interval": "met" if lost <= every else "missed",
    }


class Operator:
    """The operator as a user runs it, for one namespace; it can be killed and started again."""

    def __init__(self, cluster: Cluster, namespace: str, log: Path) -> None:
        self.cluster, self.namespace, self.log = cluster, namespace, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = operator_argv(
            namespace=self.namespace,
            metrics_port=free_port(),
            liveness_port=free_port(),
            scrape_network=str(self.cluster.bridge_cidr),
        )
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=30)


def pod_processes(pod: str) -> list[int]:
    """Pids of the processes a pod on the process node runs (found by the pod-name env var)."""
    marker = f"{constants.ENV_POD_NAME}={pod}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return pids


def worker_pod(jobs: Jobs, namespace: str, name: str, index: str, attempt: int = 1) -> str:
    answer = jobs.client.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods",
        verb="list",
        resource="pods",
        query={"labelSelector": f"{constants.LABEL_JOB_NAME}={name}"},
    )
    for pod in answer.get("items") or []:
        annotations = pod["metadata"].get("annotations") or {}
        labels = pod["metadata"].get("labels") or {}
        if annotations.get(constants.LABEL_JOB_COMPLETION_INDEX) == index and labels.get(
            constants.LABEL_ATTEMPT
        ) == str(attempt):
            return str(pod["metadata"]["name"])
    raise RuntimeError(f"no worker {index} of attempt {attempt} of {namespace}/{name}")


def rank0_log(cluster: Cluster, jobs: Jobs, namespace: str, name: str, attempt: int) -> str:
    """What the attempt's rank 0 has logged so far ('' before its pod or its log exists)."""
    try:
        pod = worker_pod(jobs, namespace, name, "0", attempt)
        return cluster.pod_log_path(namespace, pod, "trainer").read_text(errors="replace")
    except (RuntimeError, OSError):
        return ""


def past_step(log: str, step: int) -> str | None:
    """The log, once it reports a step after ``step``."""
    return log if any(int(found) > step for found in STEP_LINE.findall(log)) else None


def inject(
    drill: Drill, cluster: Cluster, jobs: Jobs, operator: Operator, ns: str, name: str
) -> None:
    if drill.name == "kill":
        for pid in pod_processes(worker_pod(jobs, ns, name, "1")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    elif drill.name == "service":
        cluster.kubectl("delete", f"service/{name}", f"configmap/{name}-a1-config", "-n", ns)
    elif drill.name == "evict":
        pod = worker_pod(jobs, ns, name, "1")
        jobs.client.request(
            "POST",
            f"/api/v1/namespaces/{ns}/pods/{pod}/eviction",
            verb="create",
            resource="pods/eviction",
            body={
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": pod, "namespace": ns},
                "deleteOptions": {"gracePeriodSeconds": 30},
            },
        )
    elif drill.name == "job":
        cluster.kubectl("delete", f"job/{name}-a1", "-n", ns, "--wait=false")
    elif drill.name == "operator":
        operator.stop(signal.SIGKILL)
        time.sleep(5)
        operator.start()


def run_drill(
    drill: Drill, cluster: Cluster, jobs: Jobs, operator: Operator, args: argparse.Namespace
) -> dict[str, Any]:
    ns, name = args.namespace, f"drill-{drill.name}"
    checkpoints = Path(tempfile.mkdtemp(prefix=f"acceltrain-{name}-"))
    try:
        jobs.create(ns, name, job_spec(checkpoints, args.steps, args.every))

        def progress() -> int:
            return int(jobs.status(ns, name).get("progress", {}).get("step", 0))

        wait(f"{name} past step {args.fault_step}", lambda: progress() >= args.fault_step, 300)
        before = jobs.status(ns, name)
        # The status lags the trainer by up to a scrape; its log does by under logEvery steps.
        logged = STEP_LINE.findall(rank0_log(cluster, jobs, ns, name, int(before["attempt"])))
        reached = max([int(before["progress"]["step"]), *map(int, logged)])
        faulted = time.monotonic()
        inject(drill, cluster, jobs, operator, ns, name)
        if drill.restarts:
            # The new attempt's rank 0 says where it resumed and when it passes the old step.
            attempt = int(before["attempt"]) + 1
            log = wait(
                f"{name}'s attempt {attempt} past step {reached}",
                lambda: past_step(rank0_log(cluster, jobs, ns, name, attempt), reached),
                300,
            )
            recovered = time.monotonic() - faulted
            found = RESUMED_LINE.search(log)
            resumed = int(found.group(1)) if found else 0
        else:
            wait(f"{name} past step {reached}", lambda: progress() > reached, 300)
            recovered = time.monotonic() - faulted
            resumed = reached
        final = wait(f"{name} to finish", lambda: _finished(jobs, ns, name), 600, 1.0)
        if final["phase"] != "Succeeded":
            raise RuntimeError(f"{name} {final['phase']}: {final.get('message')}")
        spent = int(final.get("restarts", 0)) - int(before.get("restarts", 0))
        return row(drill, recovered, spent, max(0, reached - resumed), args.every)
    finally:
        shutil.rmtree(checkpoints, ignore_errors=True)


def _attempt(jobs: Jobs, ns: str, name: str, attempt: int) -> dict[str, Any] | None:
    status = jobs.status(ns, name)
    return status if int(status.get("attempt", 0)) >= attempt else None


def _finished(jobs: Jobs, ns: str, name: str) -> dict[str, Any] | None:
    status = jobs.status(ns, name)
    return status if status.get("phase") in ("Succeeded", "Failed") else None


def print_table(rows: list[dict[str, Any]]) -> None:
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    for found in rows:
        print("| " + " | ".join(str(value) for value in found.values()) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drills", default=",".join(d.name for d in DRILLS))
    parser.add_argument("--steps", type=int, default=600, help="steps of each job (default 600)")
    parser.add_argument("--every", type=int, default=50, help="checkpoint interval (default 50)")
    parser.add_argument("--fault-step", type=int, default=120, help="fault after this step")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    chosen = [d for d in DRILLS if d.name in args.drills.split(",")]
    # A SIGTERM unwinds the stack below, so the cluster and the operator stop with the script.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    build_deepspeed_ops()
    with contextlib.ExitStack() as stack:
        state = Path(tempfile.mkdtemp(prefix="acceltrain-drills-"))
        stack.callback(shutil.rmtree, state, ignore_errors=True)
        cluster = Cluster(state, gpu_nodes=0, prometheus=False)
        cluster.start()
        stack.callback(cluster.stop)
        cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
        cluster.wait_crd_established("acceltrainjobs.acceltrain.io")
        args.namespace = "drills"
        cluster.kubectl("create", "namespace", args.namespace)
        wait(
            "the namespace's ServiceAccount",
            lambda: (
                cluster.kubectl(
                    "get", "serviceaccount", "default", "-n", args.namespace, check=False
                ).returncode
                == 0
            ),
            30,
        )
        operator = Operator(cluster, args.namespace, state / "operator.log")
        operator.start()
        stack.callback(operator.stop)
        jobs = Jobs(cluster.kubeconfig)
        rows = []
        for drill in chosen:
            rows.append(run_drill(drill, cluster, jobs, operator, args))
            print(rows[-1], flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(found["within a checkpoint interval"] == "met" for found in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

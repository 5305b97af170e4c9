"""Failover time of two operator replicas with the chart's leader election settings.

One local cluster (kwok GPU nodes), two ``python -m accel_operator run --leader-elect``
processes started as the Helm chart starts them (``POD_NAME`` and ``POD_NAMESPACE``, the
chart's default lease of 15 s, renew deadline 10 s, retry 2 s). ``--kills`` times, the leader is
stopped and a one-worker job is posted at the same instant; the benchmark measures

- **lease**: seconds until the other replica holds the Lease;
- **first write**: seconds until the posted job has its first child (the new leader is
  reconciling);

then restarts the stopped replica (as the kubelet restarts a container) and waits until it is
a standby again. Two ways to stop a leader: ``SIGKILL`` (a crash or an OOM kill: the Lease must
run out) and ``SIGTERM`` (a rolling update or a node drain: the leader hands the Lease back).

The baseline of each row is its bound: lease duration + one retry period with its jitter for a
crash (the standby sees the last renewal at most a period late and tries again the moment the
lease runs out), one retry period with jitter for a handover, each plus 0.5 s for the API round
trips. A ratio above 1 means a failover took longer than the election allows: the row says
"missed".

    .venv/bin/python benchmarks/failover.py                 # own cluster, ~6 min
    .venv/bin/python benchmarks/failover.py --kills 3 --lease 4 --renew 3 --retry 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from operator_launch import create_namespace, own_cluster, post_job

from accel_operator import leader
from accel_operator.kube import ApiError, KubeClient, load_api_client
from localcluster import Cluster, free_port, operator_argv

REPO_ROOT = Path(__file__).resolve().parents[1]
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/" + (
    leader.DEFAULT_LEASE_NAME
)

API_ALLOWANCE_SECONDS = 0.5


class Replica:
    """One operator replica as a subprocess; ``start`` returns once its /healthz answers."""

    def __init__(self, name: str, kubeconfig: Path, namespace: str, timing: list[float]) -> None:
        self.name, self.kubeconfig, self.namespace, self.timing = (
            name,
            kubeconfig,
            namespace,
            timing,
        )
        self.log = Path(tempfile.gettempdir()) / f"{namespace}-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        liveness = free_port()
        lease, renew, retry = self.timing
        argv = operator_argv(
            namespace=self.namespace,
            metrics_port=free_port(),
            liveness_port=liveness,
            scrape_network="127.0.0.0/8",
            leader_election=(lease, renew, retry),
        )
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "POD_NAME": self.name,
            "POD_NAMESPACE": self.namespace,
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait(f"{self.name}'s /healthz", lambda: _answers(liveness), timeout=60)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=30)


def _answers(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/healthz"
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
        return bool(answer.status == 200)
    return False


def wait(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def holder(kube: KubeClient, namespace: str) -> str:
    with contextlib.suppress(ApiError):
        lease = kube.request(
            "GET", LEASE_PATH.format(namespace=namespace), verb="get", resource="leases"
        )
        return str((lease.get("spec") or {}).get("holderIdentity") or "")
    return ""


def post_probe(kube: KubeClient, namespace: str, name: str) -> None:
    post_job(
        kube,
        namespace,
        name,
        {
            "image": "ghcr.io/acceltrain/trainer:0.1.0",
            "workers": 1,
            "devicesPerWorker": 1,
            "nodePool": {"nodeSelector": {"acceltrain.io/pool": "gpu"}},
            "model": {"config": {"hiddenSize": 64, "numLayers": 2, "numHeads": 2}},
            "data": {"synthetic": {"numSamples": 64}},
            "training": {"maxSteps": 2},
            "checkpoint": {"resume": False},
        },
    )


def has_child(kube: KubeClient, namespace: str, name: str) -> bool:
    return bool(kube.list_attempt_jobs(namespace, name))


def one_failover(
    kube: KubeClient, namespace: str, replicas: dict[str, Replica], signum: int, index: int
) -> tuple[float, float]:
    """Stop the leader with ``signum``; returns (lease, first write) seconds."""
    old = replicas[wait("a leader", lambda: holder(kube, namespace), timeout=60)]
    successor = next(name for name in replicas if name != old.name)
    probe = f"probe-{signal.Signals(signum).name.lower()}-{index}"
    assert old.process is not None
    old.process.send_signal(signum)
    stopped = time.monotonic()
    post_probe(kube, namespace, probe)
    wait(f"{successor} to hold the Lease", lambda: holder(kube, namespace) == successor, 120)
    lease_seconds = time.monotonic() - stopped
    wait(f"the first child of {probe}", lambda: has_child(kube, namespace, probe), 120)
    first_write = time.monotonic() - stopped
    old.process.wait(timeout=30)
    old.start()
    return lease_seconds, first_write


def row(label: str, samples: list[tuple[float, float]], bound: float) -> dict[str, Any]:
    leases = [lease for lease, _ in samples]
    writes = [write for _, write in samples]
    ratio = max(leases) / bound
    return {
        "stop": label,
        "kills": len(samples),
        "lease p50 s": round(statistics.median(leases), 2),
        "lease max s": round(max(leases), 2),
        "first write p50 s": round(statistics.median(writes), 2),
        "first write max s": round(max(writes), 2),
        "bound s": round(bound, 2),
        "max / bound": round(ratio, 2),
        "within bound": "met" if ratio <= 1.0 else "missed",
    }


def run(cluster: Cluster, args: argparse.Namespace) -> list[dict[str, Any]]:
    kube = KubeClient(load_api_client(str(cluster.kubeconfig)))
    namespace = create_namespace(kube, "failover")
    timing = [args.lease, args.renew, args.retry]
    replicas = {name: Replica(name, cluster.kubeconfig, namespace, timing) for name in ("a", "b")}
    try:
        for replica in replicas.values():
            replica.start()
        rows = []
        jittered_retry = args.retry * (1 + leader.RETRY_JITTER) + API_ALLOWANCE_SECONDS
        for signum, bound in (
            (signal.SIGKILL, args.lease + jittered_retry),
            (signal.SIGTERM, jittered_retry),
        ):
            samples = []
            for index in range(args.kills):
                samples.append(one_failover(kube, namespace, replicas, signum, index))
                print(
                    f"{signal.Signals(signum).name} {index + 1}/{args.kills}: "
                    f"lease {samples[-1][0]:.2f} s, first write {samples[-1][1]:.2f} s"
                )
            rows.append(row(signal.Signals(signum).name, samples, bound))
        return rows
    finally:
        for replica in replicas.values():
            replica.stop()
        print(f"replica logs: {replicas['a'].log} {replicas['b'].log}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = leader.ElectionTiming()
    parser.add_argument("--kills", type=int, default=10, help="failovers per way (default 10)")
    parser.add_argument("--lease", type=float, default=defaults.lease_duration)
    parser.add_argument("--renew", type=float, default=defaults.renew_deadline)
    parser.add_argument("--retry", type=float, default=defaults.retry_period)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        cluster = own_cluster(stack, nodes=2, prefix="failover", timeout=180)
        rows = run(cluster, args)
    headers = list(rows[0])
    print(f"lease {args.lease:g} s, renew deadline {args.renew:g} s, retry {args.retry:g} s")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    for found in rows:
        print("| " + " | ".join(str(value) for value in found.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(found["within bound"] == "met" for found in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

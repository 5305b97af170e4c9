"""Command line of the local cluster: ``up``, ``down`` and ``status`` (used by ``make cluster-up``).

PYTHONPATH=hack .venv/bin/python -m localcluster up [--state-dir .cluster] [--gpu-nodes 4]
PYTHONPATH=hack .venv/bin/python -m localcluster status
PYTHONPATH=hack .venv/bin/python -m localcluster down
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cluster import Cluster, ClusterError
from .tools import REPO_ROOT, MissingToolError

DEFAULT_STATE_DIR = REPO_ROOT / ".cluster"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster", description="Run the local Kubernetes cluster."
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="directory with the kubeconfig, logs and data of the cluster (default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the cluster and wait until it is ready")
    up.add_argument("--gpu-nodes", type=int, default=4, help="kwok GPU nodes (default: 4)")
    up.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: 8)")
    up.add_argument(
        "--no-process-node",
        action="store_true",
        help="do not start the node agent that runs pods as local processes",
    )
    up.add_argument(
        "--no-real-node",
        action="store_true",
        help="do not start the kubelet + containerd node that runs pods in real containers",
    )
    up.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="NAME",
        help="an image built by `make images` to import into the real node (repeatable)",
    )
    up.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    up.add_argument("--kueue", action="store_true", help="also run Kueue (batch/Job admission)")
    up.add_argument(
        "--operator-metrics-port",
        type=int,
        default=None,
        help="loopback port Prometheus scrapes as the operator (default: a free port)",
    )
    up.add_argument(
        "--bridge-cidr",
        default=None,
        help="/24 for the process node's pod IPs (default: a free one in 10.77.0.0/16)",
    )
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for readiness")
    commands.add_parser("down", help="stop every component and check that none is left")
    commands.add_parser("status", help="show the components and whether each is ready")
    return parser


def _up(args: argparse.Namespace) -> int:
    try:
        existing = Cluster.attach(args.state_dir)
    except ClusterError:
        existing = None
    if existing is not None and existing.running_components():
        print(f"a cluster is already running in {args.state_dir}; its status:")
        return _print_status(existing)
    cluster = Cluster(
        args.state_dir,
        gpu_nodes=args.gpu_nodes,
        gpus_per_node=args.gpus_per_node,
        process_node=not args.no_process_node,
        prometheus=not args.no_prometheus,
        operator_metrics_port=args.operator_metrics_port,
        bridge_cidr=args.bridge_cidr,
        real_node=not args.no_real_node,
        images=args.image,
        kueue=args.kueue,
    )
    started = time.monotonic()
    cluster.start(timeout=args.timeout)
    print(f"cluster ready in {time.monotonic() - started:.1f} s")
    print(f"  kubeconfig:  {cluster.kubeconfig}")
    print(f"  API server:  {cluster.api_url}")
    if cluster.prometheus_url:
        print(f"  Prometheus:  {cluster.prometheus_url}")
        print(f"  operator metrics are scraped from 127.0.0.1:{cluster.operator_metrics_port}")
    print(f"  logs:        {cluster.logs_dir}")
    print(f"  use it:      export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _down(args: argparse.Namespace) -> int:
    try:
        cluster = Cluster.attach(args.state_dir)
    except ClusterError:
        print(f"no cluster state in {args.state_dir}: nothing to stop")
        return 0
    running = cluster.running_components()
    cluster.stop()
    print(f"stopped {', '.join(running) if running else 'nothing (no component was running)'}")
    return 0


def _print_status(cluster: Cluster) -> int:
    running = set(cluster.running_components())
    healthy = True
    print(f"state directory: {cluster.state_dir}")
    if not running:
        print("no component is running")
        return 1
    print(f"API server: {cluster.api_url}   kubeconfig: {cluster.kubeconfig}")
    if cluster.prometheus_url:
        print(f"Prometheus: {cluster.prometheus_url}")
    pids = cluster.pids()
    for name, check in cluster.readiness_checks().items():
        try:
            ready = check()
        except OSError:
            ready = False
        healthy &= ready
        pid = f" pid {pids[name]}" if name in pids else ""
        alive = "" if name not in pids or name in running else " (process gone)"
        print(f"  {name:28} {'ready' if ready else 'NOT READY'}{pid}{alive}")
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "down":
            return _down(args)
        return _print_status(Cluster.attach(args.state_dir))
    except (ClusterError, MissingToolError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

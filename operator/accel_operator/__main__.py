"""The operator's command line: ``python -m accel_operator run``.

Examples::

    # local cluster (make operator): one process, no peering objects needed
    KUBECONFIG=.cluster/kubeconfig python -m accel_operator run --standalone

    # in a cluster with two replicas: kopf peering elects the active one
    python -m accel_operator run --peering acceltrain --metrics-port 8080 --liveness-port 8081

    # only some namespaces, scraping trainer metrics only inside the pod network
    python -m accel_operator run --namespace team-a --namespace team-b \\
        --scrape-network 10.244.0.0/16

Without ``--namespace`` the operator watches the whole cluster. The Helm chart sets these
variables:

- ``ACCELTRAIN_RECONCILE_INTERVAL`` (seconds): the default of ``--resync-interval``;
- ``ACCELTRAIN_DEFAULT_TRAINER_IMAGE``: the image of jobs without ``spec.image``;
- ``ACCELTRAIN_GPU_NODE_SELECTOR`` (a JSON object): the node selector of GPU workers whose
  ``spec.nodePool.nodeSelector`` is empty;
- ``ACCELTRAIN_GPU_TOLERATIONS`` (a JSON list): tolerations added to every GPU worker.

A value the operator cannot use stops it at startup with a message naming the variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Sequence

from accel_operator import constants, render
from accel_operator.handlers import OperatorOptions

RESYNC_ENV = constants.ENV_RECONCILE_INTERVAL
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _default_resync_interval() -> float:
    text = os.environ.get(RESYNC_ENV)
    if not text:
        return OperatorOptions.resync_interval
    try:
        return float(text)
    except ValueError:
        raise SystemExit(
            f"{RESYNC_ENV}={text!r} is not a number of seconds; set it to, for example, 3"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m accel_operator",
        description="Kubernetes operator that runs DeepSpeed training jobs (AccelTrainJob).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator until SIGTERM/SIGINT")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; kopf globs like team-* allowed); "
        "default: all namespaces",
    )
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--standalone",
        action="store_true",
        help="run without peering (the default; for a single replica)",
    )
    mode.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate replicas through the KopfPeering object NAME (high availability)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        help="port of the operator's Prometheus metrics (0 disables them; default 8080)",
    )
    run.add_argument(
        "--liveness-port",
        type=int,
        default=8081,
        help="port of the /healthz liveness endpoint (0 disables it; default 8081)",
    )
    run.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig to use outside a cluster (default: $KUBECONFIG, then ~/.kube/config)",
    )
    run.add_argument(
        "--resync-interval",
        type=float,
        default=_default_resync_interval(),
        metavar="SECONDS",
        help=f"how often each job's timer looks for due work and scrapes progress "
        f"(default ${RESYNC_ENV}, else 2)",
    )
    run.add_argument(
        "--scrape-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="only scrape trainer metrics from pod addresses in this network (repeatable); "
        "jobs whose pods are elsewhere go Running on pod state alone",
    )
    run.add_argument(
        "--no-pod-logs",
        action="store_true",
        help="do not read a failed worker's log through the API server (the kubelet's log "
        "endpoint); use only the container's termination message",
    )
    run.add_argument(
        "--max-workers",
        type=int,
        default=OperatorOptions.max_workers,
        help="jobs reconciled at the same time (reconcile threads; default 32)",
    )
    run.add_argument(
        "--log-level",
        choices=sorted(LOG_LEVELS),
        default="info",
        help="debug, info (the default), warning or error",
    )
    run.add_argument("--verbose", "-v", action="store_true", help="the same as --log-level debug")
    return parser


def _check_port(value: int, flag: str) -> None:
    if not 0 <= value <= 65535:
        raise SystemExit(f"{flag} {value}: a port is 0-65535 (0 disables the endpoint)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _check_port(args.metrics_port, "--metrics-port")
    _check_port(args.liveness_port, "--liveness-port")
    if args.resync_interval <= 0:
        raise SystemExit(f"--resync-interval {args.resync_interval}: must be > 0 seconds")
    if args.max_workers < 1:
        raise SystemExit(f"--max-workers {args.max_workers}: must be >= 1")
    try:
        defaults = render.cluster_defaults_from_env(os.environ)
    except render.ClusterDefaultsError as error:
        raise SystemExit(str(error)) from None
    if args.kubeconfig:
        if not os.path.exists(args.kubeconfig):
            raise SystemExit(f"--kubeconfig {args.kubeconfig}: no such file")
        # kopf's own login reads the same variable.
        os.environ["KUBECONFIG"] = args.kubeconfig

    level = logging.DEBUG if args.verbose else LOG_LEVELS[args.log_level]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:
        # kopf reports every successful handler and timer tick at INFO: one line per job
        # every few seconds. Transitions are logged by the reconciler instead.
        logging.getLogger("kopf.objects").setLevel(max(level, logging.WARNING))
    # Imported late: --help and argument errors should not pay for kopf and the client.
    import kopf

    from accel_operator.handlers import build_registry
    from accel_operator.kube import KubeClient, load_api_client
    from accel_operator.metrics import OperatorMetrics
    from accel_operator.reconcile import Reconciler
    from accel_operator.scrape import ProgressScraper, parse_networks

    try:
        networks = parse_networks(args.scrape_network)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    options = OperatorOptions(resync_interval=args.resync_interval, max_workers=args.max_workers)
    metrics = OperatorMetrics()
    kube = KubeClient(load_api_client(args.kubeconfig, pool_size=options.api_connections), metrics)
    defaults = dataclasses.replace(defaults, native_gang=kube.serves_workloads())
    logging.getLogger("accel_operator").info(
        "gang scheduling: %s",
        "native (the API server serves scheduling.k8s.io/v1alpha1 Workloads)"
        if defaults.native_gang
        else "no Workload API on this cluster; gangPolicy Auto means Timeout",
    )
    reconciler = Reconciler(
        kube,
        scraper=ProgressScraper(networks),
        metrics=metrics,
        progress_interval=args.resync_interval,
        read_pod_logs=not args.no_pod_logs,
        defaults=defaults,
    )
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    name_the_user()
    kopf.run(
        registry=build_registry(reconciler, options),
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
    )
    return 0


def name_the_user() -> None:
    """kopf names this operator to its peers after the process's user, which it looks up in the
    password database unless ``USER`` (or ``LOGNAME``) is set. A container running under an
    arbitrary numeric uid (the chart's 65532) has no entry there, and kopf would fail at start:
    the pod's name stands in for the user then."""
    if not any(os.environ.get(name) for name in ("LOGNAME", "USER", "LNAME", "USERNAME")):
        os.environ["USER"] = socket.gethostname()


if __name__ == "__main__":
    sys.exit(main())

"""The operator's command line: ``python -m accel_operator run``.

Examples::

    # local cluster (make operator): one process, no peering objects needed
    KUBECONFIG=.cluster/kubeconfig python -m accel_operator run --standalone

    # in a cluster with two replicas (as the Helm chart runs it): the holder of the Lease
    # acceltrain-operator in $POD_NAMESPACE reconciles, the other waits as a standby
    POD_NAME=... POD_NAMESPACE=... python -m accel_operator run --leader-elect

    # only some namespaces, scraping trainer metrics only inside the pod network
    python -m accel_operator run --namespace team-a --namespace team-b \\
        --scrape-network 10.244.0.0/16

Without ``--namespace`` the operator watches the whole cluster. The Helm chart sets these
variables:

- ``ACCELTRAIN_RECONCILE_INTERVAL`` (seconds): the default of ``--reconcile-interval``;
- ``ACCELTRAIN_DEFAULT_TRAINER_IMAGE``: the image of jobs without ``spec.image``;
- ``ACCELTRAIN_GPU_NODE_SELECTOR`` (a JSON object): the node selector of GPU workers whose
  ``spec.nodePool.nodeSelector`` is empty;
- ``ACCELTRAIN_GPU_TOLERATIONS`` (a JSON list): tolerations added to every GPU worker.

A value the operator cannot use stops it at startup with a message naming the variable.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import platform
import signal
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accel_contract import package_version
from accel_operator import constants, render
from accel_operator.handlers import OperatorOptions
from accel_operator.leader import (
    DEFAULT_LEASE_NAME,
    ElectionTiming,
    LeaderElector,
    StandbyHealth,
)

RECONCILE_INTERVAL_ENV = constants.ENV_RECONCILE_INTERVAL
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LEADERSHIP_LOST_EXIT_CODE = 75
"""Exit status of a leader that lost its Lease (EX_TEMPFAIL: the restarted container rejoins
as a standby)."""
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _default_reconcile_interval() -> float:
    text = os.environ.get(RECONCILE_INTERVAL_ENV)
    if not text:
        return OperatorOptions.reconcile_interval
    try:
        return float(text)
    except ValueError:
        raise SystemExit(
            f"{RECONCILE_INTERVAL_ENV}={text!r} is not a number of seconds; "
            "set it to, for example, 3"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m accel_operator",
        description="Kubernetes operator that runs DeepSpeed training jobs (AccelTrainJob).",
    )
    parser.add_argument(
        "--version", action="version", version=f"acceltrain-operator {package_version()}"
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
    _add_mode_flags(run)
    _add_election_flags(run)
    _add_endpoint_flags(run)
    _add_reconcile_flags(run)
    run.add_argument(
        "--log-level",
        choices=sorted(LOG_LEVELS),
        default="info",
        help="debug, info (the default), warning or error",
    )
    run.add_argument("--verbose", "-v", action="store_true", help="the same as --log-level debug")
    return parser


def _add_mode_flags(run: argparse.ArgumentParser) -> None:
    """How replicas share the work: one alone, a Lease, or kopf's peering."""
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--standalone",
        action="store_true",
        help="run without peering (the default; for a single replica)",
    )
    mode.add_argument(
        "--leader-elect",
        action="store_true",
        help="run as one of several replicas: only the holder of a coordination.k8s.io Lease "
        "reconciles, the others wait as standbys (high availability)",
    )
    mode.add_argument(
        "--peering",
        metavar="NAME",
        help="kopf peering through the KopfPeering object NAME instead (not leader election: "
        "replicas of equal priority all pause)",
    )


def _add_endpoint_flags(run: argparse.ArgumentParser) -> None:
    """Where the operator listens and which cluster it talks to."""
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


def _add_reconcile_flags(run: argparse.ArgumentParser) -> None:
    """How often and how widely jobs are reconciled, and what the reconciler may read."""
    run.add_argument(
        "--reconcile-interval",
        type=float,
        default=_default_reconcile_interval(),
        metavar="SECONDS",
        help="how often each running job is looked at (progress scrape, gang and stall "
        "checks) and the least time between status writes that are not transitions (default "
        f"${RECONCILE_INTERVAL_ENV}, else {constants.DEFAULT_RECONCILE_INTERVAL_SECONDS:g})",
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


def _add_election_flags(run: argparse.ArgumentParser) -> None:
    defaults = ElectionTiming()
    election = run.add_argument_group("leader election (with --leader-elect)")
    election.add_argument(
        "--leader-election-namespace",
        metavar="NS",
        default=os.environ.get("POD_NAMESPACE") or _service_account_namespace(),
        help="namespace of the Lease (default $POD_NAMESPACE, else the pod's own namespace)",
    )
    election.add_argument(
        "--leader-election-lease-name",
        metavar="NAME",
        default=DEFAULT_LEASE_NAME,
        help=f"name of the Lease (default {DEFAULT_LEASE_NAME})",
    )
    election.add_argument(
        "--leader-election-id",
        metavar="ID",
        default=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
        help="this replica's identity in the Lease (default $POD_NAME, else host name and a "
        "random suffix)",
    )
    for flag, value, what in (
        (
            "lease-duration",
            defaults.lease_duration,
            "a standby waits this long after the last renewal it saw before taking over",
        ),
        (
            "renew-deadline",
            defaults.renew_deadline,
            "the leader stops reconciling when it could not renew for this long",
        ),
        ("retry-period", defaults.retry_period, "between renewals and between a standby's tries"),
    ):
        election.add_argument(
            f"--leader-election-{flag}",
            type=float,
            default=value,
            metavar="SECONDS",
            help=f"{what} (default {value:g})",
        )


def _service_account_namespace() -> str | None:
    with contextlib.suppress(OSError):
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    return None


def _check_port(value: int, flag: str) -> None:
    if not 0 <= value <= 65535:
        raise SystemExit(f"{flag} {value}: a port is 0-65535 (0 disables the endpoint)")


def _checked_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parsed arguments; a value the operator cannot use stops it here, naming the flag."""
    args = _parser().parse_args(argv)
    _check_port(args.metrics_port, "--metrics-port")
    _check_port(args.liveness_port, "--liveness-port")
    if args.reconcile_interval <= 0:
        raise SystemExit(f"--reconcile-interval {args.reconcile_interval}: must be > 0 seconds")
    if args.max_workers < 1:
        raise SystemExit(f"--max-workers {args.max_workers}: must be >= 1")
    if args.leader_elect:
        problems = _timing(args).problems()
        if problems:
            raise SystemExit("; ".join(problems))
        if not args.leader_election_namespace:
            raise SystemExit(
                "--leader-elect outside a pod needs --leader-election-namespace "
                "(or POD_NAMESPACE): the namespace of the Lease"
            )
    if args.kubeconfig:
        if not os.path.exists(args.kubeconfig):
            raise SystemExit(f"--kubeconfig {args.kubeconfig}: no such file")
        # kopf's own login reads the same variable.
        os.environ["KUBECONFIG"] = args.kubeconfig
    return args


def _timing(args: argparse.Namespace) -> ElectionTiming:
    return ElectionTiming(
        lease_duration=args.leader_election_lease_duration,
        renew_deadline=args.leader_election_renew_deadline,
        retry_period=args.leader_election_retry_period,
    )


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else LOG_LEVELS[args.log_level]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:
        # kopf reports every successful handler at INFO: one line per job event.
        # Transitions are logged by the reconciler instead.
        logging.getLogger("kopf.objects").setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    args = _checked_args(argv)
    try:
        defaults = render.cluster_defaults_from_env(os.environ)
    except render.ClusterDefaultsError as error:
        raise SystemExit(str(error)) from None
    _configure_logging(args)
    # Imported late: --help and argument errors should not pay for kopf and the client.
    import kopf

    from accel_operator.handlers import build_registry
    from accel_operator.metrics import OperatorMetrics
    from accel_operator.scrape import parse_networks

    try:
        networks = parse_networks(args.scrape_network)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    options = OperatorOptions(
        reconcile_interval=args.reconcile_interval, max_workers=args.max_workers
    )
    metrics = OperatorMetrics()
    kube = _connect(args, options, metrics)
    elector = _lead(args, kube, metrics) if args.leader_elect else None
    defaults, options = _served_features(kube, defaults, options)
    reconciler = _reconciler(args, kube, metrics, defaults, networks)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    name_the_user()
    kopf.run(
        registry=build_registry(
            reconciler,
            options,
            on_drained=elector.release if elector is not None else None,
        ),
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
    )
    return 0


def _connect(args: argparse.Namespace, options: OperatorOptions, metrics: Any) -> Any:
    """The API client (a connection for each thread that may send a request and one for each
    watch), the metrics endpoint, and the versions logged and exported."""
    from accel_operator import informer
    from accel_operator.kube import KubeClient, load_api_client

    watches = len(informer.CHILD_KINDS) + 3
    pool_size = options.api_connections + watches * max(1, len(args.namespace or ()))
    kube = KubeClient(load_api_client(args.kubeconfig, pool_size=pool_size), metrics)
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    _report_versions(kube, metrics)
    return kube


def _served_features(
    kube: Any, defaults: render.ClusterDefaults, options: OperatorOptions
) -> tuple[render.ClusterDefaults, OperatorOptions]:
    """What the cluster serves: the native Workload API, PodGroup APIs, Kueue."""
    defaults = dataclasses.replace(
        defaults,
        native_gang=kube.serves_workloads(),
        pod_group_apis=kube.served_pod_group_apis(),
    )
    options = dataclasses.replace(options, kueue=kube.serves_kueue_workloads())
    log = logging.getLogger("accel_operator")
    if options.kueue:
        log.info("Kueue is installed: watching its Workloads for the reasons queued jobs wait")
    log.info(
        "gang scheduling: %s",
        "native (the API server serves scheduling.k8s.io/v1alpha1 Workloads)"
        if defaults.native_gang
        else "no Workload API on this cluster; gangPolicy Auto means Timeout",
    )
    return defaults, options


def _reconciler(
    args: argparse.Namespace,
    kube: Any,
    metrics: Any,
    defaults: render.ClusterDefaults,
    networks: Any,
) -> Any:
    """The reconciler and the informer cache it reads, which the client's writes keep fresh."""
    from accel_operator import informer
    from accel_operator.reconcile import Reconciler
    from accel_operator.scrape import ProgressScraper

    cache = informer.Informer(
        kube,
        [
            *informer.CHILD_KINDS,
            *informer.gang_kinds(defaults.native_gang, defaults.pod_group_apis),
        ],
        namespaces=args.namespace or (),
    )
    kube.on_written = cache.record
    return Reconciler(
        kube,
        cache=cache,
        scraper=ProgressScraper(networks),
        metrics=metrics,
        reconcile_interval=args.reconcile_interval,
        read_pod_logs=not args.no_pod_logs,
        defaults=defaults,
    )


def _lead(args: argparse.Namespace, kube: Any, metrics: Any) -> LeaderElector:
    """Wait as a standby (serving /healthz) until this replica holds the Lease; from then on
    every write passes the Lease's fence, and losing the Lease ends the process at once."""
    elector = LeaderElector(
        kube,
        namespace=args.leader_election_namespace,
        name=args.leader_election_lease_name,
        identity=args.leader_election_id,
        timing=_timing(args),
        metrics=metrics,
    )
    health = StandbyHealth(args.liveness_port) if args.liveness_port else None
    try:
        elector.acquire()
    finally:
        if health is not None:
            health.close()
    kube.write_fence = elector.check_leading
    elector.keep_leading(on_lost=_step_down)
    _check_the_lease_on_waking(elector)
    return elector


def _check_the_lease_on_waking(elector: LeaderElector) -> None:
    """A leader stopped (SIGSTOP) past its renew deadline may wake with watch events buffered,
    and kopf's event loop, in this main thread, would act on them (its own writes, such as
    taking an earlier release's finalizer off a job, are not fenced by the Lease) before the
    watchdog thread's next look. SIGCONT's handler runs in this thread first, before the loop
    dispatches anything."""

    def on_continue(signum: int, frame: Any) -> None:
        if not elector.is_leading():
            _step_down(
                f"{elector.identity} could not renew the Lease {elector.lease}: it was stopped "
                "past its renew deadline"
            )

    signal.signal(signal.SIGCONT, on_continue)


def _step_down(reason: str) -> None:
    """Leave at once: reconcile threads may be mid-request, and only the end of the process
    stops every one of them (and kopf's own writes) before a standby takes over."""
    logging.getLogger("accel_operator").error(
        "%s: stopping so that nothing more is written; a restarted replica rejoins as a standby",
        reason,
    )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(LEADERSHIP_LOST_EXIT_CODE)


def _report_versions(kube: Any, metrics: Any) -> None:
    """Log this operator's version and the cluster's, and export them as build_info."""
    version = package_version()
    server = kube.server_version()
    metrics.record_build(version, server)
    logging.getLogger("accel_operator").info(
        "acceltrain-operator %s (Python %s) against Kubernetes %s",
        version,
        platform.python_version(),
        server,
    )


def name_the_user() -> None:
    """kopf names this operator to its peers after the process's user, which it looks up in the
    password database unless ``USER`` (or ``LOGNAME``) is set. A container running under an
    arbitrary numeric uid (the chart's 65532) has no entry there, and kopf would fail at start:
    the pod's name stands in for the user then."""
    if not any(os.environ.get(name) for name in ("LOGNAME", "USER", "LNAME", "USERNAME")):
        os.environ["USER"] = socket.gethostname()


if __name__ == "__main__":
    sys.exit(main())

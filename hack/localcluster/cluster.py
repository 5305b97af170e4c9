"""The :class:`Cluster`: starts, checks and stops one local cluster living in a state directory.

State directory layout (``.cluster/`` for ``make cluster-up``, a temporary directory in pytest)::

    kubeconfig               admin kubeconfig (system:masters)
    state.json               ports, URLs and the pid + start time of every component
    run/<component>.pid      pid files
    logs/<component>.log     stdout/stderr of every component
    pki/                     CA, serving and client certificates, service-account keys
    etcd/  prometheus/  nodeagent/   component data (node agent: pods/<ns>_<pod>/<container>.log)
    kwok/configuration.yaml  kwok's parallelism settings

A cluster is started by one process and can be inspected or stopped from any other through
:meth:`Cluster.attach`, which reads ``state.json``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from . import controlplane, kwok, prometheus, realnode
from .kubeapi import ApiError, KubeApi, health, tls_context
from .netns import Names
from .pki import (
    CertPair,
    ClientIdentity,
    Pki,
    create_pki,
    issue_client_certificate,
    issue_server_certificate,
)
from .processes import ProcessRecord, is_alive, spawn, stop
from .tools import REPO_ROOT, TOOLS_DIR, kwok_stages_path, tool_path

PROCESS_NODE_NAME = "acceltrain-cpu-0"
# The node that runs pods in real containers (kubelet + containerd); see localcluster.realnode.
REAL_NODE_NAME = "acceltrain-node-0"
GPU_NODE_PREFIX = "acceltrain-gpu-"
# The node agent gives each pod an address in a /24 of this range; each cluster takes a free one.
BRIDGE_SUPERNET = ipaddress.ip_network("10.77.0.0/16")
STATE_FILE = "state.json"
ADMIN_USER = "acceltrain-admin"
PROMETHEUS_USER = "acceltrain:prometheus"
DNS_USER = "acceltrain:coredns"
# Order of start-up; they are stopped in the reverse order.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "nodeagent",
    "containerd",
    "kubelet",
    "coredns",
    "prometheus",
    # Last: stopped first, while the API server still answers.
    "kueue",
)
# The node agent stops its pods (each with its grace period) before it exits on SIGTERM.
NODE_AGENT_STOP_SECONDS = 45.0
# The real node's pods are deleted (grace period below) before its kubelet stops.
REAL_NODE_DRAIN_SECONDS = 60.0
POD_GRACE_SECONDS_AT_STOP = 2
COMPONENT_STOP_SECONDS = 10.0


class ClusterError(RuntimeError):
    """The cluster could not be started, is not healthy, or did not stop cleanly."""


class KubectlError(ClusterError):
    """kubectl exited non-zero; the message carries its stderr."""

    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
        )
        self.result = result


# Ports servers of the cluster listen on are picked below the kernel's ephemeral range: a port
# from that range, free when picked, can be taken by an outgoing connection (the components open
# many) before its server binds it.
LISTEN_PORTS = range(20000, 32000)
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback TCP port that is free now, outside the ephemeral range where possible; chosen
    at random so that parallel clusters differ."""
    try:
        ephemeral_low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 0
    if ephemeral_low >= LISTEN_PORTS.stop:
        for _ in range(200):
            port = random.choice(LISTEN_PORTS)
            if _port_is_free(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        kernel_pick: int = sock.getsockname()[1]
        return kernel_pick


def operator_argv(
    *,
    metrics_port: int,
    liveness_port: int,
    scrape_network: str,
    namespace: str | None = None,
    reconcile_interval_seconds: float | None = None,
    leader_election: tuple[float, float, float] | None = None,
) -> list[str]:
    """The operator's command line as it runs against a local cluster, from the repo root.

    ``leader_election`` (lease duration, renew deadline, retry period): run as one of several
    replicas as the Helm chart runs them (identity and Lease namespace from ``POD_NAME`` and
    ``POD_NAMESPACE``), instead of ``--standalone``.

    ``scrape_network`` is the only range whose pod addresses the operator may scrape: the process
    node's bridge, since kwok's pod addresses are made up. Pod logs stay off because the process
    node has no kubelet log endpoint (the API server would look its name up in DNS); failed
    workers are explained by their termination messages instead.
    """
    argv = [sys.executable, "-m", "accel_operator", "run"]
    if leader_election is None:
        argv.append("--standalone")
    else:
        lease, renew, retry = leader_election
        argv += [
            "--leader-elect",
            f"--leader-election-lease-duration={lease:g}",
            f"--leader-election-renew-deadline={renew:g}",
            f"--leader-election-retry-period={retry:g}",
        ]
    if namespace is not None:
        argv += ["--namespace", namespace]
    argv += ["--metrics-port", str(metrics_port), "--liveness-port", str(liveness_port)]
    if reconcile_interval_seconds is not None:
        argv += ["--reconcile-interval", f"{reconcile_interval_seconds:g}"]
    argv += ["--scrape-network", scrape_network, "--no-pod-logs"]
    return argv


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    result = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=False
    )
    networks = []
    for line in result.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            address = fields[fields.index("inet") + 1]
            networks.append(ipaddress.IPv4Interface(address).network)
    return networks


def free_bridge_cidr(exclude: Iterable[str | None] = ()) -> str:
    """A /24 of 10.77.0.0/16 that no interface on this host uses yet (nor one of ``exclude``).

    Chosen at random among the free ones, so that two clusters starting at the same moment
    (before either bridge exists) are unlikely to pick the same.
    """
    in_use = _networks_in_use()
    in_use += [ipaddress.IPv4Network(cidr) for cidr in exclude if cidr is not None]
    free = [
        candidate
        for candidate in BRIDGE_SUPERNET.subnets(new_prefix=24)
        if not any(candidate.overlaps(network) for network in in_use)
    ]
    if not free:
        raise ClusterError(f"every /24 of {BRIDGE_SUPERNET} is in use; stop other local clusters")
    return str(random.choice(free))


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 64 * 1024))
        text = handle.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class Cluster:
    """A local Kubernetes cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
    kwok with fake GPU nodes, optionally the process node agent and Prometheus.

    Usage::

        cluster = Cluster(Path("/tmp/c"), gpu_nodes=2)
        cluster.start()                 # returns when every component is ready
        cluster.kubectl("get", "nodes")
        cluster.stop()                  # raises ClusterError if any process is left
    """

    def __init__(
        self,
        state_dir: Path | str,
        *,
        gpu_nodes: int = 4,
        gpus_per_node: int = 8,
        process_node: bool = True,
        prometheus: bool = True,
        operator_metrics_port: int | None = None,
        bridge_cidr: str | None = None,
        real_node: bool = False,
        real_node_cidr: str | None = None,
        images: Sequence[str] = (),
        tools_dir: Path = TOOLS_DIR,
        native_gang: bool = True,
        kueue: bool = False,
        node_monitor_grace: str = controlplane.NODE_MONITOR_GRACE_PERIOD,
    ) -> None:
        """``real_node``: also run a kubelet + containerd node (``acceltrain-node-0``) with
        cluster DNS; ``images`` are imported into its containerd at start (built by ``make
        images``; the sandbox image is always imported). ``native_gang``: serve the Workload
        API and run the scheduler's gang scheduling (off: a cluster as before Kubernetes 1.35)."""
        if gpu_nodes < 0:
            raise ValueError(f"gpu_nodes must be >= 0, got {gpu_nodes}")
        if gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {gpus_per_node}")
        self.state_dir = Path(state_dir).resolve()
        self.gpu_nodes = gpu_nodes
        self.gpus_per_node = gpus_per_node
        self.process_node = process_node
        self.prometheus = prometheus
        self.bridge_cidr = bridge_cidr
        self.real_node = real_node
        self.real_node_cidr = real_node_cidr
        self.images = tuple(images)
        self.tools_dir = tools_dir
        self.native_gang = native_gang
        self.kueue = kueue
        self.node_monitor_grace = node_monitor_grace
        self._ip_forward_before: str | None = None
        self._host_dirs_before: list[str] = []
        self._containerd_root: Path | None = None
        self._requested_operator_port = operator_metrics_port
        self._ports: controlplane.Ports | None = None
        self._records: dict[str, ProcessRecord] = {}
        self._popens: dict[str, subprocess.Popen[bytes]] = {}
        self._pki: Pki | None = None

    # ---- paths and addresses -------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def audit_log_path(self) -> Path:
        """The API server's audit log: one JSON event per write by a user (not by a node or
        the control plane), see :data:`controlplane.AUDIT_POLICY`."""
        return self.logs_dir / "audit.log"

    @property
    def node_agent_state_dir(self) -> Path:
        return self.state_dir / "nodeagent"

    @property
    def ports(self) -> controlplane.Ports:
        if self._ports is None:
            raise ClusterError(f"the cluster in {self.state_dir} has not been started")
        return self._ports

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def prometheus_url(self) -> str | None:
        return f"http://127.0.0.1:{self.ports.prometheus}" if self.prometheus else None

    @property
    def operator_metrics_port(self) -> int:
        """The loopback port Prometheus scrapes as job ``acceltrain-operator``."""
        return self.ports.operator_metrics

    @property
    def process_node_name(self) -> str | None:
        return PROCESS_NODE_NAME if self.process_node else None

    @property
    def real_node_name(self) -> str | None:
        return REAL_NODE_NAME if self.real_node else None

    @property
    def real_node_settings(self) -> realnode.RealNodeSettings:
        """Paths, addresses and names of the real node (raises if the cluster has none)."""
        if not self.real_node or self.real_node_cidr is None:
            raise ClusterError(f"the cluster in {self.state_dir} has no real node")
        network = ipaddress.ip_network(self.real_node_cidr)
        return realnode.RealNodeSettings(
            name=REAL_NODE_NAME,
            directory=self.state_dir / "node",
            prefix=Names.for_node(REAL_NODE_NAME, self.real_node_cidr).prefix,
            cidr=self.real_node_cidr,
            gateway=str(network.network_address + 1),
            api_port=self.ports.apiserver,
            kubernetes_service_ip=controlplane.KUBERNETES_SERVICE_IP,
            kubelet_port=self.ports.kubelet,
            kubelet_healthz_port=self.ports.kubelet_healthz,
            dns_ready_port=self.ports.dns_ready,
            containerd_root=self._containerd_root
            or self.state_dir / "node" / "containerd" / "root",
        )

    @property
    def gpu_node_names(self) -> list[str]:
        return [f"{GPU_NODE_PREFIX}{index}" for index in range(self.gpu_nodes)]

    def component_logs(self) -> dict[str, Path]:
        """The log file of every component that was started, by component name."""
        return {
            name: self.logs_dir / f"{name}.log"
            for name in COMPONENTS
            if (self.logs_dir / f"{name}.log").exists()
        }

    def volume_path(self, namespace: str, claim: str) -> Path:
        """The host directory behind a bound claim on the real node's local volumes."""
        api = self.admin_api()
        volume_name = api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")[
            "spec"
        ]["volumeName"]
        return Path(api.get(f"/api/v1/persistentvolumes/{volume_name}")["spec"]["local"]["path"])

    def pod_log_path(self, namespace: str, pod: str, container: str) -> Path:
        """Where the node agent writes the output of a container of a pod on the process node."""
        from .nodeagent import pod_log_path

        path: Path = pod_log_path(self.node_agent_state_dir, namespace, pod, container)
        return path

    def pids(self) -> dict[str, int]:
        """The pid of every component process this cluster started."""
        return {name: record.pid for name, record in self._records.items()}

    # ---- clients -------------------------------------------------------------------------------

    def _pki_or_fail(self) -> Pki:
        if self._pki is None:
            raise ClusterError(f"the cluster in {self.state_dir} has not been started")
        return self._pki

    def admin_api(self) -> KubeApi:
        """A JSON client for the API server with the admin identity."""
        pki = self._pki_or_fail()
        admin = pki.clients["admin"]
        return KubeApi(self.api_url, tls_context(pki.ca.cert, admin.cert, admin.key))

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``.tools/bin/kubectl`` (the pinned version) against this cluster."""
        argv = [str(tool_path("kubectl", self.tools_dir)), f"--kubeconfig={self.kubeconfig}"]
        result = subprocess.run(
            [*argv, *args], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise KubectlError(args, result)
        return result

    # ---- start ---------------------------------------------------------------------------------

    def start(self, *, timeout: float = 90.0) -> None:
        """Starts every component and returns once all are ready (raises ClusterError if not).

        Whatever was started is stopped again when start-up fails.
        """
        if self.running_components():
            raise ClusterError(
                f"a cluster is already running in {self.state_dir}: stop it first "
                f"(PYTHONPATH=hack python -m localcluster down --state-dir {self.state_dir})"
            )
        try:
            self._start(timeout)
        except BaseException as error:
            details = self._failure_details()
            try:
                self.stop()
            except ClusterError as stop_error:
                details += f"\nstopping after the failure also failed: {stop_error}"
            if isinstance(error, ClusterError):
                raise ClusterError(f"{error}\n{details}") from error
            raise

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        binaries = self._binaries()
        self._reset_state_dir()
        self._ports = self._allocate_ports()
        pki = self._create_pki()
        self._write_state()
        node_address = self._prepare_real_node_host() if self.real_node else None
        self._start_control_plane(binaries, pki, node_address, deadline)
        self._start_kwok(binaries)
        if self.process_node:
            self._spawn_node_agent()
        if self.real_node:
            deadline = self._start_real_node(binaries, deadline)
        if self.prometheus:
            self._start_prometheus(binaries, pki)
        if self.kueue:
            from .kueue import start_kueue

            start_kueue(self, timeout=max(1.0, deadline - time.monotonic()))
        self.add_gpu_nodes(self.gpu_node_names, gpus=self.gpus_per_node, wait=False)
        self.wait_ready(timeout=max(1.0, deadline - time.monotonic()))

    def _binaries(self) -> dict[str, Path]:
        """The built tools this cluster runs (refusing a node it cannot have), and the bridge
        networks of its nodes."""
        binaries = {
            name: tool_path(name, self.tools_dir)
            for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
        }
        binaries["kwok"] = tool_path("kwok", self.tools_dir)
        if self.prometheus:
            binaries["prometheus"] = tool_path("prometheus", self.tools_dir)
        if self.process_node:
            agent_source = REPO_ROOT / "hack" / "localcluster" / "nodeagent.py"
            if not agent_source.exists():
                raise ClusterError(
                    f"process_node=True needs the node agent {agent_source}, which does not "
                    "exist; start the cluster with process_node=False (--no-process-node)"
                )
            if self.bridge_cidr is None:
                self.bridge_cidr = free_bridge_cidr()
        if self.real_node:
            for name in ("containerd", "containerd-shim-runc-v2", "ctr", "kubelet", "coredns"):
                binaries[name] = tool_path(name, self.tools_dir)
            realnode.check_host_tools()
            if self.real_node_cidr is None:
                self.real_node_cidr = free_bridge_cidr(exclude=[self.bridge_cidr])
        return binaries

    def _allocate_ports(self) -> controlplane.Ports:
        return controlplane.Ports(
            etcd_client=free_port(),
            etcd_peer=free_port(),
            apiserver=free_port(),
            controller_manager=free_port(),
            scheduler=free_port(),
            kwok=free_port(),
            prometheus=free_port(),
            operator_metrics=self._requested_operator_port or free_port(),
            **(
                {"kubelet": free_port(), "kubelet_healthz": free_port(), "dns_ready": free_port()}
                if self.real_node
                else {}
            ),
        )

    def _prepare_real_node_host(self) -> str:
        """Record what the real node changes on the host (to restore it at the end), then
        prepare it; returns the node's address the API server advertises to pods."""
        self._containerd_root = realnode.claim_root(self.state_dir)
        settings = self.real_node_settings
        self._ip_forward_before = realnode.ip_forward()
        self._host_dirs_before = realnode.existing_fixed_dirs()
        self._write_state()
        realnode.prepare_host(settings)
        return settings.gateway

    def _start_control_plane(
        self, binaries: dict[str, Path], pki: Pki, node_address: str | None, deadline: float
    ) -> None:
        """etcd, the API server, the controller-manager and the scheduler."""
        ports = self.ports
        self._spawn(
            "etcd", controlplane.etcd_argv(binaries["etcd"], self.state_dir / "etcd", ports)
        )
        self._wait(deadline, "etcd", self._etcd_healthy)
        self._spawn(
            "kube-apiserver",
            controlplane.apiserver_argv(
                binaries["kube-apiserver"],
                pki,
                ports,
                self.state_dir / "pki" / "apiserver",
                node_address=node_address,
                native_gang=self.native_gang,
                audit_policy=controlplane.write_audit_policy(self.pki_dir / "audit-policy.yaml"),
                audit_log=self.audit_log_path,
            ),
        )
        self._wait(deadline, "kube-apiserver", self._apiserver_ready)
        self._spawn(
            "kube-controller-manager",
            controlplane.controller_manager_argv(
                binaries["kube-controller-manager"],
                pki,
                ports,
                self.pki_dir / "controller-manager.kubeconfig",
                self.state_dir,
                native_gang=self.native_gang,
                node_monitor_grace=self.node_monitor_grace,
            ),
        )
        scheduler_config = self.pki_dir / "scheduler-config.yaml"
        controlplane.write_scheduler_config(scheduler_config, self.pki_dir / "scheduler.kubeconfig")
        self._spawn(
            "kube-scheduler",
            controlplane.scheduler_argv(
                binaries["kube-scheduler"],
                pki,
                ports,
                self.pki_dir / "scheduler.kubeconfig",
                scheduler_config,
                native_gang=self.native_gang,
            ),
        )

    def _start_kwok(self, binaries: dict[str, Path]) -> None:
        configuration = self.state_dir / "kwok" / "configuration.yaml"
        kwok.write_configuration(configuration)
        stages = kwok_stages_path(self.tools_dir)
        self._spawn(
            "kwok",
            kwok.argv(
                binaries["kwok"],
                kubeconfig=self.kubeconfig,
                stages=kwok.write_stages(stages, self.state_dir / "kwok" / "stages.yaml"),
                server_port=self.ports.kwok,
                configuration=configuration,
            ),
        )

    def _start_prometheus(self, binaries: dict[str, Path], pki: Pki) -> None:
        # Prometheus authenticates as its own user, allowed only to discover scrape targets.
        self._grant_access(PROMETHEUS_USER, prometheus.DISCOVERY_RULES)
        config = self.state_dir / "prometheus" / "prometheus.yml"
        prometheus.write_config(
            config,
            prometheus.PrometheusSettings(
                api_url=self.api_url,
                ca_file=pki.ca.cert,
                cert_file=pki.clients["prometheus"].cert,
                key_file=pki.clients["prometheus"].key,
                process_node=self.process_node_name,
                real_node=self.real_node_name,
                operator_metrics_port=self.ports.operator_metrics,
            ),
        )
        self._spawn(
            "prometheus",
            prometheus.argv(
                binaries["prometheus"],
                config,
                self.state_dir / "prometheus" / "data",
                self.ports.prometheus,
            ),
        )

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    def _create_pki(self) -> Pki:
        """The CA, certificates and kubeconfigs of every component (and of the real node)."""
        identities = [
            ClientIdentity("admin", ADMIN_USER, ("system:masters",)),
            ClientIdentity("controller-manager", "system:kube-controller-manager"),
            ClientIdentity("scheduler", "system:kube-scheduler"),
            ClientIdentity("prometheus", PROMETHEUS_USER),
        ]
        extra_ips: tuple[str, ...] = ()
        if self.real_node:
            # The Node authorizer accepts a kubelet by this name and group.
            identities += [
                ClientIdentity("kubelet", f"system:node:{REAL_NODE_NAME}", ("system:nodes",)),
                ClientIdentity("coredns", DNS_USER),
                ClientIdentity(
                    "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
                ),
            ]
            extra_ips = (self.real_node_settings.gateway,)
        self._pki = pki = create_pki(self.pki_dir, identities, extra_serving_ips=extra_ips)
        for identity in identities:
            if identity.file_stem == "apiserver-kubelet-client":
                continue
            stem = identity.file_stem
            controlplane.write_kubeconfig(
                self.kubeconfig if stem == "admin" else self.pki_dir / f"{stem}.kubeconfig",
                server=self.api_url,
                ca_file=pki.ca.cert,
                client=pki.clients[stem],
                user=identity.user,
            )
        return pki

    def kubeconfig_for(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig that authenticates as ``user`` in ``groups`` with a certificate of its
        own (``system:masters`` among the groups: everything allowed), so that the audit log
        tells its requests apart from everyone else's."""
        stem = f"user-{user}"
        identity = ClientIdentity(stem, user, tuple(groups))
        path = self.pki_dir / f"{stem}.kubeconfig"
        controlplane.write_kubeconfig(
            path,
            server=self.api_url,
            ca_file=self._pki_or_fail().ca.cert,
            client=issue_client_certificate(self._pki_or_fail(), identity),
            user=user,
        )
        return path

    # ---- the real node -------------------------------------------------------------------------

    def _start_real_node(self, binaries: dict[str, Path], deadline: float) -> float:
        """containerd, the images, the kubelet and CoreDNS; returns the start deadline moved on
        by the time the image import took (a first import of the trainer image takes minutes)."""
        settings = self.real_node_settings
        pki = self._pki_or_fail()
        serving = issue_server_certificate(
            pki, stem="kubelet-serving", common_name=REAL_NODE_NAME, ips=[settings.gateway]
        )
        realnode.write_files(settings, ca_file=pki.ca.cert, serving=serving)
        settings.path("Corefile").write_text(
            realnode.corefile(
                settings, self.pki_dir / "coredns.kubeconfig", controlplane.CLUSTER_NAME
            )
        )
        # containerd finds its shim, and the shim runc, on PATH.
        env = {**os.environ, "PATH": f"{binaries['containerd'].parent}:{os.environ['PATH']}"}
        self._spawn("containerd", realnode.containerd_argv(binaries["containerd"], settings), env)
        self._wait(deadline, "containerd", self._containerd_ready)
        started = time.monotonic()
        from .images import import_images

        import_images(
            [realnode.SANDBOX_IMAGE, *self.images],
            ctr=binaries["ctr"],
            address=str(settings.containerd_socket),
        )
        deadline += time.monotonic() - started
        self._spawn(
            "kubelet",
            realnode.kubelet_argv(
                binaries["kubelet"], settings, self.pki_dir / "kubelet.kubeconfig"
            ),
            env,
        )
        self._grant_access(DNS_USER, realnode.DNS_ROLE_RULES)
        api = self.admin_api()
        for path, body in realnode.storage_objects(settings):
            api.create(path, body)
        self._spawn("coredns", realnode.coredns_argv(binaries["coredns"], settings))
        return deadline

    def ctr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Runs ``ctr`` against the real node's containerd, in the Kubernetes namespace."""
        argv = [
            str(tool_path("ctr", self.tools_dir)),
            f"--address={self.real_node_settings.containerd_socket}",
            "--namespace=k8s.io",
            *args,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def _containerd_ready(self) -> bool:
        return self.ctr("version", timeout=10).returncode == 0

    def _drain_real_node(self) -> None:
        """Cordons the real node and deletes its pods, so that the kubelet stops their containers
        and tears down their sandboxes (and networks) before it is stopped itself."""
        api = self.admin_api()
        with contextlib.suppress(ApiError, OSError):
            api.request(
                "PATCH",
                f"/api/v1/nodes/{REAL_NODE_NAME}",
                {"spec": {"unschedulable": True}},
                content_type="application/strategic-merge-patch+json",
            )
            pods = api.get(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{REAL_NODE_NAME}")
            for pod in pods["items"]:
                meta = pod["metadata"]
                api.request(
                    "DELETE",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    {"gracePeriodSeconds": POD_GRACE_SECONDS_AT_STOP},
                )
        deadline = time.monotonic() + REAL_NODE_DRAIN_SECONDS
        while time.monotonic() < deadline:
            listing = self.ctr("tasks", "ls", "-q", timeout=10)
            if listing.returncode != 0 or not listing.stdout.strip():
                return
            time.sleep(0.5)

    def _reset_state_dir(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # A crashed real node may have left mounts (volumes of its pods) under node/: unmount
        # them first, or removing the directory would delete through them.
        for point in realnode.mounts_under(self.state_dir / "node"):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
        for name in ("pki", "etcd", "logs", "run", "prometheus", "nodeagent", "kwok", "node"):
            shutil.rmtree(self.state_dir / name, ignore_errors=True)
        for name in ("kubeconfig", STATE_FILE):
            (self.state_dir / name).unlink(missing_ok=True)
        self._records = {}
        self._popens = {}

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        popen, record = spawn(
            name, argv, log_path=self.logs_dir / f"{name}.log", env=env, cwd=self.state_dir
        )
        self._popens[name] = popen
        self._records[name] = record
        run_dir = self.state_dir / "run"
        run_dir.mkdir(exist_ok=True)
        (run_dir / f"{name}.pid").write_text(f"{record.pid}\n")
        self._write_state()

    def _spawn_node_agent(self) -> None:
        assert self.bridge_cidr is not None
        env = dict(os.environ)
        hack_dir = str(REPO_ROOT / "hack")
        env["PYTHONPATH"] = os.pathsep.join([hack_dir, *filter(None, [env.get("PYTHONPATH")])])
        self.node_agent_state_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "nodeagent",
            [
                sys.executable,
                "-m",
                "localcluster.nodeagent",
                "--kubeconfig",
                str(self.kubeconfig),
                "--node-name",
                PROCESS_NODE_NAME,
                "--state-dir",
                str(self.node_agent_state_dir),
                "--bridge-cidr",
                self.bridge_cidr,
                "--python",
                sys.executable,
            ],
            env=env,
        )

    def _grant_access(self, user: str, rules: list[dict[str, Any]]) -> None:
        """A ClusterRole with ``rules`` bound to the certificate user ``user``."""
        api = self.admin_api()
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": user},
            "rules": rules,
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": user},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": user,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }
        api.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", role)
        api.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)

    # ---- fake GPU nodes ------------------------------------------------------------------------

    def add_gpu_nodes(
        self,
        names: Iterable[str],
        *,
        gpus: int,
        pool: str = kwok.GPU_POOL,
        extra_labels: dict[str, str] | None = None,
        taint_key: str = kwok.GPU_TAINT_KEY,
        pods: int = 110,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> list[str]:
        """Creates kwok-managed nodes with ``gpus`` x ``nvidia.com/gpu`` and room for ``pods``
        pods each; waits until Ready."""
        api = self.admin_api()
        created = []
        for name in names:
            node = kwok.gpu_node(
                name,
                gpus=gpus,
                pool=pool,
                pods=pods,
                extra_labels=extra_labels,
                taint_key=taint_key,
            )
            api.create("/api/v1/nodes", node)
            created.append(name)
        if wait:
            deadline = time.monotonic() + timeout
            self._wait(deadline, f"nodes {', '.join(created)}", lambda: self._nodes_ready(created))
        return created

    def wait_crd_established(self, name: str, timeout: float = 60.0) -> None:
        """Waits until the API server serves the resource of the CRD ``name``.

        ``kubectl wait --for=condition=Established`` is not used: when it reads the CRD before
        the API server has written any condition, it fails at once instead of waiting.
        """
        api = self.admin_api()

        def established() -> bool:
            crd = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = (crd.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        self._wait(time.monotonic() + timeout, f"CRD {name} Established", established)

    def add_mortal_gpu_node(
        self, name: str, *, gpus: int, pool: str = kwok.GPU_POOL, timeout: float = 30.0
    ) -> None:
        """A kwok GPU node kept alive by a kwok process of its own (component ``kwok-<name>``),
        so that :meth:`lose_node` can cut it off alone."""
        managed = f"mortal-{name}"
        node = kwok.gpu_node(name, gpus=gpus, pool=pool)
        node["metadata"]["annotations"][kwok.MANAGED_ANNOTATION] = managed
        self.admin_api().create("/api/v1/nodes", node)
        self._spawn(
            f"kwok-{name}",
            kwok.argv(
                tool_path("kwok", self.tools_dir),
                kubeconfig=self.kubeconfig,
                stages=self.state_dir / "kwok" / "stages.yaml",
                server_port=free_port(),
                configuration=self.state_dir / "kwok" / "configuration.yaml",
                managed_value=managed,
                pod_cidr=kwok.MORTAL_POD_CIDR,
            ),
        )
        deadline = time.monotonic() + timeout
        self._wait(deadline, f"node {name}", lambda: self._nodes_ready([name]))

    def lose_node(self, name: str) -> None:
        """Cut a node added by :meth:`add_mortal_gpu_node` off, as a machine that lost power:
        its kwok process is killed, so nothing renews its Lease or reports its pods, and after
        the node-monitor grace period the node lifecycle controller taints it unreachable."""
        component = f"kwok-{name}"
        stop(self._records[component], grace_seconds=0)
        self._popens.pop(component).wait(timeout=5)

    def delete_nodes(self, names: Iterable[str]) -> None:
        api = self.admin_api()
        for name in names:
            api.delete(f"/api/v1/nodes/{name}")

    # ---- readiness -----------------------------------------------------------------------------

    def _etcd_healthy(self) -> bool:
        body = health(f"http://127.0.0.1:{self.ports.etcd_client}/health", None)
        return body is not None and '"health":"true"' in body

    def _apiserver_ready(self) -> bool:
        pki = self._pki_or_fail()
        admin = pki.clients["admin"]
        context = tls_context(pki.ca.cert, admin.cert, admin.key)
        return health(f"{self.api_url}/readyz", context) == "ok"

    def _component_healthy(self, port: int) -> bool:
        context = tls_context(self._pki_or_fail().ca.cert)
        return health(f"https://127.0.0.1:{port}/healthz", context) == "ok"

    def _nodes_ready(self, names: Sequence[str]) -> bool:
        nodes = self.admin_api().get("/api/v1/nodes")["items"]
        ready = set()
        for node in nodes:
            for condition in node.get("status", {}).get("conditions") or []:
                if condition["type"] == "Ready" and condition["status"] == "True":
                    ready.add(node["metadata"]["name"])
        return set(names) <= ready

    def _default_service_account_exists(self) -> bool:
        try:
            self.admin_api().get("/api/v1/namespaces/default/serviceaccounts/default")
        except ApiError:
            return False
        return True

    def readiness_checks(self) -> dict[str, Callable[[], bool]]:
        """One check per component, each true when that component is up and doing its job."""
        ports = self.ports
        checks: dict[str, Callable[[], bool]] = {
            "etcd": self._etcd_healthy,
            "kube-apiserver": self._apiserver_ready,
            "kube-controller-manager": lambda: self._component_healthy(ports.controller_manager),
            "kube-scheduler": lambda: self._component_healthy(ports.scheduler),
            "kwok": lambda: health(f"http://127.0.0.1:{ports.kwok}/healthz", None) is not None,
            "serviceaccount controller": self._default_service_account_exists,
            "kwok GPU nodes": lambda: self._nodes_ready(self.gpu_node_names),
        }
        if self.process_node:
            checks["nodeagent"] = lambda: self._nodes_ready([PROCESS_NODE_NAME])
        if self.real_node:
            checks["containerd"] = self._containerd_ready
            checks["kubelet"] = lambda: self._nodes_ready([REAL_NODE_NAME])
            checks["coredns"] = lambda: (
                health(f"http://127.0.0.1:{ports.dns_ready}/ready", None) is not None
            )
        if self.kueue:
            from . import kueue

            checks["kueue"] = lambda: kueue.is_ready(self)
        if self.prometheus:
            checks["prometheus"] = lambda: (
                health(f"http://127.0.0.1:{ports.prometheus}/-/ready", None) is not None
            )
        return checks

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Waits until every component is ready; raises ClusterError naming those that are not."""
        deadline = time.monotonic() + timeout
        for name, check in self.readiness_checks().items():
            self._wait(deadline, name, check)

    def _wait(self, deadline: float, what: str, check: Callable[[], bool]) -> None:
        while True:
            self._fail_if_a_component_exited()
            try:
                if check():
                    return
            except (ApiError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"{what} did not become ready in time (state: {self.state_dir})")
            time.sleep(0.2)

    def _fail_if_a_component_exited(self) -> None:
        for name, popen in self._popens.items():
            code = popen.poll()
            if code is not None:
                raise ClusterError(
                    f"{name} exited with code {code} during start-up; "
                    f"see {self.logs_dir / f'{name}.log'}"
                )

    def _failure_details(self) -> str:
        parts = []
        for name, path in self.component_logs().items():
            parts.append(f"--- last lines of {path} ({name}) ---\n{_tail(path, 15)}")
        return "\n".join(parts)

    # ---- state file ----------------------------------------------------------------------------

    def _write_state(self) -> None:
        state: dict[str, Any] = {
            "gpu_nodes": self.gpu_nodes,
            "gpus_per_node": self.gpus_per_node,
            "process_node": self.process_node,
            "prometheus": self.prometheus,
            "kueue": self.kueue,
            "bridge_cidr": self.bridge_cidr,
            "real_node": self.real_node,
            "real_node_cidr": self.real_node_cidr,
            "ip_forward_before": self._ip_forward_before,
            "host_dirs_before": self._host_dirs_before,
            "containerd_root": str(self._containerd_root) if self._containerd_root else None,
            "ports": vars(self._ports) if self._ports else None,
            "processes": [record.to_json() for record in self._records.values()],
        }
        if self._ports is not None:
            state["api_url"] = self.api_url
            state["prometheus_url"] = self.prometheus_url
        path = self.state_dir / STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        temporary.replace(path)

    @classmethod
    def attach(cls, state_dir: Path | str, *, tools_dir: Path = TOOLS_DIR) -> Cluster:
        """The cluster described by ``state_dir/state.json`` (started by another process)."""
        state_path = Path(state_dir).resolve() / STATE_FILE
        if not state_path.exists():
            raise ClusterError(
                f"{state_path} does not exist: no cluster was started in {state_dir} "
                "(start one with `make cluster-up`)"
            )
        state = json.loads(state_path.read_text())
        cluster = cls(
            state_path.parent,
            gpu_nodes=state["gpu_nodes"],
            gpus_per_node=state["gpus_per_node"],
            process_node=state["process_node"],
            prometheus=state["prometheus"],
            bridge_cidr=state["bridge_cidr"],
            real_node=state.get("real_node", False),
            real_node_cidr=state.get("real_node_cidr"),
            tools_dir=tools_dir,
            kueue=state.get("kueue", False),
        )
        cluster._ip_forward_before = state.get("ip_forward_before")
        cluster._host_dirs_before = state.get("host_dirs_before", [])
        if state.get("containerd_root"):
            cluster._containerd_root = Path(state["containerd_root"])
        if state["ports"] is not None:
            cluster._ports = controlplane.Ports(**state["ports"])
        cluster._records = {
            record["name"]: ProcessRecord.from_json(record) for record in state["processes"]
        }
        cluster._pki = _pki_from_disk(state_path.parent / "pki")
        return cluster

    def running_components(self) -> list[str]:
        """Names of the recorded components whose process is still alive."""
        state_path = self.state_dir / STATE_FILE
        records = dict(self._records)
        if not records and state_path.exists():
            for raw in json.loads(state_path.read_text()).get("processes", []):
                record = ProcessRecord.from_json(raw)
                records[record.name] = record
        return [name for name, record in records.items() if is_alive(record)]

    # ---- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stops every component (SIGTERM, then SIGKILL) and checks that no process is left.

        Also stops what a crashed or interrupted start left behind, as recorded in state.json.
        """
        state_path = self.state_dir / STATE_FILE
        if not self._records and state_path.exists():
            for raw in json.loads(state_path.read_text()).get("processes", []):
                recorded = ProcessRecord.from_json(raw)
                self._records[recorded.name] = recorded
        leftovers: dict[str, list[int]] = {}
        if self.real_node and all(
            name in self._records and is_alive(self._records[name])
            for name in ("kube-apiserver", "kubelet", "containerd")
        ):
            self._drain_real_node()
        # Components added while the cluster ran (kwok processes of mortal nodes) go first.
        extras = [name for name in self._records if name not in COMPONENTS]
        for name in [*extras, *reversed(COMPONENTS)]:
            record = self._records.get(name)
            if record is None:
                continue
            if name == "nodeagent":
                left = stop(record, grace_seconds=NODE_AGENT_STOP_SECONDS, group=False)
            else:
                left = stop(record, grace_seconds=COMPONENT_STOP_SECONDS)
            if left:
                leftovers[name] = left
            popen = self._popens.pop(name, None)
            if popen is not None and not left:
                popen.wait(timeout=5)
        host_problems: list[str] = []
        if self.real_node and self.real_node_cidr is not None and self._ports is not None:
            settings = self.real_node_settings
            realnode.kill_shims(settings.containerd_socket)
            host_problems = realnode.clean_host(
                settings,
                ip_forward_before=self._ip_forward_before,
                dirs_before=self._host_dirs_before,
            )
            if self._containerd_root is not None:
                realnode.release_root(self._containerd_root, self.state_dir)
        self._records = {}
        if state_path.exists() or self._ports is not None:
            self._write_state()
        for pid_file in (self.state_dir / "run").glob("*.pid"):
            pid_file.unlink()
        if leftovers:
            raise ClusterError(f"processes still alive after stopping the cluster: {leftovers}")
        if host_problems:
            raise ClusterError(f"the real node left these on the host: {host_problems}")


def _pki_from_disk(directory: Path) -> Pki:
    clients = {
        path.stem.removeprefix("client-"): CertPair(cert=path, key=path.with_suffix(".key"))
        for path in directory.glob("client-*.crt")
    }
    return Pki(
        ca=CertPair(directory / "ca.crt", directory / "ca.key"),
        serving=CertPair(directory / "serving.crt", directory / "serving.key"),
        service_account_private_key=directory / "service-account.key",
        service_account_public_key=directory / "service-account.pub",
        clients=clients,
    )

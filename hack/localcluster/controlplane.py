"""Command lines of the control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) and the kubeconfig files they and the users authenticate with.

Everything listens on 127.0.0.1 only, on ports chosen per cluster, so that several clusters (a
``make cluster-up`` one and a pytest one) can run side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .pki import CertPair, Pki

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
# The first address of the range: the ClusterIP of the `kubernetes` Service.
KUBERNETES_SERVICE_IP = "10.96.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_NAME = "acceltrain-local"
# The node agent's Lease can lapse while the machine is busy training; the node must not be marked
# NotReady and its pods evicted for that. Nodes that really leave are removed by the harness; a
# cluster that tests node loss sets a grace of seconds (Cluster(node_monitor_grace=...)).
NODE_MONITOR_GRACE_PERIOD = "24h"
# Health endpoints the controller-manager and scheduler serve without authentication.
ALWAYS_ALLOWED_PATHS = "/healthz,/readyz,/livez,/metrics"


@dataclass(frozen=True)
class Ports:
    """The loopback ports of one cluster."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    prometheus: int
    operator_metrics: int
    # The real node's ports (0 when the cluster has none).
    kubelet: int = 0
    kubelet_healthz: int = 0
    dns_ready: int = 0


def write_kubeconfig(
    path: Path, *, server: str, ca_file: Path, client: CertPair, user: str
) -> None:
    """A kubeconfig with one cluster, one user (certificate files by path) and one context."""
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(client.cert),
                    "client-key": str(client.key),
                },
            }
        ],
        "contexts": [
            {
                "name": CLUSTER_NAME,
                "context": {"cluster": CLUSTER_NAME, "user": user, "namespace": "default"},
            }
        ],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def etcd_argv(binary: Path, data_dir: Path, ports: Ports) -> list[str]:
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(binary),
        "--name=acceltrain",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=acceltrain={peer}",
        # The data is thrown away with the cluster; fsync only slows the tests down.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


# Native gang scheduling (Kubernetes 1.35, alpha): the Workload API in the API server and the
# controller manager, the gang plugin in the scheduler. Users' clusters turn on the same gates.
FEATURE_GATES = "GenericWorkload=true,GangScheduling=true"
WORKLOAD_API = "scheduling.k8s.io/v1alpha1=true"


def _gang_flags(native_gang: bool, *, api: bool = False) -> list[str]:
    if not native_gang:
        return []
    return [f"--feature-gates={FEATURE_GATES}", *([f"--runtime-config={WORKLOAD_API}"] * api)]


# The API server's audit log records who wrote what and when (at the Metadata level: no bodies),
# for the users and tools that act on the cluster; the control plane's own components and the
# nodes, which write constantly, are left out. Tests read it to prove who did or did not write.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    userGroups: ["system:nodes"]
  - level: None
    users: ["system:kube-controller-manager", "system:kube-scheduler", "system:apiserver"]
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
"""
AUDIT_LOG_MAX_MEGABYTES = 100


def write_audit_policy(path: Path) -> Path:
    path.write_text(AUDIT_POLICY)
    return path


def _audit_flags(audit_policy: Path | None, audit_log: Path | None) -> list[str]:
    if audit_policy is None or audit_log is None:
        return []
    return [
        f"--audit-policy-file={audit_policy}",
        f"--audit-log-path={audit_log}",
        f"--audit-log-maxsize={AUDIT_LOG_MAX_MEGABYTES}",
        "--audit-log-maxbackup=1",
    ]


def apiserver_argv(
    binary: Path,
    pki: Pki,
    ports: Ports,
    cert_dir: Path,
    *,
    node_address: str | None = None,
    native_gang: bool = True,
    audit_policy: Path | None = None,
    audit_log: Path | None = None,
) -> list[str]:
    """``node_address``: the real node's bridge address, where pods reach the API server.
    ``audit_policy`` and ``audit_log``: where the audit log goes (none without them)."""
    return [
        str(binary),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        *_apiserver_address_flags(pki, node_address),
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={pki.serving.cert}",
        f"--tls-private-key-file={pki.serving.key}",
        f"--client-ca-file={pki.ca.cert}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_public_key}",
        f"--service-account-signing-key-file={pki.service_account_private_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",
        "--profiling=false",
        *_gang_flags(native_gang, api=True),
        *_audit_flags(audit_policy, audit_log),
        "--v=1",
    ]


def _apiserver_address_flags(pki: Pki, node_address: str | None) -> list[str]:
    if node_address is None:
        return [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The reconciler would publish 127.0.0.1 as the "kubernetes" Service endpoint, which
            # the API rejects (loopback); without a real node no pod needs that Service.
            "--endpoint-reconciler-type=none",
        ]
    kubelet_client = pki.clients["apiserver-kubelet-client"]
    return [
        # Loopback for the host's clients, the bridge address for pods (the `kubernetes` Service
        # endpoint); one bind address serves both.
        "--bind-address=0.0.0.0",
        f"--advertise-address={node_address}",
        f"--kubelet-client-certificate={kubelet_client.cert}",
        f"--kubelet-client-key={kubelet_client.key}",
        f"--kubelet-certificate-authority={pki.ca.cert}",
        "--kubelet-preferred-address-types=InternalIP",
    ]


def _serving_flags(pki: Pki, port: int) -> list[str]:
    return [
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={pki.serving.cert}",
        f"--tls-private-key-file={pki.serving.key}",
        f"--client-ca-file={pki.ca.cert}",
        f"--authorization-always-allow-paths={ALWAYS_ALLOWED_PATHS}",
        # The client CA is given above; without this the component also looks for a front-proxy
        # CA in kube-system/extension-apiserver-authentication, which this cluster does not use.
        "--authentication-skip-lookup=true",
    ]


def controller_manager_argv(
    binary: Path,
    pki: Pki,
    ports: Ports,
    kubeconfig: Path,
    state_dir: Path,
    *,
    native_gang: bool = True,
    node_monitor_grace: str = NODE_MONITOR_GRACE_PERIOD,
) -> list[str]:
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        *_serving_flags(pki, ports.controller_manager),
        "--leader-elect=false",
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.service_account_private_key}",
        f"--root-ca-file={pki.ca.cert}",
        f"--cluster-signing-cert-file={pki.ca.cert}",
        f"--cluster-signing-key-file={pki.ca.key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        f"--node-monitor-grace-period={node_monitor_grace}",
        # The default is under /usr/libexec, which it would create on the host.
        f"--flex-volume-plugin-dir={state_dir / 'flex-volume-plugins'}",
        # Scale tests create and delete hundreds of pods; the default 20 QPS makes GC crawl.
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        *_gang_flags(native_gang),
        "--v=1",
    ]


def write_scheduler_config(path: Path, kubeconfig: Path) -> None:
    config = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig), "qps": 200, "burst": 400},
        "leaderElection": {"leaderElect": False},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def scheduler_argv(
    binary: Path,
    pki: Pki,
    ports: Ports,
    kubeconfig: Path,
    config: Path,
    *,
    native_gang: bool = True,
) -> list[str]:
    return [
        str(binary),
        f"--config={config}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        *_serving_flags(pki, ports.scheduler),
        *_gang_flags(native_gang),
        "--v=1",
    ]

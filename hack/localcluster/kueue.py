"""Kueue on the local cluster: the ``kueue`` controller as a local process, its CRDs and webhooks,
and a GPU queue for tests (flavor, ClusterQueue, LocalQueue).

What this module owns (prototype; :class:`~localcluster.Cluster` does not start it yet):

* the component ``kueue``: one process started through the cluster's own spawn, so that it is in
  ``state.json``, ``run/kueue.pid`` and ``logs/kueue.log`` like every other component;
* its files under ``pki/kueue/`` (removed with ``pki/`` on the next start): ``config.yaml`` (a
  ``config.kueue.x-k8s.io/v1beta2`` Configuration), ``certs/tls.{crt,key}`` (webhook and metrics
  serving certificate from the cluster CA, for 127.0.0.1), ``ports.json`` and ``etc-overlay/``;
* the cluster objects: Kueue's CRDs, ``kueue-mutating-webhook-configuration``,
  ``kueue-validating-webhook-configuration``, and what :func:`queue_fixture` creates.

How Kueue runs here, and why:

* The API server runs on the host, so it reaches Kueue's webhooks at
  ``https://127.0.0.1:<port>/<path>``: the configurations shipped in Kueue's module name an
  in-cluster Service instead and are rewritten to that URL with the cluster CA as ``caBundle``.
  Kueue's internal certificate management is off (it issues certificates for the Service's DNS
  name, which the API server could not use to reach a loopback port).
* With internal certificate management off, Kueue 0.17 reads its metrics certificate from the
  fixed path ``/etc/kueue/metrics/certs`` and exits when it is missing. Rather than writing into
  the host's ``/etc``, the process runs in a private mount namespace whose ``/etc`` is an overlay
  with that directory added on a tmpfs: nothing appears on the host and it goes with the process.
* Only the webhooks of Kueue's own kinds and of ``batch/v1`` Jobs are installed, the Job ones only
  for Jobs that carry ``kueue.x-k8s.io/queue-name``: upstream sends every Job, Pod, Deployment and
  StatefulSet to Kueue with ``failurePolicy: Fail``, so any Job of any other test would fail to be
  created whenever Kueue is not running. (This also turns off LocalQueueDefaulting, which gives
  unlabelled Jobs the queue ``default``.)
* The visibility API server (feature ``VisibilityOnDemand``) is off: it needs an APIService and
  front-proxy authentication that this cluster does not have.
* Kueue's ``Workload`` (``kueue.x-k8s.io``) and the native gang ``Workload``
  (``scheduling.k8s.io/v1alpha1``) share the plural: ``kubectl get workloads`` lists the native
  ones; Kueue's are ``kubectl get kwl`` / ``workloads.kueue.x-k8s.io``. Nothing else clashes: Kueue
  0.17 does not use the scheduling.k8s.io Workload API, and an admitted Job's pods keep their
  ``workloadRef``, so the scheduler still places them as one gang.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from . import kwok
from .cluster import COMPONENT_STOP_SECONDS, Cluster, ClusterError, free_port
from .kubeapi import ApiError, KubeApi, health
from .pki import issue_server_certificate
from .processes import stop
from .tools import TOOLS_DIR, MissingToolError, tool_path

COMPONENT = "kueue"
API = "kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
# On every Workload Kueue creates for a Job: the Job's uid (its name is job-<name>-<uid hash>).
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
# Kueue's own finalizer, which its mutating webhook adds to every ResourceFlavor.
RESOURCE_IN_USE = "kueue.x-k8s.io/resource-in-use"
# Kueue's kustomization prefixes these names with "kueue-"; kept, so that they read as upstream.
WEBHOOK_PREFIX = "kueue-"
# The CRDs upstream serves through Kueue's conversion webhook (config/components/crd/patches).
CONVERSION_CRDS = (
    "localqueues.kueue.x-k8s.io",
    "clusterqueues.kueue.x-k8s.io",
    "cohorts.kueue.x-k8s.io",
    "workloads.kueue.x-k8s.io",
    "multikueueclusters.kueue.x-k8s.io",
)
FIELD_MANAGER = "acceltrain-localcluster"
# The kinds this module creates: their plural and whether they are namespaced.
_RESOURCES = {
    "CustomResourceDefinition": ("customresourcedefinitions", False),
    "MutatingWebhookConfiguration": ("mutatingwebhookconfigurations", False),
    "ValidatingWebhookConfiguration": ("validatingwebhookconfigurations", False),
    "Namespace": ("namespaces", False),
    "ResourceFlavor": ("resourceflavors", False),
    "ClusterQueue": ("clusterqueues", False),
    "WorkloadPriorityClass": ("workloadpriorityclasses", False),
    "LocalQueue": ("localqueues", True),
}
# Runs in the new mount namespace before Kueue: a tmpfs holds the overlay's upper layer, in which
# /etc/kueue/metrics/certs is the only addition to the host's /etc. Then the shell becomes Kueue
# (exec), so the recorded pid is Kueue's.
_MOUNT_SCRIPT = """\
set -eu
overlay="$1"; certs="$2"; shift 2
mount -t tmpfs -o mode=0700,size=1m kueue-etc "$overlay"
mkdir -p "$overlay/upper/kueue/metrics/certs" "$overlay/work"
cp "$certs/tls.crt" "$certs/tls.key" "$overlay/upper/kueue/metrics/certs/"
mount -t overlay -o "lowerdir=/etc,upperdir=$overlay/upper,workdir=$overlay/work" kueue-etc /etc
exec "$@"
"""


@dataclass(frozen=True)
class KueuePorts:
    """Kueue's loopback ports: webhooks (HTTPS), health probes (HTTP), metrics (HTTPS, bearer
    token authenticated by the API server)."""

    webhook: int
    health: int
    metrics: int


@dataclass(frozen=True)
class KueueFiles:
    """Where Kueue's files of one cluster live (under ``pki/`` so that a new start removes them)."""

    directory: Path

    @classmethod
    def of(cls, cluster: Cluster) -> KueueFiles:
        return cls(cluster.pki_dir / "kueue")

    @property
    def config(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def cert_dir(self) -> Path:
        return self.directory / "certs"

    @property
    def overlay_dir(self) -> Path:
        return self.directory / "etc-overlay"

    @property
    def ports_file(self) -> Path:
        return self.directory / "ports.json"

    def ports(self) -> KueuePorts:
        return KueuePorts(**json.loads(self.ports_file.read_text()))


@dataclass(frozen=True)
class QueueFixture:
    """The objects :func:`queue_fixture` made: label Jobs with ``QUEUE_LABEL: local_queue``."""

    namespace: str
    local_queue: str
    cluster_queue: str
    flavor: str


class KueueError(ClusterError):
    """Kueue could not be started or did not become ready."""


# ---- manifests -------------------------------------------------------------------------------


def manifests_path(tools_dir: Path = TOOLS_DIR) -> Path:
    """``.tools/share/kueue``: the CRDs and webhooks of the pinned Kueue, copied from its module
    by ``hack/tools/build.sh kueue`` (so that starting Kueue needs no Go toolchain)."""
    path = tools_dir / "share" / "kueue"
    if not (path / "webhooks.yaml").exists():
        raise MissingToolError(f"{path} does not exist: run `bash hack/tools/build.sh kueue`")
    return path


def _conversion(url: str, ca_bundle: str) -> dict[str, Any]:
    return {
        "strategy": "Webhook",
        "webhook": {
            "conversionReviewVersions": ["v1"],
            "clientConfig": {"url": f"{url}/convert", "caBundle": ca_bundle},
        },
    }


def crd_objects(manifests: Path, webhook_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs; those upstream converts through its webhook (v1beta1 <-> v1beta2) call it at
    ``webhook_url`` as upstream's kustomize patches do through the Service."""
    crds = []
    for path in sorted((manifests / "crd").glob("*.yaml")):
        crd: dict[str, Any] = yaml.safe_load(path.read_text())
        if crd["metadata"]["name"] in CONVERSION_CRDS:
            crd["spec"]["conversion"] = _conversion(webhook_url, ca_bundle)
        crds.append(crd)
    return crds


def _wanted(hook: Mapping[str, Any]) -> bool:
    groups = {group for rule in hook["rules"] for group in rule["apiGroups"]}
    return groups == {"kueue.x-k8s.io"} or groups == {"batch"}


def webhook_objects(manifests: Path, webhook_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """The Mutating- and ValidatingWebhookConfiguration of Kueue's module, cut down to Kueue's
    kinds and labelled batch/v1 Jobs (see the module docstring) and pointed at ``webhook_url``."""
    configurations = []
    for document in yaml.safe_load_all((manifests / "webhooks.yaml").read_text()):
        if not document:
            continue
        document["metadata"]["name"] = WEBHOOK_PREFIX + document["metadata"]["name"]
        hooks = [hook for hook in document["webhooks"] if _wanted(hook)]
        for hook in hooks:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": webhook_url + path, "caBundle": ca_bundle}
            if {group for rule in hook["rules"] for group in rule["apiGroups"]} == {"batch"}:
                # A Job without the label is none of Kueue's business (manageJobsWithoutQueueName
                # is false); an UPDATE that removes it still matches through the old object.
                hook["objectSelector"] = {
                    "matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]
                }
        document["webhooks"] = hooks
        configurations.append(document)
    return configurations


def configuration(ports: KueuePorts, cert_dir: Path) -> dict[str, Any]:
    """Kueue's Configuration: loopback ports, certificates from ``cert_dir``, one replica
    (no leader election), and only the batch/Job integration for labelled Jobs."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        # Upstream's manifest sets these; the built-in default (20/30) throttles scale tests.
        "clientConnection": {"qps": 50, "burst": 100},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports.health}"},
        "metrics": {"bindAddress": f"127.0.0.1:{ports.metrics}"},
        "webhook": {"host": "127.0.0.1", "port": ports.webhook, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
    }


def argv(binary: Path, files: KueueFiles, kubeconfig: Path) -> list[str]:
    """Kueue's command line, wrapped in ``unshare`` for its private ``/etc`` (a user namespace
    too when not root, so that the mounts are allowed)."""
    namespaces = ["--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        namespaces = ["--user", "--map-root-user", *namespaces]
    return [
        shutil.which("unshare") or "unshare",
        *namespaces,
        "--",
        "/bin/sh",
        "-c",
        _MOUNT_SCRIPT,
        "kueue-mounts",
        str(files.overlay_dir),
        str(files.cert_dir),
        str(binary),
        f"--config={files.config}",
        f"--kubeconfig={kubeconfig}",
    ]


# ---- API helpers -----------------------------------------------------------------------------


def object_path(obj: Mapping[str, Any]) -> str:
    """The API path of one object of the Kinds this module creates."""
    plural, namespaced = _RESOURCES[obj["kind"]]
    version = obj["apiVersion"]
    prefix = "/api/v1" if version == "v1" else f"/apis/{version}"
    meta = obj["metadata"]
    where = f"/namespaces/{meta['namespace']}" if namespaced else ""
    return f"{prefix}{where}/{plural}/{meta['name']}"


def apply_objects(api: KubeApi, objects: Sequence[Mapping[str, Any]]) -> None:
    """Server-side apply (the CRDs are too large for kubectl's client-side annotation)."""
    for obj in objects:
        api.request(
            "PATCH",
            f"{object_path(obj)}?fieldManager={FIELD_MANAGER}&force=true",
            obj,
            timeout=60.0,
            content_type="application/apply-patch+yaml",
        )


def condition(obj: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """The status condition of type ``kind`` of an object, if it has one."""
    for entry in (obj.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return dict(entry)
    return None


def workload_of(api: KubeApi, namespace: str, job_uid: str) -> dict[str, Any] | None:
    """The Kueue Workload Kueue made for the Job with this uid (None until it exists)."""
    items = api.get(
        f"/apis/{API}/namespaces/{namespace}/workloads?labelSelector={JOB_UID_LABEL}%3D{job_uid}"
    )["items"]
    return dict(items[0]) if items else None


# ---- start and stop --------------------------------------------------------------------------


def _write_files(cluster: Cluster, files: KueueFiles, ports: KueuePorts) -> str:
    """Certificates, Configuration and ports; returns the CA bundle for the webhooks."""
    pki = cluster._pki_or_fail()
    files.cert_dir.mkdir(parents=True, exist_ok=True)
    files.overlay_dir.mkdir(parents=True, exist_ok=True)
    # The API server checks the webhook's certificate against the URL's host, 127.0.0.1.
    serving = issue_server_certificate(
        pki, stem="kueue-serving", common_name="kueue", ips=["127.0.0.1"]
    )
    shutil.copyfile(serving.cert, files.cert_dir / "tls.crt")
    shutil.copyfile(serving.key, files.cert_dir / "tls.key")
    (files.cert_dir / "tls.key").chmod(0o600)
    files.config.write_text(yaml.safe_dump(configuration(ports, files.cert_dir), sort_keys=False))
    files.ports_file.write_text(json.dumps(asdict(ports)) + "\n")
    return base64.b64encode(pki.ca.cert.read_bytes()).decode()


def _webhooks_answer(api: KubeApi) -> bool:
    """True once the API server gets through Kueue's ResourceFlavor webhooks: a dry-run create
    comes back with the finalizer the mutating webhook adds."""
    probe = {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": "kueue-probe"}}
    try:
        answer = api.request("POST", f"/apis/{API}/resourceflavors?dryRun=All", probe)
    except ApiError:
        return False
    return RESOURCE_IN_USE in (answer.get("metadata", {}).get("finalizers") or [])


def start_kueue(cluster: Cluster, *, timeout: float = 60.0) -> KueuePorts:
    """Applies Kueue's CRDs, starts Kueue against ``cluster`` (started, or attached to) and
    registers its webhooks; returns once the API server's calls reach them."""
    binary = tool_path("kueue", cluster.tools_dir)
    manifests = manifests_path(cluster.tools_dir)
    if COMPONENT in cluster.running_components():
        raise KueueError(f"Kueue already runs for the cluster in {cluster.state_dir}")
    deadline = time.monotonic() + timeout
    files = KueueFiles.of(cluster)
    ports = KueuePorts(webhook=free_port(), health=free_port(), metrics=free_port())
    ca_bundle = _write_files(cluster, files, ports)
    url = f"https://127.0.0.1:{ports.webhook}"
    api = cluster.admin_api()
    crds = crd_objects(manifests, url, ca_bundle)
    apply_objects(api, crds)
    # Kueue sets up its controllers and indexes for these kinds as it starts.
    for crd in crds:
        cluster.wait_crd_established(crd["metadata"]["name"], max(1.0, deadline - time.monotonic()))
    # The cluster's own spawn: Kueue is recorded in state.json and logs to logs/kueue.log.
    cluster._spawn(COMPONENT, argv(binary, files, cluster.kubeconfig))
    ready = f"http://127.0.0.1:{ports.health}/readyz"
    cluster._wait(deadline, "Kueue's readyz", lambda: health(ready, None) == "ok")
    # Registered only now: before Kueue listens they would reject every labelled Job.
    apply_objects(api, webhook_objects(manifests, url, ca_bundle))
    cluster._wait(deadline, "Kueue's webhooks", lambda: _webhooks_answer(api))
    return ports


def is_ready(cluster: Cluster) -> bool:
    """Kueue's readiness probe (its webhook server listens); raises OSError before it started."""
    ports = KueueFiles.of(cluster).ports()
    return health(f"http://127.0.0.1:{ports.health}/readyz", None) == "ok"


def _delete_webhooks(api: KubeApi) -> None:
    for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        kind = plural.removesuffix("webhookconfigurations")
        api.delete(
            f"/apis/admissionregistration.k8s.io/v1/{plural}/"
            f"{WEBHOOK_PREFIX}{kind}-webhook-configuration"
        )


def stop_kueue(cluster: Cluster, *, remove_webhooks: bool = True) -> None:
    """Stops Kueue and forgets it in state.json. ``remove_webhooks``: also unregister its
    webhooks (failurePolicy Fail), so that the cluster keeps accepting labelled Jobs and Kueue
    objects; needs the API server, skipped when it is gone."""
    if remove_webhooks and "kube-apiserver" in cluster.running_components():
        try:
            _delete_webhooks(cluster.admin_api())
        except (ApiError, OSError) as error:
            print(f"warning: Kueue's webhooks were not removed: {error}", file=sys.stderr)
    record = cluster._records.pop(COMPONENT, None)
    popen = cluster._popens.pop(COMPONENT, None)
    if record is None:
        return
    left = stop(record, grace_seconds=COMPONENT_STOP_SECONDS)
    if popen is not None and not left:
        popen.wait(timeout=5)
    cluster._write_state()
    (cluster.state_dir / "run" / f"{COMPONENT}.pid").unlink(missing_ok=True)
    if left:
        raise KueueError(f"Kueue processes still alive after stopping: {left}")


# ---- queues ----------------------------------------------------------------------------------


def queue_objects(
    fixture: QueueFixture,
    *,
    gpus: int,
    cpu: str,
    memory: str,
    node_labels: Mapping[str, str],
    priority_classes: Mapping[str, int],
    queueing_strategy: str = "BestEffortFIFO",
) -> list[dict[str, Any]]:
    """Namespace, ResourceFlavor, ClusterQueue (nominal quota of the three resources, no
    borrowing, no preemption), LocalQueue and WorkloadPriorityClasses, in the order to apply."""
    quota = {"cpu": cpu, "memory": memory, kwok.GPU_RESOURCE: str(gpus)}
    cluster_queue = {
        "queueingStrategy": queueing_strategy,
        # Every namespace may point a LocalQueue at it.
        "namespaceSelector": {},
        "resourceGroups": [
            {
                "coveredResources": list(quota),
                "flavors": [
                    {
                        "name": fixture.flavor,
                        "resources": [{"name": k, "nominalQuota": v} for k, v in quota.items()],
                    }
                ],
            }
        ],
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": fixture.namespace}},
        # Kueue adds the flavor's node labels to an admitted Job's pod template as nodeSelector.
        {
            "apiVersion": API,
            "kind": "ResourceFlavor",
            "metadata": {"name": fixture.flavor},
            "spec": {"nodeLabels": dict(node_labels)},
        },
        {
            "apiVersion": API,
            "kind": "ClusterQueue",
            "metadata": {"name": fixture.cluster_queue},
            "spec": cluster_queue,
        },
        {
            "apiVersion": API,
            "kind": "LocalQueue",
            "metadata": {"name": fixture.local_queue, "namespace": fixture.namespace},
            "spec": {"clusterQueue": fixture.cluster_queue},
        },
        *(
            {"apiVersion": API, "kind": "WorkloadPriorityClass", "metadata": {"name": name}}
            | {"value": value}
            for name, value in priority_classes.items()
        ),
    ]


def queue_fixture(
    api: KubeApi,
    namespace: str,
    *,
    local_queue: str = "gpu-queue",
    cluster_queue: str = "acceltrain-gpu",
    flavor: str = "kwok-gpu",
    gpus: int = 8,
    cpu: str = "64",
    memory: str = "256Gi",
    node_labels: Mapping[str, str] | None = None,
    priority_classes: Mapping[str, int] | None = None,
    queueing_strategy: str = "BestEffortFIFO",
    timeout: float = 30.0,
) -> QueueFixture:
    """Creates (or updates) a GPU queue and waits until its LocalQueue accepts workloads.

    The flavor's default node labels are the kwok GPU pool's, so admitted pods land on the kwok
    GPU nodes; they still need the GPU taint's toleration, which Kueue does not add. A
    ``priority_classes`` entry is used by labelling a Job ``PRIORITY_LABEL: <name>``; a Job naming
    a class that does not exist gets no Workload and stays suspended (Kueue only logs why).
    """
    fixture = QueueFixture(namespace, local_queue, cluster_queue, flavor)
    objects = queue_objects(
        fixture,
        gpus=gpus,
        cpu=cpu,
        memory=memory,
        node_labels={kwok.POOL_LABEL: kwok.GPU_POOL} if node_labels is None else node_labels,
        priority_classes=priority_classes or {},
        queueing_strategy=queueing_strategy,
    )
    apply_objects(api, objects)
    path = object_path(objects[3])
    deadline = time.monotonic() + timeout
    while True:
        active = condition(api.get(path), "Active")
        if active is not None and active["status"] == "True":
            return fixture
        if time.monotonic() > deadline:
            raise KueueError(f"LocalQueue {namespace}/{local_queue} is not Active: {active}")
        time.sleep(0.2)


# ---- command line ----------------------------------------------------------------------------


def main(argv_: Sequence[str] | None = None) -> int:
    """``python -m localcluster.kueue --state-dir DIR start|stop|queue NAMESPACE``, against a
    cluster started by ``python -m localcluster up``. Stop Kueue before ``down``: the cluster's
    stop does not know this component yet."""
    parser = argparse.ArgumentParser(prog="python -m localcluster.kueue")
    parser.add_argument("--state-dir", type=Path, required=True)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start", help="apply the CRDs, start Kueue, register its webhooks")
    commands.add_parser("stop", help="unregister the webhooks and stop Kueue")
    queue = commands.add_parser("queue", help="create the GPU queue fixture in a namespace")
    queue.add_argument("namespace")
    queue.add_argument("--gpus", type=int, default=8, help="nominal nvidia.com/gpu quota")
    args = parser.parse_args(argv_)
    try:
        cluster = Cluster.attach(args.state_dir)
        if args.command == "start":
            started = time.monotonic()
            ports = start_kueue(cluster)
            print(f"Kueue ready in {time.monotonic() - started:.1f} s: {ports}")
        elif args.command == "stop":
            stop_kueue(cluster)
        else:
            print(queue_fixture(cluster.admin_api(), args.namespace, gpus=args.gpus))
    except (ClusterError, MissingToolError, ApiError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

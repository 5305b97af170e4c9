"""The local cluster's real node: containerd, a kubelet, cluster DNS and their host plumbing.

Pods bound to this node run in real containers from real images (runc under containerd's CRI,
``imagePullPolicy: Never`` or ``IfNotPresent`` with images imported by :mod:`localcluster.images`),
with the kubelet enforcing the pod's securityContext, volumes, probes and termination messages.

What this module owns, all named after the node's :class:`~localcluster.netns.Names` prefix so
that two clusters on one host never share anything:

* the configuration files of containerd (state under ``<node>/containerd``, runc state under it,
  network namespaces under its state dir), the CNI bridge (``<prefix>br``, the bridge CIDR, IPAM
  state under ``<node>/cni``), the kubelet (``--root-dir`` under ``<node>/kubelet``, its cgroups
  under ``/<prefix>`` in every cgroup hierarchy, serving and client certificates from the
  cluster's CA) and CoreDNS (``cluster.local`` from the API server, listening on the bridge
  address, which is every pod's nameserver);
* a one-rule nftables table that sends pods' traffic for the ``kubernetes`` Service to the API
  server: the only Service address pods need (in-cluster clients such as the operator). A real
  kube-proxy is not used because its nftables table has a fixed name, so two clusters on one host
  would overwrite each other's rules;
* :func:`clean_host`: everything above removed again - mounts under the node directory, the
  cgroups, the nftables table, the bridge - and ``net.ipv4.ip_forward`` restored (the CNI bridge
  plugin turns it on for the pods' gateway).

Test infrastructure, not product. Facts behind the settings (no negative ``oom_score_adj`` for
root here, cgroup v1, no host firewall changes, image GC) are in ``docs/development.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .processes import ProcessRecord, is_alive
from .tools import cache_path

NODE_LABELS = {"acceltrain.io/pool": "cpu"}
CLUSTER_DOMAIN = "cluster.local"
# What the kubelet asks containerd to run as every pod's sandbox; built by `make images` from the
# pause binary of `make tools`, since nothing can be pulled here.
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10.1"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Each node's sockets and kubelet root directory (see RealNodeSettings.short_dir).
SHORT_DIRS = Path("/var/lib/acceltrain-nodes")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# Directories that containerd's shims (sockets) and the CNI library (its result cache) create at
# fixed places whatever they are configured with; removed again when empty and new.
FIXED_HOST_DIRS = (
    Path("/run/containerd/s"),
    Path("/run/containerd"),
    Path("/var/lib/cni/results"),
    Path("/var/lib/cni"),
)


def existing_fixed_dirs() -> list[str]:
    """Which of :data:`FIXED_HOST_DIRS` exist before the node starts (kept at clean-up)."""
    return [str(path) for path in FIXED_HOST_DIRS if path.exists()]


KUBERNETES_SERVICE_PORT = 443
# Debian's containernetworking-plugins (bridge, host-local, loopback).
CNI_BIN_DIR = Path("/usr/lib/cni")
# What the node needs from the host besides `make tools`, and the Debian package of each.
HOST_TOOLS = {"runc": "runc", "nft": "nftables", "ip": "iproute2", "umount": "mount"}


class HostToolMissing(RuntimeError):
    """A program the real node needs is not installed; the message names the package."""


def check_host_tools() -> None:
    missing = [
        f"{tool} (Debian package {pkg})"
        for tool, pkg in HOST_TOOLS.items()
        if not shutil.which(tool)
    ]
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.append(f"{CNI_BIN_DIR}/bridge (Debian package containernetworking-plugins)")
    if missing:
        raise HostToolMissing(
            "the real node needs " + ", ".join(missing) + "; .ci/run installs them (apt-get)"
        )


@dataclass(frozen=True)
class RealNodeSettings:
    """Where one real node lives and how it is reached."""

    name: str
    directory: Path
    prefix: str
    cidr: str
    gateway: str
    api_port: int
    kubernetes_service_ip: str
    kubelet_port: int
    kubelet_healthz_port: int
    dns_ready_port: int
    containerd_root: Path

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def cgroup_parent(self) -> str:
        return f"/{self.prefix}"

    @property
    def nft_table(self) -> str:
        return f"{self.prefix}_kubernetes"

    @property
    def containerd_dir(self) -> Path:
        return self.directory / "containerd"

    @property
    def short_dir(self) -> Path:
        """Where the sockets live: a Unix socket path may not exceed 107 bytes, and the state
        directory (a pytest temporary directory, say) can be long. The kubelet's root directory
        is here too, since the kubelet puts its own sockets (pod resources, plugins) in it."""
        return SHORT_DIRS / self.prefix

    @property
    def containerd_socket(self) -> Path:
        return self.short_dir / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.short_dir / "kubelet"

    @property
    def pod_logs_dir(self) -> Path:
        return self.directory / "pod-logs"

    @property
    def volumes_dir(self) -> Path:
        return self.directory / "volumes"

    @property
    def cni_conf_dir(self) -> Path:
        return self.directory / "cni" / "net.d"

    def path(self, name: str) -> Path:
        return self.directory / name


# ---- containerd -------------------------------------------------------------------------------


def containerd_config(settings: RealNodeSettings, cni_bin_dir: Path) -> str:
    """containerd 2.x configuration (version 3) with every path inside the node directory."""
    state = settings.containerd_dir
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    return f"""version = 3
root = "{settings.containerd_root}"
state = "{state / "state"}"
# No plugin may write outside the node directory: another containerd may run beside this one.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{settings.containerd_socket}"

[ttrpc]
  address = "{settings.short_dir / "containerd.sock.ttrpc"}"

[plugins.'io.containerd.internal.v1.opt']
  path = "{state / "opt"}"

# Disabling the verifier plugin breaks the transfer and CRI plugins; it only needs a directory.
[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = "{state / "image-verifiers"}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{SANDBOX_IMAGE}"

[{runtime}]
  # Root here cannot lower oom_score_adj (no CAP_SYS_RESOURCE); the kubelet asks -998 for
  # sandboxes, which runc would fail to set.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false

[{runtime}.containerd.runtimes.runc.options]
  Root = "{state / "runc"}"

[{runtime}.cni]
  bin_dirs = ["{cni_bin_dir}"]
  conf_dir = "{settings.cni_conf_dir}"
"""


def cni_config(settings: RealNodeSettings) -> dict[str, Any]:
    """The pods' network: one bridge, addresses from the node CIDR, no masquerading rules."""
    return {
        "cniVersion": "1.0.0",
        "name": settings.prefix,
        "plugins": [
            {
                "type": "bridge",
                "bridge": settings.bridge,
                "isGateway": True,
                "isDefaultGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": settings.cidr, "gateway": settings.gateway}]],
                    "dataDir": str(settings.directory / "cni" / "ipam"),
                },
            }
        ],
    }


def containerd_argv(binary: Path, settings: RealNodeSettings) -> list[str]:
    return [str(binary), "--config", str(settings.path("containerd.toml"))]


# ---- containerd's root, kept between clusters ----------------------------------------------------

# Imported images live in containerd's root. The CPU trainer image is several GB: importing it
# into every new cluster would cost minutes and as much disk again, so roots are kept between
# clusters in numbered slots, one cluster at a time each (two containerds cannot share a root).
ROOT_SLOTS = 4
# A claim whose cluster has not started its containerd yet counts as taken for this long.
CLAIM_GRACE_SECONDS = 300.0


def roots_dir() -> Path:
    return cache_path("ACCELTRAIN_NODE_CACHE", "node-roots")


def _claim_is_live(claim: dict[str, Any]) -> bool:
    if time.time() - claim.get("claimed_at", 0.0) < CLAIM_GRACE_SECONDS:
        return True
    state = Path(claim["state_dir"]) / "state.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        for raw in json.loads(state.read_text())["processes"]:
            if raw["name"] == "containerd" and is_alive(ProcessRecord.from_json(raw)):
                return True
    return False


def claim_root(state_dir: Path) -> Path:
    """A containerd root no running cluster uses, claimed for the cluster in ``state_dir``."""
    base = roots_dir()
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for index in range(ROOT_SLOTS):
            slot = base / f"slot-{index}"
            claim_file = slot / "claim.json"
            if claim_file.exists():
                claim = json.loads(claim_file.read_text())
                if claim["state_dir"] != str(state_dir) and _claim_is_live(claim):
                    continue
            slot.mkdir(exist_ok=True)
            claim = {"state_dir": str(state_dir), "claimed_at": time.time()}
            claim_file.write_text(json.dumps(claim))
            return slot / "root"
    raise RuntimeError(
        f"all {ROOT_SLOTS} containerd roots in {base} are in use by running local clusters; "
        "stop one (python -m localcluster down --state-dir DIR)"
    )


def release_root(root: Path, state_dir: Path) -> None:
    claim_file = root.parent / "claim.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(claim_file.read_text())["state_dir"] == str(state_dir):
            claim_file.unlink()


# ---- kubelet ----------------------------------------------------------------------------------


def kubelet_config(settings: RealNodeSettings, *, ca_file: Path, serving: Any) -> dict[str, Any]:
    """The KubeletConfiguration; ``serving`` is the kubelet's CertPair."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": settings.gateway,
        "port": settings.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": settings.kubelet_healthz_port,
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        # Only holders of a certificate from the cluster's CA (the API server) may call it.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{settings.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": settings.cgroup_parent,
        # The machines here run cgroup v1, which kubelet 1.35 refuses unless told otherwise.
        "failCgroupV1": False,
        "failSwapOn": False,
        "oomScoreAdj": 0,
        # Without kube-proxy nothing needs the kubelet's iptables chains, and they would stay
        # on the host (a KUBE-FIREWALL DROP rule among them).
        "makeIPTablesUtilChains": False,
        # Imported images cannot be pulled again: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "clusterDNS": [settings.gateway],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(settings.path("resolv.conf")),
        "podLogsDir": str(settings.pod_logs_dir),
        "serializeImagePulls": False,
        "registerNode": True,
        "nodeStatusUpdateFrequency": "5s",
    }


def kubelet_argv(binary: Path, settings: RealNodeSettings, kubeconfig: Path) -> list[str]:
    labels = ",".join(f"{key}={value}" for key, value in NODE_LABELS.items())
    return [
        str(binary),
        f"--config={settings.path('kubelet.yaml')}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={settings.kubelet_dir}",
        f"--cert-dir={settings.path('kubelet-certs')}",
        f"--hostname-override={settings.name}",
        f"--node-ip={settings.gateway}",
        f"--node-labels={labels}",
        # The default is under /usr/libexec, created on start.
        f"--volume-plugin-dir={settings.path('volume-plugins')}",
        "--v=1",
    ]


# ---- CoreDNS ----------------------------------------------------------------------------------


def corefile(settings: RealNodeSettings, kubeconfig: Path, context: str) -> str:
    """Cluster DNS: Services and pod hostnames of ``cluster.local``, nothing forwarded."""
    return f""".:53 {{
    bind {settings.gateway}
    errors
    ready 127.0.0.1:{settings.dns_ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} {context}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""


def coredns_argv(binary: Path, settings: RealNodeSettings) -> list[str]:
    return [str(binary), "-conf", str(settings.path("Corefile"))]


DNS_ROLE_RULES = [
    {
        "apiGroups": [""],
        "resources": ["services", "endpoints", "pods", "namespaces"],
        "verbs": ["list", "watch"],
    },
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["list", "watch"],
    },
]


# ---- volumes ----------------------------------------------------------------------------------

STORAGE_CLASS = "local"
# Claims bind to these pre-made volumes (one claim each; a released volume is not reused).
LOCAL_VOLUMES = 16
LOCAL_VOLUME_SIZE = "20Gi"


def storage_objects(settings: RealNodeSettings) -> list[tuple[str, dict[str, Any]]]:
    """The default StorageClass and its local PersistentVolumes on the node, as (API path,
    object) pairs. Claims bind when their first pod is scheduled; the kubelet gives the volume to
    the pod's fsGroup, so a non-root trainer can write it, as with kind's local-path class."""
    storage_class = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }
    objects = [("/apis/storage.k8s.io/v1/storageclasses", storage_class)]
    for index in range(LOCAL_VOLUMES):
        path = settings.volumes_dir / f"pv-{index}"
        path.mkdir(parents=True, exist_ok=True)
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{settings.name}-pv-{index}"},
            "spec": {
                "capacity": {"storage": LOCAL_VOLUME_SIZE},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "local": {"path": str(path)},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [settings.name],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        }
        objects.append(("/api/v1/persistentvolumes", volume))
    return objects


# ---- files ------------------------------------------------------------------------------------


def write_files(settings: RealNodeSettings, *, ca_file: Path, serving: Any) -> None:
    """Every configuration file of the node (the kubeconfigs are written by the cluster)."""
    for directory in (
        settings.directory,
        settings.cni_conf_dir,
        settings.pod_logs_dir,
        settings.short_dir,
    ):
        directory.mkdir(parents=True, exist_ok=True)
    settings.path("containerd.toml").write_text(containerd_config(settings, CNI_BIN_DIR))
    (settings.cni_conf_dir / "10-acceltrain.conflist").write_text(
        json.dumps(cni_config(settings), indent=2)
    )
    config = kubelet_config(settings, ca_file=ca_file, serving=serving)
    settings.path("kubelet.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # No host search domains or nameservers leak into pods: they resolve through cluster DNS.
    settings.path("resolv.conf").write_text("")


# ---- host plumbing ----------------------------------------------------------------------------


def _run(
    *argv: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, input=stdin, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
    return result


def ip_forward() -> str:
    return IP_FORWARD.read_text().strip()


def prepare_host(settings: RealNodeSettings) -> None:
    """The bridge with the gateway address (the API server and DNS listen there), the node's
    cgroup parent in every hierarchy, and the DNAT rule for the ``kubernetes`` Service."""
    prefix_len = settings.cidr.split("/")[1]
    _run("ip", "link", "add", settings.bridge, "type", "bridge")
    _run("ip", "addr", "add", f"{settings.gateway}/{prefix_len}", "dev", settings.bridge)
    _run("ip", "link", "set", settings.bridge, "up")
    for hierarchy in _cgroup_hierarchies():
        path = hierarchy / settings.prefix
        path.mkdir(exist_ok=True)
        # A new cpuset cgroup starts with no CPUs and memory nodes; its children inherit them.
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (path / name).exists() and not (path / name).read_text().strip():
                (path / name).write_text((hierarchy / name).read_text())
    table = settings.nft_table
    rule = (
        f"table ip {table} {{\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f'    iifname "{settings.bridge}" ip daddr {settings.kubernetes_service_ip} '
        f"tcp dport {KUBERNETES_SERVICE_PORT} dnat to {settings.gateway}:{settings.api_port}\n"
        "  }\n"
        "}\n"
    )
    _run("nft", "-f", "-", stdin=rule)


def _cgroup_hierarchies() -> list[Path]:
    """The cgroup v1 hierarchies (one per mounted controller set), or the unified one."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    hierarchies = []
    for entry in sorted(CGROUP_ROOT.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and (entry / "cgroup.procs").exists():
            hierarchies.append(entry)
    return hierarchies


def _remove_cgroup_tree(path: Path) -> list[str]:
    """rmdir a cgroup and its children, deepest first; returns the ones that stayed."""
    if not path.is_dir():
        return []
    left = []
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            child.rmdir()
        except OSError:
            left.append(str(child))
    try:
        path.rmdir()
    except OSError:
        left.append(str(path))
    return left


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest first (the order to unmount them)."""
    root = str(directory.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == root or point.startswith(root + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: -p.count("/"))


def clean_host(
    settings: RealNodeSettings, *, ip_forward_before: str | None, dirs_before: list[str]
) -> list[str]:
    """Removes everything the node left on the host; returns what could not be removed."""
    problems = []
    for path in FIXED_HOST_DIRS:
        if str(path) not in dirs_before:
            with contextlib.suppress(OSError):
                path.rmdir()
    for point in mounts_under(settings.directory) + mounts_under(settings.short_dir):
        result = _run("umount", "--lazy", point, check=False)
        if result.returncode != 0:
            problems.append(f"mount {point}: {result.stderr.strip()}")
    # Removed only with nothing mounted below it: a volume still mounted into a pod's directory
    # would be emptied through the mount.
    if settings.short_dir.exists() and not mounts_under(settings.short_dir):
        shutil.rmtree(settings.short_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            SHORT_DIRS.rmdir()
    for hierarchy in _cgroup_hierarchies():
        problems += [f"cgroup {left}" for left in _remove_cgroup_tree(hierarchy / settings.prefix)]
    _run("nft", "delete", "table", "ip", settings.nft_table, check=False)
    _run("ip", "link", "delete", settings.bridge, check=False)
    if ip_forward_before is not None and ip_forward() != ip_forward_before:
        with contextlib.suppress(OSError):
            IP_FORWARD.write_text(ip_forward_before)
    for leftover in _veths_on(settings.bridge):
        problems.append(f"interface {leftover}")
    return problems


def _veths_on(bridge: str) -> list[str]:
    result = _run("ip", "-j", "link", "show", "master", bridge, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return []
    return [link["ifname"] for link in json.loads(result.stdout)]


def shim_processes(socket: Path) -> list[int]:
    """containerd shims started for this node's containerd (they outlive containerd itself)."""
    pids = []
    needle = str(socket).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if b"containerd-shim" in cmdline and needle in cmdline:
                pids.append(int(entry.name))
    return pids


def kill_shims(socket: Path) -> None:
    for pid in shim_processes(socket):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)

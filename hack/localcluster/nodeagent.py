"""The process node agent: runs the pods bound to one Node as local processes.

Test infrastructure, not product. It stands in for a kubelet on a machine without a container
runtime, so that CPU trainer pods of the local cluster really run::

    PYTHONPATH=<repo>/hack python -m localcluster.nodeagent --kubeconfig KUBECONFIG \\
        --node-name acceltrain-cpu-0 --state-dir DIR --bridge-cidr 10.77.0.0/24 \\
        [--python /work/main/.venv/bin/python] [--cpu 2] [--memory 24Gi]

What it does (needs root, ``ip`` and ``unshare``-capable kernel):

* Registers its Node (labels ``acceltrain.io/pool=cpu`` and ``kubernetes.io/hostname``, no
  taints, cpu/memory/pods capacity, Ready) and keeps its Lease in ``kube-node-lease`` and the
  node's status heartbeats fresh.
* Watches the pods with ``spec.nodeName`` = its node (resourceVersion resume, relist every
  minute) and runs one thread per pod: a network namespace with its own address on the agent's
  bridge (see :mod:`localcluster.netns`), the first container's ``command`` + ``args`` as a local
  process in it, with the pod's env (values, ``$(VAR)`` references, downward-API ``fieldRef`` and
  ``resourceFieldRef``, ConfigMap/Secret keys, ``envFrom``, ``JOB_COMPLETION_INDEX``) and
  volumes (emptyDir, hostPath, configMap, secret, downwardAPI and projected, which covers the
  service-account token volume) mounted where the pod asks, only inside the pod.
* The image is not pulled: a command that starts with ``python``/``python3`` runs with
  ``--python`` and the directory of ``--python`` is first on PATH.
* Names: ``/etc/hosts`` of a pod holds its hostname and, for pods with ``spec.subdomain``, the
  ``<hostname>.<subdomain>.<namespace>.svc[.cluster.local]`` names of all running pods of that
  namespace and subdomain, rewritten whenever one of them gets an address. Nothing else resolves
  (no cluster DNS, no Service names).
* Reports phase, podIP/hostIP, conditions, and the container's state, exit code, termination
  message (the file it wrote at ``terminationMessagePath``, mounted from the pod's state
  directory; with ``FallbackToLogsOnError`` and a failure, the tail of its log) and restart
  count; honours ``restartPolicy`` (restarts back off 1 s, 2 s, 4 s ... 10 s),
  ``activeDeadlineSeconds`` and tcpSocket/httpGet readiness probes (other probes are not run).
* On pod deletion it sends SIGTERM to the container's process group, waits the grace period
  (at most 30 s), SIGKILLs every process in the pod's network namespace and deletes the pod
  object with grace 0. On SIGTERM to the agent it stops all pods the same way, removes its
  namespaces, veths and bridge, and exits 0. What a crashed run left behind is removed at start.

What a pod's spec asks (env, command, hosts, volume files, mounts) is resolved by
:mod:`localcluster.podspec`, what is reported (states, termination messages, status, restart
rules, probes) by :mod:`localcluster.podstatus`; this module does the I/O: the API, the
volumes on disk, one thread per pod, the node.

Container output goes to :func:`pod_log_path`. Not supported: init and sidecar containers (only
the first container runs), exec probes, image entrypoints (a container needs ``command``),
ConfigMap updates after start, token refresh. Isolation is only what the tests need: pod
processes run as root, see the host's filesystem (apart from their mount paths) and share the
agent's cgroup; ``securityContext`` and resource limits are not enforced.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from accel_operator.kube import ApiError, KubeClient, load_api_client

from .netns import (
    LaunchPlan,
    Mount,
    Names,
    NetworkSetupError,
    PodNetwork,
    PodNetworks,
    launcher_argv,
    signal_all,
    write_netns_file,
)
from .podspec import (
    STANDARD_PATH,
    HostsEntry,
    ObjectSource,
    PodAddresses,
    PodSetupError,
    container_argv,
    downward_api_files,
    keyed_files,
    mounts_for,
    parse_quantity,
    pod_hostname,
    render_hosts,
    resolve_env,
)
from .podstatus import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    TERMINAL_PHASES,
    ContainerRecord,
    backoff_seconds,
    exit_code_of,
    pod_status,
    probe_once,
    restart_wanted,
    running_state,
    terminated_state,
    termination_message,
    waiting_state,
)

log = logging.getLogger("localcluster.nodeagent")


POOL_LABEL = "acceltrain.io/pool"
PROCESS_NODE_ANNOTATION = "acceltrain.io/process-node"
NODE_LEASE_NAMESPACE = "kube-node-lease"

LEASE_DURATION_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
RELIST_SECONDS = 60
REQUEST_TIMEOUT = (5.0, 30.0)
MAX_GRACE_SECONDS = 30
DEFAULT_GRACE_SECONDS = 30
SETUP_RETRY_SECONDS = 2.0
POLL_SECONDS = 0.2
MAX_PODS = 110


def pod_log_path(state_dir: Path, namespace: str, pod: str, container: str) -> Path:
    """Where the agent writes a container's stdout and stderr (appended across restarts)."""
    return pod_dir(state_dir, namespace, pod) / f"{container}.log"


def termination_message_file(state_dir: Path, namespace: str, pod: str, container: str) -> Path:
    """The host file mounted at the container's terminationMessagePath."""
    return pod_dir(state_dir, namespace, pod) / f"{container}.termination-log"


def pod_dir(state_dir: Path, namespace: str, pod: str) -> Path:
    return Path(state_dir) / "pods" / f"{namespace}_{pod}"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the API ------------------------------------------------------------------------------------


def resource_of(path: str) -> str:
    """The resource (and subresource) an API path names, like ``pods/status``: the label of the
    request counter."""
    parts = path.strip("/").split("/")
    if parts[0] in ("api", "apis"):
        parts = parts[2:] if parts[0] == "api" else parts[3:]
        if len(parts) > 2 and parts[0] == "namespaces":
            parts = parts[2:]
    return "/".join(parts[0:1] + parts[2:3]) or "discovery"


class Kube:
    """The agent's API calls, as JSON, through the operator's access layer
    (:class:`~accel_operator.kube.KubeClient`: its transport, errors and watches)."""

    def __init__(self, kubeconfig: Path) -> None:
        # One connection per pod thread plus the watch and the heartbeat.
        self.client = KubeClient(load_api_client(str(kubeconfig), pool_size=64))

    def _call(self, method: str, verb: str, path: str, **options: Any) -> Any:
        return self.client.request(
            method, path, verb=verb, resource=resource_of(path), timeout=REQUEST_TIMEOUT, **options
        )

    def get(self, path: str, **query: str) -> Any:
        return self._call("GET", "get", path, query=query)

    def create(self, path: str, body: Mapping[str, Any]) -> Any:
        return self._call("POST", "create", path, body=dict(body))

    def patch(self, path: str, body: Mapping[str, Any], *, strategic: bool = True) -> Any:
        kind = "strategic-merge-patch" if strategic else "merge-patch"
        content_type = f"application/{kind}+json"
        return self._call("PATCH", "patch", path, body=dict(body), content_type=content_type)

    def delete(self, path: str, body: Mapping[str, Any]) -> Any:
        return self._call("DELETE", "delete", path, body=dict(body))


class ApiObjects:
    """:class:`ObjectSource` backed by the API server."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def _data(self, path: str, binary_data_is_base64: bool) -> dict[str, bytes] | None:
        try:
            obj = self.kube.get(path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise PodSetupError("ContainerCreating", f"reading {path}: {error}") from error
        if binary_data_is_base64:  # a Secret: every value is base64
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self._data(f"/api/v1/namespaces/{namespace}/configmaps/{name}", False)

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self._data(f"/api/v1/namespaces/{namespace}/secrets/{name}", True)

    def service_account_token(
        self, pod: Mapping[str, Any], audience: str | None, expiration_seconds: int
    ) -> str:
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": expiration_seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        try:
            return str(self.kube.create(path, request)["status"]["token"])
        except ApiError as error:
            raise PodSetupError(
                "ContainerCreating", f"token for service account {account}: {error}"
            ) from error


def _write_files(directory: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for relative, (content, mode) in files.items():
        if os.path.isabs(relative) or ".." in Path(relative).parts:
            raise PodSetupError("ContainerCreating", f"volume file path {relative!r} is invalid")
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)


def prepare_volumes(
    pod: Mapping[str, Any], volumes_dir: Path, where: PodAddresses, objects: ObjectSource
) -> dict[str, Path]:
    """Create every volume of the pod on the host; returns the host directory of each."""
    namespace = pod["metadata"]["namespace"]
    dirs: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        target = volumes_dir / name
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
        elif "hostPath" in volume:
            target = Path(volume["hostPath"]["path"])
            kind = volume["hostPath"].get("type") or ""
            if kind == "DirectoryOrCreate":
                target.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            elif not target.exists():
                raise PodSetupError(
                    "ContainerCreating",
                    f"hostPath {target} (volume {name}) does not exist; create it or use "
                    "type: DirectoryOrCreate",
                )
        elif "configMap" in volume or "secret" in volume:
            is_config_map = "configMap" in volume
            source = volume["configMap" if is_config_map else "secret"]
            source_name = source.get("name") or source.get("secretName", "")
            data = (
                objects.config_map(namespace, source_name)
                if is_config_map
                else objects.secret(namespace, source_name)
            )
            what = f"{'ConfigMap' if is_config_map else 'Secret'} {namespace}/{source_name}"
            if data is None and not source.get("optional"):
                raise PodSetupError("ContainerCreating", f"{what} (volume {name}) does not exist")
            mode = int(source.get("defaultMode", 0o644))
            _write_files(
                target,
                keyed_files(
                    data or {}, source.get("items"), mode, what, bool(source.get("optional"))
                ),
            )
        elif "downwardAPI" in volume:
            source = volume["downwardAPI"]
            mode = int(source.get("defaultMode", 0o644))
            _write_files(target, downward_api_files(source.get("items") or [], pod, where, mode))
        elif "projected" in volume:
            _write_files(target, projected_files(volume["projected"], pod, where, objects))
        else:
            kinds = sorted(set(volume) - {"name"})
            raise PodSetupError(
                "ContainerCreating",
                f"volume {name}: type {kinds} is not supported by the process node (supported: "
                "emptyDir, hostPath, configMap, secret, downwardAPI, projected)",
            )
        dirs[name] = target
    return dirs


def projected_files(
    projected: Mapping[str, Any],
    pod: Mapping[str, Any],
    where: PodAddresses,
    objects: ObjectSource,
) -> dict[str, tuple[bytes, int]]:
    namespace = pod["metadata"]["namespace"]
    mode = int(projected.get("defaultMode", 0o644))
    files: dict[str, tuple[bytes, int]] = {}
    for source in projected.get("sources") or []:
        if "configMap" in source or "secret" in source:
            is_config_map = "configMap" in source
            ref = source["configMap" if is_config_map else "secret"]
            data = (
                objects.config_map(namespace, ref["name"])
                if is_config_map
                else objects.secret(namespace, ref["name"])
            )
            what = f"{'ConfigMap' if is_config_map else 'Secret'} {namespace}/{ref['name']}"
            if data is None and not ref.get("optional"):
                raise PodSetupError("ContainerCreating", f"{what} (projected) does not exist")
            files.update(
                keyed_files(data or {}, ref.get("items"), mode, what, bool(ref.get("optional")))
            )
        elif "downwardAPI" in source:
            files.update(
                downward_api_files(source["downwardAPI"].get("items") or [], pod, where, mode)
            )
        elif "serviceAccountToken" in source:
            token_source = source["serviceAccountToken"]
            token = objects.service_account_token(
                pod, token_source.get("audience"), int(token_source.get("expirationSeconds", 3600))
            )
            files[token_source["path"]] = (token.encode(), mode)
        else:
            raise PodSetupError(
                "ContainerCreating",
                f"projected source {sorted(source)} is not supported by the process node",
            )
    return files


# --- names ---------------------------------------------------------------------------------------


class HostsFiles:
    """Keeps every running pod's hosts file in step with the pods of its subdomain."""

    def __init__(self) -> None:
        self._pods: dict[str, tuple[HostsEntry, str]] = {}  # uid -> (entry, netns)
        self._lock = threading.Lock()

    def add(self, uid: str, entry: HostsEntry, netns: str) -> None:
        with self._lock:
            self._pods[uid] = (entry, netns)
            self._write(entry)

    def remove(self, uid: str) -> None:
        with self._lock:
            removed = self._pods.pop(uid, None)
            if removed is not None and removed[0].subdomain:
                self._write(removed[0])

    def _write(self, changed: HostsEntry) -> None:
        """Rewrite the hosts file of changed's pod, or of every pod of its subdomain."""
        if changed.subdomain:
            group = [
                (uid, entry, netns)
                for uid, (entry, netns) in self._pods.items()
                if (entry.namespace, entry.subdomain) == (changed.namespace, changed.subdomain)
            ]
        else:
            group = [(uid, e, n) for uid, (e, n) in self._pods.items() if e is changed]
        for uid, entry, netns in group:
            peers = [other for other_uid, other, _ in group if other_uid != uid]
            try:
                write_netns_file(netns, "hosts", render_hosts(entry, peers))
            except OSError as error:  # that pod is being torn down
                log.debug("hosts file of %s not written: %s", netns, error)


# --- one pod -------------------------------------------------------------------------------------


class PodWorker:
    """Runs one pod: its namespace, its container (with restarts), its status, its deletion."""

    def __init__(self, agent: NodeAgent, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.agent = agent
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        spec_container = pod["spec"]["containers"][0]
        self.container = ContainerRecord(spec_container["name"], spec_container.get("image", ""))
        self.lock = threading.Lock()
        self.wake = threading.Event()  # set on deletion, object removal or agent shutdown
        self.object_gone = False
        self.shutting_down = False
        self.finished = False
        self.delete_sent = False
        self.net: PodNetwork | None = None
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.start_time = (pod.get("status") or {}).get("startTime") or now_rfc3339()
        self.ready_since = self.start_time
        self._last_report: dict[str, Any] | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"pod {self.namespace}/{self.name}", daemon=True
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def dir(self) -> Path:
        return pod_dir(self.agent.state_dir, self.namespace, self.name)

    @property
    def termination_message_file(self) -> Path:
        return termination_message_file(
            self.agent.state_dir, self.namespace, self.name, self.container.name
        )

    def deletion_requested(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp")) or self.object_gone

    # --- events from the watch (watch thread) ----------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        with self.lock:
            self.pod = pod
            delete_now = self._take_deletion_if_finished()
        if pod["metadata"].get("deletionTimestamp"):
            self.wake.set()
        if delete_now:
            self.agent.delete_pod_object(self)

    def gone(self) -> None:
        self.object_gone = True
        self.wake.set()

    def shutdown(self) -> None:
        self.shutting_down = True
        self.wake.set()

    def _take_deletion_if_finished(self) -> bool:
        if self.finished and self.deletion_requested() and not self.delete_sent:
            self.delete_sent = not self.object_gone
            return self.delete_sent
        return False

    # --- the pod's thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            plan = self._prepare()
            if plan is not None:
                self._run_container(plan)
        except Exception:
            log.exception("pod %s: the agent failed to run it", self.key)
        finally:
            self._teardown()
            with self.lock:
                self.finished = True
                delete_now = self._take_deletion_if_finished() and not self.shutting_down
            if delete_now:
                self.agent.delete_pod_object(self)

    def _stop_wanted(self) -> bool:
        return self.wake.is_set() and (self.deletion_requested() or self.shutting_down)

    def _prepare(self) -> Path | None:
        """Namespace, names, volumes, env and command; retried while the pod cannot start."""
        if not self._adopt_earlier_run():
            return None
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)
        (self.dir / "root").mkdir(parents=True, exist_ok=True)
        if not self._attach_network():
            return None
        assert self.net is not None
        hostname = pod_hostname(self.pod)
        self.agent.hosts.add(
            self.uid,
            HostsEntry(self.net.ip, hostname, self.namespace, self.pod["spec"].get("subdomain")),
            self.net.netns,
        )
        self._report()
        where = PodAddresses(self.net.ip, self.agent.host_ip, self.agent.allocatable)
        spec_container = self.pod["spec"]["containers"][0]
        if len(self.pod["spec"]["containers"]) > 1 or self.pod["spec"].get("initContainers"):
            log.warning("pod %s: only its first container %s runs", self.key, self.container.name)
        while True:
            try:
                return self._write_plan(spec_container, where, hostname)
            except PodSetupError as error:
                log.warning("pod %s cannot start yet: %s", self.key, error.message)
                self.container.state = waiting_state(error.reason, error.message)
                self._report()
            if self.wake.wait(SETUP_RETRY_SECONDS) and self._stop_wanted():
                return None

    def _adopt_earlier_run(self) -> bool:
        """A container an earlier run of the agent started has lost its process: count it as
        killed (137) and restart it as its pod's policy says; False when the pod is done."""
        previous = ((self.pod.get("status") or {}).get("containerStatuses") or [{}])[0]
        if previous.get("state", {}).get("running") or previous.get("state", {}).get("terminated"):
            self.container.restart_count = int(previous.get("restartCount", 0))
            self.container.last_state = terminated_state(
                137,
                previous["state"].get("running", {}).get("startedAt"),
                now_rfc3339(),
                "ContainerStatusUnknown",
            )
            if not restart_wanted(self.pod["spec"].get("restartPolicy", "Always"), 137):
                self.container.state, self.container.last_state = self.container.last_state, {}
                self._finish("Failed")
                return False
            self.container.restart_count += 1
        return True

    def _attach_network(self) -> bool:
        """The pod's network namespace, retried while it cannot be set up; False when the pod
        was stopped meanwhile."""
        while self.net is None:
            try:
                self.net = self.agent.networks.create()
            except NetworkSetupError as error:
                self.container.state = waiting_state("ContainerCreating", str(error))
                self._report()
                if self.wake.wait(SETUP_RETRY_SECONDS) and self._stop_wanted():
                    return False
        return True

    def _write_plan(
        self, spec_container: dict[str, Any], where: PodAddresses, hostname: str
    ) -> Path:
        """Volumes, environment, mounts and command of the container, written as its launch
        plan; raises :class:`PodSetupError` while something it needs is missing."""
        volume_dirs = prepare_volumes(self.pod, self.dir / "volumes", where, self.agent.objects)
        env = resolve_env(self.pod, spec_container, where, self.agent.objects, self.agent.python)
        mounts = mounts_for(spec_container, volume_dirs)
        message_file = self.termination_message_file
        message_file.touch()
        mounts.append(
            Mount(
                str(message_file),
                spec_container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH,
            )
        )
        for mount in mounts:
            if not os.path.exists(mount.source):  # a subPath not created yet
                Path(mount.source).mkdir(parents=True)
        plan = LaunchPlan(
            argv=container_argv(spec_container, env, self.agent.python),
            env=env,
            hostname=hostname,
            root=str(self.dir / "root"),
            working_dir=spec_container.get("workingDir") or None,
            mounts=mounts,
        )
        plan_path = self.dir / "plan.json"
        plan.write(plan_path)
        return plan_path

    def _run_container(self, plan_path: Path) -> None:
        restart_policy = self.pod["spec"].get("restartPolicy", "Always")
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        deadline_at = (
            _parse_time(self.start_time) + float(deadline) if deadline is not None else None
        )
        first_start = not self.container.last_state
        while True:
            exit_code, deadline_hit = self._run_once(plan_path, first_start, deadline_at)
            first_start = False
            if self.shutting_down:
                return
            if deadline_hit:
                self._finish(
                    "Failed",
                    "DeadlineExceeded",
                    f"Pod was active on the node longer than the specified deadline ({deadline}s)",
                )
                return
            if self._stop_wanted() or not restart_wanted(restart_policy, exit_code):
                self._finish("Succeeded" if exit_code == 0 else "Failed")
                return
            delay = backoff_seconds(self.container.restart_count)
            self.container.last_state = self.container.state
            self.container.state = waiting_state(
                "CrashLoopBackOff",
                f"back-off {delay:.0f}s restarting failed container={self.container.name}",
            )
            self.container.ready = False
            self._report()
            if self.wake.wait(delay) and self._stop_wanted():
                self._finish("Succeeded" if exit_code == 0 else "Failed")
                return
            self.container.restart_count += 1

    def _run_once(
        self, plan_path: Path, truncate_log: bool, deadline_at: float | None
    ) -> tuple[int, bool]:
        assert self.net is not None
        log_path = pod_log_path(
            self.agent.state_dir, self.namespace, self.name, self.container.name
        )
        argv = launcher_argv(self.net.netns, plan_path)
        # Every run of the container starts with an empty message file, as with a kubelet.
        self.termination_message_file.write_bytes(b"")
        with log_path.open("wb" if truncate_log else "ab") as output:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": os.environ.get("PATH", STANDARD_PATH)},
            )
        started_at = now_rfc3339()
        spec_container = self.pod["spec"]["containers"][0]
        probe = spec_container.get("readinessProbe")
        next_probe = time.monotonic() + float((probe or {}).get("initialDelaySeconds", 0))
        self.container.container_id = f"process://{process.pid}"
        self.container.state = running_state(started_at)
        self._set_ready(probe is None)
        self.phase = "Running"
        self._report()
        log.info("pod %s: started pid %d in %s", self.key, process.pid, self.net.netns)

        returncode, deadline_hit = self._supervise(process, deadline_at, probe, next_probe)
        # The container's other processes (children that left its process group, too) die
        # with it, as they would with the container's PID namespace.
        signal_all(self.net.netns, signal.SIGKILL)
        exit_code = exit_code_of(returncode)
        log.info("pod %s: pid %d exited with %d", self.key, process.pid, exit_code)
        message = termination_message(
            spec_container, self.termination_message_file, log_path, exit_code
        )
        self.container.state = terminated_state(
            exit_code, started_at, now_rfc3339(), message=message
        )
        self.container.ready = False
        return exit_code, deadline_hit

    def _supervise(
        self,
        process: subprocess.Popen[bytes],
        deadline_at: float | None,
        probe: dict[str, Any] | None,
        next_probe: float,
    ) -> tuple[int, bool]:
        """Wait for the container's process, probing its readiness, until it exits, the pod is
        stopped or its activeDeadlineSeconds pass; (return code, whether the deadline hit)."""
        assert self.net is not None
        spec_container = self.pod["spec"]["containers"][0]
        while True:
            try:
                return process.wait(timeout=POLL_SECONDS), False
            except subprocess.TimeoutExpired:
                pass
            if self._stop_wanted():
                return self._stop(process, self._grace_seconds()), False
            if deadline_at is not None and time.time() >= deadline_at:
                return self._stop(process, self._grace_seconds()), True
            if probe is not None and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + float(probe.get("periodSeconds", 10))
                if self._set_ready(probe_once(probe, self.net.ip, spec_container)):
                    self._report()

    def _grace_seconds(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        return float(min(max(int(grace), 0), MAX_GRACE_SECONDS))

    def _stop(self, process: subprocess.Popen[bytes], grace: float) -> int:
        """SIGTERM the process group, wait the grace period, then SIGKILL the whole pod."""
        assert self.net is not None
        log.info("pod %s: stopping pid %d (grace %.0fs)", self.key, process.pid, grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_all(self.net.netns, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return process.wait()

    def _set_ready(self, ready: bool) -> bool:
        """Record readiness; True when it changed."""
        if ready == self.container.ready:
            return False
        self.container.ready = ready
        self.ready_since = now_rfc3339()
        return True

    def _finish(self, phase: str, reason: str | None = None, message: str | None = None) -> None:
        self.phase, self.reason, self.message = phase, reason, message
        self._set_ready(False)
        self._report(final=True)

    def _report(self, final: bool = False) -> None:
        """Patch the pod's status when it changed; the final status is retried."""
        if self.object_gone or self.shutting_down:
            return
        status = pod_status(
            phase=self.phase,
            host_ip=self.agent.host_ip,
            pod_ip=self.net.ip if self.net else None,
            start_time=self.start_time,
            container=self.container,
            ready_since=self.ready_since,
            reason=self.reason,
            message=self.message,
        )
        if status == self._last_report:
            return
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        for attempt in range(5 if final else 1):
            try:
                self.agent.kube.patch(path, {"status": status})
                self._last_report = status
                return
            except ApiError as error:
                if error.status == 404:
                    self.object_gone = True
                    return
                log.warning("pod %s: status update failed: %s", self.key, error)
            except OSError as error:  # connection trouble; the next report carries everything
                log.warning("pod %s: status update failed: %s", self.key, error)
            if attempt < 4 and final:
                time.sleep(0.5 * (attempt + 1))

    def _teardown(self) -> None:
        self.agent.hosts.remove(self.uid)
        if self.net is not None:
            self.agent.networks.release(self.net)
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)


def _parse_time(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


# --- the node ------------------------------------------------------------------------------------


def _machine_architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _read_first_line(path: str, default: str) -> str:
    try:
        return Path(path).read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return default


def _os_image() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "Linux"


@dataclass(frozen=True)
class AgentSettings:
    kubeconfig: Path
    node_name: str
    state_dir: Path
    bridge_cidr: str
    python: str
    cpu: str
    memory: str


class NodeAgent:
    """Registers the node, keeps it alive, and runs a :class:`PodWorker` per bound pod."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.node_name = settings.node_name
        self.state_dir = settings.state_dir
        self.python = settings.python
        self.kube = Kube(settings.kubeconfig)
        self.objects = ApiObjects(self.kube)
        self.networks = PodNetworks(
            Names.for_node(settings.node_name, settings.bridge_cidr),
            ipaddress.IPv4Network(settings.bridge_cidr),
        )
        self.host_ip = self.networks.gateway
        pods = min(MAX_PODS, self.networks.capacity)
        self.allocatable = {"cpu": settings.cpu, "memory": settings.memory, "pods": str(pods)}
        self.hosts = HostsFiles()
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.node_uid: str | None = None
        self.registered_at = now_rfc3339()
        self.kubelet_version = "v0.0.0"

    # --- node registration and heartbeats ----------------------------------------------------

    def node_status(self) -> dict[str, Any]:
        now = now_rfc3339()

        def condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
            return {
                "type": kind,
                "status": "True" if ok else "False",
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self.registered_at,
            }

        return {
            "capacity": dict(self.allocatable),
            "allocatable": dict(self.allocatable),
            "conditions": [
                condition("MemoryPressure", False, "KubeletHasSufficientMemory", "no pressure"),
                condition("DiskPressure", False, "KubeletHasNoDiskPressure", "no pressure"),
                condition("PIDPressure", False, "KubeletHasSufficientPID", "no pressure"),
                condition("Ready", True, "KubeletReady", "process node agent is posting status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.host_ip},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": _read_first_line("/etc/machine-id", self.node_name),
                "systemUUID": _read_first_line("/sys/class/dmi/id/product_uuid", self.node_name),
                "bootID": _read_first_line("/proc/sys/kernel/random/boot_id", ""),
                "kernelVersion": platform.release(),
                "osImage": _os_image(),
                "containerRuntimeVersion": "process://acceltrain-nodeagent",
                "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _machine_architecture(),
            },
        }

    def node_labels(self) -> dict[str, str]:
        return {
            POOL_LABEL: "cpu",
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _machine_architecture(),
        }

    def register(self) -> None:
        self.registered_at = now_rfc3339()
        try:
            self.kubelet_version = str(self.kube.get("/version")["gitVersion"])
        except (ApiError, KeyError) as error:
            log.warning("could not read the API server version: %s", error)
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": self.node_labels(),
                "annotations": {PROCESS_NODE_ANNOTATION: "true"},
            },
            "spec": {},
            "status": self.node_status(),
        }
        try:
            created = self.kube.create("/api/v1/nodes", node)
        except ApiError as error:
            if error.status != 409:
                raise
            path = f"/api/v1/nodes/{self.node_name}"
            created = self.kube.patch(path, {"metadata": node["metadata"]})
            self.kube.patch(f"{path}/status", {"status": node["status"]})
        self.node_uid = created["metadata"]["uid"]
        self.renew_lease()
        log.info("node %s registered (InternalIP %s)", self.node_name, self.host_ip)

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases"
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": now_micro(),
        }
        try:
            self.kube.patch(f"{path}/{self.node_name}", {"spec": spec}, strategic=False)
        except ApiError as error:
            if error.status != 404:
                raise
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.node_name,
                "uid": self.node_uid,
            }
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node_name, "ownerReferences": [owner]},
                "spec": spec,
            }
            self.kube.create(path, lease)

    def _heartbeats(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.renew_lease()
                self.kube.patch(
                    f"/api/v1/nodes/{self.node_name}/status", {"status": self.node_status()}
                )
            except ApiError as error:
                if error.status == 404:
                    log.warning("node %s was deleted; registering it again", self.node_name)
                    self._try(self.register)
                else:
                    log.warning("heartbeat failed: %s", error)
            except OSError as error:
                log.warning("heartbeat failed: %s", error)

    def _try(self, action: Any) -> None:
        try:
            action()
        except (ApiError, OSError) as error:
            log.warning("%s failed: %s", getattr(action, "__name__", action), error)

    # --- pods ----------------------------------------------------------------------------------

    def _pod_query(self) -> dict[str, str]:
        return {"fieldSelector": f"spec.nodeName={self.node_name}"}

    def _watch_pods(self) -> None:
        """List the node's pods, then follow their watch; list again every RELIST_SECONDS (a
        missed event cannot outlive a relist) and when the watch's version expired."""
        while not self.stopping.is_set():
            try:
                listing = self.kube.get("/api/v1/pods", **self._pod_query())
                self._reconcile(listing["items"])
                for event in self.kube.client.watch(
                    "/api/v1/pods",
                    resource="pods",
                    field_selector=self._pod_query()["fieldSelector"],
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=RELIST_SECONDS,
                ):
                    if self.stopping.is_set():
                        break
                    self._pod_event(event["type"], event["object"])
            except (ApiError, OSError, ValueError) as error:
                if not self.stopping.is_set():
                    log.warning("pod watch failed, relisting: %s", error)
                    self.stopping.wait(1.0)
            except Exception:  # keep watching whatever one bad event did
                log.exception("pod watch failed, relisting")
                self.stopping.wait(1.0)

    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "DELETED":
            self._pod_deleted(pod["metadata"]["uid"])
        elif kind in ("ADDED", "MODIFIED"):
            self._pod_seen(pod)

    def _reconcile(self, pods: list[dict[str, Any]]) -> None:
        present = {pod["metadata"]["uid"] for pod in pods}
        with self.lock:
            missing = [uid for uid in self.workers if uid not in present]
        for uid in missing:
            self._pod_deleted(uid)
        for pod in pods:
            self._pod_seen(pod)

    def _pod_seen(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            if self.stopping.is_set():
                return
            worker = self.workers.get(uid)
            if worker is None:
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                    worker.finished = True  # finished before this agent started: nothing to run
                else:
                    worker.thread.start()
                    return
        worker.update(pod)

    def _pod_deleted(self, uid: str) -> None:
        with self.lock:
            worker = self.workers.pop(uid, None)
        if worker is not None:
            worker.gone()

    def delete_pod_object(self, worker: PodWorker) -> None:
        """What a kubelet does once a deleted pod's containers are gone: delete with grace 0."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": worker.uid},
        }
        try:
            self.kube.delete(f"/api/v1/namespaces/{worker.namespace}/pods/{worker.name}", body)
            log.info("pod %s: deleted", worker.key)
        except ApiError as error:
            if error.status not in (404, 409):
                log.warning("pod %s: delete failed: %s", worker.key, error)
        except OSError as error:
            log.warning("pod %s: delete failed: %s", worker.key, error)

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; then stop every pod, remove the network, return 0."""
        self.networks.setup()
        try:
            while not self.stopping.is_set():
                try:
                    self.register()
                    break
                except (ApiError, OSError) as error:
                    log.warning("registering node %s failed, retrying: %s", self.node_name, error)
                    self.stopping.wait(2.0)
            threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True).start()
            threading.Thread(target=self._watch_pods, name="pod watch", daemon=True).start()
            self.stopping.wait()
            self._stop_pods()
        finally:
            self.networks.teardown()
        log.info("node agent stopped")
        return 0

    def _stop_pods(self) -> None:
        with self.lock:
            workers = [w for w in self.workers.values() if w.thread.is_alive()]
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.thread.join(timeout=MAX_GRACE_SECONDS + 5)


def _default_memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{line.split()[1]}Ki"
    return "1Gi"


def _parse_args(argv: list[str] | None) -> AgentSettings:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.nodeagent",
        description="Process node agent of the local cluster (test infrastructure).",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--bridge-cidr", required=True, help="IPv4 network for pod addresses")
    parser.add_argument("--python", default=sys.executable, help="replaces python/python3")
    parser.add_argument("--cpu", default=str(os.cpu_count() or 1), help="cpu capacity")
    parser.add_argument("--memory", default=_default_memory(), help="memory capacity, e.g. 24Gi")
    args = parser.parse_args(argv)
    try:
        network = ipaddress.IPv4Network(args.bridge_cidr)
    except ValueError as error:
        parser.error(f"--bridge-cidr {args.bridge_cidr!r} is not an IPv4 network: {error}")
    if network.num_addresses < 4:
        parser.error(f"--bridge-cidr {network} is too small: use a /30 or larger")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", args.node_name):
        parser.error(f"--node-name {args.node_name!r} is not a valid node name (DNS subdomain)")
    if not args.kubeconfig.is_file():
        parser.error(f"--kubeconfig {args.kubeconfig} does not exist")
    if not (os.path.isfile(args.python) and os.access(args.python, os.X_OK)):
        parser.error(f"--python {args.python} is not an executable file")
    for flag, value in (("--cpu", args.cpu), ("--memory", args.memory)):
        try:
            parse_quantity(value)
        except ValueError:
            parser.error(f"{flag} {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 24Gi)")
    if os.geteuid() != 0:
        parser.error("the node agent creates network namespaces and mounts: run it as root")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    return AgentSettings(
        kubeconfig=args.kubeconfig,
        node_name=args.node_name,
        state_dir=args.state_dir.resolve(),
        bridge_cidr=str(network),
        python=os.path.abspath(args.python),
        cpu=args.cpu,
        memory=args.memory,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s"
    )
    settings = _parse_args(argv)
    agent = NodeAgent(settings)

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        agent.stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())

"""What a pod's spec asks of the process node, resolved without side effects: environment
variables (values, references, fieldRef and resourceFieldRef, ConfigMap and Secret keys), the
command line, the pod's /etc/hosts, the files of ConfigMap, Secret, downward API and projected
volumes, and the container's mounts. Used by :mod:`localcluster.nodeagent`."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from kubernetes.utils.quantity import parse_quantity as _untyped_parse_quantity

from .netns import Mount

# The kubernetes client's helpers carry no annotations.
parse_quantity: Callable[[str], Decimal] = _untyped_parse_quantity

CLUSTER_DOMAIN = "cluster.local"
JOB_COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"
JOB_COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PodSetupError(Exception):
    """The pod cannot start yet; reason and message go to the container's waiting state."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def config_error(message: str) -> PodSetupError:
    return PodSetupError("CreateContainerConfigError", message)


class ObjectSource(Protocol):
    """The API objects a pod's env and volumes read. None means the object does not exist."""

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None: ...

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None: ...

    def service_account_token(
        self, pod: Mapping[str, Any], audience: str | None, expiration_seconds: int
    ) -> str: ...


@dataclass(frozen=True)
class PodAddresses:
    """What the downward API knows about where the pod runs."""

    pod_ip: str
    host_ip: str
    node_allocatable: Mapping[str, str] = field(default_factory=dict)


_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")
_SUBSCRIPTED_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` is a literal ``$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(substitute, text)


def field_value(pod: Mapping[str, Any], path: str, where: PodAddresses) -> str:
    """The value of a downward-API ``fieldRef.fieldPath``."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": where.pod_ip,
        "status.podIPs": where.pod_ip,
        "status.hostIP": where.host_ip,
        "status.hostIPs": where.host_ip,
    }
    if path in simple:
        return str(simple[path])
    subscripted = _SUBSCRIPTED_FIELD.match(path)
    if subscripted:
        return str((meta.get(subscripted.group(1)) or {}).get(subscripted.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "".join(f"{key}={json.dumps(values[key])}\n" for key in sorted(values))
    raise config_error(
        f"fieldRef {path!r} is not supported by the process node; use one of "
        f"{', '.join(sorted(simple))}, metadata.labels['KEY'] or metadata.annotations['KEY']"
    )


def resource_value(
    container: Mapping[str, Any], ref: Mapping[str, Any], where: PodAddresses
) -> str:
    """The value of a ``resourceFieldRef``, rounded up in units of its divisor like a kubelet.

    A limit the container does not set is the node's allocatable amount; a missing request is 0.
    """
    kind, _, name = str(ref.get("resource", "")).partition(".")
    if kind not in ("limits", "requests") or not name:
        raise config_error(
            f"resourceFieldRef {ref.get('resource')!r} must be limits.<name> or requests.<name>"
        )
    raw = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if raw is None:
        raw = where.node_allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1") or Decimal(1)
    return str(math.ceil(parse_quantity(raw) / divisor))


def _key_value(
    objects: ObjectSource, namespace: str, ref: Mapping[str, Any], kind: str
) -> bytes | None:
    name = ref.get("name", "")
    data = (
        objects.config_map(namespace, name)
        if kind == "ConfigMap"
        else objects.secret(namespace, name)
    )
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            return None
        missing = (
            f"{kind} {namespace}/{name}"
            if data is None
            else f"key {ref['key']!r} of {kind} {namespace}/{name}"
        )
        raise config_error(f"{missing} does not exist (create it or mark the reference optional)")
    return data[ref["key"]]


def pod_hostname(pod: Mapping[str, Any]) -> str:
    return str(pod["spec"].get("hostname") or pod["metadata"]["name"])


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    where: PodAddresses,
    objects: ObjectSource,
    python: str,
) -> dict[str, str]:
    """The container's environment, resolved the way a kubelet does, on top of a base env.

    The base env is what an image would provide: PATH (the directory of ``python`` first, kept
    first even when the pod sets PATH), HOME and HOSTNAME.
    """
    namespace = pod["metadata"]["namespace"]
    defined = _env_from_sources(container, namespace, objects)
    for var in container.get("env") or []:
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            defined[name] = expand_references(var.get("value", ""), defined)
        elif "fieldRef" in source:
            defined[name] = field_value(pod, source["fieldRef"]["fieldPath"], where)
        elif "resourceFieldRef" in source:
            defined[name] = resource_value(container, source["resourceFieldRef"], where)
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            is_config_map = "configMapKeyRef" in source
            ref = source["configMapKeyRef" if is_config_map else "secretKeyRef"]
            value = _key_value(objects, namespace, ref, "ConfigMap" if is_config_map else "Secret")
            if value is not None:
                defined[name] = value.decode(errors="replace")
        else:
            raise config_error(f"env {name}: valueFrom {source} is not supported")

    # The Job controller sets JOB_COMPLETION_INDEX through a fieldRef; pods copied from a Job's
    # template without it still get the index the annotation or label carries.
    meta = pod["metadata"]
    index = (meta.get("annotations") or {}).get(JOB_COMPLETION_INDEX_KEY) or (
        meta.get("labels") or {}
    ).get(JOB_COMPLETION_INDEX_KEY)
    if index is not None and JOB_COMPLETION_INDEX_ENV not in defined:
        defined[JOB_COMPLETION_INDEX_ENV] = str(index)

    python_bin = os.path.dirname(python)
    env = {"PATH": f"{python_bin}:{STANDARD_PATH}", "HOME": "/root", "HOSTNAME": pod_hostname(pod)}
    env.update(defined)
    if not env["PATH"].startswith(python_bin + ":"):
        env["PATH"] = f"{python_bin}:{env['PATH']}"
    return env


def _env_from_sources(
    container: Mapping[str, Any], namespace: str, objects: ObjectSource
) -> dict[str, str]:
    """The variables of the container's ``envFrom`` ConfigMaps and Secrets, in their order."""
    defined: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref, data = (
                source["configMapRef"],
                objects.config_map(namespace, source["configMapRef"]["name"]),
            )
            kind = "ConfigMap"
        elif "secretRef" in source:
            ref, data = source["secretRef"], objects.secret(namespace, source["secretRef"]["name"])
            kind = "Secret"
        else:
            raise config_error(f"envFrom entry {source} is not supported by the process node")
        if data is None:
            if ref.get("optional"):
                continue
            raise config_error(f"{kind} {namespace}/{ref['name']} (envFrom) does not exist")
        for key, raw in data.items():
            defined[prefix + key] = raw.decode(errors="replace")
    return defined


def container_argv(container: Mapping[str, Any], env: Mapping[str, str], python: str) -> list[str]:
    """command + args with ``$(VAR)`` expanded; a leading python/python3 becomes ``python``."""
    command = list(container.get("command") or [])
    if not command:
        raise config_error(
            f"container {container.get('name')!r} has no command: the process node does not "
            "pull images, so it cannot run an image's entrypoint; set command (and args)"
        )
    argv = [expand_references(part, env) for part in command + list(container.get("args") or [])]
    if argv[0] in ("python", "python3"):
        argv[0] = python
    return argv


@dataclass(frozen=True)
class HostsEntry:
    """One pod as the hosts files name it."""

    ip: str
    hostname: str
    namespace: str
    subdomain: str | None = None

    def peer_names(self) -> list[str]:
        """The names other pods of the subdomain resolve this pod by."""
        if not self.subdomain:
            return []
        base = f"{self.hostname}.{self.subdomain}"
        svc = f"{base}.{self.namespace}.svc"
        return [f"{svc}.{CLUSTER_DOMAIN}", svc, f"{base}.{self.namespace}", base]


def render_hosts(own: HostsEntry, peers: list[HostsEntry]) -> str:
    """The pod's /etc/hosts: localhost, its own names, then its running subdomain peers."""
    lines = [
        "# Managed by the acceltrain process node agent (kubelet-style hosts file).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "\t".join([own.ip, *own.peer_names(), own.hostname]),
    ]
    lines += ["\t".join([peer.ip, *peer.peer_names()]) for peer in peers if peer.subdomain]
    return "\n".join(lines) + "\n"


def keyed_files(
    data: Mapping[str, bytes],
    items: list[Mapping[str, Any]] | None,
    default_mode: int,
    what: str,
    optional: bool = False,
) -> dict[str, tuple[bytes, int]]:
    """Files of a configMap/secret volume: every key, or only ``items`` at their paths."""
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    files = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise PodSetupError(
                "ContainerCreating", f"{what} has no key {item['key']!r} (volume items)"
            )
        files[item["path"]] = (data[item["key"]], int(item.get("mode", default_mode)))
    return files


def downward_api_files(
    items: list[Mapping[str, Any]],
    pod: Mapping[str, Any],
    where: PodAddresses,
    default_mode: int,
) -> dict[str, tuple[bytes, int]]:
    files = {}
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    for item in items:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"], where)
        else:
            ref = item["resourceFieldRef"]
            container = containers.get(
                ref.get("containerName") or pod["spec"]["containers"][0]["name"]
            )
            value = resource_value(container or {}, ref, where)
        files[item["path"]] = (value.encode(), int(item.get("mode", default_mode)))
    return files


def mounts_for(container: Mapping[str, Any], volume_dirs: Mapping[str, Path]) -> list[Mount]:
    """The container's volumeMounts as bind mounts of the prepared host directories."""
    mounts = []
    for volume_mount in container.get("volumeMounts") or []:
        name = volume_mount["name"]
        if name not in volume_dirs:
            raise PodSetupError(
                "ContainerCreating",
                f"volumeMount {volume_mount['mountPath']} uses volume {name!r}, "
                "which the pod does not define",
            )
        source = volume_dirs[name]
        sub_path = volume_mount.get("subPath")
        if sub_path:
            if os.path.isabs(sub_path) or ".." in Path(sub_path).parts:
                raise PodSetupError(
                    "ContainerCreating", f"subPath {sub_path!r} must stay inside the volume"
                )
            source = source / sub_path
        mounts.append(
            Mount(str(source), volume_mount["mountPath"], bool(volume_mount.get("readOnly")))
        )
    return mounts

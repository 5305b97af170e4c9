"""What the process node reports of a pod, computed without side effects: container states,
termination messages (the kubelet's rules), the pod status, restart and backoff rules, and
probes. Used by :mod:`localcluster.nodeagent`."""

from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKOFF_CAP_SECONDS = 10.0
TERMINAL_PHASES = ("Succeeded", "Failed")
# The kubelet's termination message rules (pkg/kubelet/container): the file a container writes
# is read up to 4096 bytes; with FallbackToLogsOnError a failed container without one gets the
# last 80 lines of its log, at most 2048 bytes.
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
_LOG_TAIL_READ_BYTES = 64 * 1024


def waiting_state(reason: str, message: str | None = None) -> dict[str, Any]:
    return {"waiting": {"reason": reason, "message": message}}


def running_state(started_at: str) -> dict[str, Any]:
    return {"running": {"startedAt": started_at}}


def terminated_state(
    exit_code: int,
    started_at: str | None,
    finished_at: str,
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": finished_at,
    }
    if message:
        terminated["message"] = message
    return {"terminated": terminated}


def log_tail(
    log_path: Path, lines: int = FALLBACK_LOG_LINES, limit: int = FALLBACK_LOG_BYTES
) -> str:
    """The last ``lines`` lines of a container log, cut to its last ``limit`` bytes."""
    try:
        with log_path.open("rb") as log_file:
            size = log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, size - _LOG_TAIL_READ_BYTES))
            data = log_file.read()
    except FileNotFoundError:
        return ""
    tail = b"".join(data.splitlines(keepends=True)[-lines:])[-limit:]
    return tail.decode("utf-8", errors="replace")


def termination_message(
    container: Mapping[str, Any], message_file: Path, log_path: Path, exit_code: int
) -> str | None:
    """``state.terminated.message`` as the kubelet fills it when a container exits.

    The file the container wrote at its terminationMessagePath wins; without one, a container
    with ``terminationMessagePolicy: FallbackToLogsOnError`` that failed gets its log's tail.
    """
    try:
        with message_file.open("rb") as written:
            message = written.read(MAX_TERMINATION_MESSAGE_BYTES).decode("utf-8", errors="replace")
    except FileNotFoundError:
        message = ""
    if message:
        return message
    fallback = container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
    if fallback and exit_code != 0:
        return log_tail(log_path) or None
    return None


def _explicit(state: Mapping[str, Any]) -> dict[str, Any]:
    # A strategic merge patch merges maps: the states a container is not in must be sent as
    # null, or a terminated container would still show its old "running" entry.
    return {key: state.get(key) for key in ("waiting", "running", "terminated")}


@dataclass
class ContainerRecord:
    """What the agent knows about the one container it runs for a pod."""

    name: str
    image: str
    restart_count: int = 0
    state: dict[str, Any] = field(default_factory=lambda: waiting_state("ContainerCreating"))
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    container_id: str | None = None

    def to_status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "containerID": self.container_id,
            "ready": self.ready,
            "started": "running" in self.state,
            "restartCount": self.restart_count,
            "state": _explicit(self.state),
            "lastState": _explicit(self.last_state),
        }


def pod_status(
    *,
    phase: str,
    host_ip: str,
    pod_ip: str | None,
    start_time: str,
    container: ContainerRecord,
    ready_since: str,
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The pod's status as a kubelet reports it, ready for a strategic merge patch."""

    def condition(kind: str, ok: bool, since: str, why: str | None = None) -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True" if ok else "False",
            "lastProbeTime": None,
            "lastTransitionTime": since,
            "reason": None if ok else why,
            "message": None,
        }

    ready = container.ready and phase == "Running"
    not_ready_reason = "PodCompleted" if phase in TERMINAL_PHASES else "ContainersNotReady"
    status: dict[str, Any] = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "conditions": [
            condition("PodScheduled", True, start_time),
            condition("Initialized", True, start_time),
            condition("ContainersReady", ready, ready_since, not_ready_reason),
            condition("Ready", ready, ready_since, not_ready_reason),
        ],
        "containerStatuses": [container.to_status()],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status


def restart_wanted(restart_policy: str, exit_code: int) -> bool:
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


def backoff_seconds(restart_count: int) -> float:
    return float(min(BACKOFF_CAP_SECONDS, 2 ** min(restart_count, 10)))


def exit_code_of(returncode: int) -> int:
    """A process's exit status as a container runtime reports it (death by signal N: 128+N)."""
    return 128 - returncode if returncode < 0 else returncode


def _named_port(port: int | str, container: Mapping[str, Any]) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"probe port {port!r} is not a port name of the container")


def probe_once(probe: Mapping[str, Any], pod_ip: str, container: Mapping[str, Any]) -> bool:
    """Run a tcpSocket or httpGet probe against the pod's address; other kinds pass."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "tcpSocket" in probe:
            port = _named_port(probe["tcpSocket"]["port"], container)
            with socket.create_connection((pod_ip, port), timeout=timeout):
                return True
        if "httpGet" in probe and probe["httpGet"].get("scheme", "HTTP") == "HTTP":
            get = probe["httpGet"]
            connection = http.client.HTTPConnection(
                pod_ip, _named_port(get["port"], container), timeout=timeout
            )
            try:
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                connection.request("GET", get.get("path", "/"), headers=headers)
                return 200 <= connection.getresponse().status < 400
            finally:
                connection.close()
    except (OSError, ValueError, http.client.HTTPException):
        return False
    return True

"""The process node agent really runs pods: Indexed Job pods reach each other by DNS name, deleted
pods lose their processes, exit codes reach the API, env and volumes reach the process, and a
crashed agent's leftovers are cleaned up by the next one."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localcluster import Cluster
from localcluster.cluster import free_bridge_cidr
from localcluster.netns import NETNS_ETC_DIR, NETNS_RUN_DIR, Names
from localcluster.nodeagent import pod_log_path
from localcluster.processes import start_ticks_of

pytestmark = pytest.mark.cluster

T = TypeVar("T")

IMAGE = "registry.invalid/acceltrain/not-pulled:0"  # the process node never pulls images
REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def python_pod(
    name: str, program: str, *, node_name: str | None = None, **spec: Any
) -> dict[str, Any]:
    placement = {"nodeName": node_name} if node_name else {}
    container = spec.pop("container", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            **placement,
            **spec,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["python", "-c", textwrap.dedent(program)],
                    **container,
                }
            ],
        },
    }


def on_process_node(cluster: Cluster) -> dict[str, Any]:
    assert cluster.process_node_name is not None, "the cluster runs no process node"
    return {"nodeSelector": {"kubernetes.io/hostname": cluster.process_node_name}}


def pod_in_phase(core: k8s.CoreV1Api, namespace: str, name: str, *phases: str) -> Any:
    pod = core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase in phases else None


def pod_gone(core: k8s.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        return error.status == 404
    return False


def pid_of(pod: Any) -> int:
    container_id: str = pod.status.container_statuses[0].container_id
    assert container_id.startswith("process://"), container_id
    return int(container_id.removeprefix("process://"))


PAIR_PROGRAM = """
    import os, socket, time
    if os.environ["JOB_COMPLETION_INDEX"] == "0":
        with socket.create_server(("0.0.0.0", 7000)) as server:
            conn, _ = server.accept()
            with conn:
                greeting = conn.recv(64)
                conn.sendall(b"pong from " + socket.gethostname().encode() + b" to " + greeting)
    else:
        peer, deadline = os.environ["PEER"], time.monotonic() + 60
        while True:
            try:
                with socket.create_connection((peer, 7000), timeout=2) as sock:
                    sock.sendall(socket.gethostname().encode())
                    print("reply:", sock.recv(200).decode(), flush=True)
                    break
            except OSError as error:
                if time.monotonic() > deadline:
                    raise SystemExit(f"cannot reach {peer}: {error}")
                time.sleep(0.1)
"""


def test_indexed_job_pods_talk_by_dns_name_and_both_succeed(
    cluster: Cluster, namespace: str, kube_api: k8s.ApiClient
) -> None:
    core, batch = k8s.CoreV1Api(kube_api), k8s.BatchV1Api(kube_api)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ring"},
        "spec": {"clusterIP": "None", "selector": {"job-name": "pair"}},
    }
    core.create_namespaced_service(namespace, service)
    pod_spec = python_pod("pair", PAIR_PROGRAM, subdomain="ring", **on_process_node(cluster))
    pod_spec["spec"]["containers"][0]["env"] = [
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PEER", "value": "pair-0.ring.$(NS).svc"},
    ]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "pair"},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": {"spec": pod_spec["spec"]},
        },
    }
    batch.create_namespaced_job(namespace, job)

    def job_finished() -> str | None:
        conditions = batch.read_namespaced_job_status("pair", namespace).status.conditions or []
        done = [
            c.type for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"
        ]
        return done[0] if done else None

    assert wait_for("the Job to finish", job_finished, timeout=60) == "Complete"
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=pair").items
    by_index = {p.metadata.annotations["batch.kubernetes.io/job-completion-index"]: p for p in pods}
    assert sorted(by_index) == ["0", "1"]
    for pod in pods:
        assert pod.status.phase == "Succeeded"
        terminated = pod.status.container_statuses[0].state.terminated
        assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert by_index["0"].status.pod_ip != by_index["1"].status.pod_ip
    log = cluster.pod_log_path(namespace, by_index["1"].metadata.name, "main").read_text()
    assert "reply: pong from pair-0 to pair-1" in log


SLEEPER_PROGRAM = """
    import os, subprocess, sys, time
    # Like torch's elastic launcher: a child in a session of its own.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             start_new_session=True)
    print(f"pids {os.getpid()} {child.pid}", flush=True)
    time.sleep(600)
"""


def running_pids(log: Path, core: k8s.CoreV1Api, namespace: str, name: str) -> list[int]:
    """The pids a SLEEPER_PROGRAM pod prints, once it runs; the first is the container's."""
    pod = wait_for("the pod to run", lambda: pod_in_phase(core, namespace, name, "Running"))
    line = wait_for(
        "the pod to print its pids",
        lambda: next((x for x in log.read_text().splitlines() if x.startswith("pids ")), None),
    )
    pids = [int(pid) for pid in line.split()[1:]]
    assert pids[0] == pid_of(pod)
    return pids


def test_deleting_a_running_pod_kills_its_processes(
    cluster: Cluster, namespace: str, kube_api: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        namespace, python_pod("sleeper", SLEEPER_PROGRAM, **on_process_node(cluster))
    )
    log = cluster.pod_log_path(namespace, "sleeper", "main")
    pids = running_pids(log, core, namespace, "sleeper")
    started = {pid: start_ticks_of(pid) for pid in pids}
    assert all(started.values()), f"pod processes {pids} are not running on this machine"

    core.delete_namespaced_pod("sleeper", namespace)

    wait_for("the pod object to be removed", lambda: pod_gone(core, namespace, "sleeper"))
    survivors = [pid for pid, ticks in started.items() if start_ticks_of(pid) == ticks]
    assert survivors == []


def test_a_pod_that_exits_3_is_failed_with_exit_code_3(
    cluster: Cluster, namespace: str, kube_api: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        namespace, python_pod("three", "raise SystemExit(3)", **on_process_node(cluster))
    )

    pod = wait_for(
        "the pod to fail", lambda: pod_in_phase(core, namespace, "three", "Failed", "Succeeded")
    )

    assert pod.status.phase == "Failed"
    status = pod.status.container_statuses[0]
    assert (status.state.terminated.exit_code, status.state.terminated.reason) == (3, "Error")
    assert status.restart_count == 0


def test_failed_containers_report_their_termination_message_like_a_kubelets(
    cluster: Cluster, namespace: str, kube_api: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(kube_api)
    written = """
        with open("/var/run/acceltrain/last-words", "w") as message:
            message.write("out of disk on /checkpoints")
        raise SystemExit(3)
    """
    logged = """
        import sys
        for i in range(100):
            print("line", i)
        sys.stdout.flush()
        print("data path /data/train.jsonl does not exist", file=sys.stderr)
        raise SystemExit(66)
    """
    core.create_namespaced_pod(
        namespace,
        python_pod(
            "written",
            written,
            container={"terminationMessagePath": "/var/run/acceltrain/last-words"},
            **on_process_node(cluster),
        ),
    )
    core.create_namespaced_pod(
        namespace,
        python_pod(
            "logged",
            logged,
            container={"terminationMessagePolicy": "FallbackToLogsOnError"},
            **on_process_node(cluster),
        ),
    )
    core.create_namespaced_pod(namespace, python_pod("silent", logged, **on_process_node(cluster)))

    def message_of(name: str) -> str | None:
        pod = wait_for(f"{name} to fail", lambda: pod_in_phase(core, namespace, name, "Failed"))
        message: str | None = pod.status.container_statuses[0].state.terminated.message
        return message

    assert message_of("written") == "out of disk on /checkpoints"
    tail = message_of("logged")
    assert tail is not None
    assert tail.endswith("data path /data/train.jsonl does not exist\n")
    # The kubelet's fallback keeps the last 80 lines of the log.
    assert tail.splitlines()[0] == "line 21" and len(tail.splitlines()) == 80
    # Without FallbackToLogsOnError the log is not copied into the status.
    assert message_of("silent") is None


def test_on_failure_pods_restart_until_they_succeed(
    cluster: Cluster, namespace: str, kube_api: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(kube_api)
    program = """
        import pathlib
        marker = pathlib.Path("/scratch/first-run-done")
        if not marker.exists():
            marker.touch()
            raise SystemExit(1)
    """
    pod = python_pod(
        "flaky",
        program,
        restartPolicy="OnFailure",
        volumes=[{"name": "scratch", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
        **on_process_node(cluster),
    )
    core.create_namespaced_pod(namespace, pod)

    done = wait_for(
        "the pod to finish", lambda: pod_in_phase(core, namespace, "flaky", "Succeeded", "Failed")
    )

    assert done.status.phase == "Succeeded"
    status = done.status.container_statuses[0]
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 1
    assert status.state.terminated.exit_code == 0


def test_a_pod_past_its_active_deadline_is_stopped_and_failed(
    cluster: Cluster, namespace: str, kube_api: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(kube_api)
    pod = python_pod(
        "overdue",
        "import time; time.sleep(600)",
        activeDeadlineSeconds=2,
        **on_process_node(cluster),
    )
    core.create_namespaced_pod(namespace, pod)

    done = wait_for(
        "the pod to be stopped", lambda: pod_in_phase(core, namespace, "overdue", "Failed")
    )

    assert done.status.reason == "DeadlineExceeded"
    assert done.status.container_statuses[0].state.terminated.exit_code == 128 + signal.SIGTERM


REPORT_PROGRAM = """
    import json, os, socket
    config_dir = os.environ["CONFIG_DIR"]
    try:
        open(os.path.join(config_dir, "new-file"), "w")
        config_writable = True
    except OSError:
        config_writable = False
    print(json.dumps({
        "env": {k: os.environ.get(k) for k in
                ["POD_NAME", "POD_NAMESPACE", "POD_IP", "NODE_NAME", "APP", "LEARNING_RATE"]},
        "files": sorted(os.listdir(config_dir)),
        "trainer_json": open(os.path.join(config_dir, "trainer.json")).read(),
        "config_writable": config_writable,
        "hostname": socket.gethostname(),
        "cwd": os.getcwd(),
    }), flush=True)
"""


def test_downward_api_env_and_config_map_volume_reach_the_process(
    cluster: Cluster, namespace: str, kube_api: k8s.ApiClient
) -> None:
    core = k8s.CoreV1Api(kube_api)
    config_dir = f"/etc/acceltrain-{namespace}"  # must exist only inside the pod
    working_dir = f"/workspace-{namespace}"
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "trainer-config"},
        "data": {"trainer.json": '{"maxSteps": 3}', "lr": "0.001", "unlisted": "x"},
    }
    core.create_namespaced_config_map(namespace, config_map)

    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = [
        {"name": "POD_NAME", **field("metadata.name")},
        {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "POD_IP", **field("status.podIP")},
        {"name": "NODE_NAME", **field("spec.nodeName")},
        {"name": "APP", **field("metadata.labels['app']")},
        {
            "name": "LEARNING_RATE",
            "valueFrom": {"configMapKeyRef": {"name": "trainer-config", "key": "lr"}},
        },
        {"name": "CONFIG_DIR", "value": config_dir},
    ]
    pod = python_pod(
        "reporter",
        REPORT_PROGRAM,
        volumes=[
            {
                "name": "config",
                "configMap": {
                    "name": "trainer-config",
                    "items": [{"key": "trainer.json", "path": "trainer.json"}],
                },
            }
        ],
        container={
            "env": env,
            "workingDir": working_dir,
            "volumeMounts": [{"name": "config", "mountPath": config_dir, "readOnly": True}],
        },
        **on_process_node(cluster),
    )
    core.create_namespaced_pod(namespace, pod)

    done = wait_for(
        "the pod to finish",
        lambda: pod_in_phase(core, namespace, "reporter", "Succeeded", "Failed"),
    )

    log = cluster.pod_log_path(namespace, "reporter", "main").read_text()
    assert done.status.phase == "Succeeded", log
    seen = json.loads(log.strip().splitlines()[-1])
    assert seen["env"] == {
        "POD_NAME": "reporter",
        "POD_NAMESPACE": namespace,
        "POD_IP": done.status.pod_ip,
        "NODE_NAME": cluster.process_node_name,
        "APP": "reporter",
        "LEARNING_RATE": "0.001",
    }
    assert seen["files"] == ["trainer.json"]
    assert seen["trainer_json"] == '{"maxSteps": 3}'
    assert seen["config_writable"] is False
    assert seen["hostname"] == "reporter"
    assert seen["cwd"] == working_dir
    assert not Path(config_dir).exists(), "the pod's mount point leaked onto the host"
    assert not Path(working_dir).exists(), "the pod's working dir leaked onto the host"


@pytest.fixture
def spare_node(cluster: Cluster, kube_api: k8s.ApiClient) -> Iterator[str]:
    """The name of a second process node, deleted from the cluster after the test."""
    name = f"acceltrain-spare-{secrets.token_hex(3)}"
    yield name
    try:
        k8s.CoreV1Api(kube_api).delete_node(name)
    except ApiException as error:
        if error.status != 404:
            raise


def leftovers_of(node_name: str, bridge_cidr: str) -> list[str]:
    prefix = Names.for_node(node_name, bridge_cidr).prefix
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found = [line.split(":")[1].strip() for line in links.splitlines() if f": {prefix}" in line]
    for directory in (NETNS_RUN_DIR, NETNS_ETC_DIR):
        if directory.is_dir():
            found += [str(p) for p in directory.iterdir() if p.name.startswith(prefix)]
    return found


def test_a_restarted_agent_cleans_up_after_a_crash_and_sigterm_leaves_nothing(
    cluster: Cluster,
    namespace: str,
    kube_api: k8s.ApiClient,
    spare_node: str,
    tmp_path: Path,
) -> None:
    core = k8s.CoreV1Api(kube_api)
    state_dir = tmp_path / "agent"
    bridge_cidr = free_bridge_cidr()
    argv = [
        sys.executable, "-m", "localcluster.nodeagent",
        "--kubeconfig", str(cluster.kubeconfig),
        "--node-name", spare_node,
        "--state-dir", str(state_dir),
        "--bridge-cidr", bridge_cidr,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "hack")}
    log = (tmp_path / "agent.log").open("ab")

    def start_agent() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def node_ready() -> bool:
        try:
            conditions = core.read_node(spare_node).status.conditions or []
        except ApiException:
            return False
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    agent = start_agent()
    try:
        wait_for("the spare node to be Ready", node_ready)
        core.create_namespaced_pod(
            namespace, python_pod("orphan", SLEEPER_PROGRAM, node_name=spare_node)
        )
        orphan_pids = running_pids(
            pod_log_path(state_dir, namespace, "orphan", "main"), core, namespace, "orphan"
        )
        orphan_ticks = {pid: start_ticks_of(pid) for pid in orphan_pids}

        agent.send_signal(signal.SIGKILL)  # a crash: nothing is cleaned up
        agent.wait(timeout=10)
        left = leftovers_of(spare_node, bridge_cidr)
        assert left, "a killed agent should leave its namespaces behind"
        assert all(start_ticks_of(pid) == ticks for pid, ticks in orphan_ticks.items())

        agent = start_agent()
        lost = wait_for(
            "the lost pod to be reported", lambda: pod_in_phase(core, namespace, "orphan", "Failed")
        )
        assert lost.status.container_statuses[0].state.terminated.reason == "ContainerStatusUnknown"
        assert [pid for pid, ticks in orphan_ticks.items() if start_ticks_of(pid) == ticks] == []

        core.create_namespaced_pod(
            namespace, python_pod("worker", SLEEPER_PROGRAM, node_name=spare_node)
        )
        worker_pids = running_pids(
            pod_log_path(state_dir, namespace, "worker", "main"), core, namespace, "worker"
        )
        worker_ticks = {pid: start_ticks_of(pid) for pid in worker_pids}

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        assert [pid for pid, ticks in worker_ticks.items() if start_ticks_of(pid) == ticks] == []
        assert leftovers_of(spare_node, bridge_cidr) == []
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=40)
        log.close()

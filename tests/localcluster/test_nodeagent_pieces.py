"""The pure pieces of the process node agent (hack/localcluster): env resolution, commands, hosts
files, volumes, pod status. The agent itself runs against the real cluster in
tests/localcluster/test_node_agent.py."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from localcluster.netns import MAX_INTERFACE_NAME, Mount, Names, dirs_to_mirror
from localcluster.nodeagent import pod_log_path, prepare_volumes
from localcluster.podspec import (
    HostsEntry,
    PodAddresses,
    PodSetupError,
    container_argv,
    expand_references,
    mounts_for,
    render_hosts,
    resolve_env,
)
from localcluster.podstatus import (
    ContainerRecord,
    backoff_seconds,
    exit_code_of,
    pod_status,
    probe_once,
    restart_wanted,
    running_state,
    terminated_state,
    termination_message,
)

PYTHON = "/opt/venv/bin/python"
JOB_INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
WHERE = PodAddresses(pod_ip="10.77.0.7", host_ip="10.77.0.1", node_allocatable={"cpu": "4"})


class InMemoryObjects:
    """ConfigMaps, Secrets and tokens of one namespace, as the agent would read them."""

    def __init__(
        self,
        config_maps: Mapping[str, Mapping[str, bytes]] | None = None,
        secrets: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> None:
        self.config_maps = {k: dict(v) for k, v in (config_maps or {}).items()}
        self.secrets = {k: dict(v) for k, v in (secrets or {}).items()}
        self.token_requests: list[tuple[str | None, int]] = []

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.config_maps.get(name)

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.secrets.get(name)

    def service_account_token(
        self, pod: Mapping[str, Any], audience: str | None, expiration_seconds: int
    ) -> str:
        self.token_requests.append((audience, expiration_seconds))
        return f"token-for-{pod['metadata']['name']}"


def make_pod(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "train-a0-1-x7k2p",
            "namespace": "team-a",
            "uid": "uid-123",
            "labels": {"acceltrain.io/job-name": "train"},
            "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
        },
        "spec": {
            "nodeName": "acceltrain-cpu-0",
            "serviceAccountName": "trainer",
            "hostname": "train-a0-1",
            "subdomain": "train",
            "containers": [{"name": "trainer", **container}],
            **spec,
        },
    }


# --- env and command -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rank-$(RANK)", "rank-3"),
        ("$(RANK)$(RANK)", "33"),
        ("$(UNDEFINED) stays", "$(UNDEFINED) stays"),
        ("$$(RANK) is escaped", "$(RANK) is escaped"),
        ("cost: $$5", "cost: $5"),
        ("unclosed $(RANK", "unclosed $(RANK"),
    ],
)
def test_variable_references_expand_like_kubernetes(text: str, expected: str) -> None:
    assert expand_references(text, {"RANK": "3"}) == expected


def test_env_resolves_literals_downward_api_and_config_map_keys() -> None:
    container = {
        "command": ["python"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {
                "name": "JOB",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.labels['acceltrain.io/job-name']"}
                },
            },
            {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": JOB_INDEX_FIELD}},
            },
            {"name": "ADDR", "value": "$(POD_IP):29500"},
            {
                "name": "LR",
                "valueFrom": {"configMapKeyRef": {"name": "hyper", "key": "lr"}},
            },
            {
                "name": "PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
            },
        ],
    }
    objects = InMemoryObjects({"hyper": {"lr": b"0.001"}}, {"creds": {"password": b"s3cret"}})

    env = resolve_env(make_pod(container), container, WHERE, objects, PYTHON)

    assert env["POD_NAME"] == "train-a0-1-x7k2p"
    assert env["POD_NS"] == "team-a"
    assert env["POD_UID"] == "uid-123"
    assert env["POD_IP"] == "10.77.0.7"
    assert env["NODE"] == "acceltrain-cpu-0"
    assert env["SA"] == "trainer"
    assert env["JOB"] == "train"
    assert env["JOB_COMPLETION_INDEX"] == "1"
    assert env["ADDR"] == "10.77.0.7:29500"
    assert env["LR"] == "0.001"
    assert env["PASSWORD"] == "s3cret"
    assert env["HOSTNAME"] == "train-a0-1"


def test_env_from_sources_are_prefixed_and_overridden_by_env_entries() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "APP_"}],
        "env": [{"name": "APP_MODE", "value": "override"}],
    }
    objects = InMemoryObjects({"settings": {"MODE": b"default", "LEVEL": b"3"}})

    env = resolve_env(make_pod(container), container, WHERE, objects, PYTHON)

    assert env["APP_LEVEL"] == "3"
    assert env["APP_MODE"] == "override"


def test_job_completion_index_comes_from_the_annotation_when_no_env_sets_it() -> None:
    env = resolve_env(make_pod({}), {}, WHERE, InMemoryObjects(), PYTHON)

    assert env["JOB_COMPLETION_INDEX"] == "1"


@pytest.mark.parametrize(
    ("ref", "resources", "expected"),
    [
        ({"resource": "limits.cpu"}, {}, "4"),  # no limit: the node's allocatable cpu
        ({"resource": "limits.cpu"}, {"limits": {"cpu": "1500m"}}, "2"),  # rounded up
        ({"resource": "requests.cpu", "divisor": "1m"}, {"requests": {"cpu": "250m"}}, "250"),
        ({"resource": "limits.memory", "divisor": "1Mi"}, {"limits": {"memory": "2Gi"}}, "2048"),
    ],
)
def test_resource_field_refs_report_rounded_up_quantities(
    ref: dict[str, str], resources: dict[str, Any], expected: str
) -> None:
    container = {
        "resources": resources,
        "env": [{"name": "VALUE", "valueFrom": {"resourceFieldRef": ref}}],
    }

    env = resolve_env(make_pod(container), container, WHERE, InMemoryObjects(), PYTHON)

    assert env["VALUE"] == expected


def test_the_python_environment_comes_first_on_path_even_when_the_pod_sets_path() -> None:
    container = {"env": [{"name": "PATH", "value": "/custom/bin"}]}

    env = resolve_env(make_pod(container), container, WHERE, InMemoryObjects(), PYTHON)

    assert env["PATH"] == "/opt/venv/bin:/custom/bin"


def test_a_missing_config_map_key_names_the_config_map_and_the_fix() -> None:
    container = {
        "env": [{"name": "LR", "valueFrom": {"configMapKeyRef": {"name": "hyper", "key": "lr"}}}]
    }

    with pytest.raises(PodSetupError) as raised:
        resolve_env(make_pod(container), container, WHERE, InMemoryObjects(), PYTHON)

    assert raised.value.reason == "CreateContainerConfigError"
    assert "ConfigMap team-a/hyper does not exist" in raised.value.message
    assert "optional" in raised.value.message


def test_an_optional_missing_config_map_key_leaves_the_variable_unset() -> None:
    ref = {"name": "hyper", "key": "lr", "optional": True}
    container = {"env": [{"name": "LR", "valueFrom": {"configMapKeyRef": ref}}]}

    env = resolve_env(make_pod(container), container, WHERE, InMemoryObjects(), PYTHON)

    assert "LR" not in env


def test_an_unsupported_field_ref_is_rejected_with_the_supported_list() -> None:
    container = {"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.priority"}}}]}

    with pytest.raises(PodSetupError, match=r"spec.priority.*metadata.name"):
        resolve_env(make_pod(container), container, WHERE, InMemoryObjects(), PYTHON)


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        ({"command": ["python", "-m", "accel_trainer"]}, [PYTHON, "-m", "accel_trainer"]),
        ({"command": ["python3"], "args": ["train.py"]}, [PYTHON, "train.py"]),
        ({"command": ["sh", "-c"], "args": ["echo $(RANK)"]}, ["sh", "-c", "echo 2"]),
        ({"command": ["/usr/bin/python3", "x.py"]}, ["/usr/bin/python3", "x.py"]),
    ],
)
def test_commands_run_with_the_project_python_and_expanded_args(
    container: dict[str, Any], expected: list[str]
) -> None:
    assert container_argv(container, {"RANK": "2"}, PYTHON) == expected


def test_a_container_without_command_is_rejected_because_images_are_not_pulled() -> None:
    with pytest.raises(PodSetupError, match=r"no command.*set command"):
        container_argv({"name": "trainer", "args": ["--config", "x"]}, {}, PYTHON)


# --- names ----------------------------------------------------------------------------------------


def test_hosts_file_names_the_pod_and_its_subdomain_peers() -> None:
    own = HostsEntry("10.77.0.8", "train-a0-1", "team-a", "train")
    peer = HostsEntry("10.77.0.7", "train-a0-0", "team-a", "train")

    lines = render_hosts(own, [peer]).splitlines()

    assert "127.0.0.1\tlocalhost" in lines
    assert lines[-2].split("\t") == [
        "10.77.0.8",
        "train-a0-1.train.team-a.svc.cluster.local",
        "train-a0-1.train.team-a.svc",
        "train-a0-1.train.team-a",
        "train-a0-1.train",
        "train-a0-1",
    ]
    assert lines[-1].split("\t") == [
        "10.77.0.7",
        "train-a0-0.train.team-a.svc.cluster.local",
        "train-a0-0.train.team-a.svc",
        "train-a0-0.train.team-a",
        "train-a0-0.train",
    ]


def test_a_pod_without_subdomain_resolves_only_its_own_hostname() -> None:
    lines = render_hosts(HostsEntry("10.77.0.9", "solo", "team-a"), []).splitlines()

    assert lines[-1] == "10.77.0.9\tsolo"


def test_interface_names_fit_the_kernel_limit_and_differ_per_node_and_cluster() -> None:
    first = Names.for_node("acceltrain-cpu-0", "10.77.0.0/24")
    second = Names.for_node("acceltrain-cpu-1", "10.77.0.0/24")
    same_node_other_cluster = Names.for_node("acceltrain-cpu-0", "10.77.1.0/24")

    assert first.prefix != second.prefix
    assert first.prefix != same_node_other_cluster.prefix
    assert len(first.host_veth(65534)) <= MAX_INTERFACE_NAME
    assert len(first.bridge) <= MAX_INTERFACE_NAME
    assert first.netns(3).startswith(first.prefix)


# --- volumes --------------------------------------------------------------------------------------


def test_volumes_are_prepared_as_host_directories(tmp_path: Path) -> None:
    pod = make_pod(
        {},
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {
                "name": "data",
                "hostPath": {"path": str(tmp_path / "host" / "data"), "type": "DirectoryOrCreate"},
            },
            {
                "name": "config",
                "configMap": {
                    "name": "cfg",
                    "items": [{"key": "trainer.json", "path": "conf/trainer.json"}],
                },
            },
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {
                "name": "podinfo",
                "downwardAPI": {
                    "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
                },
            },
            {
                "name": "kube-api-access",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ]
                },
            },
        ],
    )
    objects = InMemoryObjects(
        {"cfg": {"trainer.json": b"{}", "unused": b"x"}, "kube-root-ca.crt": {"ca.crt": b"PEM"}},
        {"creds": {"password": b"s3cret"}},
    )

    dirs = prepare_volumes(pod, tmp_path / "volumes", WHERE, objects)

    assert dirs["scratch"].is_dir() and not any(dirs["scratch"].iterdir())
    assert dirs["data"] == tmp_path / "host" / "data" and dirs["data"].is_dir()
    assert [p.name for p in dirs["config"].rglob("*") if p.is_file()] == ["trainer.json"]
    assert (dirs["config"] / "conf" / "trainer.json").read_bytes() == b"{}"
    assert (dirs["creds"] / "password").read_bytes() == b"s3cret"
    assert (dirs["creds"] / "password").stat().st_mode & 0o777 == 0o400
    assert (dirs["podinfo"] / "labels").read_text() == 'acceltrain.io/job-name="train"\n'
    assert (dirs["kube-api-access"] / "token").read_text() == "token-for-train-a0-1-x7k2p"
    assert (dirs["kube-api-access"] / "ca.crt").read_bytes() == b"PEM"
    assert (dirs["kube-api-access"] / "namespace").read_text() == "team-a"
    assert objects.token_requests == [(None, 3607)]


def test_a_host_path_that_must_exist_but_does_not_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    pod = make_pod(
        {}, volumes=[{"name": "data", "hostPath": {"path": str(missing), "type": "Directory"}}]
    )

    with pytest.raises(PodSetupError, match=f"{missing}.*DirectoryOrCreate"):
        prepare_volumes(pod, tmp_path / "volumes", WHERE, InMemoryObjects())


def test_an_unsupported_volume_type_is_named(tmp_path: Path) -> None:
    pod = make_pod({}, volumes=[{"name": "claim", "persistentVolumeClaim": {"claimName": "c"}}])

    with pytest.raises(PodSetupError, match=r"claim.*persistentVolumeClaim.*not supported"):
        prepare_volumes(pod, tmp_path / "volumes", WHERE, InMemoryObjects())


def test_volume_mounts_bind_the_prepared_directories(tmp_path: Path) -> None:
    container = {
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/acceltrain", "readOnly": True},
            {"name": "scratch", "mountPath": "/cache", "subPath": "hf"},
        ]
    }
    dirs = {"config": tmp_path / "config", "scratch": tmp_path / "scratch"}

    assert mounts_for(container, dirs) == [
        Mount(str(tmp_path / "config"), "/etc/acceltrain", read_only=True),
        Mount(str(tmp_path / "scratch" / "hf"), "/cache", read_only=False),
    ]


def test_a_volume_mount_of_an_undefined_volume_is_named() -> None:
    container = {"volumeMounts": [{"name": "ghost", "mountPath": "/ghost"}]}

    with pytest.raises(PodSetupError, match=r"/ghost.*'ghost'.*does not define"):
        mounts_for(container, {})


@pytest.mark.parametrize(
    ("paths", "existing", "expected"),
    [
        (["/etc/acceltrain"], {"/", "/etc"}, {"/", "/etc"}),
        (["/checkpoints"], {"/"}, {"/"}),
        (["/work/a/b/c"], {"/", "/work"}, {"/", "/work"}),
        (["/tmp/existing"], {"/", "/tmp", "/tmp/existing"}, set()),
    ],
)
def test_only_the_ancestors_of_missing_mount_points_are_mirrored(
    paths: list[str], existing: set[str], expected: set[str]
) -> None:
    assert dirs_to_mirror(paths, exists=existing.__contains__) == expected


# --- status ---------------------------------------------------------------------------------------


def test_a_finished_container_reports_exit_code_and_clears_its_running_state() -> None:
    container = ContainerRecord("trainer", "img", restart_count=2)
    container.last_state = running_state("2026-01-01T00:00:00Z")
    container.state = terminated_state(3, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z")

    status = pod_status(
        phase="Failed",
        host_ip="10.77.0.1",
        pod_ip="10.77.0.7",
        start_time="2026-01-01T00:00:00Z",
        container=container,
        ready_since="2026-01-01T00:01:00Z",
    )

    reported = status["containerStatuses"][0]
    assert reported["state"]["terminated"]["exitCode"] == 3
    assert reported["state"]["terminated"]["reason"] == "Error"
    # Explicit nulls: a strategic merge patch would otherwise keep the old "running" entry.
    assert reported["state"]["running"] is None and reported["state"]["waiting"] is None
    assert reported["restartCount"] == 2
    assert status["podIPs"] == [{"ip": "10.77.0.7"}]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PodCompleted")


FALLBACK = {"name": "trainer", "terminationMessagePolicy": "FallbackToLogsOnError"}


def _log(path: Path, lines: int) -> Path:
    path.write_text("".join(f"line {i} {'x' * 20}\n" for i in range(lines)))
    return path


def test_the_message_a_container_wrote_is_its_termination_message(tmp_path: Path) -> None:
    written = tmp_path / "trainer.termination-log"
    written.write_text("data path /data/train.jsonl does not exist")
    log = _log(tmp_path / "trainer.log", 5)

    message = termination_message(FALLBACK, written, log, exit_code=66)

    assert message == "data path /data/train.jsonl does not exist"


def test_a_failed_container_without_a_message_gets_its_last_log_lines(tmp_path: Path) -> None:
    empty = tmp_path / "trainer.termination-log"
    empty.write_text("")
    log = _log(tmp_path / "trainer.log", 200)

    message = termination_message(FALLBACK, empty, log, exit_code=1)

    assert message is not None
    # The kubelet's limits: the last 80 lines, at most 2048 bytes of them.
    assert len(message.encode()) == 2048
    assert message.endswith("line 199 " + "x" * 20 + "\n")
    assert "line 119 " not in message


def test_the_log_tail_is_the_message_only_for_failures_with_the_fallback_policy(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "trainer.termination-log"
    empty.write_text("")
    log = _log(tmp_path / "trainer.log", 3)

    assert termination_message(FALLBACK, empty, log, exit_code=0) is None
    assert termination_message({"name": "trainer"}, empty, log, exit_code=1) is None
    assert termination_message(FALLBACK, empty, log, exit_code=2) == "".join(
        f"line {i} {'x' * 20}\n" for i in range(3)
    )


def test_a_termination_message_is_reported_in_the_terminated_state() -> None:
    state = terminated_state(66, "t0", "t1", message="bad data path")
    assert state["terminated"]["message"] == "bad data path"
    assert "message" not in terminated_state(0, "t0", "t1")["terminated"]


def test_a_running_ready_container_makes_the_pod_ready() -> None:
    container = ContainerRecord("trainer", "img", state=running_state("t0"), ready=True)

    status = pod_status(
        phase="Running",
        host_ip="10.77.0.1",
        pod_ip="10.77.0.7",
        start_time="t0",
        container=container,
        ready_since="t1",
    )

    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert status["containerStatuses"][0]["started"] is True


@pytest.mark.parametrize(
    ("policy", "exit_code", "restart"),
    [
        ("Never", 1, False),
        ("Never", 0, False),
        ("OnFailure", 1, True),
        ("OnFailure", 0, False),
        ("Always", 0, True),
        ("Always", 137, True),
    ],
)
def test_restart_policy_decides_whether_a_container_restarts(
    policy: str, exit_code: int, restart: bool
) -> None:
    assert restart_wanted(policy, exit_code) is restart


def test_restart_backoff_doubles_up_to_a_small_cap() -> None:
    assert [backoff_seconds(n) for n in range(6)] == [1, 2, 4, 8, 10, 10]


@pytest.mark.parametrize(("returncode", "exit_code"), [(0, 0), (3, 3), (-15, 143), (-9, 137)])
def test_death_by_signal_is_reported_as_128_plus_the_signal(
    returncode: int, exit_code: int
) -> None:
    assert exit_code_of(returncode) == exit_code


def test_pod_logs_live_under_the_state_dir_by_namespace_and_pod(tmp_path: Path) -> None:
    assert pod_log_path(tmp_path, "team-a", "p-0", "trainer") == (
        tmp_path / "pods" / "team-a_p-0" / "trainer.log"
    )


def test_tcp_readiness_probe_passes_only_while_the_port_accepts() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted = threading.Thread(target=lambda: server.accept()[0].close(), daemon=True)
    accepted.start()
    container = {"ports": [{"name": "metrics", "containerPort": port}]}

    assert probe_once({"tcpSocket": {"port": "metrics"}}, "127.0.0.1", container)
    accepted.join(timeout=5)
    server.close()
    assert not probe_once({"tcpSocket": {"port": port}}, "127.0.0.1", container)

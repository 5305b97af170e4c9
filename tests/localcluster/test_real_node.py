"""The user's path on a real node: a kubelet and containerd running the images `make images` built.

A cluster of its own (no kwok and no process node): the kubelet runs every pod in a runc
container from the operator and CPU trainer images, enforcing the pods' securityContext, with
cluster DNS (CoreDNS) and local PersistentVolumes. The body of the test is
``tests/e2e/user-path.sh``, the same script the kind e2e runs: ``helm install`` with the operator
running as a pod under the chart's ServiceAccount, ``kubectl apply`` of ``cpu-smoke`` (its claim and
the job) and training to Succeeded. While it trains, this test looks inside a trainer container;
afterwards it checks the claim's files and Prometheus's series. A second test kills a worker's
container through the runtime and sees the group restart and resume from its checkpoint.

The release is installed with its PodMonitor and ServiceMonitor on, and a real Prometheus Operator
(``localcluster.monitoring``) renders them into a scrape configuration that a second Prometheus
runs on; a later test asks that Prometheus every query of the chart's Grafana dashboard about the
jobs the module ran.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from accel_operator.lifecycle import RESTART_REASONS
from localcluster import Cluster, monitoring, realnode
from localcluster.prometheus import label_names, query, query_range
from tests.operator_harness import REPO_ROOT, wait_for

from . import dashboard

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.training, pytest.mark.real_node]

USER_PATH = REPO_ROOT / "tests" / "e2e" / "user-path.sh"
MONITORS_VALUES = REPO_ROOT / "tests" / "e2e" / "monitors-values.yaml"
CPU_SMOKE = REPO_ROOT / "manifests" / "examples" / "cpu-smoke.yaml"
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
JOB = "cpu-smoke"
OPERATOR_NAMESPACE = "acceltrain-system"
CLAIM = "cpu-smoke-checkpoints"
# Long enough (about 40 s of training at 500 samples/s) to look inside a running trainer and
# see its samples/s in the job's status.
USER_PATH_STEPS = 200
# Checkpoints every 10 steps: the kill comes after the first (while the run is far from its end;
# deleting and restoring the Service and ConfigMap first takes a few seconds), attempt 2 runs
# the rest.
KILL_RUN_STEPS = 150
TRAINER_UID = 1000
# Training itself takes about a minute; a cold node also starts the operator pod and two trainer
# containers that import torch.
JOB_TIMEOUT = 600
# A deleted leader hands its Lease back: the next leader takes it within a retry period (2 s
# in the chart). Without the handback it would wait out the lease (15 s, at least 12.6 s after
# the last renewal).
HANDOVER_LIMIT = 10.0
# What a trainer container reports about itself (run by `kubectl exec`).
INTROSPECT = """
import json, os, socket
facts = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups())}
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
facts["cap_eff"] = status["CapEff"].strip()
try:
    open("/usr/acceltrain-probe", "w")
    facts["root_fs"] = "writable"
except OSError as error:
    facts["root_fs"] = error.strerror
facts["master_addr"] = os.environ["MASTER_ADDR"]
facts["master_ip"] = socket.gethostbyname(os.environ["MASTER_ADDR"])
resolv = open("/etc/resolv.conf").read().splitlines()
facts["nameservers"] = [line.split()[1] for line in resolv if line.startswith("nameserver")]
print(json.dumps(facts))
"""


def _image_names() -> dict[str, str]:
    names = subprocess.run(
        ["make", "-s", "image-names"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    operator, _, trainer_cpu = names
    return {"OPERATOR_IMAGE": operator, "TRAINER_CPU_IMAGE": trainer_cpu}


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    images = _image_names()
    cluster = Cluster(
        tmp_path_factory.mktemp("real-node"),
        gpu_nodes=0,
        process_node=False,
        real_node=True,
        prometheus=True,
        images=list(images.values()),
    )
    cluster.start(timeout=180)
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass(frozen=True)
class ManagedPrometheus:
    """The Prometheus that runs on the Prometheus Operator's configuration, since ``started``."""

    url: str
    started: float


@pytest.fixture(scope="module")
def managed_prometheus(real_cluster: Cluster) -> Iterator[ManagedPrometheus]:
    started = time.time()
    monitoring.start_prometheus_operator(real_cluster)
    url = monitoring.start_managed_prometheus(real_cluster)
    with monitoring.ConfigReloader(real_cluster, url):
        yield ManagedPrometheus(url, started)


def _user_path_env(cluster: Cluster, namespace: str) -> dict[str, str]:
    return {
        **os.environ,
        **_image_names(),
        "KUBECONFIG": str(cluster.kubeconfig),
        "KUBECTL": str(TOOLS_BIN / "kubectl"),
        "HELM": str(TOOLS_BIN / "helm"),
        "E2E_NAMESPACE": namespace,
        "E2E_TIMEOUT": str(JOB_TIMEOUT),
        "E2E_MAX_STEPS": str(USER_PATH_STEPS),
        "E2E_HELM_VALUES": str(MONITORS_VALUES),
    }


def _kubectl_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def _trainer_pods(cluster: Cluster, namespace: str, phase: str | None = None) -> list[Any]:
    selector = ["-l", f"acceltrain.io/job-name={JOB}"]
    pods = _kubectl_json(cluster, "get", "pods", "-n", namespace, *selector)["items"]
    return [pod for pod in pods if phase is None or pod["status"].get("phase") == phase]


def _live_samples_per_second(cluster: Cluster, namespace: str) -> float | None:
    """``status.progress.samplesPerSecond`` while the job is Running (what `kubectl get atj`
    shows), None before the operator has scraped rank 0; fails once the job has ended."""
    status = _kubectl_json(cluster, "get", "atj", JOB, "-n", namespace).get("status", {})
    assert status.get("phase") in ("Pending", "Starting", "Running"), status
    rate = float(status.get("progress", {}).get("samplesPerSecond", 0))
    return rate if status["phase"] == "Running" and rate > 0 else None


def _introspect_a_running_trainer(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """Facts from inside worker 1's trainer container, and worker 0's pod IP."""

    def both_running() -> list[Any] | None:
        pods = _trainer_pods(cluster, namespace, "Running")
        return pods if len(pods) == 2 else None

    pods = wait_for("both trainer pods Running", both_running, timeout=JOB_TIMEOUT, interval=1)
    by_index = {
        pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: pod
        for pod in pods
    }
    result = cluster.kubectl(
        "exec", "-n", namespace, by_index["1"]["metadata"]["name"], "-c", "trainer", "--",
        "python", "-c", INTROSPECT,
    )  # fmt: skip
    facts: dict[str, Any] = json.loads(result.stdout)
    facts["worker_0_ip"] = by_index["0"]["status"]["podIP"]
    return facts


def test_the_user_path_trains_cpu_smoke_in_hardened_containers_with_cluster_dns(
    real_cluster: Cluster, managed_prometheus: ManagedPrometheus
) -> None:
    namespace = "user-path"
    script = subprocess.Popen(
        ["bash", str(USER_PATH)],
        cwd=REPO_ROOT,
        env=_user_path_env(real_cluster, namespace),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(script.stdout or []), daemon=True)
    reader.start()
    try:
        facts = _introspect_a_running_trainer(real_cluster, namespace)
        wait_for(
            "samples/s in the job's status while it trains",
            lambda: _live_samples_per_second(real_cluster, namespace),
            timeout=120,
            interval=1,
        )
        code = script.wait(timeout=JOB_TIMEOUT + 360)
    finally:
        script.kill()
        reader.join(timeout=10)
    log = "".join(output)
    assert code == 0, log
    assert "user path: cpu-smoke Succeeded" in log
    assert "trainer metrics through port-forward: ok" in log

    # The hardened securityContext was enforced by the runtime: the pod's user and fsGroup, no
    # capabilities, a read-only root filesystem.
    assert (facts["uid"], facts["gid"]) == (TRAINER_UID, TRAINER_UID), facts
    assert int(facts["cap_eff"], 16) == 0, facts
    assert facts["root_fs"] == "Read-only file system", facts
    # Rendezvous by the pod's DNS name, answered by cluster DNS (the node's only nameserver).
    assert facts["master_addr"].startswith(f"{JOB}-a1-0."), facts
    assert facts["master_ip"] == facts["worker_0_ip"], facts
    assert facts["nameservers"] == [real_cluster.real_node_settings.gateway], facts

    # The operator ran as pods from its image (two replicas); no operator process on the host.
    operator_pods = _kubectl_json(real_cluster, "get", "pods", "-n", OPERATOR_NAMESPACE)["items"]
    assert [pod["spec"]["containers"][0]["image"] for pod in operator_pods] == [
        _image_names()["OPERATOR_IMAGE"]
    ] * 2
    status = _kubectl_json(real_cluster, "get", "atj", JOB, "-n", namespace)["status"]
    assert status["progress"]["step"] == USER_PATH_STEPS, (status, log[-3000:])
    assert status["restarts"] == 0, status
    # Scraped while the job ran: the final checkpoint comes as the pods exit (it is on disk).
    assert 0 < status["lastCheckpoint"]["step"] <= USER_PATH_STEPS, status

    # Checkpoints and the evaluation report are on the claim, written by the non-root trainer.
    volume = real_cluster.volume_path(namespace, CLAIM)
    report = volume / "output" / "eval" / "final.json"
    assert report.exists(), sorted(str(p.relative_to(volume)) for p in volume.rglob("*"))[:50]
    assert report.stat().st_uid == TRAINER_UID
    assert "accuracy" in json.loads(report.read_text())
    assert (volume / f"step-{USER_PATH_STEPS:08d}").is_dir(), sorted(
        p.name for p in volume.iterdir()
    )

    # Prometheus scraped every rank of both trainer pods on the node, and the operator pod.
    prometheus = real_cluster.prometheus_url
    assert prometheus is not None
    samples = query(
        prometheus,
        f'max_over_time(acceltrain_train_samples_total{{namespace="{namespace}"}}[10m])',
    )
    # Two workers x two ranks, each rank its own exporter on its own declared port.
    assert sorted(s["metric"]["rank"] for s in samples) == ["0", "1", "2", "3"], samples
    assert all(float(s["value"][1]) > 0 for s in samples), samples
    assert len({s["metric"]["pod"] for s in samples}) == 2, samples
    operator_series = query(
        prometheus, "max_over_time(acceltrain_operator_api_requests_total[10m])"
    )
    assert operator_series and operator_series[0]["metric"]["namespace"] == "acceltrain-system"


def _lease(cluster: Cluster) -> dict[str, Any]:
    found: dict[str, Any] = _kubectl_json(
        cluster, "get", "lease", "acceltrain-operator", "-n", OPERATOR_NAMESPACE
    )["spec"]
    return found


def _operator_pods(cluster: Cluster) -> list[str]:
    pods = _kubectl_json(cluster, "get", "pods", "-n", OPERATOR_NAMESPACE)["items"]
    return sorted(
        pod["metadata"]["name"]
        for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions", [])
        )
    )


def _two_operator_pods(cluster: Cluster) -> list[str] | None:
    pods = _operator_pods(cluster)
    return pods if len(pods) == 2 else None


def test_the_charts_two_replicas_hold_one_lease_and_a_leader_pod_deleted_hands_it_over(
    real_cluster: Cluster,
) -> None:
    # After the user path: the release runs two operator pods under the chart's ServiceAccount.
    pods = wait_for("two Ready operator pods", lambda: _two_operator_pods(real_cluster), 120)
    budget = _kubectl_json(real_cluster, "get", "pdb", "-n", OPERATOR_NAMESPACE)["items"]
    assert [item["spec"]["minAvailable"] for item in budget] == [1]
    lease = _lease(real_cluster)
    leader = lease["holderIdentity"]
    assert leader in pods, (leader, pods)
    wait_for(
        "the leader to renew its Lease",
        lambda: _lease(real_cluster)["renewTime"] != lease["renewTime"],
        timeout=10,
    )
    transitions = lease.get("leaseTransitions", 0)
    started = time.monotonic()
    real_cluster.kubectl("delete", "pod", leader, "-n", OPERATOR_NAMESPACE, "--wait=false")

    # The leader hands the Lease back as it stops, so the next leader need not wait out the
    # lease duration. It is usually the standby; the Deployment's replacement pod may win the
    # race when it starts within a retry period, which is as good.
    def new_leader() -> str | None:
        holder = _lease(real_cluster).get("holderIdentity")
        return holder if holder and holder != leader else None

    try:
        successor = wait_for("another pod to take the Lease", new_leader, timeout=30, interval=0.2)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{_operator_logs(real_cluster)}") from None
    seconds = time.monotonic() - started
    print(f"handover to {successor} {seconds:.1f} s after deleting {leader}")
    assert seconds < HANDOVER_LIMIT, f"{seconds:.1f} s: the Lease was not handed back"
    assert _lease(real_cluster)["leaseTransitions"] == transitions + 1
    events = _kubectl_json(real_cluster, "get", "events", "-n", OPERATOR_NAMESPACE)["items"]
    messages = [event["message"] for event in events if event["reason"] == "LeaderElection"]
    assert f"{successor} became leader" in messages, messages

    # The Deployment's replacement pod comes up; the two replicas still hold one Lease.
    def replaced() -> list[str] | None:
        pods = _two_operator_pods(real_cluster)
        return pods if pods and leader not in pods else None

    now = wait_for("a replacement operator pod Ready", replaced, timeout=120, interval=1)
    assert successor in now and _lease(real_cluster)["holderIdentity"] == successor


def _operator_logs(cluster: Cluster) -> str:
    pods = _kubectl_json(cluster, "get", "pods", "-n", OPERATOR_NAMESPACE)["items"]
    logs = []
    for pod in pods:
        name = pod["metadata"]["name"]
        result = cluster.kubectl("logs", name, "-n", OPERATOR_NAMESPACE, "--tail=40", check=False)
        logs.append(f"----- {name} -----\n{result.stdout}{result.stderr}")
    return "\n".join(logs)


def _container_id(cluster: Cluster, pod: str) -> str:
    listing = cluster.ctr(
        "containers", "ls", "-q",
        f'labels."io.kubernetes.pod.name"=={pod},labels."io.kubernetes.container.name"==trainer',
    )  # fmt: skip
    ids = listing.stdout.split()
    assert len(ids) == 1, (listing.stdout, listing.stderr)
    return ids[0]


def test_deleted_children_come_back_and_a_killed_worker_container_resumes_from_its_checkpoint(
    real_cluster: Cluster,
) -> None:
    namespace = "killed"
    real_cluster.kubectl("create", "namespace", namespace)
    documents = list(yaml.safe_load_all(CPU_SMOKE.read_text()))
    job = next(d for d in documents if d["kind"] == "AccelTrainJob")
    job["spec"]["training"]["maxSteps"] = KILL_RUN_STEPS
    job["spec"]["image"] = _image_names()["TRAINER_CPU_IMAGE"]
    real_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(documents))

    def checkpointed() -> dict[str, Any] | None:
        status = _kubectl_json(real_cluster, "get", "atj", JOB, "-n", namespace).get("status", {})
        return status if status.get("lastCheckpoint") else None

    checkpoint = wait_for("a checkpoint", checkpointed, JOB_TIMEOUT, 2)["lastCheckpoint"]["step"]
    victim = next(
        pod["metadata"]["name"]
        for pod in _trainer_pods(real_cluster, namespace, "Running")
        if pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1"
    )
    _delete_and_see_restored(real_cluster, namespace, victim)
    killed = real_cluster.ctr(
        "tasks", "kill", "--signal", "SIGKILL", _container_id(real_cluster, victim)
    )
    assert killed.returncode == 0, killed.stderr

    def finished() -> dict[str, Any] | None:
        status = _kubectl_json(real_cluster, "get", "atj", JOB, "-n", namespace).get("status", {})
        assert status.get("phase") != "Failed", status
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for("Succeeded after the restart", finished, JOB_TIMEOUT, 2)
    assert (status["attempt"], status["restarts"]) == (2, 1), status
    assert status["progress"]["step"] == KILL_RUN_STEPS
    attempt_2 = next(
        pod["metadata"]["name"]
        for pod in _trainer_pods(real_cluster, namespace)
        if pod["metadata"]["name"].startswith(f"{JOB}-a2-")
        and pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0"
    )
    log = real_cluster.kubectl("logs", "-n", namespace, attempt_2, "-c", "trainer")
    resumed = re.search(r"resumed from step-(\d{8})", log.stdout)
    assert resumed, log.stdout[-2000:]
    assert int(resumed.group(1)) >= checkpoint


def _delete_and_see_restored(cluster: Cluster, namespace: str, pod: str) -> None:
    """Delete the running attempt's headless Service and ConfigMap; the operator recreates
    both, and the pod's rendezvous name resolves again through cluster DNS."""
    kinds = {"service": JOB, "configmap": f"{JOB}-a1-config"}

    def uid(kind: str) -> str | None:
        found = cluster.kubectl(
            "get", kind, kinds[kind], "-n", namespace, "-o", "json", check=False
        )
        return json.loads(found.stdout)["metadata"]["uid"] if found.returncode == 0 else None

    before = {kind: uid(kind) for kind in kinds}
    deleted = time.monotonic()
    cluster.kubectl("delete", *[f"{kind}/{name}" for kind, name in kinds.items()], "-n", namespace)
    wait_for(
        "the Service and ConfigMap recreated",
        lambda: all(uid(kind) not in (None, before[kind]) for kind in kinds),
        timeout=15,
        interval=0.2,
    )
    print(f"recreated {time.monotonic() - deleted:.1f} s after the deletion")
    resolve = "import os, socket; print(socket.gethostbyname(os.environ['MASTER_ADDR']))"

    def resolves() -> bool:
        answer = cluster.kubectl(
            "exec", "-n", namespace, pod, "-c", "trainer", "--", "python", "-c", resolve,
            check=False,
        )  # fmt: skip
        return answer.returncode == 0

    wait_for("the rendezvous name to resolve again", resolves, timeout=30, interval=1)


def _jobs_that_ran(cluster: Cluster) -> dict[tuple[str, str], dict[str, Any]]:
    """Every AccelTrainJob of the module by (namespace, name), with its status."""
    items = _kubectl_json(cluster, "get", "atj", "--all-namespaces")["items"]
    return {
        (item["metadata"]["namespace"], item["metadata"]["name"]): item.get("status", {})
        for item in items
    }


def test_every_dashboard_query_through_the_prometheus_operator_shows_each_job_and_rank(
    real_cluster: Cluster, managed_prometheus: ManagedPrometheus
) -> None:
    """The chart's PodMonitor and ServiceMonitor, rendered by the Prometheus Operator into the
    configuration a Prometheus runs on, and every query of the Grafana dashboard against it: per
    AccelTrainJob, every rank, no label renamed to ``exported_*``."""
    jobs = _jobs_that_ran(real_cluster)
    assert jobs, "no AccelTrainJob ran in this module (run it with the user path test)"
    generated = monitoring.scrape_jobs(monitoring.generated_config(real_cluster))
    assert {job.split("/")[0] for job in generated} == {"podMonitor", "serviceMonitor"}, generated
    url = managed_prometheus.url
    window = dashboard.Window(managed_prometheus.started, time.time())
    renamed = [name for name in label_names(url, start=window.start, end=window.end)
               if name.startswith("exported_")]  # fmt: skip
    assert not renamed, renamed

    board = dashboard.load()
    values = dashboard.variable_values(url, board, window)
    assert {(ns, name) for ns, name in jobs} <= {
        (ns, name) for ns in values["namespace"] for name in values["job"]
    }, values
    assert set(values["job"]) == {name for _, name in jobs}, values
    answers = dashboard.panel_answers(url, board, values, window)
    for answer in answers:
        assert answer.series, f"no data for {answer.title!r}: {answer.expr}"
        groups = _series_groups(answer)
        if "rank" in answer.expr:
            # Every rank of every job: two workers x two ranks each.
            assert groups == {(ns, name, str(rank)) for ns, name in jobs for rank in range(4)}, (
                answer.title, groups)  # fmt: skip
        elif "acceltrain_job" in answer.expr:
            assert groups == set(jobs), (answer.title, groups)
    restarts = next(answer for answer in answers if answer.title == "Restarts")
    # Every reason is exported from the start (a panel of zeros, not "No data"); the killed
    # worker's restart is counted as WorkerFailed.
    spent = {series["metric"]["reason"]: _peak(series) for series in restarts.series}
    assert set(spent) == set(RESTART_REASONS), spent
    restarted = sum(1 for status in jobs.values() if status.get("restarts"))
    assert spent["WorkerFailed"] >= restarted, (spent, jobs)
    # The operator's own series came through the ServiceMonitor (both replicas are targets).
    operator = query_range(url, 'up{namespace="acceltrain-system"}', start=window.start,
                           end=window.end, step=window.step)  # fmt: skip
    assert operator and all(_peak(series) == 1 for series in operator), operator


def _series_groups(answer: dashboard.PanelAnswer) -> set[tuple[str, ...]]:
    keys = ("namespace", "acceltrain_job", "rank") if "rank" in answer.expr else (
        "namespace", "acceltrain_job")  # fmt: skip
    return {tuple(series["metric"].get(key, "") for key in keys) for series in answer.series}


def _peak(series: dict[str, Any]) -> float:
    return max(float(value) for _, value in series["values"])


def test_stopping_the_cluster_leaves_no_trace_on_the_host(tmp_path: Path) -> None:
    """Mounts, interfaces, cgroups, nftables rules and sysctls are as they were before. The
    module's cluster still runs meanwhile, so this is also a second real node beside a first."""
    before = _host_snapshot()
    cluster = Cluster(
        tmp_path / "c", gpu_nodes=0, process_node=False, prometheus=False, real_node=True
    )
    cluster.start(timeout=120)
    settings = cluster.real_node_settings
    cluster.kubectl(
        "run", "sleeper", "--image", "registry.k8s.io/pause:3.10.1", "--restart=Never",
    )  # fmt: skip
    wait_for(
        "the pause pod Running",
        lambda: (
            cluster.kubectl("get", "pod", "sleeper", "-o", "jsonpath={.status.phase}").stdout
            == "Running"
        ),
        timeout=60,
    )
    assert settings.bridge in _host_snapshot()["interfaces"]
    cluster.stop()
    assert _host_snapshot() == before


def _host_snapshot() -> dict[str, Any]:
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    return {
        "mounts": sorted(
            line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
        ),
        "interfaces": sorted(
            link["ifname"] for link in json.loads(run("ip", "-j", "link") or "[]")
        ),
        "nft": run("nft", "list", "tables"),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
        "cgroups": sorted(p.name for p in Path("/sys/fs/cgroup/cpu").iterdir() if p.is_dir())
        if Path("/sys/fs/cgroup/cpu").is_dir()
        else [],
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        "node dirs": sorted(str(p) for p in realnode.SHORT_DIRS.glob("*")),
    }

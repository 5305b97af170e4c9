"""Installing acceltrain as users do, into the local control plane, with RBAC enforced for real.

``helm install`` of ``charts/acceltrain`` and ``kubectl apply -k manifests/operator`` put the CRD,
ServiceAccount, RBAC and Deployment into the real API server. Here the Deployment is held back
(a ResourceQuota of zero pods in the install namespace), and the operator runs as a local process
under the installed ServiceAccount: a token from the TokenRequest API (``kubectl create token``)
in a kubeconfig with the cluster's CA and address, so every request it makes is authorised with
exactly the installed permissions. Under the kustomize install's permissions it trains the CPU
smoke example to Succeeded on the process node; with a verb taken away it fails with Forbidden;
and the authorizer's answers for the ServiceAccount match the chart's rules (no secrets). The
chart's Deployment running from the operator image, training in trainer containers, is
``test_real_node.py``.
"""

from __future__ import annotations

import copy
import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from accel_operator import constants
from localcluster import Cluster
from tests.chart.test_chart import EXPECTED_RULES
from tests.operator_harness import (
    REPO_ROOT,
    Api,
    condition,
    cpu_smoke_for_the_process_node,
    gpu_spec,
    install_crd,
    running_operator,
    wait_for,
)

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.training,
    pytest.mark.usefixtures("deepspeed_ops"),
]

CHART = REPO_ROOT / "charts" / "acceltrain"
KUSTOMIZE_BASE = REPO_ROOT / "manifests" / "operator"
# Release names make cluster-scoped names (ClusterRoles): the chart's and the kustomize base's
# must not collide in one cluster.
RELEASE = "acceltrain-helm"
KUSTOMIZE_NAMESPACE = "acceltrain-system"
KUSTOMIZE_NAME = "acceltrain"
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}
# A cold start compiles DeepSpeed's communication op first (TORCH_EXTENSIONS_DIR is shared).
TRAINING_TIMEOUT = 420
SMOKE_STEPS = 20


@dataclass(frozen=True)
class Install:
    """An installed operator identity: its ServiceAccount and a kubeconfig that acts as it."""

    namespace: str
    service_account: str
    job_role: str
    """The ClusterRole with the permissions on jobs and their children."""
    kubeconfig: Path

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def _run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}"
    return result


def _helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    helm = cluster.tools_dir / "bin" / "helm"
    return _run([str(helm), f"--kubeconfig={cluster.kubeconfig}", *args], timeout=180)


def _namespace_without_pods(cluster: Cluster, namespace: str) -> None:
    """The install namespace, with a quota that refuses every pod: the operator Deployment's image
    cannot run on this machine, so its pods must not take the process node's CPUs."""
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "quota", "no-pods", "--hard=pods=0", "-n", namespace)


def _token_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a TokenRequest token."""
    token = cluster.kubectl(
        "create", "token", account, "-n", namespace, "--duration=2h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "local", "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def helm_install(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    namespace = f"t-helm-{secrets.token_hex(3)}"
    _namespace_without_pods(cluster, namespace)
    try:
        _helm(cluster, "install", RELEASE, str(CHART), "--namespace", namespace)
        # The chart's crds/ created the CRD, or found the one an earlier test installed; either
        # way the garbage collector must know the kind before jobs are deleted.
        install_crd(cluster)
        kubeconfig = _token_kubeconfig(
            cluster, namespace, RELEASE, tmp_path_factory.mktemp("helm") / "kubeconfig"
        )
        yield Install(namespace, RELEASE, RELEASE, kubeconfig)
    finally:
        _helm(cluster, "uninstall", RELEASE, "--namespace", namespace, "--wait")
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def kube(cluster: Cluster) -> Api:
    return Api(cluster.kubeconfig)


def _cpu_smoke(namespace: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """The CPU smoke example on the process node, with a shorter run."""
    name, spec = cpu_smoke_for_the_process_node(tmp_path / "checkpoints")
    spec["training"]["maxSteps"] = SMOKE_STEPS
    return name, spec


def _train_cpu_smoke(
    cluster: Cluster, kube: Api, install: Install, namespace: str, tmp_path: Path
) -> dict[str, Any]:
    name, spec = _cpu_smoke(namespace, tmp_path)
    with running_operator(cluster, namespace, tmp_path, install.kubeconfig) as operator:
        kube.create_job(namespace, name, spec)

        def finished() -> bool:
            status = kube.status(namespace, name)
            if status.get("phase") == "Failed":
                raise AssertionError(f"{name} failed: {status.get('message')}")
            return status.get("phase") == "Succeeded"

        wait_for(f"{name} to succeed", finished, timeout=TRAINING_TIMEOUT, interval=1)
        assert "forbidden" not in operator.log_path.read_text().lower()
    return kube.status(namespace, name)


def _can_i(cluster: Cluster, install: Install, verb: str, resource: str, namespace: str) -> bool:
    group_resource, _, subresource = resource.partition("/")
    argv = ["auth", "can-i", verb, group_resource, f"--as={install.user}"]
    if subresource:
        argv.append(f"--subresource={subresource}")
    if group_resource.split(".")[0] not in CLUSTER_SCOPED:
        argv += ["-n", namespace]
    result = cluster.kubectl(*argv, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(argv)}: {result.stdout}{result.stderr}"
    return answer == "yes"


def _qualified(group: str, resource: str) -> str:
    """``jobs`` in ``batch`` as kubectl names it: ``jobs.batch``, subresource kept."""
    plural, _, subresource = resource.partition("/")
    name = f"{plural}.{group}" if group else plural
    return f"{name}/{subresource}" if subresource else name


def test_the_charts_service_account_may_do_what_the_operator_needs_and_read_no_secrets(
    cluster: Cluster, helm_install: Install, namespace: str
) -> None:
    # kubectl answers "no" for a resource type the cluster does not serve: the PodGroups of
    # Volcano and scheduler-plugins are not installed here (tests/chart/test_chart.py checks the
    # chart grants them).
    served = set(cluster.kubectl("api-resources", "-o", "name").stdout.split())
    refused = {
        f"{verb} {_qualified(group, resource)}"
        for (group, resource), verbs in EXPECTED_RULES.items()
        for verb in sorted(verbs)
        if _qualified(group, resource).split("/")[0] in served | {"pods", "events"}
        and not _can_i(cluster, helm_install, verb, _qualified(group, resource), namespace)
    }
    assert not refused, f"the chart's ServiceAccount may not: {sorted(refused)}"
    for verb, resource in (
        ("get", "secrets"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("create", "pods"),
        ("update", "jobs.batch"),
        ("delete", "services"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
    ):
        assert not _can_i(cluster, helm_install, verb, resource, namespace), (
            f"the chart's ServiceAccount may {verb} {resource}"
        )


@pytest.fixture(scope="module")
def kustomize_install(
    cluster: Cluster, helm_install: Install, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Install]:
    existing = cluster.kubectl("get", "namespace", KUSTOMIZE_NAMESPACE, check=False)
    if existing.returncode == 0:
        pytest.skip(f"namespace {KUSTOMIZE_NAMESPACE} exists: acceltrain is installed already")
    _namespace_without_pods(cluster, KUSTOMIZE_NAMESPACE)
    try:
        applied = cluster.kubectl("apply", "-k", str(KUSTOMIZE_BASE))
        assert "deployment.apps/acceltrain created" in applied.stdout, applied.stdout
        kubeconfig = _token_kubeconfig(
            cluster,
            KUSTOMIZE_NAMESPACE,
            KUSTOMIZE_NAME,
            tmp_path_factory.mktemp("kustomize") / "kubeconfig",
        )
        yield Install(KUSTOMIZE_NAMESPACE, KUSTOMIZE_NAME, KUSTOMIZE_NAME, kubeconfig)
    finally:
        # Not `kubectl delete -k`: that would delete the CRD, and every AccelTrainJob with it.
        for kind, name in (
            ("clusterrolebinding", KUSTOMIZE_NAME),
            ("clusterrolebinding", f"{KUSTOMIZE_NAME}-cluster"),
            ("clusterrole", KUSTOMIZE_NAME),
            ("clusterrole", f"{KUSTOMIZE_NAME}-cluster"),
        ):
            cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", KUSTOMIZE_NAMESPACE, "--wait=false", check=False)


def _rules_of(cluster: Cluster, role: str) -> list[dict[str, Any]]:
    found = json.loads(cluster.kubectl("get", "clusterrole", role, "-o", "json").stdout)
    rules: list[dict[str, Any]] = found["rules"]
    return rules


def test_plain_manifests_install_and_their_service_account_trains_the_cpu_example(
    cluster: Cluster,
    kube: Api,
    helm_install: Install,
    kustomize_install: Install,
    deepspeed_ops: None,
    namespace: str,
    tmp_path: Path,
) -> None:
    # The same permissions as the chart's, as the API server stored them.
    for suffix in ("", "-cluster"):
        assert _rules_of(cluster, kustomize_install.job_role + suffix) == _rules_of(
            cluster, helm_install.job_role + suffix
        )
    status = _train_cpu_smoke(cluster, kube, kustomize_install, namespace, tmp_path)
    assert status["progress"]["step"] == SMOKE_STEPS
    assert condition(status, constants.CONDITION_SUCCEEDED)["status"] == "True"


def test_without_create_on_jobs_the_operator_reports_forbidden_and_the_job_never_starts(
    cluster: Cluster, kube: Api, helm_install: Install, namespace: str, tmp_path: Path
) -> None:
    role = json.loads(
        cluster.kubectl("get", "clusterrole", helm_install.job_role, "-o", "json").stdout
    )
    original = copy.deepcopy(role)
    jobs_rules = [rule for rule in role["rules"] if "jobs" in rule["resources"]]
    assert jobs_rules and all("create" in rule["verbs"] for rule in jobs_rules)
    for rule in jobs_rules:
        rule["verbs"].remove("create")
    for document in (role, original):
        document["metadata"].pop("resourceVersion", None)
    cluster.kubectl("replace", "-f", "-", input=json.dumps(role))
    try:
        wait_for(
            "the authorizer to refuse creating jobs",
            lambda: not _can_i(cluster, helm_install, "create", "jobs.batch", namespace),
            timeout=30,
        )
        name = "forbidden"
        with running_operator(cluster, namespace, tmp_path, helm_install.kubeconfig) as operator:
            kube.create_job(namespace, name, gpu_spec(workers=1, devices=1))

            def forbidden_event() -> dict[str, Any] | None:
                return next(
                    (
                        event
                        for event in kube.events(namespace, name)
                        if "forbidden" in str(event.get("message")).lower()
                    ),
                    None,
                )

            event = wait_for("an event that names the Forbidden error", forbidden_event, 60)
            log = operator.log_path.read_text()
        message = str(event["message"])
        assert (event["type"], event["reason"]) == ("Warning", "ApiError")
        assert 'cannot create resource "jobs" in API group "batch"' in message
        assert helm_install.user in message
        assert "forbidden" in log.lower()
        assert not kube.children(namespace, name)["jobs"]
        assert kube.status(namespace, name).get("phase") in (None, "Pending")
    finally:
        cluster.kubectl("replace", "-f", "-", input=json.dumps(original))

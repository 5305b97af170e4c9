"""The Helm chart lints clean, renders secure least-privilege objects, and rejects typos."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from accel_operator import constants
from accel_operator import render as operator_render
from tests.specs import REPO_ROOT, require_tool

CHART = REPO_ROOT / "charts" / "acceltrain"
# The version of the local control plane, so `kubeVersion` in Chart.yaml is checked against it.
KUBE = (
    "--kube-version",
    (REPO_ROOT / "hack" / "tools" / "versions.env")
    .read_text()
    .split("KUBERNETES_VERSION=")[1]
    .split()[0],
)
ALL_FEATURES = {
    "replicaCount": "2",
    "metrics.serviceMonitor.enabled": "true",
    "metrics.podMonitor.enabled": "true",
    "grafanaDashboard.enabled": "true",
}
# Exactly what the operator does to each resource; anything more is a finding. The integration
# test tests/chart/test_helm_install.py checks each of these against the real authorizer.
EXPECTED_RULES = {
    ("acceltrain.io", "acceltrainjobs"): {"get", "list", "watch", "patch", "delete"},
    ("acceltrain.io", "acceltrainjobs/status"): {"patch"},
    ("acceltrain.io", "acceltrainjobs/finalizers"): {"update"},
    ("batch", "jobs"): {"list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch", "delete"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"list", "create"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
    ("scheduling.k8s.io", "workloads"): {"get", "list", "watch", "create", "patch", "delete"},
    ("scheduling.volcano.sh", "podgroups"): {"get", "list", "watch", "create", "patch", "delete"},
    ("scheduling.x-k8s.io", "podgroups"): {"get", "list", "watch", "create", "patch", "delete"},
    ("kueue.x-k8s.io", "workloads"): {"list", "watch"},
}
# In the release's namespace only: the leader Lease, and the Event naming a new leader.
LEADER_ELECTION_RULES = {
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
    ("", "events"): {"create"},
}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = require_tool("helm")
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, check=check, cwd=REPO_ROOT
    )


def render(values: dict[str, str] | None = None, *extra: str) -> list[dict[str, Any]]:
    sets = [f"--set={key}={value}" for key, value in (values or {}).items()]
    result = helm(
        "template",
        "acceltrain",
        str(CHART),
        *KUBE,
        "--namespace",
        "acceltrain-system",
        *sets,
        *extra,
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.mark.parametrize(
    "values",
    [{}, ALL_FEATURES, {"watchNamespaces": "{team-a,team-b}"}],
    ids=["default", "all-features", "namespaced"],
)
def test_helm_lint_is_clean(values: dict[str, str]) -> None:
    sets = [f"--set={key}={value}" for key, value in values.items()]
    result = helm("lint", "--strict", str(CHART), *KUBE, *sets, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_operator_pod_runs_with_secure_defaults() -> None:
    deployment = by_kind(render(), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]
    assert "--leader-elect" in container["args"]


def test_selectors_match_the_pod_labels() -> None:
    docs = render(ALL_FEATURES)
    deployment = by_kind(docs, "Deployment")[0]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [deployment["spec"]["selector"]["matchLabels"]]
    selectors += [service["spec"]["selector"] for service in by_kind(docs, "Service")]
    selectors += [
        monitor["spec"]["selector"]["matchLabels"] for monitor in by_kind(docs, "ServiceMonitor")
    ]
    for selector in selectors:
        assert all(labels.get(key) == value for key, value in selector.items()), selector


def _deployment_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    return pod


def test_two_replicas_elect_a_leader_keep_one_through_a_drain_and_spread_over_nodes() -> None:
    docs = render({"replicaCount": "2"})
    pod = _deployment_pod(docs)
    args = pod["containers"][0]["args"]
    assert "--leader-elect" in args and "--standalone" not in args
    assert "--leader-election-lease-duration=15" in args
    env = {item["name"]: item.get("valueFrom") for item in pod["containers"][0]["env"]}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    budget = by_kind(docs, "PodDisruptionBudget")[0]
    assert budget["spec"]["minAvailable"] == 1
    assert (
        budget["spec"]["selector"]["matchLabels"]
        == by_kind(docs, "Deployment")[0]["spec"]["selector"]["matchLabels"]
    )
    spread = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    role = next(
        r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("leader-election")
    )
    assert role["metadata"]["namespace"] == "acceltrain-system"
    assert not by_kind(docs, "ClusterKopfPeering")


def test_one_replica_still_elects_but_needs_no_budget_or_spreading() -> None:
    docs = render()
    pod = _deployment_pod(docs)
    assert "--leader-elect" in pod["containers"][0]["args"]
    assert "affinity" not in pod
    assert not by_kind(docs, "PodDisruptionBudget")


def test_election_can_be_turned_off_only_for_a_single_replica() -> None:
    pod = _deployment_pod(render({"leaderElection.enabled": "false"}))
    assert "--standalone" in pod["containers"][0]["args"]
    refused = helm(
        "template",
        "x",
        str(CHART),
        *KUBE,
        "--set=replicaCount=2",
        "--set=leaderElection.enabled=false",
        check=False,
    )
    assert refused.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled=true" in refused.stderr


def test_a_renew_deadline_past_the_lease_duration_is_refused_at_install() -> None:
    refused = helm(
        "template", "x", str(CHART), *KUBE, "--set=leaderElection.renewDeadline=20", check=False
    )
    assert refused.returncode != 0
    assert "leaderElection.renewDeadline must be below leaderElection.leaseDuration" in (
        refused.stderr
    )


def _rules(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


@pytest.mark.parametrize(
    "values", [{}, {"watchNamespaces": "{team-a}"}], ids=["cluster-wide", "namespaced"]
)
def test_rbac_grants_exactly_what_the_operator_uses(values: dict[str, str]) -> None:
    granted = _rules(render(values))
    expected = {key: set(verbs) for key, verbs in EXPECTED_RULES.items()}
    for key, verbs in LEADER_ELECTION_RULES.items():
        expected.setdefault(key, set()).update(verbs)
    assert granted == expected
    for (group, resource), verbs in granted.items():
        assert "*" not in verbs and resource != "*" and group != "*"
        assert resource != "secrets"


def test_namespaced_install_binds_roles_only_in_watched_namespaces() -> None:
    docs = render({"watchNamespaces": "{team-a,team-b}"})
    job_roles = [
        r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-election")
    ]
    assert sorted(role["metadata"]["namespace"] for role in job_roles) == ["team-a", "team-b"]
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_the_operator_reads_the_gpu_pool_and_trainer_image_the_chart_sets() -> None:
    docs = render(
        {
            "trainer.image": "registry.example/trainer:7",
            "trainer.gpuPool.nodeSelector.pool": "a100",
            "trainer.gpuPool.tolerations[0].key": "dedicated",
            "trainer.gpuPool.tolerations[0].operator": "Exists",
            "trainer.gpuPool.tolerations[0].effect": "NoSchedule",
        }
    )
    container = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    # Every variable the chart sets is one the operator reads, under the same name.
    assert set(env) == {
        constants.ENV_RECONCILE_INTERVAL,
        constants.ENV_DEFAULT_TRAINER_IMAGE,
        constants.ENV_GPU_NODE_SELECTOR,
        constants.ENV_GPU_TOLERATIONS,
    }
    assert operator_render.cluster_defaults_from_env(env) == operator_render.ClusterDefaults(
        trainer_image="registry.example/trainer:7",
        gpu_node_selector={"pool": "a100"},
        gpu_tolerations=({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},),
    )


def test_optional_monitoring_objects_are_off_by_default() -> None:
    kinds = {doc["kind"] for doc in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "ClusterKopfPeering"}
    assert not [
        cm for cm in by_kind(render(), "ConfigMap") if "dashboard" in cm["metadata"]["name"]
    ]


def test_grafana_dashboard_shows_throughput_mfu_padding_step_time_loss_and_restarts() -> None:
    configmap = next(
        cm
        for cm in by_kind(render(ALL_FEATURES), "ConfigMap")
        if "dashboard" in cm["metadata"]["name"]
    )
    dashboard = yaml.safe_load(configmap["data"]["acceltrain.json"])
    exprs = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    for metric in (
        "acceltrain_samples_per_second",
        "acceltrain_tokens_per_second",
        "acceltrain_mfu_ratio",
        "acceltrain_padding_efficiency_ratio",
        "acceltrain_step_seconds_bucket",
        "acceltrain_loss",
        "restarts_total",
    ):
        assert metric in exprs


# Labels Prometheus (and a Prometheus Operator's PodMonitor) gives every target: a series label of
# the same name is renamed to exported_<name> unless honorLabels is set.
TARGET_LABELS = {"job", "namespace", "pod", "instance", "container", "endpoint", "service"}


def test_trainer_series_labels_survive_a_podmonitor_without_honor_labels() -> None:
    from accel_trainer.metrics import LABEL_NAMES

    assert not set(LABEL_NAMES) & TARGET_LABELS
    monitor = by_kind(render(ALL_FEATURES), "PodMonitor")[0]
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert "honorLabels" not in endpoint
    # The dashboard groups and filters by the trainer's job label and the target's namespace.
    configmap = next(
        cm
        for cm in by_kind(render(ALL_FEATURES), "ConfigMap")
        if "dashboard" in cm["metadata"]["name"]
    )
    dashboard = yaml.safe_load(configmap["data"]["acceltrain.json"])
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            if "acceltrain_operator" in target["expr"]:
                continue
            grouped = [
                {name.strip() for name in group.split(",")}
                for group in re.findall(r"by \(([^)]*)\)", target["expr"])
            ]
            # Two jobs of one name in two namespaces are two jobs: every grouping keeps both.
            assert all({"namespace", "acceltrain_job"} <= group for group in grouped), target
            assert all("job" not in group for group in grouped)
            assert "exported_" not in target["expr"]


def test_values_schema_rejects_a_typo_with_the_key_named() -> None:
    result = helm(
        "template", "acceltrain", str(CHART), *KUBE, "--set", "imagee.tag=1.0", check=False
    )
    assert result.returncode != 0
    assert "imagee" in result.stderr
    assert "Additional property" in result.stderr or "additional properties" in result.stderr


def test_every_value_is_documented() -> None:
    """Every value the chart defines (the schema's properties) has a comment above it."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    stack: list[tuple[int, str]] = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [key for _, key in stack] + [match.group(2)]
        stack.append((indent, match.group(2)))
        node: dict[str, Any] | None = schema
        for key in path:
            node = (node or {}).get("properties", {}).get(key)
        if node is None or "properties" in node:
            continue  # a user's own map entry, or a section whose values are documented
        previous = lines[number - 1].strip() if number else ""
        assert previous.startswith("#"), f"values.yaml:{number + 1} {'.'.join(path)} has no comment"


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.+)"$', pyproject, re.MULTILINE)
    assert version and chart["appVersion"] == version.group(1)


def _dockerfiles() -> list[Path]:
    return [
        REPO_ROOT / "operator" / "Dockerfile",
        *sorted((REPO_ROOT / "trainer_image").glob("Dockerfile*")),
    ]


@pytest.mark.parametrize("path", _dockerfiles(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_dockerfile_pins_its_base_runs_as_non_root_and_enters_the_module(path: Path) -> None:
    text = path.read_text()
    # A base named by a build argument is pinned by the argument's default.
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.MULTILINE))
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda match: defaults.get(match.group(1), match.group(0)), base)
        for base in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    ]
    assert bases
    for base in bases:
        if base.islower() and ":" not in base and "@" not in base:
            stage_names = re.findall(
                r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.MULTILINE | re.IGNORECASE
            )
            assert base in stage_names, f"{base} is not pinned"
            continue
        tag = base.split("@")[0].split(":")[-1]
        assert "@sha256:" in base or re.search(r"\d", tag), f"{base} is not pinned"
        assert not tag.startswith("latest")
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(
        r'^ENTRYPOINT \[(?:"tini", "--", )?"python", "-m", "accel_(operator|trainer)"\]',
        text,
        re.MULTILINE,
    )


def test_image_names_live_in_one_place() -> None:
    names = subprocess.run(
        ["make", "-s", "image-names"], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    ).stdout.split()
    operator_image, trainer_image, trainer_cpu_image = names
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert f"{values['image']['repository']}:{chart['appVersion']}" == operator_image
    assert values["trainer"]["image"] == trainer_image
    examples = "\n".join(
        path.read_text() for path in (REPO_ROOT / "manifests" / "examples").glob("*.yaml")
    )
    used = set(re.findall(r"image:\s*(\S+)", examples))
    assert used <= {trainer_image, trainer_cpu_image}, used


def test_the_reconcile_interval_has_one_default_from_the_chart_to_the_code() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert values["operator"]["reconcileIntervalSeconds"] == (
        constants.DEFAULT_RECONCILE_INTERVAL_SECONDS
    )
    assert constants.ENV_RECONCILE_INTERVAL in deployment
    assert ".Values.operator.reconcileIntervalSeconds" in deployment


def test_plain_manifests_equal_the_charts_defaults() -> None:
    helm_binary = require_tool("helm")
    result = subprocess.run(
        [sys.executable, "hack/render_manifests.py", "--check", "--helm", str(helm_binary)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_plain_manifests_build_with_kustomize() -> None:
    kubectl = require_tool("kubectl")
    built = subprocess.run(
        [str(kubectl), "kustomize", "manifests/operator"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    ).stdout
    kinds = {doc["kind"] for doc in yaml.safe_load_all(built) if doc}
    assert {
        "CustomResourceDefinition",
        "Namespace",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
    } <= kinds


def test_the_charts_readme_describes_every_value_and_dashboard_panel_as_they_are() -> None:
    result = subprocess.run(
        [sys.executable, "hack/chart_readme.py", "--check"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    readme = (CHART / "README.md").read_text()
    dashboard = json.loads((CHART / "dashboards" / "acceltrain.json").read_text())
    for panel in dashboard["panels"]:
        assert f"### {panel['title']}\n\n{panel['description']}" in readme
    assert "| `metrics.podMonitor.enabled` | bool | `false` |" in readme


def test_a_chart_value_without_a_doc_comment_is_named() -> None:
    sys.path.insert(0, str(REPO_ROOT / "hack"))
    from chart_readme import documented_values, undocumented_values

    values = (
        "# -- Documented, with\n# a second line.\nreplicas: 1\n"
        "metrics:\n  # -- The port.\n  port: 8080\n  interval: 30s\n"
        "# -- Covers its children.\nresources:\n  limits:\n    memory: 1Gi\n"
    )

    assert undocumented_values(values) == ["metrics.interval"]
    assert [(v.key, v.type, v.default, v.description) for v in documented_values(values)] == [
        ("replicas", "int", "1", "Documented, with a second line."),
        ("metrics.port", "int", "8080", "The port."),
        ("resources", "object", '{"limits": {"memory": "1Gi"}}', "Covers its children."),
    ]
